//! Galleries of 10^4 to 10^6 entries: the folder gallery's exact search, its in-memory HNSW
//! index (`hnsw_rs`) and pgvector's HNSW index in a real PostgreSQL, each measured for build
//! (or insert) time, query p50/p99, recall@1 and recall@10 against exact search, memory and
//! disk.
//!
//! Vectors are the dlib descriptor's embeddings of CaVI images (from the evaluation's embedding
//! cache, computed now where missing) while a size leaves enough of them for the queries;
//! larger galleries are drawn from a per-identity Gaussian model fitted to those embeddings
//! (identity means drawn from a diagonal Gaussian fitted to the real identities' means, each
//! entry its identity's mean plus the pooled within-identity diagonal spread, unit length;
//! images per identity drawn from CaVI's counts). Queries are held-out real images, or for
//! synthetic galleries new draws of the gallery's identities. Every row says which.
//!
//! Settings (environment): `GALLERY_SCALE_SIZES` (default `10000,100000,1000000`),
//! `GALLERY_SCALE_QUERIES` (1000), `GALLERY_SCALE_EF` (hnsw_rs ef_search values, `32,64,128,256`),
//! `GALLERY_SCALE_M` / `GALLERY_SCALE_EFC` (hnsw_rs build, 16 / 200), `GALLERY_SCALE_HNSW=0`
//! (exact search only in memory), `GALLERY_SCALE_PG=0` (no
//! database), `GALLERY_SCALE_PG_EF` (`hnsw.ef_search` values, `40,100,200,400`),
//! `GALLERY_SCALE_PG_M` / `GALLERY_SCALE_PG_EFC` (pgvector build, 16 / 64),
//! `GALLERY_SCALE_KEEP` (keep each folder gallery, with its search graph, in `KEEP/<size>`
//! instead of a temporary folder), `GALLERY_SCALE_OUT` (report folder, `target/gallery_scale`). Skips without the face data or
//! the PostgreSQL binaries (fails instead under `CARIVIS_REQUIRE_DATA=1`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use carivis::embed::DLIB_SPEC;
use carivis::eval::cache::{EmbeddingCache, SubjectEmbedder, default_cache_dir};
use carivis::gallery::index::{Hit, HnswParams, Index};
use carivis::gallery::postgres::PgUrl;
use carivis::gallery::store::{Enrolment, ModelId, graph_file};
use carivis::gallery::{Gallery, Location, NewEntry};
use carivis::pipeline::still::FaceSearch;
use carivis::types::{Embedding, Modality, dot};
use common::pg::PgServer;

const BENCH: &str = "gallery_scale benchmark";
/// Neighbours asked for (recall@10).
const K: usize = 10;
/// Untimed queries before each timed series.
const WARM_UP: usize = 20;

fn main() {
    let Some(data) = common::data_dir(BENCH) else {
        return;
    };
    let config = Config::from_env();
    let (faces_model, real) = real_embeddings(&data);
    let model = GaussianModel::fit(&real);
    println!(
        "real CaVI embeddings: {} images of {} identities ({}, shared branch, 128-d)",
        real.vectors.len(),
        model.counts.len(),
        faces_model.file
    );
    let server = config.pg.then(pg_server).flatten();
    let mut rows = Vec::new();
    for &size in &config.sizes {
        let set = VectorSet::make(size, config.queries, &real, &model);
        println!("\n== {size} entries: {} ==", set.source);
        let gallery = FolderGallery::write(&set, &faces_model, &config);
        let (mut these, exact) = measure_in_memory(&set, &gallery, &config);
        if let Some(server) = &server {
            these.extend(measure_pgvector(
                server,
                &set,
                &gallery.gallery,
                &exact,
                &config,
            ));
        }
        print_rows(&these);
        rows.extend(these);
    }
    write_report(&config, &rows);
}

/// What to measure, from the environment.
struct Config {
    sizes: Vec<usize>,
    queries: usize,
    hnsw: HnswParams,
    ef: Vec<usize>,
    graph: bool,
    pg: bool,
    pg_m: usize,
    pg_ef_construction: usize,
    pg_ef: Vec<usize>,
    keep: Option<PathBuf>,
    out: PathBuf,
}

