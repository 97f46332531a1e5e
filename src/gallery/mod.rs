//! The gallery: known people, each with any number of photo and caricature entries, their
//! embeddings, HNSW indexes per branch and modality, and identification with per-direction
//! thresholds. Adding a person needs no retraining and touches no other entry's embedding.

mod graph;
pub mod index;
pub mod matching;
pub mod postgres;
pub mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use index::{HnswParams, Index};
use matching::{Branch, Candidate, Neighbour, Thresholds, rank_identities};
use postgres::{PgStore, PgUrl};
use store::{Entry, Lock, Manifest, ModelId, ModelProblem, Settings};

use crate::types::{Embedding, Modality};

/// Why a gallery operation failed. Every variant names the directory or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum GalleryError {
    /// No `gallery.json` in the directory.
    #[error(
        "{0} is not a carivis gallery (no gallery.json); create one with `carivis gallery create`"
    )]
    NotAGallery(PathBuf),
    /// `create` on a directory that already holds files.
    #[error("{0} already exists and is not empty; choose a new directory")]
    AlreadyExists(PathBuf),
    /// A gallery file fails its checks.
    #[error("gallery file {file} is damaged: {reason}")]
    Damaged {
        /// The damaged file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `gallery.json` describes embeddings this build cannot use (edited by hand?).
    #[error("gallery file {file} describes unusable embeddings: {problem}")]
    InvalidModel {
        /// The gallery's `gallery.json`.
        file: PathBuf,
        /// What is wrong with its `model` section.
        problem: ModelProblem,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The gallery's embeddings come from a different model than the one in use.
    #[error(
        "gallery {location} was made with model {gallery} (sha256 {gallery_sha:.12}…), but the current model is \
         {current} (sha256 {current_sha:.12}…); run `carivis gallery rebuild {location}` to re-embed it"
    )]
    ModelMismatch {
        /// The gallery's folder or URL (password hidden).
        location: String,
        /// The gallery's model file name.
        gallery: String,
        /// Its checksum.
        gallery_sha: String,
        /// The current model file name.
        current: String,
        /// Its checksum.
        current_sha: String,
    },
    /// Another process kept the gallery's lock for longer than the lock timeout.
    #[error(
        "gallery {dir} is being changed by another process (waited {waited_s:.0} s for it); \
         try again when it has finished, or wait longer with --lock-timeout"
    )]
    Busy {
        /// The gallery directory.
        dir: PathBuf,
        /// Seconds waited for the lock.
        waited_s: f64,
    },
    /// An embedding of the wrong shape.
    #[error("embedding has {got} values in branch {branch}, the gallery stores {expected}")]
    Dimension {
        /// Branch name.
        branch: &'static str,
        /// Dimension the gallery stores.
        expected: usize,
        /// Dimension given.
        got: usize,
    },
    /// `remove` of a name the gallery does not hold.
    #[error("no entries named {0:?} in the gallery")]
    UnknownName(String),
    /// A person's name that cannot be stored.
    #[error("bad name {name:?}: {reason}")]
    BadName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A `postgres://` URL that cannot be used.
    #[error("bad gallery URL {url}: {reason}")]
    BadUrl {
        /// The URL, password hidden.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No connection to the database server.
    #[error("cannot reach the database server at {server} (gallery {url}): {reason}")]
    PgUnreachable {
        /// `host:port` or `socket-folder:port`.
        server: String,
        /// The URL, password hidden.
        url: String,
        /// The client's error.
        reason: String,
    },
    /// The server refused the user or password.
    #[error("the database refused the login of gallery {url}: {reason}")]
    PgAuth {
        /// The URL, password hidden.
        url: String,
        /// The server's message.
        reason: String,
    },
    /// The database cannot load pgvector.
    #[error(
        "the database of gallery {url} has no pgvector extension (`vector`): {reason}; \
         install pgvector on the server (see README, \"Many machines\")"
    )]
    PgNoVector {
        /// The URL, password hidden.
        url: String,
        /// The server's message.
        reason: String,
    },
    /// The database holds a newer carivis schema than this build knows.
    #[error(
        "the database of gallery {url} has carivis schema version {found}, newer than this \
         carivis knows ({}); upgrade carivis",
        postgres::SCHEMA_VERSION
    )]
    PgSchemaTooNew {
        /// The URL, password hidden.
        url: String,
        /// The schema version found.
        found: i32,
    },
    /// No gallery of that name in the database.
    #[error("no carivis gallery at {url}; create one with `carivis gallery create`")]
    PgNoGallery {
        /// The URL, password hidden.
        url: String,
    },
    /// `create` of a gallery name the database already holds.
    #[error("gallery {url} already exists; choose another ?gallery= name")]
    PgExists {
        /// The URL, password hidden.
        url: String,
    },
    /// Rows of a database gallery fail their checks.
    #[error("gallery {url} is damaged: {reason}")]
    PgDamaged {
        /// The URL, password hidden.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A model whose embeddings do not fit the `vector(128)` columns.
    #[error(
        "gallery {url}: the database stores {}-d embeddings, the model makes {dim}-d ones",
        postgres::VECTOR_DIM
    )]
    PgDimension {
        /// The URL, password hidden.
        url: String,
        /// The model's dimension.
        dim: usize,
    },
    /// Any other database error.
    #[error("database error on gallery {url}: {reason}")]
    Pg {
        /// The URL, password hidden.
        url: String,
        /// The server's or client's message.
        reason: String,
    },
}

