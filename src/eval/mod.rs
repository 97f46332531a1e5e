//! Evaluation of the recognition chain on labelled data: caricature–photo verification pairs
//! (CaVI, WebCaricature formats) and identification on a labelled image set, with every image
//! going through carivis's own detection and alignment (the whole image when no face is
//! found, counted per modality). Produces figures, ROC/CMC plots and per-direction thresholds
//! at a false accept rate that galleries import (`carivis gallery set-thresholds`).

pub mod cache;
pub mod embed_map;
pub mod identify;
pub mod metrics;
pub mod plots;
pub mod protocol;
pub mod tsne;
pub mod unseen;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use cache::{EmbeddingCache, FaceRecord, ImageOutcome, SubjectEmbedder};
use identify::{DirectionFigures, IdentifyOptions, PairFigures, Sample};
use metrics::{MetricError, Scored, Verification};
use protocol::{FileIndex, PairFormat, ProtocolError, Resolved};

use crate::files::sha256_hex;
use crate::gallery::branch_of;
use crate::gallery::matching::{Branch, Thresholds};
use crate::gallery::store::ModelId;
use crate::jobs::{CacheError, JobCounts, Progress, hash_files};
use crate::pipeline::still::StillFaces;
use crate::types::{LabelledImage, Modality, dot};

/// Why an evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A protocol file is unusable.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// Figures cannot be computed.
    #[error(transparent)]
    Metric(#[from] MetricError),
    /// The embedding cache could not be written.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Ctrl-C stopped the run (the cache keeps what was embedded).
    #[error("interrupted; the embeddings computed so far are cached")]
    Interrupted,
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A plot could not be drawn.
    #[error("cannot draw the plot: {0}")]
    Plot(String),
    /// The model lacks the branch asked for.
    #[error("the model has no {branch} branch (it has: {available})")]
    NoBranch {
        /// The branch asked for.
        branch: &'static str,
        /// The model's branches.
        available: String,
    },
    /// A report without a usable thresholds section.
    #[error("{path}: not an evaluation report with thresholds ({reason})")]
    BadReport {
        /// The report file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A report measured another model than the gallery's.
    #[error(
        "{report} measured model sha256 {report_model:.12}…, but the gallery uses {gallery_model:.12}…"
    )]
    ModelMismatch {
        /// The report file.
        report: PathBuf,
        /// The report's model checksum.
        report_model: String,
        /// The gallery's model checksum.
        gallery_model: String,
    },
}

/// Which embedding branch comparisons use (`auto`: shared across modalities, the modality's
/// own branch within one, as galleries do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BranchChoice {
    /// The shared branch (the only one of a single-output model).
    Shared,
    /// The photo branch.
    Photo,
    /// The caricature branch.
    Caricature,
    /// As galleries choose.
    Auto,
}

impl BranchChoice {
    /// The branch for comparing modality `a` with modality `b`.
    pub fn resolve(self, a: Modality, b: Modality, multi_task: bool) -> Branch {
        match self {
            BranchChoice::Shared => Branch::Shared,
            BranchChoice::Photo => Branch::Photo,
            BranchChoice::Caricature => Branch::Caricature,
            BranchChoice::Auto => Branch::for_pair(a, b, multi_task),
        }
    }

    /// Refuses a branch the model does not have.
    pub fn check(self, model: &ModelId) -> Result<(), EvalError> {
        let wanted = match self {
            BranchChoice::Auto => return Ok(()),
            other => other.resolve(Modality::Photo, Modality::Photo, false),
        };
        if model.branches.iter().any(|b| b == wanted.name()) {
            return Ok(());
        }
        Err(EvalError::NoBranch {
            branch: wanted.name(),
            available: model.branches.join(", "),
        })
    }
}

/// The branch's vector of a record.
fn vector(record: &FaceRecord, branch: Branch) -> Result<&[f32], EvalError> {
    branch_of(&record.embedding, branch).ok_or(EvalError::NoBranch {
        branch: branch.name(),
        available: "shared".into(),
    })
}

/// How images become embeddings: one [`StillFaces`] per worker thread, the cache folder, a
/// progress callback and the Ctrl-C flag. The workers' settings ([`StillFaces::describe`])
/// are part of the cache key.
pub struct Faces<'a> {
    /// One per worker thread (at least one).
    pub workers: Vec<StillFaces>,
    /// Cache folder.
    pub cache_dir: PathBuf,
    /// Called as images are hashed and embedded.
    pub progress: &'a dyn Fn(Progress),
    /// When set, embedding stops and the evaluation ends with [`EvalError::Interrupted`].
    pub stop: &'a AtomicBool,
}

