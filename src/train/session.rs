//! One training session, start to end: read and check the data, exclude protocol images (and
//! byte-identical copies), split, compute or load the trunk maps through the job runner, train
//! with validation after every epoch, checkpoint every epoch and on Ctrl-C, resume exactly,
//! export the best epoch, and write the logs, plots, summary and the model's README entry.
//! Driven by one plain [`TrainConfig`]; what happens is reported through an [`Event`] callback,
//! so a command line can draw progress and print while the library stays free of UI crates.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::bank::{BankCache, BankSettings, BankWorker};
use super::data::{Dataset, Role, SplitOptions, check_images, split};
use super::features::{CHIP_SIZE, ImageMaps, MapCache, MapError, MapWorker};
use super::net::{BranchWeights, EMBEDDING_DIM, MapFeatures, TASK_NAMES, embed_maps};
use super::onnx::{DescriptorModel, encode, read_model, write_model};
use super::report::{
    CsvLog, EPOCH_HEADER, epoch_row, plot_log, step_header, step_row, upsert_readme_section,
};
use super::trainer::{
    EpochProgress, Examples, StepRecord, TrainOptions, Trainer, Validation, pair_validation,
};
use super::{CheckpointError, TrainError, write_atomically};
use crate::detect::DetectorConfig;
use crate::eval::plots::{ScatterPoint, scatter_panels_png};
use crate::eval::protocol::{named_by_pairs, read_layout, read_manifest};
use crate::eval::tsne::{TsneConfig, tsne};
use crate::eval::unseen::{UnseenFigures, UnseenSet, unseen_figures};
use crate::files::sha256_hex;
use crate::jobs::{self, JobCache, Progress, Worker, cache_key};
use crate::pipeline::still::FaceSearch;
use crate::rng::Rng;
use crate::runtime::{Device, Runtime, RuntimeConfig};
use crate::types::{LabelledImage, Modality};

/// Where the labelled images come from.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSource {
    /// A CSV `path,identity,modality,…` (paths relative to it), optionally only the rows whose
    /// path starts with a prefix.
    Manifest {
        /// The CSV file.
        csv: PathBuf,
        /// Only rows whose path starts with this.
        only: Option<String>,
    },
    /// CaVI's folder layout: `DIR/Real/<person>/*`, `DIR/Caricature/<person>/*`.
    Layout(PathBuf),
}

/// What to do with images where the detector finds no face.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoFace {
    /// Train on the fallback chip (as evaluation embeds it).
    Fallback,
    /// Leave the image out.
    Skip,
}

/// The validation figure that chooses the exported epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// TAR at FAR 1% (the operating point of galleries' thresholds).
    Tar,
    /// Area under the ROC curve.
    Auc,
}

impl Selection {
    fn score(self, v: &Validation) -> f64 {
        match self {
            Selection::Tar => v.cross_modal_tar,
            Selection::Auc => v.cross_modal_auc,
        }
    }
}

/// How a session treats a checkpoint already in the run folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Start afresh; refuse when the run folder holds a checkpoint.
    Fresh,
    /// Start afresh and replace the checkpoint.
    Restart,
    /// Go on from the checkpoint.
    Resume,
}

/// Everything a training session needs, built once from the command line.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// The labelled images.
    pub data: DataSource,
    /// Images named by these pair files (and byte-identical copies) are never trained on.
    pub exclude_pairs: Vec<PathBuf>,
    /// How images are split into training, validation and held-out people.
    pub split: SplitOptions,
    /// How faces are searched for (retry passes, fallback chip).
    pub faces: FaceSearch,
    /// Images without a detected face.
    pub no_face: NoFace,
    /// Synthetic caricatures of the training photos added to training.
    pub bank: BankSettings,
    /// The hyper-parameters.
    pub options: TrainOptions,
    /// The figure that chooses the exported epoch.
    pub select: Selection,
    /// The descriptor model whose trunk is frozen and whose last block starts each branch.
    pub base: PathBuf,
    /// Folder with the MTCNN models.
    pub models_dir: PathBuf,
    /// Root of the trunk-map cache.
    pub cache_root: PathBuf,
    /// Threads that detect faces and run the trunk.
    pub jobs: usize,
    /// The model to write (when training ends).
    pub out: PathBuf,
    /// Folder for the checkpoint, logs and plots.
    pub run_dir: PathBuf,
    /// Fresh, restart or resume.
    pub start: Start,
    /// Whether to upsert the model's entry in the README of its folder.
    pub readme: bool,
    /// The command line, for the summary and the README entry.
    pub command: String,
}

/// What a session reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// Hashing images or computing trunk maps.
    Jobs(Progress),
    /// The data is ready.
    Prepared(&'a DataSummary),
    /// The validation figures before any training step.
    Before {
        /// Validation people.
        validation: &'a Validation,
        /// Held-out people, when some are.
        unseen: Option<&'a Validation>,
    },
    /// Training goes on from a checkpoint.
    Resumed {
        /// 0-based epoch.
        epoch: usize,
        /// 0-based batch within it, when mid-epoch.
        batch: Option<usize>,
    },
    /// Training steps start.
    Training {
        /// Steps of the whole run.
        total: usize,
        /// Steps done before (from a checkpoint).
        done: usize,
    },
    /// One step was trained.
    Step(&'a StepRecord),
    /// An epoch ended and was validated.
    Epoch {
        /// 0-based epoch.
        epoch: usize,
        /// Validation people.
        validation: &'a Validation,
        /// Held-out people, when some are.
        unseen: Option<&'a Validation>,
        /// Mean task weights over the epoch's steps.
        mean_weight: [f64; 3],
    },
}

impl std::fmt::Display for Event<'_> {
    /// The event in words (a step's in short, for a progress bar; job progress has none).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unseen_text = |unseen: &Option<&Validation>, lead: &str| {
            unseen.map_or(String::new(), |u| {
                format!(
                    "{lead}unseen people caricature–photo AUC {:.4}, TAR@FAR1% {:.3}",
                    u.cross_modal_auc, u.cross_modal_tar
                )
            })
        };
        match self {
            Event::Jobs(_) | Event::Training { .. } => Ok(()),
            Event::Step(r) => write!(
                f,
                "epoch {} loss {:.2}/{:.2}/{:.2} w {:.2}/{:.2}/{:.2}",
                r.epoch + 1,
                r.loss[0],
                r.loss[1],
                r.loss[2],
                r.weight[0],
                r.weight[1],
                r.weight[2]
            ),
            Event::Prepared(summary) => write!(f, "{summary}"),
            Event::Before { validation, unseen } => write!(
                f,
                "before training (every branch = dlib's last block): validation caricature–photo AUC {:.4}, TAR@FAR1% {:.3}{}",
                validation.cross_modal_auc,
                validation.cross_modal_tar,
                unseen_text(unseen, "\nbefore training: ")
            ),
            Event::Resumed { epoch, batch } => write!(
                f,
                "resuming at epoch {}{}",
                epoch + 1,
                batch.map_or(String::new(), |b| format!(", batch {}", b + 1))
            ),
            Event::Epoch {
                epoch,
                validation,
                unseen,
                mean_weight: w,
            } => write!(
                f,
                "epoch {:>3}: validation accuracy {} · caricature–photo AUC {:.4}, TAR@FAR1% {:.3} · weights {:.3}/{:.3}/{:.3}{}",
                epoch + 1,
                accuracy_text(validation),
                validation.cross_modal_auc,
                validation.cross_modal_tar,
                w[0],
                w[1],
                w[2],
                unseen_text(unseen, " · ")
            ),
        }
    }
}