impl Config {
    fn from_env() -> Self {
        let one = |name: &str, default: usize| list(name, &default.to_string())[0];
        Self {
            sizes: list("GALLERY_SCALE_SIZES", "10000,100000,1000000"),
            queries: one("GALLERY_SCALE_QUERIES", 1000),
            hnsw: HnswParams {
                max_connections: one("GALLERY_SCALE_M", 16),
                ef_construction: one("GALLERY_SCALE_EFC", 200),
                ef_search: 64,
            },
            ef: list("GALLERY_SCALE_EF", "32,64,128,256"),
            graph: flag("GALLERY_SCALE_HNSW"),
            pg: flag("GALLERY_SCALE_PG"),
            pg_m: one("GALLERY_SCALE_PG_M", 16),
            pg_ef_construction: one("GALLERY_SCALE_PG_EFC", 64),
            pg_ef: list("GALLERY_SCALE_PG_EF", "40,100,200,400"),
            keep: std::env::var_os("GALLERY_SCALE_KEEP").map(PathBuf::from),
            out: std::env::var_os("GALLERY_SCALE_OUT")
                .map(PathBuf::from)
                .unwrap_or_else(|| common::repo_file("target/gallery_scale")),
        }
    }
}

/// Whether the environment variable `name` is not `0` (unset: yes).
fn flag(name: &str) -> bool {
    std::env::var(name).map_or(true, |v| v != "0")
}

/// A comma-separated list of numbers from the environment variable `name`, else `default`.
fn list(name: &str, default: &str) -> Vec<usize> {
    let text = std::env::var(name).unwrap_or_else(|_| default.to_string());
    text.split(',')
        .map(|n| {
            n.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: {n:?} is not a number"))
        })
        .collect()
}

/// Real embeddings and their identities.
struct Labelled {
    vectors: Vec<Vec<f32>>,
    identities: Vec<String>,
    paths: Vec<PathBuf>,
}

/// The dlib descriptor of every CaVI photo and caricature (the evaluation's cache, with its
/// default face settings), with the model's identity.
fn real_embeddings(data: &Path) -> (ModelId, Labelled) {
    let (paths, identities) = cavi_images(data);
    let faces = || common::still_faces_with(0.0, DLIB_SPEC.file, FaceSearch::default());
    let first = faces();
    let model = first.model_id();
    let mut cache = EmbeddingCache::open(&default_cache_dir(), &model.sha256, &first.describe());
    let stop = AtomicBool::new(false);
    let hashes = carivis::jobs::hash_files(&paths, &|_| {}, &stop).expect("not interrupted");
    let workers = vec![SubjectEmbedder(first), SubjectEmbedder(faces())];
    let (outcomes, counts) =
        carivis::jobs::run(&paths, hashes, workers, &mut cache, &|_| {}, &stop)
            .expect("embedding cache writable");
    println!(
        "embeddings: {} from the cache {}, {} computed now, {} failed",
        counts.cached,
        cache.path().display(),
        counts.computed,
        counts.failed
    );
    let mut real = Labelled {
        vectors: Vec::new(),
        identities: Vec::new(),
        paths: Vec::new(),
    };
    for ((outcome, identity), path) in outcomes.into_iter().zip(identities).zip(paths) {
        if let Ok(record) = outcome {
            real.vectors.push(record.embedding.shared);
            real.identities.push(identity);
            real.paths.push(path);
        }
    }
    (model, real)
}

/// CaVI's photos and caricatures from the manifest, with their identities.
fn cavi_images(data: &Path) -> (Vec<PathBuf>, Vec<String>) {
    let manifest = std::fs::read_to_string(data.join("manifest.csv")).expect("manifest");
    manifest
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let wanted = fields[0].starts_with("cavi/")
                && matches!(fields.get(2), Some(&"photo" | &"caricature"))
                && !fields[1].is_empty();
            wanted.then(|| (data.join(fields[0]), fields[1].to_string()))
        })
        .unzip()
}