/// Where a gallery lives: a folder, or a database named by a `postgres://` URL.
#[derive(Clone, Debug)]
pub enum Location {
    /// A gallery folder.
    Folder(PathBuf),
    /// A gallery in PostgreSQL.
    Postgres(Box<PgUrl>),
}

impl Location {
    /// A `postgres://` or `postgresql://` URL, otherwise a folder.
    pub fn parse(text: &str) -> Result<Self, GalleryError> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Ok(Location::Postgres(Box::new(PgUrl::parse(text)?)))
        } else {
            Ok(Location::Folder(PathBuf::from(text)))
        }
    }
}

impl std::str::FromStr for Location {
    type Err = GalleryError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Location::parse(text)
    }
}

impl std::fmt::Display for Location {
    /// The folder, or the URL with its password hidden.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Folder(dir) => write!(f, "{}", dir.display()),
            Location::Postgres(url) => write!(f, "{url}"),
        }
    }
}

impl From<&Path> for Location {
    fn from(dir: &Path) -> Self {
        Location::Folder(dir.to_path_buf())
    }
}

impl From<&PathBuf> for Location {
    fn from(dir: &PathBuf) -> Self {
        Location::Folder(dir.clone())
    }
}

impl From<PathBuf> for Location {
    fn from(dir: PathBuf) -> Self {
        Location::Folder(dir)
    }
}

impl From<&Location> for Location {
    fn from(location: &Location) -> Self {
        location.clone()
    }
}

/// Where an open gallery's data goes.
enum Backend {
    /// A folder, with its lock while a writer has it open.
    Folder { dir: PathBuf, _lock: Option<Lock> },
    /// A database connection (behind a mutex: a client is not shared between threads).
    Postgres(Box<Mutex<PgStore>>),
}

impl GalleryError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        GalleryError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Longest person's name accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// Refuses a name that is empty (or only spaces) or longer than [`MAX_NAME_BYTES`]; any other
/// text, quotes and newlines included, is a valid name, stored as data.
pub fn check_name(name: &str) -> Result<(), GalleryError> {
    let reason = if name.trim().is_empty() {
        "the name must not be empty"
    } else if name.len() > MAX_NAME_BYTES {
        "the name is longer than 256 bytes"
    } else {
        return Ok(());
    };
    Err(GalleryError::BadName {
        name: name.to_string(),
        reason,
    })
}

/// The gallery a running process matches against, replaced whole when it changes (by this
/// process's own enrolments, or by another process's, which the pipeline's follower rereads).
/// Readers take the current copy and keep it for as long as they need it.
pub struct SharedGallery(RwLock<Arc<Gallery>>);

impl SharedGallery {
    /// Starts with `gallery`.
    pub fn new(gallery: Gallery) -> Self {
        Self(RwLock::new(Arc::new(gallery)))
    }

    /// The current copy.
    pub fn current(&self) -> Arc<Gallery> {
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Makes `gallery` the current copy, its indexes built first so that no reader waits.
    pub fn replace(&self, gallery: Gallery) {
        gallery.build_indexes();
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(gallery);
    }
}

/// One person of a gallery and how many entries of each modality they have.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PersonCount {
    /// The person's name.
    pub name: String,
    /// Photo entries.
    pub photos: usize,
    /// Caricature entries.
    pub caricatures: usize,
}

/// A new entry's description, before it gets an id.
#[derive(Clone, Debug)]
pub struct NewEntry {
    /// Display name.
    pub name: String,
    /// Photo or caricature.
    pub modality: Modality,
    /// Source image.
    pub source: PathBuf,
    /// sha256 of the source image.
    pub source_sha256: String,
    /// Face box in the source.
    pub bbox: [f32; 4],
    /// Landmarks, when detected.
    pub landmarks: Option<crate::types::Landmarks>,
    /// How the chip was made.
    pub enrolment: store::Enrolment,
}

/// Result of identifying one probe.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Identification {
    /// The decided identity, or `None` (shown as "unknown").
    pub identity: Option<String>,
    /// The best candidate's score.
    pub similarity: f32,
    /// The threshold it was held against.
    pub threshold: f32,
    /// Modality of the entries it matched.
    pub matched_modality: Option<Modality>,
    /// Candidate identities, best first.
    pub candidates: Vec<Candidate>,
}