/// Top-1 accuracy per task, e.g. `shared 0.712, photo 0.801, caricature 0.650`.
fn accuracy_text(v: &Validation) -> String {
    v.accuracy.map_or("-".into(), |a| {
        TASK_NAMES
            .iter()
            .zip(a)
            .map(|(t, x)| format!("{t} {x:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// What the data turned into, for printing.
#[derive(Clone, Debug, PartialEq)]
pub struct DataSummary {
    /// Images per role and modality.
    pub images: BTreeMap<String, usize>,
    /// Outcomes of face finding per modality.
    pub faces: BTreeMap<String, usize>,
    /// Images named by the pair files that are not in the data.
    pub excluded_unmatched: usize,
    /// Training images with maps.
    pub train: usize,
    /// People trained on.
    pub people: usize,
    /// Validation images with maps.
    pub validation: usize,
    /// Images of held-out people with maps.
    pub unseen: Option<usize>,
    /// Synthetic caricatures of the training photos added to training.
    pub synthetic: usize,
}

impl std::fmt::Display for DataSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |counts: &BTreeMap<String, usize>| {
            counts
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(f, "images: {}", list(&self.images))?;
        writeln!(f, "faces: {}", list(&self.faces))?;
        if self.excluded_unmatched > 0 {
            writeln!(
                f,
                "{} images named by the pair files are not in the data",
                self.excluded_unmatched
            )?;
        }
        write!(
            f,
            "training on {} images of {} people; validation {} images{}",
            self.train,
            self.people,
            self.validation,
            self.unseen
                .map_or(String::new(), |n| format!("; unseen people {n} images"))
        )?;
        if self.synthetic > 0 {
            write!(
                f,
                "\nplus {} synthetic caricatures of the training photos",
                self.synthetic
            )?;
        }
        Ok(())
    }
}

/// How a session ended.
#[derive(Debug)]
pub enum Finish {
    /// Training ended; the model is written.
    Done(Box<Summary>),
    /// Ctrl-C: a checkpoint is saved (or, while preparing, the cache keeps the maps).
    Interrupted {
        /// Whether a checkpoint was saved (training had started).
        checkpoint: bool,
    },
}

/// What a finished session wrote and measured.
#[derive(Debug)]
pub struct Summary {
    /// The model written.
    pub out: PathBuf,
    /// The run folder.
    pub run_dir: PathBuf,
    /// The best epoch and its figures.
    pub best: Best,
    /// Epochs configured.
    pub epochs: usize,
    /// The plots written.
    pub plots: Vec<PathBuf>,
    /// Seconds in all (across resumed runs).
    pub total_seconds: f64,
    /// Seconds of training steps in this run.
    pub training_seconds: f64,
    /// dlib's own descriptor's unseen-people figures on the same held-out people.
    pub unseen_dlib: Option<UnseenFigures>,
    /// The summary written to `summary.json`.
    pub json: serde_json::Value,
}

impl std::fmt::Display for Summary {
    /// What was written and measured, in two lines.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "wrote {} (best epoch {} of {}: caricature–photo AUC {:.4}, TAR@FAR1% {:.3}; mix of dlib and trained weights: shared {}, photo {}); logs and plots in {}: {}",
            self.out.display(),
            self.best.epoch + 1,
            self.epochs,
            self.best.validation.cross_modal_auc,
            self.best.validation.cross_modal_tar,
            self.best.shared_mix,
            self.best.photo_mix,
            self.run_dir.display(),
            self.plots
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        write!(
            f,
            "time {:.0} s (training {:.0} s), peak memory {}",
            self.total_seconds,
            self.training_seconds,
            memory_text(peak_memory_kib())
        )
    }
}

/// The best validation so far and the epoch that reached it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Best {
    /// 0-based epoch.
    pub epoch: usize,
    /// Its validation figures.
    pub validation: Validation,
    /// Its figures on held-out people.
    pub holdout: Option<Validation>,
    /// Whether the exported photo branch is dlib's own descriptor (no trained photo branch
    /// reached dlib's photo–photo AUC and TAR on the validation images).
    #[serde(default)]
    pub photo_is_dlib: bool,
    /// Mix of the exported shared and caricature branches (0 = dlib's weights, 1 = trained).
    #[serde(default = "trained_mix")]
    pub shared_mix: f64,
    /// Mix of the exported photo branch.
    #[serde(default = "trained_mix")]
    pub photo_mix: f64,
    /// Every unseen-people figure of the exported model on the held-out people.
    #[serde(default)]
    pub unseen: Option<UnseenFigures>,
}

fn trained_mix() -> f64 {
    1.0
}

/// The mixes `dlib + m·(trained − dlib)` tried for each exported branch.
pub const MIXES: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];

/// The branches to export at an epoch and their validation figures.
struct Mixed {
    weights: Vec<BranchWeights>,
    validation: Validation,
    shared_mix: f64,
    photo_mix: f64,
}

/// Chooses each exported branch's mix of dlib's and the trained weights on the validation
/// images: the shared (and caricature) branch's by the selection figure over caricature–photo
/// pairs; the photo branch is dlib's own (mix 0) unless `validated_photo_branch`, then chosen
/// by photo–photo TAR then AUC with dlib's always among the choices; branches mix only with
/// `interpolate`. `dlib` is dlib's own validation (mix 0), measured once per run.
fn mix_branches(
    config: &TrainConfig,
    prepared: &Prepared,
    trained: Vec<BranchWeights>,
    trained_validation: &Validation,
    dlib: &Validation,
) -> Result<Mixed, TrainError> {
    let interpolate = config.options.interpolate;
    let shared_mixes: &[f64] = if interpolate { &MIXES } else { &[1.0] };
    let photo_mixes: &[f64] = match (config.options.validated_photo_branch, interpolate) {
        (false, _) => &[0.0],
        (true, true) => &MIXES,
        (true, false) => &[0.0, 1.0],
    };
    let best_mix = |mixes: &[f64],
                    trained: &BranchWeights,
                    better: &dyn Fn(&Validation, &Validation) -> bool|
     -> Result<(f64, Validation), TrainError> {
        let mut best: Option<(f64, Validation)> = None;
        for &m in mixes {
            let v = if m == 0.0 {
                dlib.clone()
            } else {
                branch_validation(&mix(&prepared.pretrained, trained, m), &prepared.validation)?
            };
            if best.as_ref().is_none_or(|(_, b)| better(&v, b)) {
                best = Some((m, v));
            }
        }
        Ok(best.expect("every mix list has an entry"))
    };
    let (shared_mix, shared) = best_mix(shared_mixes, &trained[0], &|v, b| {
        config.select.score(v) > config.select.score(b)
    })?;
    let (photo_mix, photo) = best_mix(photo_mixes, &trained[1], &|v, b| {
        (v.photo_tar, v.photo_auc) > (b.photo_tar, b.photo_auc)
    })?;
    let weights = vec![
        mix(&prepared.pretrained, &trained[0], shared_mix),
        mix(&prepared.pretrained, &trained[1], photo_mix),
        mix(&prepared.pretrained, &trained[2], shared_mix),
    ];
    Ok(Mixed {
        weights,
        validation: Validation {
            accuracy: trained_validation.accuracy,
            photo_auc: photo.photo_auc,
            photo_tar: photo.photo_tar,
            ..shared
        },
        shared_mix,
        photo_mix,
    })
}

/// `from + m·(to − from)`, weight by weight.
fn mix(from: &BranchWeights, to: &BranchWeights, m: f64) -> BranchWeights {
    let m = m as f32;
    let lerp = |a: &[f32], b: &[f32]| -> Vec<f32> {
        a.iter().zip(b).map(|(x, y)| x + m * (y - x)).collect()
    };
    BranchWeights {
        w1: lerp(&from.w1, &to.w1),
        b1: lerp(&from.b1, &to.b1),
        w2: lerp(&from.w2, &to.w2),
        b2: lerp(&from.b2, &to.b2),
        wfc: lerp(&from.wfc, &to.wfc),
    }
}

/// What decides which images train and validate; a resumed run must use the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    /// The split.
    pub split: SplitOptions,
    /// The pair files whose images were excluded.
    pub exclude_pairs: Vec<PathBuf>,
    /// Images without a face.
    pub no_face: NoFace,
    /// How faces were searched for ([`FaceSearch::describe`]).
    pub faces: String,
    /// The synthetic-caricature bank.
    #[serde(default = "no_bank")]
    pub bank: BankSettings,
}

fn no_bank() -> BankSettings {
    BankSettings {
        variants: 0,
        seed: 0,
    }
}

impl DataRecord {
    fn of(config: &TrainConfig) -> Self {
        Self {
            split: config.split.clone(),
            exclude_pairs: config.exclude_pairs.clone(),
            no_face: config.no_face,
            faces: config.faces.describe(),
            bank: config.bank,
        }
    }
}

/// An epoch under way: its order and next batch, and the task weights summed over the steps
/// done (so that an interrupted epoch logs the same mean weights as an uninterrupted one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochState {
    /// Image order and next batch.
    pub position: EpochProgress,
    /// Sum of each task's weight over the steps done.
    pub weight_sum: [f64; 3],
    /// Steps done in this epoch.
    pub steps: usize,
}

