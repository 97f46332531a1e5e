//! Evaluation protocols: caricature–photo pair files (CaVI's and WebCaricature's formats),
//! labelled image lists (a manifest CSV or a folder layout), and resolving the paths they name
//! against the files on disk, ignoring letter case where the exact path is missing.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::types::{LabelledImage, Modality};

/// Why a protocol file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A file or folder could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line does not follow the format.
    #[error("{file}:{line}: {reason}")]
    Malformed {
        /// The protocol file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Nothing usable in the file.
    #[error("{0}: no pairs or images found")]
    Empty(PathBuf),
}

/// The pair-file formats understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PairFormat {
    /// CaVI: `id Caricature/id\file.jpg id Real/id\file.jpg 0|1`, space-separated.
    Cavi,
    /// WebCaricature: a header line, then tab-separated `name C00001 P00001` (same person) or
    /// `name1 C00039 name2 P00006` (different people); files are `name/FILE.*`.
    Webcaricature,
}

/// One image of a pair, as the pair file names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairSide {
    /// Path relative to the data root, with `/` separators.
    pub path: String,
    /// Photo or caricature.
    pub modality: Modality,
}

/// One line of a pair file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairSpec {
    /// First image.
    pub a: PairSide,
    /// Second image.
    pub b: PairSide,
    /// Same person.
    pub genuine: bool,
    /// 1-based line number in the file.
    pub line: usize,
}

/// Reads a pair file; `format` `None` recognises it from its first line.
pub fn read_pairs(
    file: &Path,
    format: Option<PairFormat>,
) -> Result<(PairFormat, Vec<PairSpec>), ProtocolError> {
    let text = std::fs::read_to_string(file).map_err(|source| ProtocolError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let format = format.unwrap_or_else(|| detect_format(&text));
    let pairs = parse_pairs(&text, format).map_err(|(line, reason)| ProtocolError::Malformed {
        file: file.to_path_buf(),
        line,
        reason,
    })?;
    if pairs.is_empty() {
        return Err(ProtocolError::Empty(file.to_path_buf()));
    }
    Ok((format, pairs))
}

/// CaVI when the first non-empty line has five fields ending in 0 or 1, else WebCaricature.
pub fn detect_format(text: &str) -> PairFormat {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let fields: Vec<&str> = first.split_whitespace().collect();
    if fields.len() == 5 && matches!(fields[4], "0" | "1") {
        PairFormat::Cavi
    } else {
        PairFormat::Webcaricature
    }
}

/// Parses pair-file text; an error is (line number, reason).
pub fn parse_pairs(text: &str, format: PairFormat) -> Result<Vec<PairSpec>, (usize, String)> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty());
    if format == PairFormat::Webcaricature {
        lines.next();
    }
    lines
        .map(|(n, line)| {
            match format {
                PairFormat::Cavi => parse_cavi_line(line),
                PairFormat::Webcaricature => parse_webcaricature_line(line),
            }
            .map(|(a, b, genuine)| PairSpec {
                a,
                b,
                genuine,
                line: n,
            })
            .map_err(|reason| (n, reason))
        })
        .collect()
}

/// Modality from a CaVI path's first folder (`Caricature/…`, `Real/…`).
fn cavi_side(path: &str) -> Result<PairSide, String> {
    let path = path.replace('\\', "/");
    let top = path.split('/').next().unwrap_or("").to_ascii_lowercase();
    let modality = match top.as_str() {
        "caricature" | "caricatures" => Modality::Caricature,
        "real" | "photo" | "photos" => Modality::Photo,
        _ => {
            return Err(format!("{path:?} is under neither Caricature/ nor Real/"));
        }
    };
    Ok(PairSide { path, modality })
}

fn parse_cavi_line(line: &str) -> Result<(PairSide, PairSide, bool), String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [_, a, _, b, label] = fields[..] else {
        return Err(format!(
            "expected 5 fields `id path id path 0|1`, found {}",
            fields.len()
        ));
    };
    let genuine = match label {
        "1" => true,
        "0" => false,
        other => return Err(format!("label must be 0 or 1, found {other:?}")),
    };
    Ok((cavi_side(a)?, cavi_side(b)?, genuine))
}