/// A small deterministic generator (SplitMix64) with uniform and normal draws.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f32 {
        let (u, v) = (1.0 - self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

/// Per-identity Gaussian model of embeddings: identity means ~ N(mean, diag(mean_spread²)),
/// entries ~ N(identity mean, diag(within²)), normalised to unit length.
struct GaussianModel {
    mean: Vec<f32>,
    mean_spread: Vec<f32>,
    within: Vec<f32>,
    /// Images per real identity.
    counts: Vec<usize>,
}

impl GaussianModel {
    /// Fits identity means, the pooled within-identity spread and the spread of the means.
    fn fit(real: &Labelled) -> Self {
        let dim = real.vectors[0].len();
        // Ordered, so that the synthetic sets (drawn from these groups) are the same in every
        // run and a kept gallery can be reused.
        let mut groups: BTreeMap<&str, Vec<&[f32]>> = BTreeMap::new();
        for (v, id) in real.vectors.iter().zip(&real.identities) {
            groups.entry(id).or_default().push(v);
        }
        let means: Vec<Vec<f32>> = groups.values().map(|g| mean_of(g, dim)).collect();
        let mut within = vec![0f64; dim];
        for (group, mean) in groups.values().zip(&means) {
            for v in group {
                for d in 0..dim {
                    within[d] += f64::from(v[d] - mean[d]).powi(2);
                }
            }
        }
        let dof = (real.vectors.len() - groups.len()) as f64;
        let refs: Vec<&[f32]> = means.iter().map(Vec::as_slice).collect();
        let mean = mean_of(&refs, dim);
        let mean_spread = (0..dim)
            .map(|d| {
                let var = means
                    .iter()
                    .map(|m| f64::from(m[d] - mean[d]).powi(2))
                    .sum::<f64>()
                    / (means.len() - 1) as f64;
                var.sqrt() as f32
            })
            .collect();
        Self {
            mean,
            mean_spread,
            within: within.iter().map(|s| (s / dof).sqrt() as f32).collect(),
            counts: groups.values().map(Vec::len).collect(),
        }
    }

    /// A new identity's mean.
    fn identity(&self, rng: &mut Rng) -> Vec<f32> {
        self.mean
            .iter()
            .zip(&self.mean_spread)
            .map(|(m, s)| m + s * rng.normal())
            .collect()
    }

    /// A new unit entry of the identity with mean `mean`.
    fn entry(&self, mean: &[f32], rng: &mut Rng) -> Vec<f32> {
        let v: Vec<f32> = mean
            .iter()
            .zip(&self.within)
            .map(|(m, s)| m + s * rng.normal())
            .collect();
        let norm = dot(&v, &v).sqrt();
        v.into_iter().map(|x| x / norm).collect()
    }
}

fn mean_of(vectors: &[&[f32]], dim: usize) -> Vec<f32> {
    let mut sum = vec![0f64; dim];
    for v in vectors {
        for (s, x) in sum.iter_mut().zip(*v) {
            *s += f64::from(*x);
        }
    }
    sum.iter()
        .map(|s| (s / vectors.len() as f64) as f32)
        .collect()
}

/// A gallery's vectors with their identities and source paths, and the queries.
struct VectorSet {
    size: usize,
    source: &'static str,
    vectors: Vec<Vec<f32>>,
    names: Vec<String>,
    paths: Vec<PathBuf>,
    queries: Vec<Vec<f32>>,
}

const REAL: &str = "real CaVI embeddings (queries: held-out CaVI images)";
const SYNTHETIC: &str = "SYNTHETIC: drawn from a per-identity Gaussian model fitted to the real \
                         CaVI embeddings (queries: new draws of gallery identities)";

impl VectorSet {
    /// Real embeddings when `size` leaves `queries` of them over, otherwise synthetic ones.
    fn make(size: usize, queries: usize, real: &Labelled, model: &GaussianModel) -> Self {
        if size + queries <= real.vectors.len() {
            Self::real(size, queries, real)
        } else {
            Self::synthetic(size, queries, model)
        }
    }

    fn real(size: usize, queries: usize, real: &Labelled) -> Self {
        let mut order: Vec<usize> = (0..real.vectors.len()).collect();
        let mut rng = Rng(size as u64);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let (gallery, held_out) = order.split_at(size);
        Self {
            size,
            source: REAL,
            vectors: gallery.iter().map(|&i| real.vectors[i].clone()).collect(),
            names: gallery
                .iter()
                .map(|&i| real.identities[i].clone())
                .collect(),
            paths: gallery.iter().map(|&i| real.paths[i].clone()).collect(),
            queries: held_out[..queries]
                .iter()
                .map(|&i| real.vectors[i].clone())
                .collect(),
        }
    }

    fn synthetic(size: usize, queries: usize, model: &GaussianModel) -> Self {
        let mut rng = Rng(size as u64);
        let (mut vectors, mut names, mut means) = (Vec::new(), Vec::new(), Vec::new());
        while vectors.len() < size {
            let mean = model.identity(&mut rng);
            let count = model.counts[rng.below(model.counts.len())];
            for _ in 0..count.min(size - vectors.len()) {
                vectors.push(model.entry(&mean, &mut rng));
                names.push(format!("synthetic-{}", means.len()));
            }
            means.push(mean);
        }
        let queries = (0..queries)
            .map(|_| model.entry(&means[rng.below(means.len())], &mut rng))
            .collect();
        Self {
            size,
            source: SYNTHETIC,
            paths: (0..size)
                .map(|i| PathBuf::from(format!("synthetic/{i}.jpg")))
                .collect(),
            vectors,
            names,
            queries,
        }
    }
}

/// A folder gallery written from a vector set with the benchmark's graph parameters, reopened
/// as a reader would: in a temporary folder, or kept in `GALLERY_SCALE_KEEP/<size>` (with its
/// search graph) for `carivis bench --gallery`.
struct FolderGallery {
    gallery: Gallery,
    dir: PathBuf,
    _temporary: Option<tempfile::TempDir>,
}

impl FolderGallery {
    fn write(set: &VectorSet, model: &ModelId, config: &Config) -> Self {
        let (dir, temporary) = match &config.keep {
            Some(keep) => {
                let dir = keep.join(set.size.to_string());
                if let Some(kept) = Self::reuse(&dir, set, model) {
                    return kept;
                }
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).expect("old kept gallery removed");
                }
                (dir, None)
            }
            None => {
                let temporary =
                    tempfile::tempdir_in(common::repo_file("target")).expect("temporary folder");
                (temporary.path().join("gallery"), Some(temporary))
            }
        };
        let started = Instant::now();
        let mut gallery = Gallery::create(&dir, model.clone()).expect("gallery created");
        gallery.set_search_params(config.hnsw);
        for ((v, name), source) in set.vectors.iter().zip(&set.names).zip(&set.paths) {
            gallery
                .add(new_entry(name, source), &unit_embedding(v))
                .expect("entry added");
        }
        gallery.save().expect("gallery saved");
        let write_s = started.elapsed().as_secs_f64();
        drop(gallery);
        let before = rss_mb();
        let started = Instant::now();
        let gallery = Gallery::open(&dir, model).expect("gallery opens");
        println!(
            "folder gallery {}: written in {write_s:.1} s, opened in {:.1} s (+{:.0} MB \
             resident), {:.1} MB on disk",
            dir.display(),
            started.elapsed().as_secs_f64(),
            rss_mb() - before,
            folder_mb(&dir)
        );
        Self {
            gallery,
            dir,
            _temporary: temporary,
        }
    }
}

