//! The gallery in PostgreSQL with pgvector: `postgres://user[:password]@host[:port]/db?gallery=NAME`
//! (the host may be a Unix-socket folder, percent-encoded, e.g. `%2Ftmp%2Fpg`).
//!
//! Schema version [`SCHEMA_VERSION`], recorded in `carivis_migrations`: one row per gallery in
//! `carivis_galleries` (model, settings, generation, next id) and one row per entry in
//! `carivis_entries` (the entry's fields, and one `vector(128)` per branch with an HNSW index,
//! `vector_cosine_ops`). A writer holds one transaction from opening to saving, with its
//! gallery's row locked: writers on different machines take turns, and a writer that dies
//! leaves nothing behind. Every value, names included, is a SQL parameter.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use pgvector::Vector;
use postgres::config::Host;
use postgres::error::SqlState;
use postgres::{Client, Config, NoTls};

use super::GalleryError;
use super::matching::Branch;
use super::store::{self, Entry, Manifest, ModelId};

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i32 = 1;
/// Dimension of the `vector` columns.
pub const VECTOR_DIM: usize = 128;
/// The channel a save notifies, with the gallery's name as payload.
pub const CHANNEL: &str = "carivis_gallery";

/// Statements of schema version 1, run once in the creating transaction.
const SCHEMA_V1: &str = "
CREATE TABLE carivis_galleries (
    name text PRIMARY KEY,
    model jsonb NOT NULL,
    settings jsonb NOT NULL,
    generation bigint NOT NULL,
    next_id bigint NOT NULL
);
CREATE TABLE carivis_entries (
    gallery text NOT NULL REFERENCES carivis_galleries (name) ON DELETE CASCADE,
    id bigint NOT NULL,
    name text NOT NULL,
    modality text NOT NULL,
    source text NOT NULL,
    source_sha256 text NOT NULL,
    box real[] NOT NULL,
    landmarks real[],
    enrolment text NOT NULL,
    added_unix bigint NOT NULL,
    shared vector(128) NOT NULL,
    photo vector(128),
    caricature vector(128),
    PRIMARY KEY (gallery, id)
);
CREATE INDEX carivis_entries_shared ON carivis_entries USING hnsw (shared vector_cosine_ops);
CREATE INDEX carivis_entries_photo ON carivis_entries USING hnsw (photo vector_cosine_ops);
CREATE INDEX carivis_entries_caricature ON carivis_entries
    USING hnsw (caricature vector_cosine_ops);
";

/// A parsed gallery URL: connection settings and the gallery's name.
#[derive(Clone)]
pub struct PgUrl {
    config: Config,
    gallery: String,
    shown: String,
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Display for PgUrl {
    /// The URL with its password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl PgUrl {
    /// Parses `postgres://…/db?gallery=NAME`; other query parameters go to the connection.
    pub fn parse(url: &str) -> Result<Self, GalleryError> {
        let shown = redacted(url);
        let bad = |reason: String| GalleryError::BadUrl {
            url: shown.clone(),
            reason,
        };
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut gallery = None;
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("gallery", value)) => gallery = Some(percent_decoded(value).map_err(bad)?),
                _ => rest.push(pair),
            }
        }
        let gallery = gallery
            .filter(|g| !g.is_empty())
            .ok_or_else(|| bad("no gallery name (add ?gallery=NAME)".into()))?;
        let connection = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let config: Config = connection.parse().map_err(|e: postgres::Error| {
            bad(e
                .to_string()
                .replace(password_of(url).unwrap_or("\0"), "***"))
        })?;
        if config.get_dbname().is_none() {
            return Err(bad("no database name (…/DATABASE?gallery=NAME)".into()));
        }
        Ok(Self {
            config,
            gallery,
            shown,
        })
    }

    /// The gallery's name within the database.
    pub fn gallery(&self) -> &str {
        &self.gallery
    }

    /// `host:port` (or the socket folder and port) of the first server named, for messages.
    pub fn server(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(name)) => name.clone(),
            Some(Host::Unix(dir)) => dir.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}")
    }

    /// Connects, turning the failures a user can fix into one clear error each.
    pub fn connect(&self) -> Result<Client, GalleryError> {
        self.config
            .connect(NoTls)
            .map_err(|e| self.connect_error(e))
    }

    fn connect_error(&self, error: postgres::Error) -> GalleryError {
        match error.code() {
            Some(c)
                if *c == SqlState::INVALID_PASSWORD
                    || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
            {
                GalleryError::PgAuth {
                    url: self.shown.clone(),
                    reason: reason_of(&error),
                }
            }
            Some(_) => self.error(error),
            None => GalleryError::PgUnreachable {
                server: self.server(),
                url: self.shown.clone(),
                reason: reason_of(&error),
            },
        }
    }

    /// A database error on this gallery.
    pub fn error(&self, error: postgres::Error) -> GalleryError {
        GalleryError::Pg {
            url: self.shown.clone(),
            reason: reason_of(&error),
        }
    }
}