/// Detection outcome of one modality.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DetectionStats {
    /// Images read.
    pub images: usize,
    /// Images where a face was found.
    pub detected: usize,
    /// Images whose face each detection pass found (`first`, `padded`, `rotated+20`, …).
    pub by_pass: BTreeMap<String, usize>,
    /// Images whose fallback chip was embedded because no pass found a face.
    pub fallback: usize,
    /// `detected / images`.
    pub rate: f64,
}

/// What happened to the images of an evaluation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ImageSummary {
    /// Distinct images used.
    pub images: usize,
    /// Distinct paths found only when letter case was ignored.
    pub resolved_ignoring_case: usize,
    /// Mentions of such paths in the protocol (a path named by several pairs counts each time).
    pub mentions_resolved_ignoring_case: usize,
    /// Paths that match no file.
    pub missing: Vec<String>,
    /// Images that could not be read or embedded (with the reason).
    pub unreadable: Vec<String>,
    /// Detection per modality.
    pub detection: BTreeMap<String, DetectionStats>,
    /// The cache file, and how many images came from it or were embedded now.
    pub cache_file: PathBuf,
    /// Cache counts.
    pub counts: JobCounts,
}

/// Detection counts per modality.
fn detection_stats(
    modalities: &[Modality],
    outcomes: &[ImageOutcome],
) -> BTreeMap<String, DetectionStats> {
    let mut stats: BTreeMap<String, DetectionStats> = BTreeMap::new();
    for (m, outcome) in modalities.iter().zip(outcomes) {
        let Ok(record) = outcome else { continue };
        let s = stats.entry(m.to_string()).or_default();
        s.images += 1;
        match record.pass {
            Some(pass) => {
                s.detected += 1;
                *s.by_pass.entry(pass.to_string()).or_default() += 1;
            }
            None => s.fallback += 1,
        }
    }
    for s in stats.values_mut() {
        s.rate = s.detected as f64 / s.images.max(1) as f64;
    }
    stats
}

/// Embeds `images` (cache first) and summarises what happened.
fn embed_all(
    faces: Faces,
    images: &[PathBuf],
    modalities: &[Modality],
) -> Result<(Vec<ImageOutcome>, ImageSummary, ModelId), EvalError> {
    let model = faces.workers[0].model_id();
    let settings = faces.workers[0].describe();
    let mut cache = EmbeddingCache::open(&faces.cache_dir, &model.sha256, &settings);
    let hashes = hash_files(images, faces.progress, faces.stop).ok_or(EvalError::Interrupted)?;
    let workers = faces.workers.into_iter().map(SubjectEmbedder).collect();
    let (outcomes, counts) = crate::jobs::run(
        images,
        hashes,
        workers,
        &mut cache,
        faces.progress,
        faces.stop,
    )?;
    if faces.stop.load(Ordering::SeqCst) {
        return Err(EvalError::Interrupted);
    }
    let unreadable = outcomes
        .iter()
        .filter_map(|o| o.as_ref().err().map(|e| e.to_string()))
        .collect();
    let summary = ImageSummary {
        images: images.len(),
        resolved_ignoring_case: 0,
        mentions_resolved_ignoring_case: 0,
        missing: Vec::new(),
        unreadable,
        detection: detection_stats(modalities, &outcomes),
        cache_file: cache.path().to_path_buf(),
        counts,
    };
    tracing::info!(?counts, "embedded {} images", images.len());
    Ok((outcomes, summary, model))
}

/// A threshold measured at the report's FAR.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasuredThreshold {
    /// Cosine similarity threshold.
    pub value: f32,
    /// Same-person pairs it was measured on.
    pub genuine: usize,
    /// Different-person pairs it was chosen on.
    pub impostor: usize,
}

/// The thresholds a gallery can import: measured directions, and the others at their default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThresholdsSection {
    /// The false accept rate the thresholds were chosen at.
    pub far: f64,
    /// The embedding model measured (sha256).
    pub model_sha256: String,
    /// Directions measured (`photo_to_caricature`, …).
    pub measured: BTreeMap<String, MeasuredThreshold>,
    /// Directions not measured here, at their current default (not imported).
    pub kept_at_default: BTreeMap<String, f32>,
}

/// The key of a direction, as in [`Thresholds`]' fields.
pub fn direction_key(probe: Modality, entry: Modality) -> String {
    format!("{probe}_to_{entry}")
}