/// A thread pool (one thread per core) whose threads run at the lowest scheduling priority.
fn background_pool() -> Result<rayon::ThreadPool, rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("carivis-index-{i}"))
        .start_handler(|_| lower_this_threads_priority())
        .build()
}

/// Gives the calling thread the lowest CPU priority (nice 19; on Linux `setpriority` with
/// `who` 0 applies to the calling thread only).
#[cfg(unix)]
fn lower_this_threads_priority() {
    // SAFETY: setpriority only reads its integer arguments; a failure leaves the priority as
    // it was, which is harmless.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
}

#[cfg(not(unix))]
fn lower_this_threads_priority() {}

/// Where the build of one index stands, for a progress bar.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IndexProgress {
    /// The branch whose embeddings are indexed.
    pub branch: Branch,
    /// The entries' modality.
    pub modality: Modality,
    /// Vectors in the graph so far.
    pub inserted: usize,
    /// Vectors the index holds when done.
    pub vectors: usize,
}

/// One index of an open gallery once built.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IndexSummary {
    /// The branch whose embeddings are indexed.
    pub branch: Branch,
    /// The entries' modality.
    pub modality: Modality,
    /// Vectors indexed.
    pub vectors: usize,
    /// How it searches, and where its graph came from.
    pub origin: IndexOrigin,
    /// Seconds it took to have it (to build, or to read a stored graph).
    pub seconds: f64,
}

/// How an index searches, and where its graph came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexOrigin {
    /// No graph: fewer than [`index::EXACT_SEARCH_BELOW`] vectors, searched exactly.
    Exact,
    /// A graph built now (a folder gallery also keeps it in its folder).
    GraphBuilt,
    /// A graph built earlier, read from the folder gallery's graph file (or an index this
    /// copy of the gallery had already built).
    GraphKept,
}

/// An index over the entries of one modality in one branch, and which entries its rows are.
struct ModalityIndex {
    index: Index,
    entries: Vec<usize>,
}

/// An open gallery.
pub struct Gallery {
    backend: Backend,
    manifest: Manifest,
    vectors: Vec<f32>,
    indexes: HashMap<(Branch, Modality), OnceLock<ModalityIndex>>,
}

impl Gallery {
    /// Creates an empty gallery for `model`: in a folder (created if missing; must be empty)
    /// or a database (schema created when missing; the gallery name must be new).
    pub fn create(location: impl Into<Location>, model: ModelId) -> Result<Self, GalleryError> {
        let settings = Settings {
            thresholds: Thresholds::for_checksum(&model.sha256),
            ..Settings::default()
        };
        let manifest = Manifest {
            format: store::FORMAT_VERSION,
            model,
            settings,
            embeddings: store::EmbeddingsFile::unwritten(0),
            generation: 0,
            next_id: 1,
            entries: Vec::new(),
        };
        Self::create_with(location.into(), manifest, Vec::new())
    }

    /// Creates a gallery (as [`Gallery::create`]) holding a copy of `source`: its model,
    /// settings, entries (ids and times included) and embeddings.
    pub fn create_copy(
        location: impl Into<Location>,
        source: &Gallery,
    ) -> Result<Self, GalleryError> {
        let manifest = Manifest {
            generation: 0,
            ..source.manifest.clone()
        };
        Self::create_with(location.into(), manifest, source.vectors.clone())
    }

    fn create_with(
        location: Location,
        mut manifest: Manifest,
        vectors: Vec<f32>,
    ) -> Result<Self, GalleryError> {
        let backend = match location {
            Location::Folder(dir) => {
                let lock = create_folder(&dir)?;
                store::save(&dir, &mut manifest, &vectors)?;
                Backend::Folder {
                    dir,
                    _lock: Some(lock),
                }
            }
            Location::Postgres(url) => {
                let mut pg = PgStore::create(&url, &manifest)?;
                pg.save(&mut manifest, &vectors)?;
                Backend::Postgres(Box::new(Mutex::new(pg)))
            }
        };
        Ok(Self::assemble(backend, manifest, vectors))
    }

    /// Opens a gallery to read it; refuses one made by a different model than `model`.
    pub fn open(location: impl Into<Location>, model: &ModelId) -> Result<Self, GalleryError> {
        let gallery = Self::open_unchecked(location)?;
        gallery.check_model(model)?;
        Ok(gallery)
    }

