//! An HNSW graph in flat arrays: built by `hnsw_rs`, then copied out of its per-point locks and
//! reference counts into one neighbour list per layer, where a search touches plain `u32`s and
//! the vectors' contiguous rows, and where the graph can be written to a file and read back in
//! the time it takes to read the file.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

use hnsw_rs::prelude::{Distance, Hnsw};

use crate::types::dot;

/// `1 − a·b` for unit vectors (cosine distance), never negative. Written here rather than using
/// `hnsw_rs`'s `DistDot`, whose scalar fallback asserts on the tiny negative values rounding
/// gives for identical vectors; eight accumulators let the compiler vectorise the loop.
#[derive(Clone, Copy, Debug, Default)]
struct UnitDotDistance;

impl Distance<f32> for UnitDotDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

/// `hnsw_rs` keeps at most 16 layers (and its dump format requires exactly 16).
const MAX_LAYERS: usize = 16;

/// First bytes of a graph file; the last byte is the format's version (2: layer 0 with the
/// reverse edges of [`add_reverse_edges`]).
const MAGIC: &[u8; 16] = b"carivis-hnsw\0\0\0\x02";

/// How many times a build reports progress (hnsw_rs inserts each slice on all cores, so a
/// slice boundary only waits for the slice's slowest insertion).
pub const PROGRESS_STEPS: usize = 100;

/// Layer 0 lists may grow to this many times `max_connections` with reverse edges (`hnsw_rs`
/// itself keeps at most twice `max_connections` there).
const MAX_DEGREE_PER_CONNECTION: usize = 3;

/// Gives every node of `lists` (the layer-0 neighbour lists, nearest first) at least
/// `min_incoming` incoming edges where it can: for a node that fewer lists name, the edge back
/// to it is added to its nearest neighbours' lists that have fewer than `max_degree` entries.
///
/// `hnsw_rs`'s neighbour pruning leaves nodes that no list names, which no search can reach:
/// 6,666 of 10^6 in the benchmark's gallery (M 16), where recall@1 levelled off below 0.98
/// however large `ef` grew; the figures with these edges are in README, "Many machines".
fn add_reverse_edges(lists: &mut [Vec<u32>], min_incoming: usize, max_degree: usize) {
    let mut incoming = vec![0usize; lists.len()];
    for &target in lists.iter().flatten() {
        incoming[target as usize] += 1;
    }
    for node in 0..lists.len() {
        let mut next = 0;
        while incoming[node] < min_incoming && next < lists[node].len() {
            let neighbour = lists[node][next] as usize;
            next += 1;
            let back = &mut lists[neighbour];
            let id = node as u32;
            if neighbour != node && back.len() < max_degree && !back.contains(&id) {
                back.push(id);
                incoming[node] += 1;
            }
        }
    }
}

/// The neighbours of the nodes present in one layer, as compressed rows: the neighbours of the
/// `i`-th node are `targets[offsets[i]..offsets[i + 1]]`.
#[derive(Debug, PartialEq)]
struct Layer {
    /// Node ids present, ascending; empty for layer 0, which holds every node in id order.
    nodes: Vec<u32>,
    offsets: Vec<u32>,
    targets: Vec<u32>,
}

impl Layer {
    fn from_lists(mut lists: Vec<(u32, Vec<u32>)>, every_node: bool) -> Self {
        lists.sort_unstable_by_key(|(node, _)| *node);
        let mut offsets = Vec::with_capacity(lists.len() + 1);
        offsets.push(0);
        let mut targets = Vec::new();
        for (_, neighbours) in &lists {
            targets.extend_from_slice(neighbours);
            offsets.push(targets.len() as u32);
        }
        let nodes = if every_node {
            Vec::new()
        } else {
            lists.into_iter().map(|(node, _)| node).collect()
        };
        Self {
            nodes,
            offsets,
            targets,
        }
    }

    fn neighbours(&self, node: u32) -> &[u32] {
        let slot = if self.nodes.is_empty() {
            Some(node as usize)
        } else {
            self.nodes.binary_search(&node).ok()
        };
        match slot {
            Some(i) if i + 1 < self.offsets.len() => {
                &self.targets[self.offsets[i] as usize..self.offsets[i + 1] as usize]
            }
            _ => &[],
        }
    }
}