impl EpochState {
    fn start(position: EpochProgress) -> Self {
        Self {
            position,
            weight_sum: [0.0; 3],
            steps: 0,
        }
    }

    fn mean_weight(&self) -> [f64; 3] {
        self.weight_sum.map(|s| s / self.steps.max(1) as f64)
    }
}

/// The checkpoint format this build writes and reads; older ones are refused.
pub const CHECKPOINT_FORMAT: u64 = 4;

/// The checkpoint's description (`checkpoint.json`); its tensors are in a safetensors file
/// named by [`Checkpoint::tensors`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// [`CHECKPOINT_FORMAT`] when written.
    pub format: u64,
    /// The hyper-parameters.
    pub options: TrainOptions,
    /// The data split.
    pub data: DataRecord,
    /// The training people.
    pub classes: Vec<String>,
    /// The epoch to go on with.
    pub next_epoch: usize,
    /// Where the interrupted epoch `next_epoch` stands (`None` at an epoch boundary).
    pub progress: Option<EpochState>,
    /// Steps trained.
    pub steps_done: usize,
    /// The generator's state.
    pub rng: Rng,
    /// The best epoch so far.
    pub best: Option<Best>,
    /// Checksum of the trunk the maps came from.
    pub trunk_sha256: String,
    /// The safetensors file (in the run folder) holding this checkpoint's tensors.
    pub tensors: String,
    /// Seconds spent so far.
    pub seconds: f64,
}

/// The checkpoint description's file name in a run folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";

impl Checkpoint {
    /// Writes the tensors to a new file, then the description naming it (so a crash between
    /// the two leaves the previous checkpoint whole), then removes older tensor files.
    pub fn save(&self, run_dir: &Path, tensors: &[u8]) -> Result<(), TrainError> {
        write_atomically(&run_dir.join(&self.tensors), tensors)?;
        let json = serde_json::to_string_pretty(self).map_err(|e| TrainError::Io {
            path: run_dir.join(CHECKPOINT_FILE),
            source: e.into(),
        })?;
        write_atomically(&run_dir.join(CHECKPOINT_FILE), json.as_bytes())?;
        let entries = std::fs::read_dir(run_dir).map_err(|source| TrainError::Io {
            path: run_dir.to_path_buf(),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("checkpoint-")
                && name.ends_with(".safetensors")
                && name != self.tensors
            {
                std::fs::remove_file(entry.path()).ok();
            }
        }
        Ok(())
    }

    /// Reads a description; refuses one of an older format with a message saying so.
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        let text = std::fs::read_to_string(path).map_err(|source| CheckpointError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        let malformed = |source| CheckpointError::Malformed {
            path: path.to_path_buf(),
            source,
        };
        let value: serde_json::Value = serde_json::from_str(&text).map_err(malformed)?;
        let found = value
            .get("format")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if found != CHECKPOINT_FORMAT {
            return Err(CheckpointError::OlderFormat {
                path: path.to_path_buf(),
                found,
                expected: CHECKPOINT_FORMAT,
            });
        }
        serde_json::from_value(value).map_err(malformed)
    }

    /// The tensors of this checkpoint, from the run folder.
    fn load_tensors(
        &self,
        run_dir: &Path,
    ) -> Result<HashMap<String, candle_core::Tensor>, CheckpointError> {
        let path = run_dir.join(&self.tensors);
        candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
            .map_err(|source| CheckpointError::Tensors { path, source })
    }
}

/// Everything prepared before the first step.
pub struct Prepared {
    dataset: Dataset,
    train: Examples,
    validation: Examples,
    validation_classified: bool,
    holdout: Option<Examples>,
    descriptor: DescriptorModel,
    pretrained: BranchWeights,
    trunk_sha256: String,
    summary: DataSummary,
}

/// Runs a whole session: checks the output, reads the checkpoint (when resuming), prepares the
/// data, trains, and writes the model and its reports.
pub fn run(
    config: &TrainConfig,
    events: &dyn Fn(Event),
    stop: &AtomicBool,
) -> Result<Finish, TrainError> {
    let started = Instant::now();
    check_out_path(&config.out)?;
    let saved = saved_checkpoint(config)?;
    let Some(prepared) = prepare(config, events, stop)? else {
        return Ok(Finish::Interrupted { checkpoint: false });
    };
    events(Event::Prepared(&prepared.summary));
    train(config, &prepared, saved, events, stop, started)
}

/// Reads the images, excludes, splits, and computes (or loads) every trunk map; `None` when
/// Ctrl-C stopped it.
pub fn prepare(
    config: &TrainConfig,
    events: &dyn Fn(Event),
    stop: &AtomicBool,
) -> Result<Option<Prepared>, TrainError> {
    let (source, images) = read_images(&config.data)?;
    check_images(&images, &source)?;
    let (mut excluded, excluded_unmatched) = named_by_pairs(&images, &config.exclude_pairs)?;
    if !config.exclude_pairs.is_empty() && excluded.is_empty() {
        return Err(TrainError::NothingExcluded {
            pair_files: config
                .exclude_pairs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            data: source,
        });
    }
    let paths: Vec<PathBuf> = images.iter().map(|i| i.path.clone()).collect();
    let progress = |p| events(Event::Jobs(p));
    let Some(hashes) = jobs::hash_files(&paths, &progress, stop) else {
        return Ok(None);
    };
    let hashes = hashes
        .into_iter()
        .zip(&paths)
        .map(|(h, path)| {
            h.map_err(|source| TrainError::Io {
                path: path.clone(),
                source,
            })
        })
        .collect::<Result<Vec<String>, _>>()?;
    excluded.extend(copies_of_excluded(&hashes, &excluded));
    let dataset = split(images, &excluded, &config.split)?;
    let descriptor = DescriptorModel::split(read_model(&config.base)?, &config.base)?;
    let pretrained = descriptor.pretrained_branch(&config.base)?;
    let trunk_bytes = encode(&descriptor.trunk());
    let trunk_sha256 = sha256_hex(&trunk_bytes);
    let cache = MapCache::new(&config.cache_root, &trunk_sha256, &cache_settings(config));
    let trunk_path = cache.dir().join("trunk.onnx");
    write_atomically(&trunk_path, &trunk_bytes)?;
    let wanted: Vec<usize> = (0..dataset.images.len())
        .filter(|&i| dataset.roles[i] != Role::Excluded)
        .collect();
    let maps = compute_maps(
        config,
        &dataset,
        &wanted,
        &hashes,
        cache,
        &trunk_path,
        events,
        stop,
    )?;
    if stop.load(Ordering::SeqCst) {
        return Ok(None);
    }
    let faces = face_counts(&dataset, &wanted, &maps);
    let by_image: HashMap<usize, Option<ImageMaps>> = wanted.into_iter().zip(maps).collect();
    let (mut train, validation, holdout) = examples_by_role(&dataset, &by_image);
    let Some(synthetic) = add_bank(
        config,
        &dataset,
        &hashes,
        &trunk_path,
        &mut train,
        events,
        stop,
    )?
    else {
        return Ok(None);
    };
    if train.is_empty() {
        return Err(TrainError::NoTrainingFaces);
    }
    check_validation_pairs(&validation)?;
    let summary = DataSummary {
        images: dataset.counts(),
        faces,
        excluded_unmatched,
        train: train.len(),
        people: dataset.classes.len(),
        validation: validation.len(),
        unseen: holdout.as_ref().map(Examples::len),
        synthetic,
    };
    Ok(Some(Prepared {
        dataset,
        train,
        validation,
        validation_classified: config.split.validation_identities == 0,
        holdout,
        descriptor,
        pretrained,
        trunk_sha256,
        summary,
    }))
}

fn read_images(data: &DataSource) -> Result<(PathBuf, Vec<LabelledImage>), TrainError> {
    Ok(match data {
        DataSource::Manifest { csv, only } => (csv.clone(), read_manifest(csv, only.as_deref())?),
        DataSource::Layout(dir) => (dir.clone(), read_layout(dir)?),
    })
}

/// Images byte-identical to an excluded image (by sha256) that are not excluded yet.
fn copies_of_excluded(hashes: &[String], excluded: &HashSet<usize>) -> Vec<usize> {
    let excluded_hashes: HashSet<&String> = excluded.iter().map(|&i| &hashes[i]).collect();
    let copies: Vec<usize> = (0..hashes.len())
        .filter(|i| !excluded.contains(i) && excluded_hashes.contains(&hashes[*i]))
        .collect();
    if !copies.is_empty() {
        tracing::info!(
            "{} byte-identical copies of excluded images also excluded",
            copies.len()
        );
    }
    copies
}

/// The face settings that change the maps (part of the cache key).
fn cache_settings(config: &TrainConfig) -> String {
    format!(
        "{:?} {} five-point {}{}",
        DetectorConfig::default(),
        config.faces.describe(),
        CHIP_SIZE,
        if config.no_face == NoFace::Fallback {
            " fallback chip when no face"
        } else {
            ""
        }
    )
}

/// The maps of the `wanted` images, from the cache or computed by `config.jobs` workers; an
/// image that cannot be read is logged and left out.
#[allow(clippy::too_many_arguments)]
fn compute_maps(
    config: &TrainConfig,
    dataset: &Dataset,
    wanted: &[usize],
    hashes: &[String],
    mut cache: MapCache,
    trunk: &Path,
    events: &dyn Fn(Event),
    stop: &AtomicBool,
) -> Result<Vec<Option<ImageMaps>>, TrainError> {
    let open = |runtime: &Runtime| {
        MapWorker::open(
            runtime,
            &config.models_dir,
            trunk,
            DetectorConfig::default(),
            config.faces.clone(),
            config.no_face == NoFace::Fallback,
        )
    };
    let images = JobImages {
        dataset,
        wanted,
        hashes,
    };
    run_jobs(config, &images, open, &mut cache, events, stop)
}

/// The images a job run works on: indexes into the dataset and every image's sha256.
struct JobImages<'a> {
    dataset: &'a Dataset,
    wanted: &'a [usize],
    hashes: &'a [String],
}