    /// Opens a gallery without checking its model (listing, removing, rebuilding).
    pub fn open_unchecked(location: impl Into<Location>) -> Result<Self, GalleryError> {
        match location.into() {
            Location::Folder(dir) => {
                let (manifest, vectors) = store::load(&dir)?;
                let backend = Backend::Folder { dir, _lock: None };
                Ok(Self::assemble(backend, manifest, vectors))
            }
            Location::Postgres(url) => {
                let (pg, manifest, vectors) = PgStore::open(&url, None)?;
                Ok(Self::assemble(
                    Backend::Postgres(Box::new(Mutex::new(pg))),
                    manifest,
                    vectors,
                ))
            }
        }
    }

    /// Opens a gallery to change it, as the only writer until dropped or saved: a folder's
    /// lock, or a database transaction holding the gallery's row; waits up to
    /// `lock_timeout` for another writer to finish.
    pub fn open_for_update(
        location: impl Into<Location>,
        lock_timeout: Duration,
    ) -> Result<Self, GalleryError> {
        match location.into() {
            Location::Folder(dir) => {
                if !dir.join(store::MANIFEST_FILE).is_file() {
                    return Err(GalleryError::NotAGallery(dir));
                }
                let lock = store::lock(&dir, lock_timeout)?;
                let (manifest, vectors) = store::load(&dir)?;
                let backend = Backend::Folder {
                    dir,
                    _lock: Some(lock),
                };
                Ok(Self::assemble(backend, manifest, vectors))
            }
            Location::Postgres(url) => {
                let (pg, manifest, vectors) = PgStore::open(&url, Some(lock_timeout))?;
                Ok(Self::assemble(
                    Backend::Postgres(Box::new(Mutex::new(pg))),
                    manifest,
                    vectors,
                ))
            }
        }
    }

    fn assemble(backend: Backend, manifest: Manifest, vectors: Vec<f32>) -> Self {
        let mut gallery = Self {
            backend,
            manifest,
            vectors,
            indexes: HashMap::new(),
        };
        gallery.reset_indexes();
        gallery
    }

    fn reset_indexes(&mut self) {
        self.indexes.clear();
        for branch in self.branches() {
            for modality in [Modality::Photo, Modality::Caricature] {
                self.indexes.insert((branch, modality), OnceLock::new());
            }
        }
    }

    /// Every person, in order of their first entry, with their entries per modality.
    pub fn people(&self) -> Vec<PersonCount> {
        let mut people: Vec<PersonCount> = Vec::new();
        let mut slots: HashMap<&str, usize> = HashMap::new();
        for entry in &self.manifest.entries {
            let slot = *slots.entry(&entry.name).or_insert_with(|| {
                people.push(PersonCount {
                    name: entry.name.clone(),
                    photos: 0,
                    caricatures: 0,
                });
                people.len() - 1
            });
            match entry.modality {
                Modality::Photo => people[slot].photos += 1,
                Modality::Caricature => people[slot].caricatures += 1,
            }
        }
        people
    }

    /// Refuses a gallery whose embeddings come from a different model.
    pub fn check_model(&self, model: &ModelId) -> Result<(), GalleryError> {
        let mine = &self.manifest.model;
        if mine.sha256 == model.sha256 && mine.branches == model.branches && mine.dim == model.dim {
            return Ok(());
        }
        Err(GalleryError::ModelMismatch {
            location: self.location(),
            gallery: mine.file.clone(),
            gallery_sha: mine.sha256.clone(),
            current: model.file.clone(),
            current_sha: model.sha256.clone(),
        })
    }