/// Modality from a WebCaricature file name: `C…` caricature, `P…` photo.
fn webcaricature_side(name: &str, file: &str) -> Result<PairSide, String> {
    let modality = match file.chars().next().map(|c| c.to_ascii_uppercase()) {
        Some('C') => Modality::Caricature,
        Some('P') => Modality::Photo,
        _ => return Err(format!("{file:?} starts with neither C nor P")),
    };
    Ok(PairSide {
        path: format!("{name}/{file}"),
        modality,
    })
}

fn parse_webcaricature_line(line: &str) -> Result<(PairSide, PairSide, bool), String> {
    let fields: Vec<&str> = if line.contains('\t') {
        line.split('\t').map(str::trim).collect()
    } else {
        line.split_whitespace().collect()
    };
    match fields[..] {
        [name, a, b] => Ok((
            webcaricature_side(name, a)?,
            webcaricature_side(name, b)?,
            true,
        )),
        [name_a, a, name_b, b] => Ok((
            webcaricature_side(name_a, a)?,
            webcaricature_side(name_b, b)?,
            false,
        )),
        _ => Err(format!(
            "expected `name C… P…` or `name1 C… name2 P…`, found {} fields",
            fields.len()
        )),
    }
}

/// How a path named by a protocol was found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// The path exists as written.
    Exact(PathBuf),
    /// Found only when letter case (or, for names without extension, the extension) is ignored.
    Loose(PathBuf),
    /// No file matches.
    Missing,
}

/// Every file under a root, by lower-cased relative path and by lower-cased path without
/// extension, for resolving protocol paths whose case differs from the files'.
pub struct FileIndex {
    root: PathBuf,
    by_path: HashMap<String, PathBuf>,
    by_stem: HashMap<String, PathBuf>,
}

impl FileIndex {
    /// Lists every file under `root` (recursively).
    pub fn build(root: &Path) -> Result<Self, ProtocolError> {
        let mut index = Self {
            root: root.to_path_buf(),
            by_path: HashMap::new(),
            by_stem: HashMap::new(),
        };
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            let io = |source| ProtocolError::Io {
                path: dir.clone(),
                source,
            };
            for entry in std::fs::read_dir(&dir).map_err(io)? {
                let path = entry.map_err(io)?.path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    index.insert(path);
                }
            }
        }
        Ok(index)
    }

    fn insert(&mut self, path: PathBuf) {
        let Ok(relative) = path.strip_prefix(&self.root) else {
            return;
        };
        let key = relative.to_string_lossy().replace('\\', "/").to_lowercase();
        let stem = key.rsplit_once('.').map_or(key.as_str(), |(s, _)| s);
        self.by_stem.insert(stem.to_string(), path.clone());
        self.by_path.insert(key, path);
    }

    /// Finds `relative` (with `/` separators): as written, else ignoring case, else (for a
    /// name without extension) any file with that stem.
    pub fn resolve(&self, relative: &str) -> Resolved {
        let exact = self.root.join(relative);
        if exact.is_file() {
            return Resolved::Exact(exact);
        }
        let key = relative.to_lowercase();
        self.by_path
            .get(&key)
            .or_else(|| self.by_stem.get(&key))
            .map_or(Resolved::Missing, |p| Resolved::Loose(p.clone()))
    }
}

/// Manifest modalities that carry no single labelled face and are skipped.
pub const UNLABELLED_MODALITIES: [&str; 3] = ["group_photo", "video", "figure"];

/// Reads a manifest CSV (`path,identity,modality,…`, paths relative to the CSV's folder):
/// rows with an identity and modality `photo` or `caricature`, whose path starts with
/// `only` when given.
pub fn read_manifest(csv: &Path, only: Option<&str>) -> Result<Vec<LabelledImage>, ProtocolError> {
    let text = std::fs::read_to_string(csv).map_err(|source| ProtocolError::Io {
        path: csv.to_path_buf(),
        source,
    })?;
    parse_manifest(&text, csv, only)
}