/// The server's message (and detail) or the client's, without the URL.
fn reason_of(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            text
        }
    }
}

/// The password in a URL's authority, if any.
fn password_of(url: &str) -> Option<&str> {
    let authority = url.split_once("://")?.1.split(['/', '?']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    userinfo.split_once(':').map(|(_, p)| p)
}

/// The URL with its password replaced by `***`.
fn redacted(url: &str) -> String {
    match password_of(url) {
        Some(password) if !password.is_empty() => {
            url.replacen(&format!(":{password}@"), ":***@", 1)
        }
        _ => url.to_string(),
    }
}

/// Decodes `%XX` escapes (and `+` as a space) of a query value.
fn percent_decoded(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad %-escape in {text:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} is not UTF-8 once decoded"))
}

/// An open database gallery: its connection (in a transaction, for a writer) and what the
/// database held when it was read, so that a save writes only the difference.
pub struct PgStore {
    url: PgUrl,
    client: Client,
    stored_ids: HashSet<u64>,
    stored_model: ModelId,
}

impl PgStore {
    /// The gallery's URL.
    pub fn url(&self) -> &PgUrl {
        &self.url
    }

    /// Creates the schema when missing (refusing a newer one) and a new, empty gallery row;
    /// returns the store, in its transaction, ready for [`PgStore::save`].
    pub fn create(url: &PgUrl, manifest: &Manifest) -> Result<Self, GalleryError> {
        if manifest.model.dim != VECTOR_DIM {
            return Err(GalleryError::PgDimension {
                url: url.to_string(),
                dim: manifest.model.dim,
            });
        }
        let mut client = url.connect()?;
        client.batch_execute("BEGIN").map_err(|e| url.error(e))?;
        migrate(url, &mut client)?;
        let exists = client
            .query_opt(
                "SELECT 1 FROM carivis_galleries WHERE name = $1",
                &[&url.gallery],
            )
            .map_err(|e| url.error(e))?;
        if exists.is_some() {
            return Err(GalleryError::PgExists {
                url: url.to_string(),
            });
        }
        client
            .execute(
                "INSERT INTO carivis_galleries (name, model, settings, generation, next_id) \
                 VALUES ($1, $2, $3, 0, $4)",
                &[
                    &url.gallery,
                    &json(&manifest.model),
                    &json(&manifest.settings),
                    &(manifest.next_id as i64),
                ],
            )
            .map_err(|e| url.error(e))?;
        Ok(Self {
            url: url.clone(),
            client,
            stored_ids: HashSet::new(),
            stored_model: manifest.model.clone(),
        })
    }

    /// Reads the gallery; a writer (`lock_timeout` given) keeps its transaction open, with
    /// the gallery's row locked (waiting up to `lock_timeout` for another writer), until
    /// [`PgStore::save`] commits or the store is dropped.
    pub fn open(
        url: &PgUrl,
        lock_timeout: Option<Duration>,
    ) -> Result<(Self, Manifest, Vec<f32>), GalleryError> {
        let mut client = url.connect()?;
        let for_update = lock_timeout.is_some();
        let begin = match lock_timeout {
            // A SET value cannot be a parameter; this one is a number this code formats.
            Some(wait) => format!(
                "BEGIN; SET LOCAL lock_timeout = {}",
                wait.as_millis().max(1)
            ),
            None => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY".into(),
        };
        client.batch_execute(&begin).map_err(|e| url.error(e))?;
        check_schema(url, &mut client)?;
        let (manifest, vectors) = read(url, &mut client, for_update)?;
        if !for_update {
            client.batch_execute("COMMIT").map_err(|e| url.error(e))?;
        }
        let store = Self {
            url: url.clone(),
            client,
            stored_ids: manifest.entries.iter().map(|e| e.id).collect(),
            stored_model: manifest.model.clone(),
        };
        Ok((store, manifest, vectors))
    }

    /// The gallery's generation now (one query; for followers); reconnects first when the
    /// connection was lost.
    pub fn generation(&mut self) -> Result<u64, GalleryError> {
        if self.client.is_closed() {
            self.client = self.url.connect()?;
        }
        let row = self
            .client
            .query_one(
                "SELECT generation FROM carivis_galleries WHERE name = $1",
                &[&self.url.gallery],
            )
            .map_err(|e| self.url.error(e))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Writes the difference from what was read, bumps the generation, notifies followers
    /// and commits: all or nothing.
    pub fn save(&mut self, manifest: &mut Manifest, vectors: &[f32]) -> Result<(), GalleryError> {
        let url = self.url.clone();
        let ids: Vec<i64> = manifest.entries.iter().map(|e| e.id as i64).collect();
        let tx = &mut self.client;
        tx.execute(
            "DELETE FROM carivis_entries WHERE gallery = $1 AND NOT (id = ANY($2))",
            &[&url.gallery, &ids],
        )
        .map_err(|e| url.error(e))?;
        let rewrite = manifest.model != self.stored_model;
        let insert = tx
            .prepare(
                "INSERT INTO carivis_entries (gallery, id, name, modality, source, source_sha256, \
                 box, landmarks, enrolment, added_unix, shared, photo, caricature) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 ON CONFLICT (gallery, id) DO UPDATE SET \
                 shared = EXCLUDED.shared, photo = EXCLUDED.photo, caricature = EXCLUDED.caricature",
            )
            .map_err(|e| url.error(e))?;
        let row_len = store::row_len(&manifest.model);
        for (entry, row) in manifest.entries.iter().zip(vectors.chunks_exact(row_len)) {
            if !rewrite && self.stored_ids.contains(&entry.id) {
                continue;
            }
            let [shared, photo, caricature] = branch_columns(&manifest.model, row);
            let fields = EntryColumns::of(entry);
            tx.execute(
                &insert,
                &[
                    &url.gallery,
                    &(entry.id as i64),
                    &entry.name,
                    &fields.modality,
                    &fields.source,
                    &entry.source_sha256,
                    &entry.bbox.to_vec(),
                    &fields.landmarks,
                    &fields.enrolment,
                    &(entry.added_unix as i64),
                    &shared,
                    &photo,
                    &caricature,
                ],
            )
            .map_err(|e| url.error(e))?;
        }
        let row = tx
            .query_one(
                "UPDATE carivis_galleries SET model = $2, settings = $3, next_id = $4, \
                 generation = generation + 1 WHERE name = $1 RETURNING generation",
                &[
                    &url.gallery,
                    &json(&manifest.model),
                    &json(&manifest.settings),
                    &(manifest.next_id as i64),
                ],
            )
            .map_err(|e| url.error(e))?;
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &url.gallery])
            .map_err(|e| url.error(e))?;
        tx.batch_execute("COMMIT").map_err(|e| url.error(e))?;
        manifest.generation = row.get::<_, i64>(0) as u64;
        self.stored_ids = manifest.entries.iter().map(|e| e.id).collect();
        self.stored_model = manifest.model.clone();
        tx.batch_execute("BEGIN").map_err(|e| url.error(e))?;
        Ok(())
    }
}