/// Runs `config.jobs` workers made by `open` over `images` through the job runner and `cache`;
/// an image that fails is logged (unless Ctrl-C stopped the run) and gives `None`.
fn run_jobs<W: Worker>(
    config: &TrainConfig,
    images: &JobImages,
    open: impl Fn(&Runtime) -> Result<W, MapError>,
    cache: &mut dyn JobCache<W::Output>,
    events: &dyn Fn(Event),
    stop: &AtomicBool,
) -> Result<Vec<Option<W::Output>>, TrainError> {
    let runtime = Runtime::init(RuntimeConfig {
        device: Device::Auto,
        intra_threads: 1,
    })?;
    let workers = (0..config.jobs.max(1))
        .map(|_| open(&runtime))
        .collect::<Result<Vec<_>, _>>()?;
    let paths: Vec<PathBuf> = images
        .wanted
        .iter()
        .map(|&i| images.dataset.images[i].path.clone())
        .collect();
    let hashes = images
        .wanted
        .iter()
        .map(|&i| Ok(images.hashes[i].clone()))
        .collect();
    let progress = |p| events(Event::Jobs(p));
    let (outcomes, _) = jobs::run(&paths, hashes, workers, cache, &progress, stop)?;
    Ok(outcomes
        .into_iter()
        .map(|outcome| {
            outcome
                .inspect_err(|e| {
                    if !stop.load(Ordering::SeqCst) {
                        tracing::warn!("{e}");
                    }
                })
                .ok()
        })
        .collect())
}

/// Adds the synthetic caricatures of the training photos (from the bank's cache, or made by
/// `config.jobs` workers) to `train` as caricatures of the photo's person; returns how many,
/// `None` when Ctrl-C stopped it.
fn add_bank(
    config: &TrainConfig,
    dataset: &Dataset,
    hashes: &[String],
    trunk: &Path,
    train: &mut Examples,
    events: &dyn Fn(Event),
    stop: &AtomicBool,
) -> Result<Option<usize>, TrainError> {
    if config.bank.variants == 0 {
        return Ok(Some(0));
    }
    let photos: Vec<usize> = dataset
        .with_role(Role::Train)
        .into_iter()
        .filter(|&i| dataset.images[i].modality == Modality::Photo)
        .collect();
    let open = |runtime: &Runtime| {
        let maps = MapWorker::open(
            runtime,
            &config.models_dir,
            trunk,
            DetectorConfig::default(),
            config.faces.clone(),
            false,
        )?;
        Ok(BankWorker::new(maps, config.bank))
    };
    let trunk_dir = trunk.parent().unwrap_or(Path::new("."));
    let mut cache = BankCache::new(
        &trunk_dir.join(format!("bank-{}", cache_key("", &config.bank.describe()))),
        config.bank.variants,
    );
    let images = JobImages {
        dataset,
        wanted: &photos,
        hashes,
    };
    let outcomes = run_jobs(config, &images, open, &mut cache, events, stop)?;
    if stop.load(Ordering::SeqCst) {
        return Ok(None);
    }
    let mut added = 0;
    for (&i, outcome) in photos.iter().zip(outcomes) {
        let (Some(variants), Some(label)) = (outcome, dataset.class_of(i)) else {
            continue;
        };
        for pair in variants {
            let [a, b] = *pair;
            train
                .maps
                .push([MapFeatures::from_map(&a), MapFeatures::from_map(&b)]);
            train.labels.push(label);
            train.modalities.push(Modality::Caricature);
            added += 1;
        }
    }
    Ok(Some(added))
}

/// How many images of each modality had a face, were used whole, had none, or were unreadable.
fn face_counts(
    dataset: &Dataset,
    wanted: &[usize],
    maps: &[Option<ImageMaps>],
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (&i, outcome) in wanted.iter().zip(maps) {
        let kind = match outcome {
            Some(ImageMaps::Face(_)) => "face",
            Some(ImageMaps::Fallback(_)) => "fallback chip (no face)",
            Some(ImageMaps::NoFace) => "no face",
            None => "unreadable",
        };
        *counts
            .entry(format!("{} {kind}", dataset.images[i].modality))
            .or_default() += 1;
    }
    counts
}

/// Training, validation and held-out examples: the images of each role that have maps.
fn examples_by_role(
    dataset: &Dataset,
    by_image: &HashMap<usize, Option<ImageMaps>>,
) -> (Examples, Examples, Option<Examples>) {
    let examples = |role: Role, label: &dyn Fn(usize) -> Option<u32>| {
        let mut ex = Examples {
            maps: Vec::new(),
            labels: Vec::new(),
            modalities: Vec::new(),
        };
        for i in dataset.with_role(role) {
            let pair = match by_image.get(&i) {
                Some(Some(ImageMaps::Face(pair) | ImageMaps::Fallback(pair))) => Some(pair),
                _ => None,
            };
            if let (Some(pair), Some(l)) = (pair, label(i)) {
                ex.maps.push([
                    MapFeatures::from_map(&pair[0]),
                    MapFeatures::from_map(&pair[1]),
                ]);
                ex.labels.push(l);
                ex.modalities.push(dataset.images[i].modality);
            }
        }
        ex
    };
    let class_of = |i: usize| dataset.class_of(i);
    let train = examples(Role::Train, &class_of);
    let validation_people = people_of(dataset, Role::Validation);
    let validation_trained = validation_people
        .first()
        .is_none_or(|p| dataset.classes.binary_search(p).is_ok());
    let validation = if validation_trained {
        examples(Role::Validation, &class_of)
    } else {
        examples(Role::Validation, &person_label(dataset, &validation_people))
    };
    let holdout_people = people_of(dataset, Role::Holdout);
    let holdout = (!holdout_people.is_empty())
        .then(|| examples(Role::Holdout, &person_label(dataset, &holdout_people)));
    (train, validation, holdout)
}

/// The people (sorted) with images of `role`.
fn people_of(dataset: &Dataset, role: Role) -> Vec<String> {
    dataset
        .with_role(role)
        .into_iter()
        .map(|i| dataset.images[i].identity.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Labels images by their person's position in `people` (people who are not classes).
fn person_label<'a>(
    dataset: &'a Dataset,
    people: &'a [String],
) -> impl Fn(usize) -> Option<u32> + 'a {
    move |i| {
        people
            .binary_search(&dataset.images[i].identity)
            .ok()
            .map(|p| p as u32)
    }
}