    /// The gallery's folder, or its URL with the password hidden.
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Folder { dir, .. } => dir.display().to_string(),
            Backend::Postgres(pg) => pg
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .url()
                .to_string(),
        }
    }

    /// The generation this copy was read at (every save bumps it).
    pub fn generation(&self) -> u64 {
        self.manifest.generation
    }

    /// The gallery as saved now when another process has changed it since this copy was
    /// read (`None` when unchanged); a change to another model is refused like at opening.
    pub fn reread_if_changed(&self) -> Result<Option<Gallery>, GalleryError> {
        let (now, location) = match &self.backend {
            Backend::Folder { dir, .. } => (store::generation(dir)?, Location::Folder(dir.clone())),
            Backend::Postgres(pg) => {
                let mut pg = pg.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let url = Location::Postgres(Box::new(pg.url().clone()));
                (pg.generation()?, url)
            }
        };
        if now == self.manifest.generation {
            return Ok(None);
        }
        Gallery::open(location, self.model()).map(Some)
    }

    /// The model the embeddings come from.
    pub fn model(&self) -> &ModelId {
        &self.manifest.model
    }

    /// All entries, in storage order.
    pub fn entries(&self) -> &[Entry] {
        &self.manifest.entries
    }

    /// Matching settings.
    pub fn settings(&self) -> &Settings {
        &self.manifest.settings
    }

    /// Replaces the per-direction thresholds (saved by [`Gallery::save`]).
    pub fn set_thresholds(&mut self, thresholds: Thresholds) {
        self.manifest.settings.thresholds = thresholds;
    }

    /// Replaces the search graph's parameters (saved by [`Gallery::save`]; a stored graph built
    /// with other construction parameters is rebuilt on first use).
    pub fn set_search_params(&mut self, params: HnswParams) {
        self.manifest.settings.hnsw = params;
        self.reset_indexes();
    }

    /// Whether the model has photo and caricature branches.
    pub fn is_multi_task(&self) -> bool {
        self.manifest.model.branches.len() > 1
    }

    fn branches(&self) -> Vec<Branch> {
        Branch::ALL
            .into_iter()
            .filter(|b| self.manifest.model.branches.iter().any(|n| n == b.name()))
            .collect()
    }

    /// The stored vector of one branch of an entry. Only called for [`Gallery::branches`],
    /// which `store::load` checked against the row layout.
    fn branch_vector(&self, entry: usize, branch: Branch) -> &[f32] {
        let model = &self.manifest.model;
        let slot = model
            .branches
            .iter()
            .position(|n| n == branch.name())
            .expect("a branch of Gallery::branches is stored");
        let start = entry * store::row_len(model) + slot * model.dim;
        &self.vectors[start..start + model.dim]
    }

    /// The embedding's vectors in the model's branch order, validated.
    fn row_of(&self, embedding: &Embedding) -> Result<Vec<f32>, GalleryError> {
        let model = &self.manifest.model;
        let mut row = Vec::with_capacity(store::row_len(model));
        for branch in self.branches() {
            let vector = branch_of(embedding, branch);
            let got = vector.map_or(0, <[f32]>::len);
            if got != model.dim {
                return Err(GalleryError::Dimension {
                    branch: branch.name(),
                    expected: model.dim,
                    got,
                });
            }
            row.extend_from_slice(vector.unwrap_or_default());
        }
        Ok(row)
    }

    /// Adds entries in memory (call [`Gallery::save`] to keep them).
    pub fn add(&mut self, new: NewEntry, embedding: &Embedding) -> Result<u64, GalleryError> {
        check_name(&new.name)?;
        let row = self.row_of(embedding)?;
        let id = self.manifest.next_id;
        self.manifest.next_id += 1;
        let added_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.manifest.entries.push(Entry {
            id,
            name: new.name,
            modality: new.modality,
            source: new.source,
            source_sha256: new.source_sha256,
            bbox: new.bbox,
            landmarks: new.landmarks,
            enrolment: new.enrolment,
            added_unix,
        });
        self.vectors.extend_from_slice(&row);
        self.reset_indexes();
        Ok(id)
    }

    /// Removes every entry of `name`; returns how many.
    pub fn remove(&mut self, name: &str) -> Result<usize, GalleryError> {
        let row_len = store::row_len(&self.manifest.model);
        let keep: Vec<bool> = self
            .manifest
            .entries
            .iter()
            .map(|e| e.name != name)
            .collect();
        let removed = keep.iter().filter(|k| !**k).count();
        if removed == 0 {
            return Err(GalleryError::UnknownName(name.to_string()));
        }
        let mut flags = keep.iter();
        self.manifest
            .entries
            .retain(|_| *flags.next().expect("one flag per entry"));
        self.vectors = self
            .vectors
            .chunks_exact(row_len)
            .zip(&keep)
            .filter(|(_, k)| **k)
            .flat_map(|(row, _)| row.iter().copied())
            .collect();
        self.reset_indexes();
        Ok(removed)
    }

    /// Replaces the model and every entry's embedding (for `rebuild`); `embeddings` are in
    /// entry order.
    pub fn replace_model(
        &mut self,
        model: ModelId,
        embeddings: &[Embedding],
    ) -> Result<(), GalleryError> {
        assert_eq!(
            embeddings.len(),
            self.manifest.entries.len(),
            "one embedding per entry"
        );
        self.manifest.model = model;
        let rows: Result<Vec<Vec<f32>>, _> = embeddings.iter().map(|e| self.row_of(e)).collect();
        self.vectors = rows?.concat();
        self.reset_indexes();
        Ok(())
    }

    /// Writes the gallery: new files, atomically switched in, or one committed transaction.
    pub fn save(&mut self) -> Result<(), GalleryError> {
        match &mut self.backend {
            Backend::Folder { dir, .. } => store::save(dir, &mut self.manifest, &self.vectors),
            Backend::Postgres(pg) => pg
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .save(&mut self.manifest, &self.vectors),
        }
    }

    fn modality_index(&self, branch: Branch, modality: Modality) -> &ModalityIndex {
        self.modality_index_reporting(branch, modality, &|_, _| {})
    }

    /// The index, built on first use, telling `progress` (vectors in, vectors in all) while
    /// its graph is built.
    fn modality_index_reporting(
        &self,
        branch: Branch,
        modality: Modality,
        progress: &dyn Fn(usize, usize),
    ) -> &ModalityIndex {
        self.indexes[&(branch, modality)].get_or_init(|| {
            let entries: Vec<usize> = (0..self.manifest.entries.len())
                .filter(|&i| self.manifest.entries[i].modality == modality)
                .collect();
            let vectors: Vec<f32> = entries
                .iter()
                .flat_map(|&i| self.branch_vector(i, branch).iter().copied())
                .collect();
            let (dim, params) = (self.manifest.model.dim, self.manifest.settings.hnsw);
            let progress = |inserted| progress(inserted, entries.len());
            let index = match &self.backend {
                Backend::Folder { dir, .. } => {
                    let file = store::graph_file(dir, branch.name(), modality);
                    Index::build_stored(vectors, dim, params, &file, &progress)
                }
                Backend::Postgres(_) => Index::build(vectors, dim, params, &progress),
            };
            ModalityIndex { index, entries }
        })
    }

    /// Builds every index now (otherwise each is built on first use).
    pub fn build_indexes(&self) {
        self.build_indexes_reporting(|_| {});
    }

    /// Builds every index on a thread of its own, which nothing joins, and sends the gallery
    /// back when done: a caller can stop waiting (a run that ends) without waiting for the
    /// build. Graph insertions run on a pool of lowest-priority threads, so that the build takes
    /// only the CPU time that a running pipeline leaves (a 10^5-entry rebuild beside a live
    /// stream dropped 10% of its frames at normal priority).
    pub fn build_indexes_in_background(self) -> crossbeam_channel::Receiver<Gallery> {
        let (done, built) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            match background_pool() {
                Ok(pool) => pool.install(|| self.build_indexes()),
                Err(e) => {
                    tracing::warn!("no background thread pool ({e}); building at normal priority");
                    self.build_indexes();
                }
            }
            let _ = done.send(self);
        });
        built
    }

    /// Builds every index now, in a fixed order, telling `progress` while a graph is being
    /// built (a folder gallery's graph read from its file and an exact index report nothing),
    /// and describes each.
    pub fn build_indexes_reporting(&self, progress: impl Fn(IndexProgress)) -> Vec<IndexSummary> {
        let mut keys: Vec<(Branch, Modality)> = self.indexes.keys().copied().collect();
        let order = |branch| Branch::ALL.iter().position(|&b| b == branch);
        keys.sort_by_key(|&(branch, modality)| (order(branch), modality));
        keys.into_iter()
            .map(|(branch, modality)| {
                let started = std::time::Instant::now();
                let built = std::cell::Cell::new(false);
                let report = |inserted, vectors| {
                    built.set(true);
                    progress(IndexProgress {
                        branch,
                        modality,
                        inserted,
                        vectors,
                    })
                };
                let modality_index = self.modality_index_reporting(branch, modality, &report);
                let origin = match (modality_index.index.has_graph(), built.get()) {
                    (false, _) => IndexOrigin::Exact,
                    (true, true) => IndexOrigin::GraphBuilt,
                    (true, false) => IndexOrigin::GraphKept,
                };
                IndexSummary {
                    branch,
                    modality,
                    vectors: modality_index.entries.len(),
                    origin,
                    seconds: started.elapsed().as_secs_f64(),
                }
            })
            .collect()
    }

    /// The nearest entries of `modality` to a probe, by approximate (HNSW) or exact search.
    pub fn nearest(
        &self,
        probe: &Embedding,
        probe_modality: Modality,
        modality: Modality,
        k: usize,
        exact: bool,
    ) -> Result<Vec<Neighbour>, GalleryError> {
        let branch = Branch::for_pair(probe_modality, modality, self.is_multi_task());
        let query = branch_of(probe, branch).unwrap_or_default();
        if query.len() != self.manifest.model.dim {
            return Err(GalleryError::Dimension {
                branch: branch.name(),
                expected: self.manifest.model.dim,
                got: query.len(),
            });
        }
        let index = self.modality_index(branch, modality);
        let hits = if exact {
            index.index.exact_search(query, k)
        } else {
            index.index.search(query, k)
        };
        Ok(hits
            .into_iter()
            .map(|h| Neighbour {
                entry: index.entries[h.row],
                modality,
                similarity: h.similarity,
            })
            .collect())
    }

    /// Who the probe is: candidates from both modalities, scored per identity, decided against
    /// the per-direction thresholds (`thresholds` overrides the gallery's).
    pub fn identify(
        &self,
        probe: &Embedding,
        probe_modality: Modality,
        thresholds: Option<&Thresholds>,
    ) -> Result<Identification, GalleryError> {
        let settings = &self.manifest.settings;
        let mut neighbours = self.nearest(
            probe,
            probe_modality,
            Modality::Photo,
            settings.top_k,
            false,
        )?;
        neighbours.extend(self.nearest(
            probe,
            probe_modality,
            Modality::Caricature,
            settings.top_k,
            false,
        )?);
        let thresholds = thresholds.unwrap_or(&settings.thresholds);
        let candidates = rank_identities(
            &neighbours,
            |i| self.manifest.entries[i].name.clone(),
            probe_modality,
            thresholds,
            settings.score_top_n,
        );
        Ok(decide(candidates))
    }
}