const MODALITIES: [Modality; 2] = [Modality::Photo, Modality::Caricature];

fn thresholds_section(
    far: f64,
    model: &ModelId,
    measured: BTreeMap<String, MeasuredThreshold>,
) -> ThresholdsSection {
    let defaults = Thresholds::for_checksum(&model.sha256);
    let kept_at_default = MODALITIES
        .iter()
        .flat_map(|&p| MODALITIES.map(|e| (p, e)))
        .filter(|&(p, e)| !measured.contains_key(&direction_key(p, e)))
        .map(|(p, e)| (direction_key(p, e), defaults.get(p, e)))
        .collect();
    ThresholdsSection {
        far,
        model_sha256: model.sha256.clone(),
        measured,
        kept_at_default,
    }
}

/// Reads the thresholds section of a report.
pub fn read_thresholds(report: &Path) -> Result<ThresholdsSection, EvalError> {
    let bad = |reason: String| EvalError::BadReport {
        path: report.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(report).map_err(|source| EvalError::Io {
        path: report.to_path_buf(),
        source,
    })?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let section = value
        .get("thresholds")
        .ok_or_else(|| bad("no `thresholds` key".into()))?;
    serde_json::from_value(section.clone()).map_err(|e| bad(e.to_string()))
}

/// `current` with the measured directions of `section` replaced; refuses a report of another
/// model.
pub fn apply_thresholds(
    current: Thresholds,
    section: &ThresholdsSection,
    report: &Path,
    model_sha256: &str,
) -> Result<Thresholds, EvalError> {
    if section.model_sha256 != model_sha256 {
        return Err(EvalError::ModelMismatch {
            report: report.to_path_buf(),
            report_model: section.model_sha256.clone(),
            gallery_model: model_sha256.to_string(),
        });
    }
    let bad = |reason: String| EvalError::BadReport {
        path: report.to_path_buf(),
        reason,
    };
    let mut value = serde_json::to_value(current).map_err(|e| bad(e.to_string()))?;
    for (key, measured) in &section.measured {
        let slot = value
            .get_mut(key)
            .ok_or_else(|| bad(format!("unknown direction {key:?}")))?;
        *slot = serde_json::json!(measured.value);
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}

/// A verification run's inputs.
pub struct VerifyInput {
    /// The pair file.
    pub pairs_file: PathBuf,
    /// Folder the pair file's paths are relative to.
    pub root: PathBuf,
    /// Format (`None`: recognised from the first line).
    pub format: Option<PairFormat>,
    /// Folds of the cross-validation.
    pub folds: usize,
    /// FARs for TAR (the first one also chooses the thresholds).
    pub fars: Vec<f64>,
    /// Branch to compare.
    pub branch: BranchChoice,
}

/// The pair file and how it was used.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VerifyDataset {
    /// The pair file.
    pub pairs_file: PathBuf,
    /// Its sha256.
    pub pairs_file_sha256: String,
    /// Data root.
    pub root: PathBuf,
    /// Format read.
    pub format: PairFormat,
    /// Pairs listed.
    pub pairs_listed: usize,
    /// Pairs left out because an image is missing or unreadable.
    pub pairs_skipped: usize,
    /// How pairs are assigned to folds.
    pub fold_rule: String,
}

/// Everything a verification run measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VerifyReport {
    /// The data.
    pub dataset: VerifyDataset,
    /// The embedding model.
    pub model: ModelId,
    /// The branch compared.
    pub branch: BranchChoice,
    /// Images, detection and cache.
    pub images: ImageSummary,
    /// The figures.
    pub verification: Verification,
    /// Thresholds at the first FAR.
    pub thresholds: ThresholdsSection,
}

/// Distinct resolved images of the pairs, their modalities, the pairs as image indices, and
/// the summary of resolution.
struct ResolvedPairs {
    images: Vec<PathBuf>,
    modalities: Vec<Modality>,
    pairs: Vec<(usize, usize, bool)>,
    loose: usize,
    loose_mentions: usize,
    missing: Vec<String>,
}