/// An entry's fields as their SQL column values.
struct EntryColumns {
    modality: String,
    source: String,
    landmarks: Option<Vec<f32>>,
    enrolment: String,
}

impl EntryColumns {
    fn of(entry: &Entry) -> Self {
        Self {
            modality: text_of(&entry.modality),
            source: entry.source.to_string_lossy().into_owned(),
            landmarks: entry
                .landmarks
                .map(|l| l.iter().flatten().copied().collect()),
            enrolment: text_of(&entry.enrolment),
        }
    }
}

/// A serde enum's JSON string value.
fn text_of<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value).expect("enums serialise") {
        serde_json::Value::String(text) => text,
        other => other.to_string(),
    }
}

/// A value as a `jsonb` parameter.
fn json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).expect("gallery settings serialise")
}

/// The shared, photo and caricature vectors of a row (absent branches are NULL).
fn branch_columns(model: &ModelId, row: &[f32]) -> [Option<Vector>; 3] {
    [Branch::Shared, Branch::Photo, Branch::Caricature].map(|branch| {
        model
            .branches
            .iter()
            .position(|n| n == branch.name())
            .map(|slot| Vector::from(row[slot * model.dim..(slot + 1) * model.dim].to_vec()))
    })
}

/// Creates or checks the schema inside the caller's transaction; concurrent creators wait
/// for each other on an advisory lock.
fn migrate(url: &PgUrl, client: &mut Client) -> Result<(), GalleryError> {
    client
        .batch_execute(
            "SELECT pg_advisory_xact_lock(7262837);
             CREATE TABLE IF NOT EXISTS carivis_migrations (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
        )
        .map_err(|e| url.error(e))?;
    if let Err(e) = client.batch_execute("CREATE EXTENSION IF NOT EXISTS vector") {
        return Err(vector_error(url, e));
    }
    let version = schema_version(url, client)?;
    if version > SCHEMA_VERSION {
        return Err(GalleryError::PgSchemaTooNew {
            url: url.to_string(),
            found: version,
        });
    }
    if version < 1 {
        client.batch_execute(SCHEMA_V1).map_err(|e| url.error(e))?;
        client
            .execute(
                "INSERT INTO carivis_migrations (version) VALUES ($1)",
                &[&SCHEMA_VERSION],
            )
            .map_err(|e| url.error(e))?;
    }
    Ok(())
}

/// The missing-extension case said plainly; other errors as they are.
fn vector_error(url: &PgUrl, error: postgres::Error) -> GalleryError {
    let missing = error
        .code()
        .is_some_and(|c| *c == SqlState::FEATURE_NOT_SUPPORTED || *c == SqlState::UNDEFINED_FILE);
    if missing {
        GalleryError::PgNoVector {
            url: url.to_string(),
            reason: reason_of(&error),
        }
    } else {
        url.error(error)
    }
}

/// The highest applied migration (0 when none).
fn schema_version(url: &PgUrl, client: &mut Client) -> Result<i32, GalleryError> {
    let row = client
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM carivis_migrations",
            &[],
        )
        .map_err(|e| url.error(e))?;
    Ok(row.get(0))
}