/// Makes a new gallery folder (refusing one that holds anything) and takes its lock.
fn create_folder(dir: &Path) -> Result<Lock, GalleryError> {
    let occupied = dir.is_dir()
        && std::fs::read_dir(dir)
            .map_err(|e| GalleryError::io(dir, e))?
            .next()
            .is_some();
    if occupied || dir.is_file() {
        return Err(GalleryError::AlreadyExists(dir.to_path_buf()));
    }
    std::fs::create_dir_all(dir).map_err(|e| GalleryError::io(dir, e))?;
    store::lock(dir, Duration::ZERO)
}

/// The identity is the best candidate when it reaches its threshold; otherwise unknown.
fn decide(candidates: Vec<Candidate>) -> Identification {
    match candidates.first() {
        Some(best) => Identification {
            identity: (best.margin() >= 0.0).then(|| best.identity.clone()),
            similarity: best.similarity,
            threshold: best.threshold,
            matched_modality: Some(best.matched_modality),
            candidates,
        },
        None => Identification {
            identity: None,
            similarity: 0.0,
            threshold: 0.0,
            matched_modality: None,
            candidates,
        },
    }
}

/// The vector of one branch of an embedding, when the model has that branch.
pub fn branch_of(embedding: &Embedding, branch: Branch) -> Option<&[f32]> {
    match branch {
        Branch::Shared => Some(&embedding.shared),
        Branch::Photo => embedding.photo.as_deref(),
        Branch::Caricature => embedding.caricature.as_deref(),
    }
}