/// A node and its similarity to the query, ordered by similarity.
#[derive(Clone, Copy)]
struct Scored {
    similarity: f32,
    node: u32,
}

impl PartialEq for Scored {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.similarity
            .total_cmp(&other.similarity)
            .then(self.node.cmp(&other.node))
    }
}

/// Which nodes a search has seen: a stamp per node, so that a new search starts without
/// clearing anything.
struct Visited {
    stamps: Vec<u32>,
    stamp: u32,
}

impl Visited {
    fn start(&mut self, nodes: usize) {
        if self.stamps.len() < nodes {
            self.stamps.resize(nodes, 0);
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.stamps.fill(0);
            self.stamp = 1;
        }
    }

    /// Marks `node`; whether it was new.
    fn insert(&mut self, node: u32) -> bool {
        let mark = &mut self.stamps[node as usize];
        let new = *mark != self.stamp;
        *mark = self.stamp;
        new
    }
}

thread_local! {
    static VISITED: RefCell<Visited> = const {
        RefCell::new(Visited {
            stamps: Vec::new(),
            stamp: 0,
        })
    };
}

/// An HNSW graph over the rows of a set of unit vectors.
#[derive(Debug, PartialEq)]
pub struct Graph {
    nodes: usize,
    entry: u32,
    /// Layer 0 first.
    layers: Vec<Layer>,
}

impl Graph {
    /// Builds the graph of `vectors` (rows of `dim` values) with `hnsw_rs`, inserting on all
    /// cores (rayon's pool) in [`PROGRESS_STEPS`] slices, after each of which `progress` is
    /// told how many rows are in, and copies it out.
    pub fn build(
        vectors: &[f32],
        dim: usize,
        max_connections: usize,
        ef_construction: usize,
        progress: &dyn Fn(usize),
    ) -> Self {
        let rows = vectors.len() / dim.max(1);
        if rows == 0 {
            return Self::empty();
        }
        let hnsw = Hnsw::new(
            max_connections,
            rows.max(1),
            MAX_LAYERS,
            ef_construction,
            UnitDotDistance,
        );
        let data: Vec<(&[f32], usize)> = vectors.chunks_exact(dim.max(1)).zip(0..).collect();
        let mut inserted = 0;
        for slice in data.chunks(rows.div_ceil(PROGRESS_STEPS)) {
            hnsw.parallel_insert_slice(&slice.to_vec());
            inserted += slice.len();
            progress(inserted);
        }
        Self::copy_of(&hnsw, rows, max_connections)
    }

    fn empty() -> Self {
        Self {
            nodes: 0,
            entry: 0,
            layers: vec![Layer::from_lists(Vec::new(), true)],
        }
    }

    /// Copies `hnsw_rs`'s neighbour lists out, nearest neighbour first, and gives layer 0 the
    /// reverse edges of [`add_reverse_edges`].
    fn copy_of(hnsw: &Hnsw<f32, UnitDotDistance>, nodes: usize, max_connections: usize) -> Self {
        let points = hnsw.get_point_indexation();
        let top = usize::from(points.get_max_level_observed());
        let mut bottom: Vec<Vec<u32>> = vec![Vec::new(); nodes];
        let mut upper: Vec<Vec<(u32, Vec<u32>)>> = (0..top).map(|_| Vec::new()).collect();
        let mut entry = None;
        for point in points {
            let node = point.get_origin_id() as u32;
            let level = usize::from(point.get_point_id().0);
            if level == top && entry.is_none() {
                entry = Some(node);
            }
            for (layer, mut neighbours) in point.get_neighborhood_id().into_iter().enumerate() {
                if layer > level.min(top) {
                    continue;
                }
                neighbours.sort_by(|a, b| a.distance.total_cmp(&b.distance));
                let ids = neighbours.iter().map(|n| n.d_id as u32).collect();
                match layer {
                    0 => bottom[node as usize] = ids,
                    _ => upper[layer - 1].push((node, ids)),
                }
            }
        }
        add_reverse_edges(
            &mut bottom,
            max_connections / 2,
            MAX_DEGREE_PER_CONNECTION * max_connections,
        );
        let every_node = (0..).zip(bottom).collect();
        let layers = std::iter::once(Layer::from_lists(every_node, true))
            .chain(
                upper
                    .into_iter()
                    .map(|lists| Layer::from_lists(lists, false)),
            )
            .collect();
        Self {
            nodes,
            entry: entry.unwrap_or(0),
            layers,
        }
    }