/// Refuses a validation set that cannot choose an epoch: it needs a person with both a photo
/// and a caricature, and two different people.
fn check_validation_pairs(validation: &Examples) -> Result<(), TrainError> {
    let people_with = |m: Modality| -> BTreeSet<u32> {
        (0..validation.len())
            .filter(|&i| validation.modalities[i] == m)
            .map(|i| validation.labels[i])
            .collect()
    };
    let (photos, caricatures) = (
        people_with(Modality::Photo),
        people_with(Modality::Caricature),
    );
    let genuine = photos.intersection(&caricatures).next().is_some();
    let impostor = photos.iter().any(|p| caricatures.iter().any(|c| c != p));
    if !genuine || !impostor {
        return Err(TrainError::NoValidationPairs {
            images: validation.len(),
        });
    }
    Ok(())
}

/// Refuses an output path that cannot be written before hours of work.
fn check_out_path(out: &Path) -> Result<(), TrainError> {
    let bad = |reason| TrainError::BadOutput {
        path: out.to_path_buf(),
        reason,
    };
    if out.extension().and_then(|e| e.to_str()) != Some("onnx") {
        return Err(bad("the output must be an .onnx file"));
    }
    if out.is_dir() {
        return Err(bad("is a folder"));
    }
    Ok(())
}

/// The checkpoint to resume from ([`Start::Resume`]), read before any work; refuses to start
/// afresh over an existing checkpoint unless [`Start::Restart`].
fn saved_checkpoint(config: &TrainConfig) -> Result<Option<Checkpoint>, TrainError> {
    let path = config.run_dir.join(CHECKPOINT_FILE);
    match config.start {
        Start::Fresh if path.exists() => Err(CheckpointError::Exists(path).into()),
        Start::Fresh | Start::Restart => Ok(None),
        Start::Resume => {
            let saved = Checkpoint::load(&path)?;
            let mut wanted = config.options.clone();
            wanted.epochs = saved.options.epochs;
            if wanted != saved.options {
                return Err(CheckpointError::OptionsDiffer(format!("{:?}", saved.options)).into());
            }
            if DataRecord::of(config) != saved.data {
                return Err(CheckpointError::DataDiffers(format!("{:?}", saved.data)).into());
            }
            Ok(Some(saved))
        }
    }
}

/// Where training stands when it starts.
struct Resumed {
    first_epoch: usize,
    progress: Option<EpochState>,
    best: Option<Best>,
    seconds: f64,
}

/// Restores the trainer from a checkpoint made on the same people and trunk, and cuts the logs
/// back to what the checkpoint has seen.
fn resume(
    trainer: &mut Trainer,
    saved: Checkpoint,
    run_dir: &Path,
    prepared: &Prepared,
) -> Result<Resumed, TrainError> {
    if saved.classes != prepared.dataset.classes {
        return Err(CheckpointError::OtherPeople.into());
    }
    if saved.trunk_sha256 != prepared.trunk_sha256 {
        return Err(CheckpointError::OtherTrunk.into());
    }
    trainer.restore(saved.load_tensors(run_dir)?, saved.rng, saved.steps_done)?;
    keep_log_rows(&run_dir.join("steps.csv"), 1, saved.steps_done)?;
    keep_log_rows(&run_dir.join("epochs.csv"), 0, saved.next_epoch)?;
    Ok(Resumed {
        first_epoch: saved.next_epoch,
        progress: saved.progress,
        best: saved.best,
        seconds: saved.seconds,
    })
}

/// Keeps the header and the rows of a CSV log whose integer column `column` is below `limit`
/// (rows a crash or an interrupt wrote after the checkpoint are dropped).
fn keep_log_rows(path: &Path, column: usize, limit: usize) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let mut lines = text.lines();
    let mut kept: Vec<&str> = lines.next().into_iter().collect();
    kept.extend(lines.filter(|l| {
        l.split(',')
            .nth(column)
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|v| v < limit)
    }));
    write_atomically(path, format!("{}\n", kept.join("\n")).as_bytes())
}

/// The best epoch's model inside the run folder; copied to the output when training ends.
const BEST_MODEL: &str = "best.onnx";

/// The epoch loop: resume or start, train each epoch, validate, keep the best export,
/// checkpoint; then publish the model and write the reports.
fn train(
    config: &TrainConfig,
    prepared: &Prepared,
    saved: Option<Checkpoint>,
    events: &dyn Fn(Event),
    stop: &AtomicBool,
    started: Instant,
) -> Result<Finish, TrainError> {
    let run_dir = &config.run_dir;
    let mut trainer = Trainer::new(
        &prepared.pretrained,
        prepared.dataset.classes.len(),
        config.options.clone(),
    )?;
    let resuming = saved.is_some();
    let Resumed {
        first_epoch,
        mut progress,
        mut best,
        seconds: previous_seconds,
    } = match saved {
        Some(saved) => resume(&mut trainer, saved, run_dir, prepared)?,
        None => Resumed {
            first_epoch: 0,
            progress: None,
            best: None,
            seconds: 0.0,
        },
    };
    if resuming {
        events(Event::Resumed {
            epoch: first_epoch,
            batch: progress.as_ref().map(|p| p.position.next_batch),
        });
    }
    let dlib = dlib_validation(prepared)?;
    let mut best_cross: Option<BranchWeights> = None;
    if trainer.steps_done() == 0 {
        report_before(&dlib, &trainer, prepared, events)?;
    }
    let (mut steps, mut epochs) = open_logs(run_dir, resuming)?;
    let train_started = Instant::now();
    let epochs_wanted = config.options.epochs;
    let per_epoch = trainer.steps_per_epoch(&prepared.train);
    events(Event::Training {
        total: epochs_wanted * per_epoch,
        done: first_epoch * per_epoch + progress.as_ref().map_or(0, |p| p.position.next_batch),
    });
    let elapsed = || previous_seconds + started.elapsed().as_secs_f64();
    for epoch in first_epoch..epochs_wanted {
        let epoch_started = Instant::now();
        let mut state = progress
            .take()
            .unwrap_or_else(|| EpochState::start(trainer.start_epoch(&prepared.train)));
        let (weight_sum, step_count) = (&mut state.weight_sum, &mut state.steps);
        let completed =
            trainer.train_epoch(epoch, &prepared.train, &mut state.position, stop, |r| {
                for (s, w) in weight_sum.iter_mut().zip(r.weight) {
                    *s += f64::from(w);
                }
                *step_count += 1;
                if let Err(e) = steps.line(&step_row(r)) {
                    tracing::error!("{e}");
                }
                events(Event::Step(r));
            })?;
        steps.flush()?;
        if !completed {
            let position = (epoch, Some(state));
            save_checkpoint(config, &trainer, prepared, position, &best, elapsed())?;
            return Ok(Finish::Interrupted { checkpoint: true });
        }
        let validation = trainer.validate(&prepared.validation, prepared.validation_classified)?;
        let holdout = match &prepared.holdout {
            Some(h) => Some(trainer.validate(h, false)?),
            None => None,
        };
        let mean_weight = state.mean_weight();
        let seconds = epoch_started.elapsed().as_secs_f64();
        epochs.line(&epoch_row(epoch, seconds, &validation, mean_weight))?;
        epochs.flush()?;
        events(Event::Epoch {
            epoch,
            validation: &validation,
            unseen: holdout.as_ref(),
            mean_weight,
        });
        if let Some((better, cross)) = keep_if_better(
            config,
            prepared,
            &trainer,
            (epoch, validation, holdout),
            &dlib,
            best.as_ref(),
        )? {
            best = Some(better);
            best_cross = Some(cross);
        }
        save_checkpoint(
            config,
            &trainer,
            prepared,
            (epoch + 1, None),
            &best,
            elapsed(),
        )?;
    }
    let Some(best) = best else {
        return Err(TrainError::BadOutput {
            path: config.out.clone(),
            reason: "no epoch was trained (--epochs is not above the checkpoint's epoch)",
        });
    };
    let plots = unseen_embed_map(best_cross.as_ref(), prepared, config)?;
    finish(
        config,
        prepared,
        &trainer,
        (best, plots),
        per_epoch,
        elapsed(),
        train_started,
    )
}

/// The run folder's step and epoch logs, started anew unless the run resumes.
fn open_logs(run_dir: &Path, resuming: bool) -> Result<(CsvLog, CsvLog), TrainError> {
    std::fs::create_dir_all(run_dir).map_err(|source| TrainError::Io {
        path: run_dir.to_path_buf(),
        source,
    })?;
    Ok((
        CsvLog::open(&run_dir.join("steps.csv"), &step_header(), !resuming)?,
        CsvLog::open(&run_dir.join("epochs.csv"), EPOCH_HEADER, !resuming)?,
    ))
}