impl FolderGallery {
    /// The gallery kept in `dir` by an earlier run, when it holds this set's vectors.
    fn reuse(dir: &Path, set: &VectorSet, model: &ModelId) -> Option<Self> {
        let gallery = Gallery::open(dir, model).ok()?;
        let same = gallery.entries().len() == set.size
            && gallery
                .entries()
                .iter()
                .zip(&set.names)
                .all(|(e, n)| e.name == *n);
        same.then(|| {
            println!("folder gallery {}: kept from an earlier run", dir.display());
            Self {
                gallery,
                dir: dir.to_path_buf(),
                _temporary: None,
            }
        })
    }
}

fn new_entry(name: &str, source: &Path) -> NewEntry {
    NewEntry {
        name: name.to_string(),
        modality: Modality::Photo,
        source: source.to_path_buf(),
        source_sha256: String::new(),
        bbox: [0.0; 4],
        landmarks: None,
        enrolment: Enrolment::FivePoint,
    }
}

fn unit_embedding(v: &[f32]) -> Embedding {
    Embedding {
        shared: v.to_vec(),
        photo: None,
        caricature: None,
    }
}

/// Megabytes of the files in a folder.
fn folder_mb(dir: &Path) -> f64 {
    let bytes: u64 = std::fs::read_dir(dir)
        .expect("gallery folder")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    bytes as f64 / 1e6
}

/// This process's resident memory (VmRSS), in megabytes.
fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS line");
    kb / 1e3
}

/// One line of the table.
#[derive(serde::Serialize)]
struct Row {
    size: usize,
    data: &'static str,
    backend: &'static str,
    params: String,
    build_s: Option<f64>,
    p50_ms: f64,
    p99_ms: f64,
    recall_at_1: f64,
    recall_at_10: f64,
    memory_mb: Option<f64>,
    disk_mb: f64,
}

