//! Nearest-neighbour search over unit vectors: an HNSW graph for large sets (built by
//! `hnsw_rs`, searched and stored in flat arrays, see [`super::graph`]) and exact search below
//! [`EXACT_SEARCH_BELOW`] vectors, where it is the faster of the two.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::graph::Graph;
use crate::types::dot;

/// HNSW construction and search parameters, stored in the gallery's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswParams {
    /// Neighbours kept per node and layer.
    pub max_connections: usize,
    /// Candidate list size while building.
    pub ef_construction: usize,
    /// Candidate list size while searching (at least k).
    pub ef_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            max_connections: 16,
            ef_construction: 200,
            ef_search: 64,
        }
    }
}

/// Most neighbours per node `hnsw_rs` accepts (it ends the process on more).
pub const MAX_CONNECTIONS: usize = 256;

/// Sets of fewer vectors than this are searched exactly, without a graph: measured with
/// `cargo bench --bench gallery_scale` on this project's 2-core VM (128-d vectors, k = 10,
/// `ef_search` 64), exact search was faster than a graph search at 1,000 vectors and level with
/// it at 2,000 (0.032 against 0.035 ms p50), slower from 5,000; see README, "Many machines".
pub const EXACT_SEARCH_BELOW: usize = 2_000;

/// One neighbour: the row it was built from and its cosine similarity to the query.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// Row number in the vectors the index was built from.
    pub row: usize,
    /// Cosine similarity (dot product of unit vectors).
    pub similarity: f32,
}

/// A nearest-neighbour index over a fixed set of unit vectors of one dimension, held as
/// contiguous rows: an HNSW graph from [`EXACT_SEARCH_BELOW`] vectors on, exact search below.
pub struct Index {
    graph: Option<Graph>,
    vectors: Vec<f32>,
    dim: usize,
    params: HnswParams,
}

impl Index {
    /// Builds the index over `vectors` (rows of `dim` values, unit norm): with a graph when
    /// [`Index::uses_graph`] says so for their number (telling `progress` how many vectors are
    /// in).
    pub fn build(
        vectors: Vec<f32>,
        dim: usize,
        params: HnswParams,
        progress: &dyn Fn(usize),
    ) -> Self {
        if Self::uses_graph(rows(&vectors, dim)) {
            Self::build_graph(vectors, dim, params, progress)
        } else {
            Self::exact(vectors, dim, params)
        }
    }

    /// As [`Index::build`], keeping the graph in `graph_file`: read from it when it holds the
    /// graph of these vectors with these construction parameters, otherwise built (telling
    /// `progress` how many vectors are in) and written there (a file that cannot be written is
    /// logged and the index used all the same).
    pub fn build_stored(
        vectors: Vec<f32>,
        dim: usize,
        params: HnswParams,
        graph_file: &Path,
        progress: &dyn Fn(usize),
    ) -> Self {
        if !Self::uses_graph(rows(&vectors, dim)) {
            return Self::exact(vectors, dim, params);
        }
        let vectors = match Self::load_graph(vectors, dim, params, graph_file) {
            Ok(index) => return index,
            Err(vectors) => vectors,
        };
        tracing::info!(
            "building the search graph of {} vectors for {} (later runs read it from there)",
            rows(&vectors, dim),
            graph_file.display()
        );
        let index = Self::build_graph(vectors, dim, params, progress);
        if let Err(e) = index.save_graph(graph_file) {
            tracing::warn!(
                "could not keep the search graph in {}: {e}; it will be built again next time",
                graph_file.display()
            );
        }
        index
    }

    /// The index without a graph whatever the number of vectors: every search is exact.
    pub fn exact(vectors: Vec<f32>, dim: usize, params: HnswParams) -> Self {
        Self {
            graph: None,
            vectors,
            dim,
            params,
        }
    }