/// Mixes the epoch's trained branches with dlib's; when the mix scores above the best so far
/// on validation, exports it as the run's best model and returns the new best with its
/// cross-modal branch.
fn keep_if_better(
    config: &TrainConfig,
    prepared: &Prepared,
    trainer: &Trainer,
    (epoch, validation, holdout): (usize, Validation, Option<Validation>),
    dlib: &Validation,
    best: Option<&Best>,
) -> Result<Option<(Best, BranchWeights)>, TrainError> {
    let mixed = mix_branches(
        config,
        prepared,
        trainer.branch_weights()?,
        &validation,
        dlib,
    )?;
    let improved = best.is_none_or(|b| {
        config.select.score(&mixed.validation) > config.select.score(&b.validation)
    });
    if !improved {
        return Ok(None);
    }
    let weights = mixed.weights;
    export(
        &prepared.descriptor,
        &weights,
        &config.run_dir.join(BEST_MODEL),
    )?;
    let unseen = unseen_of(&weights[0], &weights[1], prepared, config.split.seed)?;
    let best = Best {
        epoch,
        validation: mixed.validation,
        holdout,
        photo_is_dlib: mixed.photo_mix == 0.0,
        shared_mix: mixed.shared_mix,
        photo_mix: mixed.photo_mix,
        unseen,
    };
    Ok(Some((best, weights[0].clone())))
}

/// The t-SNE map of the held-out people by the best cross-modal branch, when there are
/// held-out people and that branch was trained in this run.
fn unseen_embed_map(
    best_cross: Option<&BranchWeights>,
    prepared: &Prepared,
    config: &TrainConfig,
) -> Result<Vec<PathBuf>, TrainError> {
    let Some(holdout) = &prepared.holdout else {
        return Ok(Vec::new());
    };
    let Some(cross) = best_cross else {
        tracing::warn!(
            "no embedding map of the unseen people: the best epoch was trained before this run resumed"
        );
        return Ok(Vec::new());
    };
    let map = embed_map(cross, prepared, holdout, &config.run_dir, config.split.seed)?;
    Ok(vec![map])
}

/// People of the embedding map.
const MAP_PEOPLE: u32 = 10;