/// Query times and answers of one series.
struct Series {
    times_ms: Vec<f64>,
    answers: Vec<Vec<Hit>>,
}

impl Series {
    /// Runs `search` on every query (after [`WARM_UP`] untimed ones).
    fn run(queries: &[Vec<f32>], mut search: impl FnMut(&[f32]) -> Vec<Hit>) -> Self {
        for q in queries.iter().cycle().take(WARM_UP) {
            search(q);
        }
        let (mut times_ms, mut answers) = (Vec::new(), Vec::new());
        for q in queries {
            let started = Instant::now();
            answers.push(search(q));
            times_ms.push(started.elapsed().as_secs_f64() * 1e3);
        }
        times_ms.sort_by(f64::total_cmp);
        Self { times_ms, answers }
    }

    fn percentile(&self, p: f64) -> f64 {
        let i = ((self.times_ms.len() as f64 * p).ceil() as usize).clamp(1, self.times_ms.len());
        self.times_ms[i - 1]
    }

    /// recall@1 (the best hit as similar as the exact best, ties allowed) and recall@10 (the
    /// share of the exact ten found) against `exact`.
    fn recall(&self, exact: &Series) -> (f64, f64) {
        let (mut at1, mut at10) = (0usize, 0usize);
        for (got, want) in self.answers.iter().zip(&exact.answers) {
            let best = want[0].similarity;
            at1 += usize::from(got.first().is_some_and(|h| h.similarity >= best - 1e-6));
            at10 += want
                .iter()
                .filter(|w| got.iter().any(|g| g.row == w.row))
                .count();
        }
        let n = exact.answers.len() as f64;
        (at1 as f64 / n, at10 as f64 / (n * K as f64))
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        set: &VectorSet,
        exact: &Series,
        backend: &'static str,
        params: String,
        build_s: Option<f64>,
        memory_mb: Option<f64>,
        disk_mb: f64,
    ) -> Row {
        let (recall_at_1, recall_at_10) = self.recall(exact);
        Row {
            size: set.size,
            data: if set.source == REAL {
                "real"
            } else {
                "synthetic"
            },
            backend,
            params,
            build_s,
            p50_ms: self.percentile(0.5),
            p99_ms: self.percentile(0.99),
            recall_at_1,
            recall_at_10,
            memory_mb,
            disk_mb,
        }
    }
}

/// The folder gallery's exact search and its HNSW index at every ef_search (printed at once):
/// the graph built, written to the gallery folder where the gallery keeps it, and read back as
/// a gallery opening it would; the exact answers for the other backends' recall.
fn measure_in_memory(
    set: &VectorSet,
    folder: &FolderGallery,
    config: &Config,
) -> (Vec<Row>, Series) {
    let dim = set.vectors[0].len();
    let before = rss_mb();
    let copy: Vec<f32> = set.vectors.concat();
    let exact_mb = rss_mb() - before;
    if !config.graph {
        let index = Index::exact(copy, dim, config.hnsw);
        return exact_rows(set, &index, exact_mb, folder_mb(&folder.dir));
    }
    let graph_file = graph_file(&folder.dir, "shared", Modality::Photo);
    let build_s = build_graph_unless_kept(&copy, dim, config, &graph_file);
    let before = rss_mb();
    let started = Instant::now();
    let mut index = Index::load_graph(copy, dim, config.hnsw, &graph_file)
        .unwrap_or_else(|_| panic!("graph read back from {}", graph_file.display()));
    let load_s = started.elapsed().as_secs_f64();
    let graph_mb = exact_mb + rss_mb() - before;
    let disk = folder_mb(&folder.dir);
    println!(
        "graph read back in {load_s:.2} s ({:.0} MB)",
        std::fs::metadata(&graph_file).expect("graph file").len() as f64 / 1e6
    );
    let (mut rows, exact) = exact_rows(set, &index, exact_mb, disk);
    for &ef in &config.ef {
        index.set_ef_search(ef);
        let series = Series::run(&set.queries, |q| index.search(q, K));
        let params = format!(
            "M={} efC={} ef={ef}",
            config.hnsw.max_connections, config.hnsw.ef_construction
        );
        rows.push(series.row(
            set,
            &exact,
            "folder HNSW",
            params,
            build_s,
            Some(graph_mb),
            disk,
        ));
    }
    print_rows(&rows);
    (rows, exact)
}

