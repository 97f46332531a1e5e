//! Nearest-neighbour search over unit vectors: an HNSW graph (`hnsw_rs`) and the exact search
//! it is checked against.

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

/// One neighbour: the row it was built from and its cosine similarity to the query.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// Row number in the vectors the index was built from.
    pub row: usize,
    /// Cosine similarity (dot product of unit vectors).
    pub similarity: f32,
}

/// An HNSW index over a fixed set of unit vectors of one dimension.
pub struct Index {
    graph: Hnsw<'static, f32, UnitDotDistance>,
    vectors: Vec<Vec<f32>>,
    params: HnswParams,
}

impl Index {
    /// Builds the index over `vectors` (all of the same length, unit norm).
    pub fn build(vectors: Vec<Vec<f32>>, params: HnswParams) -> Self {
        let graph = Hnsw::new(
            params.max_connections,
            vectors.len().max(1),
            MAX_LAYERS,
            params.ef_construction,
            UnitDotDistance,
        );
        for (row, v) in vectors.iter().enumerate() {
            graph.insert_slice((v.as_slice(), row));
        }
        Self {
            graph,
            vectors,
            params,
        }
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

    /// The `k` approximate nearest neighbours, most similar first. The query must have the
    /// index's dimension (`hnsw_rs` panics otherwise; callers validate).
    pub fn search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        if self.is_empty() || k == 0 {
            return Vec::new();
        }
        debug_assert_eq!(query.len(), self.dim());
        let ef = self.params.ef_search.max(k);
        let mut hits: Vec<Hit> = self
            .graph
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
        let index = Index::build(vectors.clone(), HnswParams::default());
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
    }
}