/// `embed-map.png`: t-SNE of the photos and caricatures of ten held-out people, by dlib's
/// descriptor (before training) and by the trained cross-modal branch (after), as in the
/// paper's figure 2.
fn embed_map(
    cross: &BranchWeights,
    prepared: &Prepared,
    holdout: &Examples,
    run_dir: &Path,
    seed: u64,
) -> Result<PathBuf, TrainError> {
    let chosen: Vec<usize> = (0..holdout.len())
        .filter(|&i| holdout.labels[i] < MAP_PEOPLE)
        .collect();
    let maps: Vec<&MapFeatures> = chosen.iter().map(|&i| &holdout.maps[i][0]).collect();
    let device = candle_core::Device::Cpu;
    let config = TsneConfig {
        seed,
        ..TsneConfig::default()
    };
    let panel =
        |weights: &BranchWeights, title: &str| -> Result<(String, Vec<ScatterPoint>), TrainError> {
            let positions = tsne(
                &embed_maps(weights, &maps, &device)?,
                EMBEDDING_DIM,
                &config,
            );
            let points = positions
                .into_iter()
                .zip(&chosen)
                .map(|(p, &i)| {
                    (
                        p,
                        holdout.labels[i] as usize,
                        holdout.modalities[i] == Modality::Photo,
                    )
                })
                .collect();
            Ok((title.to_string(), points))
        };
    let panels = [
        panel(&prepared.pretrained, "before: dlib descriptor")?,
        panel(cross, "after: trained shared branch")?,
    ];
    let path = run_dir.join("embed-map.png");
    scatter_panels_png(&path, &panels).map_err(|source| TrainError::Plot {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// The validation figures of dlib's own descriptor (the untrained network: every head starts
/// as dlib's last block).
fn dlib_validation(prepared: &Prepared) -> Result<Validation, TrainError> {
    branch_validation(&prepared.pretrained, &prepared.validation)
}

/// Validation figures (both pair sets) of one branch given as plain weights.
fn branch_validation(
    weights: &BranchWeights,
    examples: &Examples,
) -> Result<Validation, TrainError> {
    let maps: Vec<&MapFeatures> = examples.maps.iter().map(|m| &m[0]).collect();
    let embeddings = embed_maps(weights, &maps, &candle_core::Device::Cpu)?;
    pair_validation(&embeddings, &embeddings, examples)
}

/// The unseen-people figures of a model whose cross-modal and photo branches have these
/// weights, on the held-out people (`None` without them).
fn unseen_of(
    cross: &BranchWeights,
    photo: &BranchWeights,
    prepared: &Prepared,
    seed: u64,
) -> Result<Option<UnseenFigures>, TrainError> {
    let Some(holdout) = &prepared.holdout else {
        return Ok(None);
    };
    let maps: Vec<&MapFeatures> = holdout.maps.iter().map(|m| &m[0]).collect();
    let device = candle_core::Device::Cpu;
    let cross = embed_maps(cross, &maps, &device)?;
    let photo = embed_maps(photo, &maps, &device)?;
    let set = UnseenSet {
        cross: &cross,
        photo: &photo,
        people: &holdout.labels,
        modalities: &holdout.modalities,
    };
    Ok(Some(unseen_figures(&set, seed)?))
}

/// Reports the validation figures of the untrained network.
fn report_before(
    before: &Validation,
    trainer: &Trainer,
    prepared: &Prepared,
    events: &dyn Fn(Event),
) -> Result<(), TrainError> {
    let unseen = match &prepared.holdout {
        Some(holdout) => Some(trainer.validate(holdout, false)?),
        None => None,
    };
    events(Event::Before {
        validation: before,
        unseen: unseen.as_ref(),
    });
    Ok(())
}

/// Writes a checkpoint at `(next epoch, progress within it)`.
fn save_checkpoint(
    config: &TrainConfig,
    trainer: &Trainer,
    prepared: &Prepared,
    (next_epoch, progress): (usize, Option<EpochState>),
    best: &Option<Best>,
    seconds: f64,
) -> Result<(), TrainError> {
    let checkpoint = Checkpoint {
        format: CHECKPOINT_FORMAT,
        options: trainer.options().clone(),
        data: DataRecord::of(config),
        classes: prepared.dataset.classes.clone(),
        next_epoch,
        progress,
        steps_done: trainer.steps_done(),
        rng: trainer.rng().clone(),
        best: best.clone(),
        trunk_sha256: prepared.trunk_sha256.clone(),
        tensors: format!("checkpoint-{}.safetensors", trainer.steps_done()),
        seconds,
    };
    checkpoint.save(&config.run_dir, &trainer.state_bytes()?)
}

/// Writes the multi-task model from the trainer's current branches.
fn export(
    descriptor: &DescriptorModel,
    weights: &[BranchWeights],
    out: &Path,
) -> Result<(), TrainError> {
    let branches: Vec<(&str, &BranchWeights)> = TASK_NAMES.iter().copied().zip(weights).collect();
    write_model(&descriptor.export(&branches), out)
}

/// Publishes the best model, plots the logs, writes the summary and the README entry.
fn finish(
    config: &TrainConfig,
    prepared: &Prepared,
    trainer: &Trainer,
    (best, extra_plots): (Best, Vec<PathBuf>),
    per_epoch: usize,
    total_seconds: f64,
    train_started: Instant,
) -> Result<Finish, TrainError> {
    let run_dir = &config.run_dir;
    let best_path = run_dir.join(BEST_MODEL);
    let model = std::fs::read(&best_path).map_err(|source| TrainError::Io {
        path: best_path,
        source,
    })?;
    write_atomically(&config.out, &model)?;
    let mut plots = plot_log(&run_dir.join("steps.csv"), run_dir, per_epoch.max(1))?;
    plots.extend(extra_plots);
    let training_seconds = train_started.elapsed().as_secs_f64();
    let unseen_dlib = unseen_of(
        &prepared.pretrained,
        &prepared.pretrained,
        prepared,
        config.split.seed,
    )?;
    let json = serde_json::json!({
        "model": config.out,
        "sha256": sha256_hex(&model),
        "bytes": model.len(),
        "command": config.command,
        "options": trainer.options(),
        "images": prepared.summary.images,
        "faces": prepared.summary.faces,
        "people": prepared.dataset.classes.len(),
        "training_images": prepared.train.len(),
        "validation_images": prepared.validation.len(),
        "best_epoch": best.epoch + 1,
        "validation": best.validation,
        "unseen_people": best.holdout,
        "unseen_people_figures": best.unseen,
        "unseen_people_dlib": unseen_dlib,
        "photo_branch_is_dlib": best.photo_is_dlib,
        "shared_mix": best.shared_mix,
        "photo_mix": best.photo_mix,
        "seconds_total": total_seconds,
        "seconds_training": training_seconds,
        "peak_memory_kib": peak_memory_kib(),
        "trunk_sha256": prepared.trunk_sha256,
    });
    let text = serde_json::to_string_pretty(&json).map_err(|e| TrainError::Io {
        path: run_dir.join("summary.json"),
        source: e.into(),
    })?;
    write_atomically(&run_dir.join("summary.json"), text.as_bytes())?;
    if config.readme {
        write_readme_entry(config, &json)?;
    }
    Ok(Finish::Done(Box::new(Summary {
        out: config.out.clone(),
        run_dir: run_dir.clone(),
        best,
        epochs: config.options.epochs,
        plots,
        total_seconds,
        training_seconds,
        unseen_dlib,
        json,
    })))
}

/// Peak resident memory of this process in KiB (Linux).
fn peak_memory_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `N MiB` of a KiB count, or `unknown`.
fn memory_text(kib: Option<u64>) -> String {
    kib.map_or("unknown".into(), |kb| {
        format!("{:.0} MiB", kb as f64 / 1024.0)
    })
}

/// Upserts the model's entry in the README of the model's folder.
fn write_readme_entry(config: &TrainConfig, summary: &serde_json::Value) -> Result<(), TrainError> {
    let name = config
        .out
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let readme = config
        .out
        .parent()
        .unwrap_or(Path::new("."))
        .join("README.md");
    let v = &summary["validation"];
    let body = format!(
        "## Multi-task model: `{name}`\n\n\
- **Made by**: `{command}` (carivis-train {version}), seed {seed}, best epoch {epoch} of {epochs}, \
{seconds:.0} s on this machine (trunk maps from the cache when present), peak memory {memory}.\n\
- **sha256** `{sha}`, {bytes} bytes.\n\
- **Data**: {images}; faces found: {faces}. {people} people, {train} training and {val} validation images.\n\
- **Validation** ({validated}; every caricature–photo pair, shared branch): \
AUC {auc:.4}, TAR at FAR 1% {tar:.3}; every photo–photo pair, photo branch: AUC {photo_auc:.4}, TAR at FAR 1% {photo_tar:.3}{acc}.\n\
- **Exported**: each branch's mix of dlib's (0) and the trained (1) weights chosen on validation: shared and caricature {shared_mix}, photo {photo_mix}.\n\
- **Input** `input`: float32 N×3×150×150, raw RGB 0–255 (as `dlib_resnet_v1.onnx`). **Outputs** \
`emb_shared`, `emb_photo`, `emb_caricature`: float32 N×128, L2-normalised.\n",
        command = summary["command"].as_str().unwrap_or(""),
        version = env!("CARGO_PKG_VERSION"),
        seed = config.options.seed,
        epoch = summary["best_epoch"],
        epochs = config.options.epochs,
        seconds = summary["seconds_total"].as_f64().unwrap_or(0.0),
        memory = memory_text(summary["peak_memory_kib"].as_u64()),
        sha = summary["sha256"].as_str().unwrap_or(""),
        bytes = summary["bytes"],
        images = counts_text(&summary["images"]),
        faces = counts_text(&summary["faces"]),
        people = summary["people"],
        train = summary["training_images"],
        val = summary["validation_images"],
        validated = match config.split.validation_identities {
            0 => "held-back images of the training people".to_string(),
            n => format!("{n} people left out of training"),
        },
        auc = v["cross_modal_auc"].as_f64().unwrap_or(f64::NAN),
        tar = v["cross_modal_tar"].as_f64().unwrap_or(f64::NAN),
        photo_auc = v["photo_auc"].as_f64().unwrap_or(f64::NAN),
        photo_tar = v["photo_tar"].as_f64().unwrap_or(f64::NAN),
        shared_mix = summary["shared_mix"],
        photo_mix = summary["photo_mix"],
        acc = v["accuracy"].as_array().map_or(String::new(), |a| {
            let each: Vec<String> = TASK_NAMES
                .iter()
                .zip(a)
                .map(|(t, x)| format!("{t} {:.3}", x.as_f64().unwrap_or(f64::NAN)))
                .collect();
            format!("; top-1 accuracy {}", each.join(", "))
        }),
    );
    upsert_readme_section(&readme, &name, &body)
}

/// `{"a": 1, "b": 2}` as `1 a, 2 b`.
fn counts_text(counts: &serde_json::Value) -> String {
    counts.as_object().map_or_else(String::new, |map| {
        map.iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::loss::Weighting;
    use crate::train::onnx::TRUNK_LEN;
    use crate::train::optim::RmsPropConfig;
    use std::sync::atomic::AtomicUsize;

    const PEOPLE: u32 = 4;

    fn dlib_model() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/dlib_resnet_v1.onnx")
    }

    fn options() -> TrainOptions {
        TrainOptions {
            epochs: 2,
            batch: 8,
            learning_rate: 0.001,
            warmup_epochs: 1,
            lr_drop_epoch: 1,
            block_lr_multiplier: 0.1,
            unit_lr_multiplier: 10.0,
            logit_scale: 1.0,
            cosine_scale: 16.0,
            margin: 0.1,
            dlib_anchor: 0.5,
            interpolate: true,
            validated_photo_branch: true,
            centre_weight: 0.1,
            centre_alpha: 0.5,
            dropout: 0.2,
            weighting: Weighting::Dynamic,
            rmsprop: RmsPropConfig {
                epsilon: 1e-8,
                ..RmsPropConfig::default()
            },
            seed: 5,
        }
    }

    fn config(dir: &Path, start: Start) -> TrainConfig {
        TrainConfig {
            data: DataSource::Layout(dir.to_path_buf()),
            exclude_pairs: Vec::new(),
            split: SplitOptions {
                validation_fraction: 0.25,
                holdout_identities: 0,
                validation_identities: 0,
                fold: None,
                seed: 5,
            },
            no_face: NoFace::Fallback,
            bank: BankSettings {
                variants: 0,
                seed: 0,
            },
            faces: FaceSearch::default(),
            options: options(),
            select: Selection::Auc,
            base: dlib_model(),
            models_dir: dir.to_path_buf(),
            cache_root: dir.to_path_buf(),
            jobs: 1,
            out: dir.join("m.onnx"),
            run_dir: dir.join("m.onnx.train"),
            start,
            readme: false,
            command: "test".into(),
        }
    }

    /// `per_person` photos and as many caricatures of each person, with random maps that
    /// depend on the person (so there is something to learn).
    fn examples(per_person: usize, rng: &mut Rng) -> Examples {
        let mut ex = Examples {
            maps: Vec::new(),
            labels: Vec::new(),
            modalities: Vec::new(),
        };
        for person in 0..PEOPLE {
            for modality in [Modality::Photo, Modality::Caricature] {
                for _ in 0..per_person {
                    let map = |rng: &mut Rng| -> MapFeatures {
                        let values: Vec<f32> = (0..TRUNK_LEN)
                            .map(|k| rng.uniform() + f32::from(k % 4 == person as usize % 4))
                            .collect();
                        MapFeatures::from_map(&values)
                    };
                    ex.maps.push([map(rng), map(rng)]);
                    ex.labels.push(person);
                    ex.modalities.push(modality);
                }
            }
        }
        ex
    }

    fn prepared() -> Prepared {
        let mut rng = Rng::new(11);
        let base = dlib_model();
        let descriptor = DescriptorModel::split(read_model(&base).unwrap(), &base).unwrap();
        let pretrained = descriptor.pretrained_branch(&base).unwrap();
        let classes: Vec<String> = (0..PEOPLE).map(|p| format!("person{p}")).collect();
        Prepared {
            dataset: Dataset {
                images: Vec::new(),
                roles: Vec::new(),
                classes,
            },
            train: examples(6, &mut rng),
            validation: examples(2, &mut rng),
            validation_classified: true,
            holdout: None,
            descriptor,
            pretrained,
            trunk_sha256: "trunk".into(),
            summary: DataSummary {
                images: BTreeMap::new(),
                faces: BTreeMap::new(),
                excluded_unmatched: 0,
                train: 0,
                people: PEOPLE as usize,
                validation: 0,
                unseen: None,
                synthetic: 0,
            },
        }
    }

    fn session(config: &TrainConfig, events: &dyn Fn(Event), stop: &AtomicBool) -> Finish {
        let saved = saved_checkpoint(config).unwrap();
        train(config, &prepared(), saved, events, stop, Instant::now()).unwrap()
    }

    fn read(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The epochs log without its timing column.
    fn epochs_without_seconds(run_dir: &Path) -> Vec<String> {
        String::from_utf8(read(&run_dir.join("epochs.csv")))
            .unwrap()
            .lines()
            .map(|l| {
                let mut fields: Vec<&str> = l.split(',').collect();
                fields.remove(1);
                fields.join(",")
            })
            .collect()
    }

    #[test]
    fn an_interrupted_and_resumed_run_trains_exactly_what_an_uninterrupted_one_does() {
        let whole = tempfile::tempdir().unwrap();
        let never = AtomicBool::new(false);
        let whole_config = config(whole.path(), Start::Fresh);
        let finished = session(&whole_config, &|_| {}, &never);
        assert!(matches!(finished, Finish::Done(_)));

        let parts = tempfile::tempdir().unwrap();
        let stop = AtomicBool::new(false);
        let steps = AtomicUsize::new(0);
        let stop_after_four = |event: Event| {
            if let Event::Step(_) = event
                && steps.fetch_add(1, Ordering::SeqCst) + 1 == 4
            {
                stop.store(true, Ordering::SeqCst);
            }
        };
        let first = session(&config(parts.path(), Start::Fresh), &stop_after_four, &stop);
        assert!(matches!(first, Finish::Interrupted { checkpoint: true }));
        let saved = Checkpoint::load(&parts.path().join("m.onnx.train/checkpoint.json")).unwrap();
        assert_eq!((saved.steps_done, saved.next_epoch), (4, 0));
        assert_eq!(
            saved.progress.as_ref().map(|p| p.position.next_batch),
            Some(4)
        );
        let resumed = session(&config(parts.path(), Start::Resume), &|_| {}, &never);
        assert!(matches!(resumed, Finish::Done(_)));

        let (a, b) = (&whole_config.run_dir, &parts.path().join("m.onnx.train"));
        assert_eq!(read(&whole_config.out), read(&parts.path().join("m.onnx")));
        assert_eq!(read(&a.join("steps.csv")), read(&b.join("steps.csv")));
        assert_eq!(epochs_without_seconds(a), epochs_without_seconds(b));
        let (ca, cb) = (
            Checkpoint::load(&a.join(CHECKPOINT_FILE)).unwrap(),
            Checkpoint::load(&b.join(CHECKPOINT_FILE)).unwrap(),
        );
        assert_eq!(ca.tensors, cb.tensors);
        assert_eq!(read(&a.join(&ca.tensors)), read(&b.join(&cb.tensors)));
        assert_eq!(
            (ca.rng, ca.steps_done, ca.best),
            (cb.rng, cb.steps_done, cb.best)
        );
    }

    #[test]
    fn mixes_run_from_dlib_to_the_trained_weights() {
        let prepared = prepared();
        let mut trained = prepared.pretrained.clone();
        for v in &mut trained.w1 {
            *v += 1.0;
        }
        let half = mix(&prepared.pretrained, &trained, 0.5);
        assert_eq!(
            mix(&prepared.pretrained, &trained, 0.0),
            prepared.pretrained
        );
        assert_eq!(mix(&prepared.pretrained, &trained, 1.0).w1, trained.w1);
        assert!((half.w1[7] - (prepared.pretrained.w1[7] + 0.5)).abs() < 1e-6);
        assert_eq!(half.wfc, prepared.pretrained.wfc);
    }

    /// Figures of a model no better than chance, as the trained ones handed to mix_branches.
    fn chance_validation() -> Validation {
        Validation {
            accuracy: None,
            cross_modal_auc: 0.5,
            cross_modal_tar: 0.1,
            pairs: 1,
            photo_auc: 0.5,
            photo_tar: 0.1,
        }
    }

    #[test]
    fn the_photo_branch_falls_back_to_dlib_when_training_cannot_beat_it() {
        let prepared = prepared();
        let mut config = config(Path::new("/nonexistent"), Start::Fresh);
        config.options.interpolate = false;
        let validation = chance_validation();
        let dlib = dlib_validation(&prepared).unwrap();
        let scrambled = {
            let mut w = prepared.pretrained.clone();
            w.wfc.fill(1.0);
            w
        };
        let mixed = mix_branches(
            &config,
            &prepared,
            vec![scrambled.clone(); 3],
            &validation,
            &dlib,
        )
        .unwrap();
        assert_eq!(
            mixed.shared_mix, 1.0,
            "without interpolation the shared branch is trained"
        );
        assert_eq!(
            mixed.photo_mix, 0.0,
            "a photo branch that maps everyone to one point loses to dlib's"
        );
        assert!(
            mixed.weights[1] == prepared.pretrained,
            "photo = dlib's weights"
        );
        let shared_off = mixed.weights[0]
            .wfc
            .iter()
            .zip(&scrambled.wfc)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            shared_off < 1e-5,
            "shared = the trained weights ({shared_off})"
        );
    }

    #[test]
    fn the_photo_branch_is_dlibs_unless_a_validated_one_is_asked_for() {
        let prepared = prepared();
        let mut config = config(Path::new("/nonexistent"), Start::Fresh);
        config.options.validated_photo_branch = false;
        let validation = chance_validation();
        let dlib = dlib_validation(&prepared).unwrap();
        let mut trained = prepared.pretrained.clone();
        trained.b2.iter_mut().for_each(|b| *b += 0.01);
        let mixed = mix_branches(&config, &prepared, vec![trained; 3], &validation, &dlib).unwrap();
        assert_eq!(mixed.photo_mix, 0.0);
        assert!(
            mixed.weights[1] == prepared.pretrained,
            "photo = dlib's weights"
        );
    }

    #[test]
    fn an_older_checkpoint_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), Start::Resume);
        std::fs::create_dir_all(&config.run_dir).unwrap();
        let path = config.run_dir.join(CHECKPOINT_FILE);
        std::fs::write(
            &path,
            r#"{"options": {}, "data": {"no_face": "WholeImage"}}"#,
        )
        .unwrap();
        let err = saved_checkpoint(&config).unwrap_err().to_string();
        assert!(
            err.contains("checkpoint.json") && err.contains("older carivis-train"),
            "{err}"
        );
        let fresh = TrainConfig {
            start: Start::Fresh,
            ..config.clone()
        };
        let err = saved_checkpoint(&fresh).unwrap_err().to_string();
        assert!(err.contains("`--resume` to go on"), "{err}");
        std::fs::write(&path, "{").unwrap();
        let err = saved_checkpoint(&config).unwrap_err().to_string();
        assert!(err.contains("is not a checkpoint description"), "{err}");
    }

    #[test]
    fn a_resume_with_other_hyper_parameters_or_split_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let never = AtomicBool::new(false);
        let mut short = config(dir.path(), Start::Fresh);
        short.options.epochs = 1;
        assert!(matches!(session(&short, &|_| {}, &never), Finish::Done(_)));
        let mut other_lr = config(dir.path(), Start::Resume);
        other_lr.options.learning_rate = 0.01;
        let err = saved_checkpoint(&other_lr).unwrap_err().to_string();
        assert!(err.contains("hyper-parameters differ"), "{err}");
        let mut other_split = config(dir.path(), Start::Resume);
        other_split.no_face = NoFace::Skip;
        let err = saved_checkpoint(&other_split).unwrap_err().to_string();
        assert!(err.contains("data split differs"), "{err}");
        assert!(saved_checkpoint(&config(dir.path(), Start::Resume)).is_ok());
    }
}