    /// Whether [`Index::build`] makes a graph for `len` vectors: from [`EXACT_SEARCH_BELOW`] on.
    pub fn uses_graph(len: usize) -> bool {
        len >= EXACT_SEARCH_BELOW
    }

    /// Builds the index with an HNSW graph whatever the number of vectors, inserting on all
    /// cores (rayon's pool) and telling `progress` how many vectors are in.
    pub fn build_graph(
        vectors: Vec<f32>,
        dim: usize,
        params: HnswParams,
        progress: &dyn Fn(usize),
    ) -> Self {
        let graph = Graph::build(
            &vectors,
            dim,
            params.max_connections,
            params.ef_construction,
            progress,
        );
        Self {
            graph: Some(graph),
            vectors,
            dim,
            params,
        }
    }

    /// Writes the graph to `path` (atomically) for [`Index::load_graph`]; an index without a
    /// graph writes nothing.
    pub fn save_graph(&self, path: &Path) -> std::io::Result<()> {
        match &self.graph {
            Some(graph) => crate::files::write_atomic(path, &graph.encode(self.fingerprint())),
            None => Ok(()),
        }
    }

    /// The index over `vectors` with the graph saved in `path`, when that file holds the
    /// graph of exactly these vectors built with these parameters; the vectors back otherwise.
    pub fn load_graph(
        vectors: Vec<f32>,
        dim: usize,
        params: HnswParams,
        path: &Path,
    ) -> Result<Self, Vec<f32>> {
        let mut index = Self::exact(vectors, dim, params);
        let graph = std::fs::read(path)
            .ok()
            .and_then(|bytes| Graph::decode(&bytes, index.fingerprint(), index.len()));
        match graph {
            Some(graph) => {
                index.graph = Some(graph);
                Ok(index)
            }
            None => Err(index.vectors),
        }
    }