fn resolve_pairs(specs: &[protocol::PairSpec], index: &FileIndex) -> ResolvedPairs {
    let mut resolved = ResolvedPairs {
        images: Vec::new(),
        modalities: Vec::new(),
        pairs: Vec::new(),
        loose: 0,
        loose_mentions: 0,
        missing: Vec::new(),
    };
    let mut seen: HashMap<String, (Option<usize>, bool)> = HashMap::new();
    for spec in specs {
        let mut side = |s: &protocol::PairSide| -> Option<usize> {
            if let Some(&(known, loose)) = seen.get(&s.path) {
                resolved.loose_mentions += usize::from(loose);
                return known;
            }
            let found = index.resolve(&s.path);
            let loose = matches!(found, Resolved::Loose(_));
            resolved.loose += usize::from(loose);
            resolved.loose_mentions += usize::from(loose);
            let slot = match found {
                Resolved::Exact(p) | Resolved::Loose(p) => Some(p),
                Resolved::Missing => {
                    resolved.missing.push(s.path.clone());
                    None
                }
            }
            .map(|p| {
                resolved.images.push(p);
                resolved.modalities.push(s.modality);
                resolved.images.len() - 1
            });
            seen.insert(s.path.clone(), (slot, loose));
            slot
        };
        if let (Some(a), Some(b)) = (side(&spec.a), side(&spec.b)) {
            resolved.pairs.push((a, b, spec.genuine));
        }
    }
    resolved
}

/// Runs a verification evaluation.
pub fn verify(input: &VerifyInput, faces: Faces) -> Result<VerifyReport, EvalError> {
    let (format, specs) = protocol::read_pairs(&input.pairs_file, input.format)?;
    let index = FileIndex::build(&input.root)?;
    let resolved = resolve_pairs(&specs, &index);
    for path in &resolved.missing {
        tracing::warn!("no file matches {path} under {}", input.root.display());
    }
    let (outcomes, mut images, model) = embed_all(faces, &resolved.images, &resolved.modalities)?;
    input.branch.check(&model)?;
    images.resolved_ignoring_case = resolved.loose;
    images.mentions_resolved_ignoring_case = resolved.loose_mentions;
    images.missing = resolved.missing.clone();
    let multi_task = model.branches.len() > 1;
    let mut scored = Vec::new();
    let mut by_combo: HashMap<(Modality, Modality), Vec<Scored>> = HashMap::new();
    for &(a, b, genuine) in &resolved.pairs {
        let (Ok(ra), Ok(rb)) = (&outcomes[a], &outcomes[b]) else {
            continue;
        };
        let (ma, mb) = (resolved.modalities[a], resolved.modalities[b]);
        let branch = input.branch.resolve(ma, mb, multi_task);
        let pair = Scored {
            score: dot(vector(ra, branch)?, vector(rb, branch)?),
            genuine,
        };
        scored.push(pair);
        let combo = if ma == Modality::Photo {
            (ma, mb)
        } else {
            (mb, ma)
        };
        by_combo.entry(combo).or_default().push(pair);
    }
    let verification = metrics::verification(&scored, input.folds, &input.fars)?;
    let far = input.fars.first().copied().unwrap_or(0.01);
    let mut measured = BTreeMap::new();
    for ((a, b), pairs) in &by_combo {
        let impostors = metrics::impostor_scores(pairs);
        let Some(value) = metrics::threshold_at_far(&impostors, far) else {
            continue;
        };
        let m = MeasuredThreshold {
            value,
            genuine: pairs.len() - impostors.len(),
            impostor: impostors.len(),
        };
        measured.insert(direction_key(*a, *b), m.clone());
        measured.insert(direction_key(*b, *a), m);
    }
    let pairs_file_bytes = std::fs::read(&input.pairs_file).map_err(|source| EvalError::Io {
        path: input.pairs_file.clone(),
        source,
    })?;
    Ok(VerifyReport {
        dataset: VerifyDataset {
            pairs_file: input.pairs_file.clone(),
            pairs_file_sha256: sha256_hex(&pairs_file_bytes),
            root: input.root.clone(),
            format,
            pairs_listed: specs.len(),
            pairs_skipped: specs.len() - scored.len(),
            fold_rule: format!(
                "pair i (in file order, among pairs scored) is in fold i mod {}, so every fold mixes both classes",
                input.folds
            ),
        },
        thresholds: thresholds_section(far, &model, measured),
        model,
        branch: input.branch,
        images,
        verification,
    })
}

/// An identification run's inputs.
pub struct IdentifyInput {
    /// Where the labels come from (manifest or folder), for the report.
    pub source: PathBuf,
    /// The labelled images.
    pub images: Vec<LabelledImage>,
    /// Branch to compare.
    pub branch: BranchChoice,
    /// Protocol settings.
    pub options: IdentifyOptions,
}