/// Galleries of a 3-d single-branch model, for the tests of this module and of the pipeline.
#[cfg(test)]
pub(crate) mod test_support {
    use super::NewEntry;
    use super::store::{Enrolment, ModelId};
    use crate::embed::l2_normalised;
    use crate::types::{Embedding, Modality};

    /// A model with one 3-d shared branch.
    pub fn model() -> ModelId {
        ModelId {
            file: "m.onnx".into(),
            sha256: "abc".into(),
            branches: vec!["shared".into()],
            dim: 3,
        }
    }

    /// The model's embedding of `v`, normalised.
    pub fn embedding(v: [f32; 3]) -> Embedding {
        Embedding {
            shared: l2_normalised(v.to_vec()),
            photo: None,
            caricature: None,
        }
    }

    /// An entry of `name` and `modality` from a made-up image.
    pub fn entry(name: &str, modality: Modality) -> NewEntry {
        NewEntry {
            name: name.into(),
            modality,
            source: "/x.jpg".into(),
            source_sha256: "00".into(),
            bbox: [0.0; 4],
            landmarks: None,
            enrolment: Enrolment::FivePoint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{embedding, entry, model};
    use super::*;

    #[test]
    fn a_large_folder_gallerys_graph_is_built_with_progress_then_read_from_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g");
        let mut gallery = Gallery::create(&path, model()).unwrap();
        let photos = index::EXACT_SEARCH_BELOW;
        for i in 0..photos {
            let angle = i as f32 * 0.01;
            let photo = embedding([angle.cos(), angle.sin(), (i % 7) as f32 * 0.1]);
            gallery
                .add(entry(&format!("p{i}"), Modality::Photo), &photo)
                .unwrap();
        }
        gallery
            .add(
                entry("c", Modality::Caricature),
                &embedding([0.0, 0.0, 1.0]),
            )
            .unwrap();
        gallery.save().unwrap();
        drop(gallery);

        let reports = std::cell::RefCell::new(Vec::new());
        let gallery = Gallery::open(&path, &model()).unwrap();
        let first = gallery.build_indexes_reporting(|p| reports.borrow_mut().push(p));
        let origins: Vec<(Modality, usize, IndexOrigin)> = first
            .iter()
            .map(|s| (s.modality, s.vectors, s.origin))
            .collect();
        assert_eq!(
            origins,
            [
                (Modality::Photo, photos, IndexOrigin::GraphBuilt),
                (Modality::Caricature, 1, IndexOrigin::Exact)
            ]
        );
        let reports = reports.into_inner();
        assert!(
            reports
                .iter()
                .all(|p| p.modality == Modality::Photo && p.vectors == photos)
        );
        assert_eq!(reports.last().map(|p| p.inserted), Some(photos));
        assert!(store::graph_file(&path, "shared", Modality::Photo).exists());

        let again = Gallery::open(&path, &model()).unwrap();
        let second = again.build_indexes_reporting(|p| panic!("nothing to build: {p:?}"));
        assert_eq!(second[0].origin, IndexOrigin::GraphKept);
    }

    #[test]
    fn a_saved_gallery_reopens_with_its_entries_and_identifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g");
        let mut gallery = Gallery::create(&path, model()).unwrap();
        gallery
            .add(entry("ann", Modality::Photo), &embedding([1.0, 0.0, 0.0]))
            .unwrap();
        gallery
            .add(
                entry("bob", Modality::Caricature),
                &embedding([0.0, 1.0, 0.0]),
            )
            .unwrap();
        gallery.set_thresholds(Thresholds::uniform(0.9));
        gallery.save().unwrap();
        drop(gallery);

        let gallery = Gallery::open(&path, &model()).unwrap();
        assert_eq!(gallery.entries().len(), 2);
        let found = gallery
            .identify(&embedding([0.1, 1.0, 0.0]), Modality::Photo, None)
            .unwrap();
        assert_eq!(found.identity.as_deref(), Some("bob"));
        assert_eq!(found.matched_modality, Some(Modality::Caricature));
        let nobody = gallery
            .identify(&embedding([0.0, 0.0, 1.0]), Modality::Photo, None)
            .unwrap();
        assert_eq!(nobody.identity, None);
    }