    /// A 64-bit FNV-1a hash of the vectors and the construction parameters: what a stored
    /// graph must have been built from to be used.
    fn fingerprint(&self) -> u64 {
        let header = [
            self.dim as u32,
            self.params.max_connections as u32,
            self.params.ef_construction as u32,
        ];
        let words = header
            .into_iter()
            .chain(self.vectors.iter().map(|x| x.to_bits()));
        words.fold(0xcbf2_9ce4_8422_2325, |hash, word| {
            (hash ^ u64::from(word)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }

    /// Whether searches go through an HNSW graph (otherwise they are exact).
    pub fn has_graph(&self) -> bool {
        self.graph.is_some()
    }

    /// Changes the candidate list size of later graph searches.
    pub fn set_ef_search(&mut self, ef_search: usize) {
        self.params.ef_search = ef_search;
    }

    /// Number of vectors indexed.
    pub fn len(&self) -> usize {
        rows(&self.vectors, self.dim)
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// Dimension of the indexed vectors.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The `k` nearest neighbours, most similar first: approximate through the graph, exact
    /// without one. The query must have the index's dimension (callers validate).
    pub fn search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        let Some(graph) = &self.graph else {
            return self.exact_search(query, k);
        };
        debug_assert_eq!(query.len(), self.dim);
        let ef = self.params.ef_search.max(k);
        graph
            .search(&self.vectors, self.dim, query, k, ef)
            .into_iter()
            .map(|(row, similarity)| Hit { row, similarity })
            .collect()
    }

    /// The `k` exact nearest neighbours by brute force, most similar first.
    pub fn exact_search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        if self.dim == 0 {
            return Vec::new();
        }
        let mut hits: Vec<Hit> = self
            .vectors
            .chunks_exact(self.dim)
            .enumerate()
            .map(|(row, v)| Hit {
                row,
                similarity: dot(query, v),
            })
            .collect();
        let by_similarity = |a: &Hit, b: &Hit| b.similarity.total_cmp(&a.similarity);
        if k < hits.len() && k > 0 {
            hits.select_nth_unstable_by(k - 1, by_similarity);
        }
        hits.truncate(k);
        // Without this the answer would keep room for every row (16 MB at 10^6).
        hits.shrink_to_fit();
        hits.sort_by(by_similarity);
        hits
    }
}

/// Number of rows of `dim` values in `vectors`.
fn rows(vectors: &[f32], dim: usize) -> usize {
    vectors.len().checked_div(dim).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circle(n: usize) -> Vec<f32> {
        (0..n)
            .flat_map(|i| {
                let a = i as f32 * std::f32::consts::TAU / n as f32;
                [a.cos(), a.sin()]
            })
            .collect()
    }

    const CHEAP: HnswParams = HnswParams {
        max_connections: 4,
        ef_construction: 8,
        ef_search: 8,
    };

    #[test]
    fn an_empty_index_returns_nothing() {
        let index = Index::build(Vec::new(), 2, HnswParams::default(), &|_| {});
        assert!(index.search(&[1.0, 0.0], 3).is_empty());
        let graph = Index::build_graph(Vec::new(), 2, HnswParams::default(), &|_| {});
        assert!(graph.search(&[1.0, 0.0], 3).is_empty());
    }

    #[test]
    fn an_exact_answer_holds_its_k_hits_and_no_room_for_the_rest() {
        let index = Index::exact(circle(10_000), 2, CHEAP);
        let hits = index.exact_search(&[1.0, 0.0], 3);
        let mut rows: Vec<usize> = hits.iter().map(|h| h.row).collect();
        rows.sort_unstable();
        assert_eq!(
            rows,
            [0, 1, 9_999],
            "the query's point and its two neighbours"
        );
        assert!(hits.capacity() < 10, "room for {} hits", hits.capacity());
    }

    #[test]
    fn small_sets_are_searched_exactly_and_large_ones_through_a_graph() {
        let small = Index::build(circle(EXACT_SEARCH_BELOW - 1), 2, CHEAP, &|_| {});
        assert!(!small.has_graph());
        let query = [1.0, 0.001];
        assert_eq!(small.search(&query, 3), small.exact_search(&query, 3));
        let large = Index::build(circle(EXACT_SEARCH_BELOW), 2, CHEAP, &|_| {});
        assert!(large.has_graph());
        let found = large.search(&query, 1)[0].similarity;
        assert!(found > 0.9999, "{found}");
    }

    #[test]
    fn a_stored_graph_is_read_back_for_the_same_vectors_and_rebuilt_for_others() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("graph.hnsw");
        let vectors = circle(EXACT_SEARCH_BELOW);
        let inserted = std::cell::Cell::new(0);
        let built = Index::build_stored(vectors.clone(), 2, CHEAP, &file, &|n| inserted.set(n));
        assert_eq!(
            inserted.get(),
            EXACT_SEARCH_BELOW,
            "the build reported every vector"
        );
        let written = std::fs::read(&file).expect("graph written");
        inserted.set(0);
        Index::build_stored(vectors.clone(), 2, CHEAP, &file, &|n| inserted.set(n));
        assert_eq!(inserted.get(), 0, "a graph read from its file is not built");
        let read = Index::load_graph(vectors.clone(), 2, CHEAP, &file)
            .unwrap_or_else(|_| panic!("graph read back"));
        assert_eq!(read.graph, built.graph);
        let query = [0.3, 0.954];
        assert_eq!(read.search(&query, 5), built.search(&query, 5));
        let other_params = HnswParams {
            ef_construction: 9,
            ..CHEAP
        };
        assert!(Index::load_graph(vectors.clone(), 2, other_params, &file).is_err());
        let mut moved = vectors;
        moved.swap(0, 2);
        assert!(Index::load_graph(moved.clone(), 2, CHEAP, &file).is_err());
        let rebuilt = Index::build_stored(moved, 2, CHEAP, &file, &|_| {});
        assert!(rebuilt.has_graph());
        assert_ne!(
            std::fs::read(&file).unwrap(),
            written,
            "stale graph replaced"
        );
    }
}