/// Refuses a database without carivis's schema, or with a newer one.
fn check_schema(url: &PgUrl, client: &mut Client) -> Result<(), GalleryError> {
    let present = client
        .query_one("SELECT to_regclass('carivis_migrations') IS NOT NULL", &[])
        .map_err(|e| url.error(e))?;
    let version = if present.get(0) {
        schema_version(url, client)?
    } else {
        0
    };
    match version {
        0 => Err(GalleryError::PgNoGallery {
            url: url.to_string(),
        }),
        SCHEMA_VERSION => Ok(()),
        found => Err(GalleryError::PgSchemaTooNew {
            url: url.to_string(),
            found,
        }),
    }
}

/// The gallery's manifest and rows, in id order.
fn read(
    url: &PgUrl,
    client: &mut Client,
    for_update: bool,
) -> Result<(Manifest, Vec<f32>), GalleryError> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let head = client
        .query_opt(
            &format!(
                "SELECT model, settings, generation, next_id FROM carivis_galleries \
                 WHERE name = $1{lock}"
            ),
            &[&url.gallery],
        )
        .map_err(|e| url.error(e))?
        .ok_or_else(|| GalleryError::PgNoGallery {
            url: url.to_string(),
        })?;
    let damaged = |reason: String| GalleryError::PgDamaged {
        url: url.to_string(),
        reason,
    };
    let model: ModelId = serde_json::from_value(head.get(0)).map_err(|e| damaged(e.to_string()))?;
    model
        .validate()
        .map_err(|problem| damaged(problem.to_string()))?;
    let settings = serde_json::from_value(head.get(1)).map_err(|e| damaged(e.to_string()))?;
    let rows = client
        .query(
            "SELECT id, name, modality, source, source_sha256, box, landmarks, enrolment, \
             added_unix, shared, photo, caricature FROM carivis_entries \
             WHERE gallery = $1 ORDER BY id",
            &[&url.gallery],
        )
        .map_err(|e| url.error(e))?;
    let mut entries = Vec::with_capacity(rows.len());
    let mut vectors = Vec::with_capacity(rows.len() * store::row_len(&model));
    for row in &rows {
        entries.push(entry_of(row).map_err(damaged)?);
        for name in &model.branches {
            let column: Option<Vector> = row.get(name.as_str());
            let vector =
                column.ok_or_else(|| damaged(format!("an entry lacks its {name} vector")))?;
            vectors.extend_from_slice(vector.as_slice());
        }
    }
    let manifest = Manifest {
        format: store::FORMAT_VERSION,
        model,
        settings,
        embeddings: store::EmbeddingsFile::unwritten(entries.len()),
        generation: head.get::<_, i64>(2) as u64,
        next_id: head.get::<_, i64>(3) as u64,
        entries,
    };
    Ok((manifest, vectors))
}