    #[test]
    fn removing_a_name_drops_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut gallery = Gallery::create(dir.path().join("g"), model()).unwrap();
        gallery
            .add(entry("ann", Modality::Photo), &embedding([1.0, 0.0, 0.0]))
            .unwrap();
        gallery
            .add(entry("bob", Modality::Photo), &embedding([0.0, 1.0, 0.0]))
            .unwrap();
        gallery
            .add(
                entry("ann", Modality::Caricature),
                &embedding([0.0, 0.0, 1.0]),
            )
            .unwrap();
        assert_eq!(gallery.remove("ann").unwrap(), 2);
        assert!(matches!(
            gallery.remove("ann"),
            Err(GalleryError::UnknownName(_))
        ));
        let found = gallery
            .identify(&embedding([0.0, 1.0, 0.0]), Modality::Photo, None)
            .unwrap();
        assert_eq!(found.identity.as_deref(), Some("bob"));
        assert_eq!(found.candidates.len(), 1);
    }

    #[test]
    fn another_model_is_refused_with_a_rebuild_hint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g");
        Gallery::create(&path, model()).unwrap();
        let other = ModelId {
            sha256: "def".into(),
            ..model()
        };
        let err = Gallery::open(&path, &other).err().unwrap();
        assert!(matches!(err, GalleryError::ModelMismatch { .. }));
        assert!(err.to_string().contains("gallery rebuild"), "{err}");
    }

    #[test]
    fn a_wrong_dimension_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut gallery = Gallery::create(dir.path().join("g"), model()).unwrap();
        let bad = Embedding {
            shared: vec![1.0, 0.0],
            photo: None,
            caricature: None,
        };
        assert!(matches!(
            gallery.add(entry("ann", Modality::Photo), &bad),
            Err(GalleryError::Dimension { .. })
        ));
        assert!(gallery.identify(&bad, Modality::Photo, None).is_err());
    }

    #[test]
    fn create_refuses_a_non_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x"), "x").unwrap();
        assert!(matches!(
            Gallery::create(dir.path(), model()),
            Err(GalleryError::AlreadyExists(_))
        ));
    }

    #[test]
    fn a_copy_holds_the_same_entries_settings_and_answers() {
        let dir = tempfile::tempdir().unwrap();
        let mut gallery = Gallery::create(dir.path().join("g"), model()).unwrap();
        gallery
            .add(entry("ann", Modality::Photo), &embedding([1.0, 0.0, 0.0]))
            .unwrap();
        gallery
            .add(
                entry("bob", Modality::Caricature),
                &embedding([0.0, 1.0, 0.0]),
            )
            .unwrap();
        gallery.set_thresholds(Thresholds::uniform(0.7));
        gallery.save().unwrap();
        let copy = Gallery::create_copy(dir.path().join("c"), &gallery).unwrap();
        drop(copy);
        let copy = Gallery::open(dir.path().join("c"), &model()).unwrap();
        assert_eq!(copy.entries(), gallery.entries());
        assert_eq!(copy.settings(), gallery.settings());
        let probe = embedding([0.2, 1.0, 0.1]);
        assert_eq!(
            copy.identify(&probe, Modality::Photo, None).unwrap(),
            gallery.identify(&probe, Modality::Photo, None).unwrap()
        );
    }
}