/// Parses manifest CSV text as [`read_manifest`] does; `csv` is the file it came from, named in
/// errors and the folder image paths are relative to.
pub fn parse_manifest(
    text: &str,
    csv: &Path,
    only: Option<&str>,
) -> Result<Vec<LabelledImage>, ProtocolError> {
    let base = csv.parent().unwrap_or(Path::new("."));
    let mut images = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let fields: Vec<&str> = line.splitn(4, ',').collect();
        let [path, identity, modality, ..] = fields[..] else {
            return Err(ProtocolError::Malformed {
                file: csv.to_path_buf(),
                line: i + 1,
                reason: "expected `path,identity,modality,…`".into(),
            });
        };
        let modality = match modality {
            "photo" => Modality::Photo,
            "caricature" => Modality::Caricature,
            m if UNLABELLED_MODALITIES.contains(&m) => continue,
            m => {
                return Err(ProtocolError::Malformed {
                    file: csv.to_path_buf(),
                    line: i + 1,
                    reason: format!(
                        "unknown modality `{m}` (expected photo, caricature, or one of {UNLABELLED_MODALITIES:?}, which are skipped)"
                    ),
                });
            }
        };
        if identity.is_empty() || only.is_some_and(|prefix| !path.starts_with(prefix)) {
            continue;
        }
        images.push(LabelledImage {
            path: base.join(path),
            identity: identity.to_string(),
            modality,
        });
    }
    if images.is_empty() {
        return Err(ProtocolError::Empty(csv.to_path_buf()));
    }
    Ok(images)
}

/// Reads a folder layout `DIR/{Real|photo}/<identity>/*` and `DIR/{Caricature}/<identity>/*`;
/// identities are the folder names in lower case.
pub fn read_layout(dir: &Path) -> Result<Vec<LabelledImage>, ProtocolError> {
    let index = FileIndex::build(dir)?;
    let mut images: Vec<LabelledImage> = index
        .by_path
        .iter()
        .filter_map(|(key, path)| {
            let parts: Vec<&str> = key.split('/').collect();
            let [top, identity, _file] = parts[..] else {
                return None;
            };
            let side = cavi_side(&format!("{top}/x")).ok()?;
            Some(LabelledImage {
                path: path.clone(),
                identity: identity.to_string(),
                modality: side.modality,
            })
        })
        .collect();
    images.sort_by(|a, b| a.path.cmp(&b.path));
    if images.is_empty() {
        return Err(ProtocolError::Empty(dir.to_path_buf()));
    }
    Ok(images)
}

/// The images named by pair files, as indexes into `images`, and how many named paths matched
/// no image. Paths are matched on their trailing components, ignoring case and, for names
/// without extension (WebCaricature), the extension.
pub fn named_by_pairs(
    images: &[LabelledImage],
    pair_files: &[PathBuf],
) -> Result<(HashSet<usize>, usize), ProtocolError> {
    let mut named: HashSet<String> = HashSet::new();
    for file in pair_files {
        let (_, pairs) = read_pairs(file, None)?;
        for pair in pairs {
            named.insert(pair.a.path.to_lowercase());
            named.insert(pair.b.path.to_lowercase());
        }
    }
    let depth = |p: &str| p.matches('/').count() + 1;
    let depths: BTreeSet<usize> = named.iter().map(|p| depth(p)).collect();
    let mut found = HashSet::new();
    let mut matched_names = HashSet::new();
    for (i, image) in images.iter().enumerate() {
        let path = image
            .path
            .to_string_lossy()
            .replace('\\', "/")
            .to_lowercase();
        for &d in &depths {
            let tail = trailing_components(&path, d);
            let stem = tail.rsplit_once('.').map_or(tail, |(s, _)| s);
            if let Some(name) = [tail, stem].into_iter().find(|k| named.contains(*k)) {
                found.insert(i);
                matched_names.insert(name.to_string());
            }
        }
    }
    Ok((found, named.len() - matched_names.len()))
}