    /// The `k` rows of `vectors` most similar to `query`, most similar first, with their
    /// similarities: a greedy descent through the upper layers, then a best-first search of
    /// layer 0 keeping `ef` candidates.
    pub fn search(
        &self,
        vectors: &[f32],
        dim: usize,
        query: &[f32],
        k: usize,
        ef: usize,
    ) -> Vec<(usize, f32)> {
        if self.nodes == 0 || k == 0 {
            return Vec::new();
        }
        let rows = Rows {
            vectors,
            dim,
            query,
        };
        let mut current = rows.scored(self.entry);
        for layer in self.layers.iter().skip(1).rev() {
            current = Self::greedy(layer, current, &rows);
        }
        let found = VISITED.with(|visited| {
            let mut visited = visited.borrow_mut();
            visited.start(self.nodes);
            Self::best_first(&self.layers[0], current, ef.max(k), &mut visited, &rows)
        });
        found
            .into_iter()
            .take(k)
            .map(|s| (s.node as usize, s.similarity))
            .collect()
    }

    fn greedy(layer: &Layer, mut current: Scored, rows: &Rows) -> Scored {
        loop {
            let mut moved = false;
            for &node in layer.neighbours(current.node) {
                let scored = rows.scored(node);
                if scored.similarity > current.similarity {
                    current = scored;
                    moved = true;
                }
            }
            if !moved {
                return current;
            }
        }
    }

    /// The `ef` best nodes found from `start`, most similar first.
    fn best_first(
        layer: &Layer,
        start: Scored,
        ef: usize,
        visited: &mut Visited,
        rows: &Rows,
    ) -> Vec<Scored> {
        visited.insert(start.node);
        let mut candidates = BinaryHeap::from([start]);
        let mut kept = BinaryHeap::from([std::cmp::Reverse(start)]);
        let mut fresh = Vec::new();
        while let Some(candidate) = candidates.pop() {
            let worst = kept.peek().map_or(f32::MIN, |w| w.0.similarity);
            if kept.len() >= ef && candidate.similarity < worst {
                break;
            }
            fresh.clear();
            for &node in layer.neighbours(candidate.node) {
                if visited.insert(node) {
                    rows.prefetch(node);
                    fresh.push(node);
                }
            }
            for &node in &fresh {
                let scored = rows.scored(node);
                let worst = kept.peek().map_or(f32::MIN, |w| w.0.similarity);
                if kept.len() < ef || scored.similarity > worst {
                    candidates.push(scored);
                    kept.push(std::cmp::Reverse(scored));
                    if kept.len() > ef {
                        kept.pop();
                    }
                }
            }
        }
        let mut found: Vec<Scored> = kept.into_iter().map(|r| r.0).collect();
        found.sort_unstable_by(|a, b| b.cmp(a));
        found
    }