/// Builds the HNSW graph of `vectors` and writes it to `file`, with the time the build took;
/// a graph of the same vectors and parameters already there (a kept gallery's) is used as it is
/// and the build time is unknown.
fn build_graph_unless_kept(
    vectors: &[f32],
    dim: usize,
    config: &Config,
    file: &Path,
) -> Option<f64> {
    if Index::load_graph(vectors.to_vec(), dim, config.hnsw, file).is_ok() {
        println!(
            "in-memory HNSW graph kept from an earlier run: {}",
            file.display()
        );
        return None;
    }
    let started = Instant::now();
    let built = Index::build_graph(vectors.to_vec(), dim, config.hnsw, &|_| {});
    let build_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    built.save_graph(file).expect("graph written");
    println!(
        "in-memory HNSW index built in {build_s:.1} s; its graph written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Some(build_s)
}

/// Exact search's row and answers.
fn exact_rows(set: &VectorSet, index: &Index, memory_mb: f64, disk: f64) -> (Vec<Row>, Series) {
    let exact = Series::run(&set.queries, |q| index.exact_search(q, K));
    let mean = |rank: usize| {
        exact
            .answers
            .iter()
            .map(|a| a[rank].similarity)
            .sum::<f32>()
            / exact.answers.len() as f32
    };
    println!(
        "queries' exact nearest entry: mean similarity {:.3}, 10th most similar {:.3}",
        mean(0),
        mean(K - 1)
    );
    let row = exact.row(
        set,
        &exact,
        "folder exact",
        "-".into(),
        None,
        Some(memory_mb),
        disk,
    );
    if !index.has_graph() {
        print_rows(std::slice::from_ref(&row));
    }
    (vec![row], exact)
}

/// A server for the benchmark: buffers that hold a million-entry index, room for the WAL of
/// its build, and the build in memory on both cores.
fn pg_server() -> Option<PgServer> {
    PgServer::start_with(
        BENCH,
        false,
        &[
            "shared_buffers=2GB",
            "max_wal_size=8GB",
            "maintenance_work_mem=2GB",
            "max_parallel_maintenance_workers=1",
        ],
    )
}

/// pgvector's HNSW index: the gallery copied into the database as `carivis gallery copy`
/// does (one transaction, without the HNSW index), the index built afterwards, then the
/// queries at every `hnsw.ef_search`.
fn measure_pgvector(
    server: &PgServer,
    set: &VectorSet,
    gallery: &Gallery,
    exact: &Series,
    config: &Config,
) -> Vec<Row> {
    let url = server.url(&format!("scale-{}", set.size));
    let pg_url = PgUrl::parse(&url).expect("URL parses");
    let mut client = pg_url.connect().expect("database reachable");
    empty_schema(&mut client, &url, gallery.model());
    let started = Instant::now();
    drop(Gallery::create_copy(Location::parse(&url).expect("URL"), gallery).expect("copied"));
    let insert_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    client
        .batch_execute(&format!(
            "CREATE INDEX carivis_entries_shared ON carivis_entries \
             USING hnsw (shared vector_cosine_ops) WITH (m = {}, ef_construction = {}); \
             ANALYZE carivis_entries",
            config.pg_m, config.pg_ef_construction
        ))
        .expect("index built");
    let build_s = started.elapsed().as_secs_f64();
    let sizes = client
        .query_one(
            "SELECT pg_total_relation_size('carivis_entries'), \
             pg_relation_size('carivis_entries_shared')",
            &[],
        )
        .expect("sizes");
    let (total_mb, index_mb) = (
        sizes.get::<_, i64>(0) as f64 / 1e6,
        sizes.get::<_, i64>(1) as f64 / 1e6,
    );
    println!(
        "pgvector: rows inserted in {insert_s:.1} s, HNSW index built in {build_s:.1} s \
         ({index_mb:.0} MB of {total_mb:.0} MB on disk)"
    );
    let rows_of: HashMap<i64, usize> = gallery
        .entries()
        .iter()
        .enumerate()
        .map(|(row, e)| (e.id as i64, row))
        .collect();
    let name = pg_url.gallery().to_string();
    let query = client
        .prepare(
            "SELECT id FROM carivis_entries WHERE gallery = $1 ORDER BY shared <=> $2 LIMIT 10",
        )
        .expect("query prepared");
    check_plan(&mut client, &name, &set.queries[0]);
    let mut rows = Vec::new();
    for &ef in &config.pg_ef {
        client
            .batch_execute(&format!("SET hnsw.ef_search = {ef}"))
            .expect("ef_search set");
        let series = Series::run(&set.queries, |q| {
            let vector = pgvector::Vector::from(q.to_vec());
            let found = client.query(&query, &[&name, &vector]).expect("query");
            found
                .iter()
                .map(|r| {
                    let row = rows_of[&r.get::<_, i64>(0)];
                    Hit {
                        row,
                        similarity: dot(q, &set.vectors[row]),
                    }
                })
                .collect()
        });
        let params = format!(
            "m={} efC={} ef={ef}",
            config.pg_m, config.pg_ef_construction
        );
        rows.push(series.row(
            set,
            exact,
            "pgvector HNSW",
            params,
            Some(insert_s + build_s),
            None,
            total_mb,
        ));
    }
    rows
}

/// The carivis schema with no galleries and no HNSW index on the branch columns.
fn empty_schema(client: &mut postgres::Client, url: &str, model: &ModelId) {
    let exists: Option<String> = client
        .query_one("SELECT to_regclass('carivis_entries')::text", &[])
        .expect("catalogue")
        .get(0);
    if exists.is_none() {
        let first = format!("{}-schema", url);
        drop(
            Gallery::create(Location::parse(&first).expect("URL"), model.clone()).expect("schema"),
        );
    }
    client
        .batch_execute(
            "TRUNCATE carivis_entries; DELETE FROM carivis_galleries; \
             DROP INDEX IF EXISTS carivis_entries_shared, carivis_entries_photo, \
             carivis_entries_caricature",
        )
        .expect("emptied");
}

/// Says so when the planner does not search through the HNSW index.
fn check_plan(client: &mut postgres::Client, gallery: &str, query: &[f32]) {
    let vector = pgvector::Vector::from(query.to_vec());
    let plan: Vec<String> = client
        .query(
            "EXPLAIN SELECT id FROM carivis_entries WHERE gallery = $1 \
             ORDER BY shared <=> $2 LIMIT 10",
            &[&gallery, &vector],
        )
        .expect("plan")
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !plan.iter().any(|l| l.contains("carivis_entries_shared")) {
        println!(
            "WARNING: the query does not use the HNSW index:\n{}",
            plan.join("\n")
        );
    }
}

const HEADER: &str = "| entries | data | backend | parameters | build s | p50 ms | p99 ms | recall@1 | recall@10 | memory MB | disk MB |\n|---|---|---|---|---|---|---|---|---|---|---|";

fn markdown(row: &Row) -> String {
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
    format!(
        "| {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.4} | {:.4} | {} | {:.0} |",
        row.size,
        row.data,
        row.backend,
        row.params,
        opt(row.build_s, 1),
        row.p50_ms,
        row.p99_ms,
        row.recall_at_1,
        row.recall_at_10,
        opt(row.memory_mb, 0),
        row.disk_mb
    )
}

fn print_rows(rows: &[Row]) {
    println!("{HEADER}");
    for row in rows {
        println!("{}", markdown(row));
    }
}

/// The table as markdown and JSON in the report folder.
fn write_report(config: &Config, rows: &[Row]) {
    std::fs::create_dir_all(&config.out).expect("report folder");
    let sizes: Vec<String> = config.sizes.iter().map(usize::to_string).collect();
    let stem = config
        .out
        .join(format!("gallery_scale-{}", sizes.join("_")));
    let notes = format!(
        "real: {REAL}\nsynthetic: {SYNTHETIC}\n{} queries per series, k = {K}; memory: resident \
         growth of this process (vectors copy for exact search, vectors and graph for HNSW; \
         pgvector: the server's, not measured); disk: the folder gallery's files, or \
         pg_total_relation_size of the entries table; pgvector build: insert + CREATE INDEX.",
        config.queries
    );
    let lines: Vec<String> = rows.iter().map(markdown).collect();
    let md = format!("{notes}\n\n{HEADER}\n{}\n", lines.join("\n"));
    std::fs::write(stem.with_extension("md"), md).expect("markdown report");
    let json = serde_json::json!({"notes": notes, "rows": rows});
    std::fs::write(
        stem.with_extension("json"),
        serde_json::to_string_pretty(&json).expect("JSON"),
    )
    .expect("JSON report");
    println!("\nreport written to {}.{{md,json}}", stem.display());
}