/// A text column holding a serde enum's value.
fn from_text<T: serde::de::DeserializeOwned>(
    row: &postgres::Row,
    column: &str,
) -> Result<T, String> {
    let text: String = row.get(column);
    serde_json::from_value(serde_json::Value::String(text.clone()))
        .map_err(|_| format!("{column} {text:?} is not known"))
}

/// One `carivis_entries` row as an [`Entry`].
fn entry_of(row: &postgres::Row) -> Result<Entry, String> {
    let bbox: Vec<f32> = row.get("box");
    let landmarks: Option<Vec<f32>> = row.get("landmarks");
    let landmarks = match landmarks {
        Some(values) if values.len() == 10 => {
            Some(std::array::from_fn(|i| [values[2 * i], values[2 * i + 1]]))
        }
        Some(values) => return Err(format!("{} landmark values (expected 10)", values.len())),
        None => None,
    };
    Ok(Entry {
        id: row.get::<_, i64>("id") as u64,
        name: row.get("name"),
        modality: from_text(row, "modality")?,
        source: row.get::<_, String>("source").into(),
        source_sha256: row.get("source_sha256"),
        bbox: bbox
            .try_into()
            .map_err(|b: Vec<f32>| format!("a box of {} values", b.len()))?,
        landmarks,
        enrolment: from_text(row, "enrolment")?,
        added_unix: row.get::<_, i64>("added_unix") as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_their_gallery_and_never_show_the_password() {
        let url =
            PgUrl::parse("postgres://ann:s3cret@db.example:6543/faces?gallery=lobby").unwrap();
        assert_eq!(url.gallery(), "lobby");
        assert_eq!(url.server(), "db.example:6543");
        assert_eq!(
            url.to_string(),
            "postgres://ann:***@db.example:6543/faces?gallery=lobby"
        );
        let socket = PgUrl::parse("postgres://ann@%2Ftmp%2Fpg/faces?gallery=a%20b").unwrap();
        assert_eq!(socket.gallery(), "a b");
        assert_eq!(socket.server(), "/tmp/pg:5432");
    }

    #[test]
    fn bad_urls_are_named_without_the_password() {
        for url in [
            "postgres://ann:s3cret@host/faces",
            "postgres://ann:s3cret@host/faces?gallery=",
            "postgres://ann:s3cret@host?gallery=g",
            "postgres://ann:s3cret@host:notaport/faces?gallery=g",
        ] {
            let err = PgUrl::parse(url).err().unwrap().to_string();
            assert!(err.contains("postgres://ann:***@host"), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
    }
}