    /// The graph as bytes for [`Graph::decode`], headed by `fingerprint` (what the graph was
    /// built from, so that a reader can tell a stale file).
    pub fn encode(&self, fingerprint: u64) -> Vec<u8> {
        let words: usize = self
            .layers
            .iter()
            .map(|l| 3 + l.nodes.len() + l.offsets.len() + l.targets.len())
            .sum();
        let mut bytes = Vec::with_capacity(MAGIC.len() + 8 + 4 * (3 + words));
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&fingerprint.to_le_bytes());
        let mut put = |word: u32| bytes.extend_from_slice(&word.to_le_bytes());
        put(self.nodes as u32);
        put(self.entry);
        put(self.layers.len() as u32);
        for layer in &self.layers {
            for part in [&layer.nodes, &layer.offsets, &layer.targets] {
                put(part.len() as u32);
                part.iter().for_each(|&w| put(w));
            }
        }
        bytes
    }

    /// The graph in `bytes` when they are a well-formed graph of `nodes` nodes headed by
    /// `fingerprint`; `None` for anything else (another version, a stale or damaged file).
    pub fn decode(bytes: &[u8], fingerprint: u64, nodes: usize) -> Option<Self> {
        let rest = bytes.strip_prefix(MAGIC)?;
        let (stamp, rest) = rest.split_first_chunk::<8>()?;
        if u64::from_le_bytes(*stamp) != fingerprint {
            return None;
        }
        let mut words = Words(rest);
        if words.next()? as usize != nodes {
            return None;
        }
        let entry = words.next()?;
        let layers = (0..words.next()?)
            .map(|_| {
                Some(Layer {
                    nodes: words.vec()?,
                    offsets: words.vec()?,
                    targets: words.vec()?,
                })
            })
            .collect::<Option<Vec<Layer>>>()?;
        let graph = Self {
            nodes,
            entry,
            layers,
        };
        (words.0.is_empty() && graph.is_consistent()).then_some(graph)
    }

    /// Every id in range and every row within its layer's neighbour list, so that a search of
    /// a decoded graph cannot index out of bounds.
    fn is_consistent(&self) -> bool {
        let in_range = |ids: &[u32]| ids.iter().all(|&id| (id as usize) < self.nodes);
        let layer_ok = |(i, layer): (usize, &Layer)| {
            let rows = if i == 0 {
                self.nodes
            } else {
                layer.nodes.len()
            };
            layer.offsets.len() == rows + 1
                && layer.offsets.windows(2).all(|w| w[0] <= w[1])
                && layer.offsets.last().map(|&o| o as usize) == Some(layer.targets.len())
                && (i == 0) == layer.nodes.is_empty()
                && layer.nodes.windows(2).all(|w| w[0] < w[1])
                && in_range(&layer.nodes)
                && in_range(&layer.targets)
        };
        (self.nodes == 0 || (self.entry as usize) < self.nodes)
            && !self.layers.is_empty()
            && self.layers.iter().enumerate().all(layer_ok)
    }
}

/// The rows a search scores against its query.
struct Rows<'a> {
    vectors: &'a [f32],
    dim: usize,
    query: &'a [f32],
}

impl Rows<'_> {
    fn row(&self, node: u32) -> &[f32] {
        let start = node as usize * self.dim;
        &self.vectors[start..start + self.dim]
    }

    fn scored(&self, node: u32) -> Scored {
        Scored {
            similarity: dot(self.query, self.row(node)),
            node,
        }
    }

    /// Asks the CPU to start loading a row: a search visits rows in no order a cache can
    /// guess, so issuing all of a node's neighbours' loads before scoring any of them overlaps
    /// their memory latency (as hnswlib does).
    #[cfg(target_arch = "x86_64")]
    fn prefetch(&self, node: u32) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        for line in self.row(node).chunks(16) {
            // SAFETY: SSE is part of every x86_64 CPU, and a prefetch of a valid address
            // neither reads into the program nor faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn prefetch(&self, _node: u32) {}
}

/// Little-endian `u32`s read off the front of a byte string.
struct Words<'a>(&'a [u8]);

