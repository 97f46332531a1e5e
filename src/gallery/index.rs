//! Nearest-neighbour search over unit vectors: an HNSW graph (`hnsw_rs`) for large sets and
//! exact search below [`EXACT_SEARCH_BELOW`] vectors, where it is the faster of the two.

use hnsw_rs::prelude::{Distance, Hnsw};
use serde::{Deserialize, Serialize};

use crate::types::dot;

/// `1 − a·b` for unit vectors (cosine distance), never negative. Written here rather than using
/// `hnsw_rs`'s `DistDot`, whose scalar fallback asserts on the tiny negative values rounding
/// gives for identical vectors; eight accumulators let the compiler vectorise the loop.
#[derive(Clone, Copy, Debug, Default)]
pub struct UnitDotDistance;

impl Distance<f32> for UnitDotDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

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

/// `hnsw_rs` keeps at most 16 layers (and its dump format requires exactly 16).
const MAX_LAYERS: usize = 16;

/// Sets of fewer vectors than this are searched exactly, without a graph: measured with
/// `cargo bench --bench gallery_scale` on this project's 2-core VM (128-d vectors, k = 10),
/// exact search was faster than an HNSW query below this size; see README, "Many machines".
pub const EXACT_SEARCH_BELOW: usize = 20_000;

/// One neighbour: the row it was built from and its cosine similarity to the query.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// Row number in the vectors the index was built from.
    pub row: usize,
    /// Cosine similarity (dot product of unit vectors).
    pub similarity: f32,
}

/// A nearest-neighbour index over a fixed set of unit vectors of one dimension: an HNSW graph
/// from [`EXACT_SEARCH_BELOW`] vectors on, exact search below.
pub struct Index {
    graph: Option<Hnsw<'static, f32, UnitDotDistance>>,
    vectors: Vec<Vec<f32>>,
    params: HnswParams,
}

impl Index {
    /// Builds the index over `vectors` (all of the same length, unit norm): with a graph when
    /// [`Index::uses_graph`] says so for their number.
    pub fn build(vectors: Vec<Vec<f32>>, params: HnswParams) -> Self {
        if Self::uses_graph(vectors.len()) {
            Self::build_graph(vectors, params)
        } else {
            Self::exact(vectors, params)
        }
    }

    /// The index without a graph whatever the number of vectors: every search is exact.
    pub fn exact(vectors: Vec<Vec<f32>>, params: HnswParams) -> Self {
        Self {
            graph: None,
            vectors,
            params,
        }
    }

    /// Whether [`Index::build`] makes a graph for `len` vectors: from [`EXACT_SEARCH_BELOW`] on.
    pub fn uses_graph(len: usize) -> bool {
        len >= EXACT_SEARCH_BELOW
    }

    /// Builds the index with an HNSW graph whatever the number of vectors, inserting on all
    /// cores (rayon's pool).
    pub fn build_graph(vectors: Vec<Vec<f32>>, params: HnswParams) -> Self {
        let graph = Hnsw::new(
            params.max_connections,
            vectors.len().max(1),
            MAX_LAYERS,
            params.ef_construction,
            UnitDotDistance,
        );
        let rows: Vec<(&[f32], usize)> = vectors
            .iter()
            .enumerate()
            .map(|(row, v)| (v.as_slice(), row))
            .collect();
        graph.parallel_insert_slice(&rows);
        Self {
            graph: Some(graph),
            vectors,
            params,
        }
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
        self.vectors.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// Dimension of the indexed vectors (0 when empty).
    pub fn dim(&self) -> usize {
        self.vectors.first().map_or(0, Vec::len)
    }

    /// The `k` nearest neighbours, most similar first: approximate through the graph, exact
    /// without one. The query must have the index's dimension (`hnsw_rs` panics otherwise;
    /// callers validate).
    pub fn search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        let Some(graph) = &self.graph else {
            return self.exact_search(query, k);
        };
        if self.is_empty() || k == 0 {
            return Vec::new();
        }
        debug_assert_eq!(query.len(), self.dim());
        let ef = self.params.ef_search.max(k);
        let mut hits: Vec<Hit> = graph
            .search(query, k.min(self.len()), ef)
            .into_iter()
            .map(|n| Hit {
                row: n.d_id,
                similarity: dot(query, &self.vectors[n.d_id]),
            })
            .collect();
        hits.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        hits
    }

    /// The `k` exact nearest neighbours by brute force, most similar first.
    pub fn exact_search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        let mut hits: Vec<Hit> = self
            .vectors
            .iter()
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
        hits.sort_by(by_similarity);
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: Vec<f32>) -> Vec<f32> {
        let n = dot(&v, &v).sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    #[test]
    fn hnsw_finds_the_same_nearest_vector_as_exact_search() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let vectors: Vec<Vec<f32>> = (0..500)
            .map(|_| unit((0..32).map(|_| next()).collect()))
            .collect();
        let index = Index::build_graph(vectors.clone(), HnswParams::default());
        let agree = vectors
            .iter()
            .take(100)
            .filter(|q| index.search(q, 1)[0].row == index.exact_search(q, 1)[0].row)
            .count();
        assert!(agree >= 99, "{agree}/100");
        assert!((index.search(&vectors[3], 1)[0].similarity - 1.0).abs() < 1e-5);
    }

    #[test]
    fn an_empty_index_returns_nothing() {
        let index = Index::build(Vec::new(), HnswParams::default());
        assert!(index.search(&[1.0, 0.0], 3).is_empty());
        let graph = Index::build_graph(Vec::new(), HnswParams::default());
        assert!(graph.search(&[1.0, 0.0], 3).is_empty());
    }

    #[test]
    fn small_sets_are_searched_exactly_and_large_ones_through_a_graph() {
        let circle = |n: usize| -> Vec<Vec<f32>> {
            (0..n)
                .map(|i| {
                    let a = i as f32 * std::f32::consts::TAU / n as f32;
                    vec![a.cos(), a.sin()]
                })
                .collect()
        };
        let cheap = HnswParams {
            max_connections: 4,
            ef_construction: 8,
            ef_search: 8,
        };
        let small = Index::build(circle(EXACT_SEARCH_BELOW - 1), cheap);
        assert!(!small.has_graph());
        let query = [1.0, 0.001];
        assert_eq!(small.search(&query, 3), small.exact_search(&query, 3));
        let large = Index::build(circle(EXACT_SEARCH_BELOW), cheap);
        assert!(large.has_graph());
        let found = large.search(&query, 1)[0].similarity;
        assert!(found > 0.9999, "{found}");
    }
}