/// Everything an identification run measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IdentifyReport {
    /// Where the labels come from.
    pub source: PathBuf,
    /// Identities.
    pub identities: usize,
    /// The embedding model.
    pub model: ModelId,
    /// The branch compared.
    pub branch: BranchChoice,
    /// Protocol settings.
    pub options: IdentifyOptions,
    /// Images, detection and cache.
    pub images: ImageSummary,
    /// Caricature→photo and photo→caricature.
    pub directions: Vec<DirectionFigures>,
    /// Pair figures: photo–photo, caricature–caricature, caricature–photo.
    pub pairs: Vec<PairFigures>,
    /// Thresholds at the FAR, from the pair figures.
    pub thresholds: ThresholdsSection,
}

/// Runs an identification evaluation.
pub fn identify(input: &IdentifyInput, faces: Faces) -> Result<IdentifyReport, EvalError> {
    let paths: Vec<PathBuf> = input.images.iter().map(|i| i.path.clone()).collect();
    let modalities: Vec<Modality> = input.images.iter().map(|i| i.modality).collect();
    let (outcomes, images, model) = embed_all(faces, &paths, &modalities)?;
    input.branch.check(&model)?;
    let multi_task = model.branches.len() > 1;
    let mut names: Vec<&str> = input.images.iter().map(|i| i.identity.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let samples = |a: Modality, b: Modality| -> Result<Vec<Sample>, EvalError> {
        let branch = input.branch.resolve(a, b, multi_task);
        let mut out = Vec::new();
        for (image, outcome) in input.images.iter().zip(&outcomes) {
            let Ok(record) = outcome else { continue };
            out.push(Sample {
                identity: names.binary_search(&image.identity.as_str()).unwrap_or(0),
                modality: image.modality,
                vector: vector(record, branch)?,
            });
        }
        Ok(out)
    };
    let (c, p) = (Modality::Caricature, Modality::Photo);
    let options = &input.options;
    let directions = [(c, p), (p, c)]
        .iter()
        .map(|&(probe, gallery)| {
            let s = samples(probe, gallery)?;
            Ok(identify::identify_direction(
                &s,
                names.len(),
                probe,
                gallery,
                options,
            ))
        })
        .collect::<Result<Vec<_>, EvalError>>()?;
    let mut pairs = Vec::new();
    let mut measured = BTreeMap::new();
    for (a, b) in [(p, p), (c, c), (c, p)] {
        let Some(figures) = identify::pair_figures(&samples(a, b)?, a, b, options) else {
            continue;
        };
        let m = MeasuredThreshold {
            value: figures.threshold_at_far,
            genuine: figures.genuine,
            impostor: figures.impostor,
        };
        measured.insert(direction_key(a, b), m.clone());
        measured.insert(direction_key(b, a), m);
        pairs.push(figures);
    }
    Ok(IdentifyReport {
        source: input.source.clone(),
        identities: names.len(),
        thresholds: thresholds_section(options.far, &model, measured),
        model,
        branch: input.branch,
        options: options.clone(),
        images,
        directions,
        pairs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelId {
        ModelId {
            file: "m.onnx".into(),
            sha256: "abc".into(),
            branches: vec!["shared".into()],
            dim: 128,
        }
    }

    #[test]
    fn thresholds_import_only_measured_directions() {
        let mut measured = BTreeMap::new();
        let m = MeasuredThreshold {
            value: 0.5,
            genuine: 1,
            impostor: 1,
        };
        measured.insert(direction_key(Modality::Caricature, Modality::Photo), m);
        let section = thresholds_section(0.01, &model(), measured);
        assert_eq!(section.kept_at_default.len(), 3);
        let current = Thresholds::uniform(0.9);
        let new = apply_thresholds(current, &section, Path::new("r.json"), "abc").unwrap();
        assert_eq!(new.caricature_to_photo, 0.5);
        assert_eq!(new.photo_to_caricature, 0.9);
        assert!(apply_thresholds(current, &section, Path::new("r.json"), "other").is_err());
    }

    #[test]
    fn branches_the_model_lacks_are_refused() {
        assert!(BranchChoice::Shared.check(&model()).is_ok());
        assert!(BranchChoice::Auto.check(&model()).is_ok());
        let err = BranchChoice::Photo.check(&model()).unwrap_err();
        assert!(err.to_string().contains("no photo branch"), "{err}");
        assert_eq!(
            BranchChoice::Auto.resolve(Modality::Photo, Modality::Photo, true),
            Branch::Photo
        );
    }
}