impl Words<'_> {
    fn next(&mut self) -> Option<u32> {
        let (word, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_le_bytes(*word))
    }

    /// A length, then that many words.
    fn vec(&mut self) -> Option<Vec<u32>> {
        let len = self.next()? as usize;
        let (body, rest) = self.0.split_at_checked(len.checked_mul(4)?)?;
        self.0 = rest;
        Some(
            body.chunks_exact(4)
                .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_unit_rows(rows: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let mut out = Vec::with_capacity(rows * dim);
        for _ in 0..rows {
            let row: Vec<f32> = (0..dim).map(|_| next()).collect();
            let norm = dot(&row, &row).sqrt();
            out.extend(row.iter().map(|x| x / norm));
        }
        out
    }

    fn exact_best(vectors: &[f32], dim: usize, query: &[f32]) -> usize {
        vectors
            .chunks_exact(dim)
            .map(|row| dot(query, row))
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
            .expect("rows")
    }

    #[test]
    fn search_finds_what_exact_search_finds_and_every_row_finds_itself() {
        let dim = 24;
        let vectors = random_unit_rows(3000, dim, 11);
        let graph = Graph::build(&vectors, dim, 16, 100, &|_| {});
        assert!(
            graph.layers.len() > 1,
            "a graph of 3000 nodes has upper layers"
        );
        let queries = random_unit_rows(200, dim, 12);
        let agree = queries
            .chunks_exact(dim)
            .filter(|q| graph.search(&vectors, dim, q, 1, 64)[0].0 == exact_best(&vectors, dim, q))
            .count();
        assert!(agree >= 196, "{agree}/200 agree with exact search");
        for row in [0, 1234, 2999] {
            let query = &vectors[row * dim..(row + 1) * dim];
            let hits = graph.search(&vectors, dim, query, 5, 32);
            assert_eq!(hits[0].0, row);
            assert!((hits[0].1 - 1.0).abs() < 1e-5);
            assert_eq!(hits.len(), 5);
            assert!(
                hits.windows(2).all(|w| w[0].1 >= w[1].1),
                "most similar first"
            );
        }
    }

    #[test]
    fn reverse_edges_reach_nodes_that_no_list_named() {
        let mut lists = vec![vec![1, 2], vec![2, 0], vec![1, 0], vec![0, 1, 2], vec![3]];
        add_reverse_edges(&mut lists, 2, 4);
        assert_eq!(lists[0], vec![1, 2, 3], "3 named by its nearest neighbour");
        assert_eq!(lists[1], vec![2, 0], "one more was enough for 3");
        assert_eq!(lists[3], vec![0, 1, 2, 4], "4 named by its only neighbour");
        let mut full = vec![vec![1], vec![0, 2, 3], vec![1], vec![1]];
        add_reverse_edges(&mut full, 2, 3);
        assert_eq!(
            full,
            vec![vec![1], vec![0, 2, 3], vec![1], vec![1]],
            "a full list takes no reverse edge"
        );
    }

    #[test]
    fn every_node_of_a_built_graph_is_named_by_some_bottom_list() {
        let dim = 16;
        let graph = Graph::build(&random_unit_rows(3000, dim, 7), dim, 8, 60, &|_| {});
        let mut named = vec![false; 3000];
        graph.layers[0]
            .targets
            .iter()
            .for_each(|&t| named[t as usize] = true);
        assert!(named.iter().all(|&n| n), "every node reachable in layer 0");
    }

    #[test]
    fn a_graph_survives_encoding_and_a_stale_or_damaged_file_is_refused() {
        let dim = 8;
        let vectors = random_unit_rows(500, dim, 5);
        let graph = Graph::build(&vectors, dim, 8, 40, &|_| {});
        let bytes = graph.encode(42);
        assert_eq!(Graph::decode(&bytes, 42, 500).as_ref(), Some(&graph));
        assert!(
            Graph::decode(&bytes, 43, 500).is_none(),
            "other fingerprint"
        );
        assert!(Graph::decode(&bytes, 42, 501).is_none(), "other size");
        assert!(
            Graph::decode(&bytes[..bytes.len() - 1], 42, 500).is_none(),
            "cut short"
        );
        let mut wrong_target = bytes.clone();
        let last = wrong_target.len() - 4;
        wrong_target[last..].copy_from_slice(&9999u32.to_le_bytes());
        assert!(
            Graph::decode(&wrong_target, 42, 500).is_none(),
            "id out of range"
        );
        assert!(Graph::decode(b"not a graph", 42, 500).is_none());
    }

    #[test]
    fn a_build_reports_its_progress_up_to_every_row() {
        let dim = 8;
        let reports = RefCell::new(Vec::new());
        Graph::build(&random_unit_rows(950, dim, 3), dim, 8, 40, &|n| {
            reports.borrow_mut().push(n)
        });
        let reports = reports.into_inner();
        assert_eq!(reports.len(), 95, "one report per slice of 10 rows");
        assert_eq!(reports.last(), Some(&950));
        assert!(reports.windows(2).all(|w| w[0] < w[1]), "{reports:?}");
    }

    #[test]
    fn an_empty_graph_finds_nothing() {
        let graph = Graph::build(&[], 4, 16, 100, &|_| {});
        assert!(
            graph
                .search(&[], 4, &[1.0, 0.0, 0.0, 0.0], 3, 10)
                .is_empty()
        );
    }
}