/// The last `n` `/`-separated components of `path`.
fn trailing_components(path: &str, n: usize) -> &str {
    let mut start = path.len();
    for _ in 0..n {
        match path[..start].rfind('/') {
            Some(i) => start = i,
            None => return path,
        }
    }
    &path[start + 1..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cavi_lines_parse_with_backslashes() {
        let text = "a Caricature/a\\a_c_1.jpg a Real/a\\a_r_2.jpg 1\n\
                    a Caricature/a\\a_c_1.jpg b Real/b\\b_r_0.jpg 0\n";
        assert_eq!(detect_format(text), PairFormat::Cavi);
        let pairs = parse_pairs(text, PairFormat::Cavi).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].a.path, "Caricature/a/a_c_1.jpg");
        assert_eq!(pairs[0].a.modality, Modality::Caricature);
        assert_eq!(pairs[0].b.modality, Modality::Photo);
        assert!(pairs[0].genuine && !pairs[1].genuine);
        assert_eq!(pairs[1].line, 2);
    }

    #[test]
    fn webcaricature_lines_parse_after_the_header() {
        let text = "10\t300\nAaron\tC00001\tP00001\nAaron\tC00039\tBob\tP00006\n";
        assert_eq!(detect_format(text), PairFormat::Webcaricature);
        let pairs = parse_pairs(text, PairFormat::Webcaricature).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].a.path, "Aaron/C00001");
        assert_eq!(pairs[0].b.modality, Modality::Photo);
        assert!(pairs[0].genuine);
        assert_eq!(pairs[1].b.path, "Bob/P00006");
        assert!(!pairs[1].genuine);
        assert_eq!(pairs[1].line, 3);
    }

    #[test]
    fn malformed_lines_name_their_line_number() {
        let text =
            "a Caricature/a\\x.jpg a Real/a\\y.jpg 1\na Caricature/a\\x.jpg a Real/a\\y.jpg 2\n";
        let (line, reason) = parse_pairs(text, PairFormat::Cavi).unwrap_err();
        assert_eq!(line, 2);
        assert!(reason.contains("0 or 1"), "{reason}");
        let (line, _) = parse_pairs("h\nAaron\tC1\n", PairFormat::Webcaricature).unwrap_err();
        assert_eq!(line, 2);
        let (_, reason) = parse_pairs("h\nAaron\tX1\tP1\n", PairFormat::Webcaricature).unwrap_err();
        assert!(reason.contains("neither C nor P"));
    }

    #[test]
    fn paths_resolve_ignoring_case_and_extension() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("Real/Ann")).unwrap();
        std::fs::write(dir.path().join("Real/Ann/Ann_1.jpg"), b"x").unwrap();
        let index = FileIndex::build(dir.path()).unwrap();
        assert!(matches!(
            index.resolve("Real/Ann/Ann_1.jpg"),
            Resolved::Exact(_)
        ));
        assert!(matches!(
            index.resolve("real/ann/ANN_1.JPG"),
            Resolved::Loose(_)
        ));
        assert!(matches!(
            index.resolve("Real/Ann/Ann_1"),
            Resolved::Loose(_)
        ));
        assert_eq!(index.resolve("Real/Ann/Bob.jpg"), Resolved::Missing);
        let images = read_layout(dir.path()).unwrap();
        assert_eq!(images[0].identity, "ann");
        assert_eq!(images[0].modality, Modality::Photo);
    }

    fn labelled_image(path: &str, identity: &str, modality: Modality) -> LabelledImage {
        LabelledImage {
            path: PathBuf::from(path),
            identity: identity.into(),
            modality,
        }
    }

    #[test]
    fn trailing_components_of_paths() {
        assert_eq!(trailing_components("a/b/c/d.jpg", 3), "b/c/d.jpg");
        assert_eq!(trailing_components("c/d.jpg", 3), "c/d.jpg");
    }

    #[test]
    fn pair_files_exclude_their_images_ignoring_case() {
        let dir = tempfile::tempdir().unwrap();
        let pairs = dir.path().join("pairs.txt");
        std::fs::write(
            &pairs,
            "a Caricature/A\\a_c_1.jpg a Real/a\\a_r_1.jpg 1\nb Caricature/b\\b_c_9.jpg a Real/a\\a_r_1.jpg 0\n",
        )
        .unwrap();
        let images = vec![
            labelled_image("/d/cavi/Caricature/a/a_c_1.jpg", "a", Modality::Caricature),
            labelled_image("/d/cavi/Real/a/a_r_1.jpg", "a", Modality::Photo),
            labelled_image("/d/cavi/Real/a/a_r_2.jpg", "a", Modality::Photo),
        ];
        let (found, unmatched) = named_by_pairs(&images, &[pairs]).unwrap();
        assert_eq!(found, HashSet::from([0, 1]));
        assert_eq!(unmatched, 1);
    }
}
