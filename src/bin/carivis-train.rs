//! `carivis-train`: trains the multi-task photo/caricature embedding model on cached trunk maps
//! and exports it to ONNX for the pipeline. Orchestration and printing only; the method lives in
//! `carivis::train`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use carivis::detect::DetectorConfig;
use carivis::eval::protocol::named_by_pairs;
use carivis::eval::protocol::{LabelledImage, read_layout, read_manifest};
use carivis::models::default_models_dir;
use carivis::runtime::{Device, Runtime, RuntimeConfig, sha256_hex};
use carivis::train::data::{Dataset, Role, SplitOptions, check_images, split};
use carivis::train::features::{ImageMaps, MapCache, MapWorker, image_maps};
use carivis::train::loss::Weighting;
use carivis::train::net::{BranchWeights, MapFeatures, TASK_NAMES};
use carivis::train::onnx::{DescriptorModel, encode, read_model, write_model};
use carivis::train::optim::RmsPropConfig;
use carivis::train::report::{
    CsvLog, EPOCH_HEADER, epoch_row, plot_log, step_header, step_row, upsert_readme_section,
};
use carivis::train::trainer::{EpochProgress, Examples, TrainOptions, Trainer, Validation};
use carivis::train::{Rng, write_atomically};
use carivis::types::Modality;

/// Train the multi-task photo/caricature embedding model (shared, photo and caricature
/// branches on dlib's frozen trunk; softmax + centre loss per task; dynamic task weights) and
/// export it as one ONNX model for `carivis --embedder`.
///
/// Faces are found and aligned by carivis's own detector; the trunk's maps are cached, so a
/// second run starts training at once. Writes the model, and in the run folder a checkpoint,
/// `steps.csv`, `epochs.csv`, `losses.png`, `weights.png` and `summary.json`; adds the model's
/// entry to the README of the model's folder. Ctrl-C saves a checkpoint; `--resume` goes on.
#[derive(Parser)]
#[command(name = "carivis-train", version)]
struct Cli {
    /// Labelled images: CSV `path,identity,modality,…` (paths relative to the CSV).
    #[arg(
        long,
        value_name = "CSV",
        conflicts_with = "cavi",
        required_unless_present = "cavi"
    )]
    manifest: Option<PathBuf>,
    /// Only manifest rows whose path starts with this (e.g. `cavi/`).
    #[arg(long, value_name = "PREFIX", requires = "manifest")]
    only: Option<String>,
    /// Labelled images in CaVI's layout: DIR/Real/<person>/*, DIR/Caricature/<person>/*
    /// (identities are the folder names in lower case; CaVI spells some people differently
    /// in its two folders, so prefer a manifest with canonical identities where there is one).
    #[arg(long, value_name = "DIR")]
    cavi: Option<PathBuf>,
    /// The model to write (ONNX: outputs emb_shared, emb_photo, emb_caricature).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Never train on images named by this pair file (repeatable), nor on byte-identical copies.
    #[arg(long, value_name = "FILE")]
    exclude_pairs: Vec<PathBuf>,
    /// Share of each person's photos and caricatures held back to choose the epoch.
    #[arg(long, default_value_t = 0.1, value_parser = fraction)]
    validation_fraction: f64,
    /// Leave this many whole people out of training, for an unseen-people check.
    #[arg(long, default_value_t = 0, value_name = "N")]
    holdout_identities: usize,
    /// Passes over the training images.
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(2..))]
    batch: u32,
    /// Learning rate of the classifiers (the blocks use --block-lr-multiplier times it).
    #[arg(long, default_value_t = 0.001)]
    lr: f64,
    /// Epochs at the start in which only the classifiers learn (the pretrained blocks wait
    /// until the classifiers are no longer random).
    #[arg(long, default_value_t = 2)]
    warmup_epochs: usize,
    /// Epoch (0-based) from which learning rates are divided by 10.
    #[arg(long, default_value_t = 20)]
    lr_drop_epoch: usize,
    /// Task weighting: dynamic (the paper), fixed (equal), naive (unit trained on Σ w·L).
    #[arg(long, value_enum, default_value_t = Weighting::Dynamic)]
    weighting: Weighting,
    /// The pretrained blocks' learning rate as a multiple of the classifiers'.
    #[arg(long, default_value_t = 0.1)]
    block_lr_multiplier: f64,
    /// The weight unit's learning rate as a multiple of the branches'.
    #[arg(long, default_value_t = 10.0)]
    unit_lr_multiplier: f64,
    /// Scale of the weight unit's normalised logits (the original used 1 or 2).
    #[arg(long, default_value_t = 1.0)]
    logit_scale: f64,
    /// Classifier logits: S × cosine(embedding, class weight) when S > 0; 0 gives the
    /// original's linear classifier on the raw 128-d projection.
    #[arg(long, default_value_t = 16.0, value_name = "S")]
    cosine_scale: f64,
    /// Weight of the centre loss.
    #[arg(long, default_value_t = 0.1)]
    centre_weight: f64,
    /// α of the centre update c ← c − (1−α)·mean(c − x).
    #[arg(long, default_value_t = 0.5)]
    centre_alpha: f32,
    /// Dropout before the projection (the original used 0.5; on CaVI it cost caricature
    /// accuracy, see models/README.md).
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    dropout: f64,
    /// RMSProp ε (the original used 1.0, which makes RMSProp plain momentum SGD for small
    /// gradients; 1e-8 adapts the step per parameter).
    #[arg(long, default_value_t = 1e-8)]
    rmsprop_epsilon: f64,
    /// Clip gradients to this global norm (0: off).
    #[arg(long, default_value_t = 5.0)]
    clip_norm: f64,
    /// Seed of the split, initialisation, shuffling, mirroring and dropout.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The descriptor model whose trunk is frozen and whose last block starts each branch
    /// [default: MODELS/dlib_resnet_v1.onnx].
    #[arg(long, value_name = "FILE")]
    base: Option<PathBuf>,
    /// Folder with the MTCNN models [default: $CARIVIS_MODELS, else the checkout's models/].
    #[arg(long, value_name = "DIR")]
    models: Option<PathBuf>,
    /// Cache of trunk maps [default: $CARIVIS_CACHE/train, else ~/.cache/carivis/train].
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Folder for the checkpoint, logs and plots [default: the model's path with `.train`].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Validation figure that chooses the epoch to export: TAR at FAR 1% or AUC, both over
    /// every caricature–photo pair of the validation images (shared branch).
    #[arg(long, value_enum, default_value_t = Selection::Tar)]
    select: Selection,
    /// Continue from the run folder's checkpoint.
    #[arg(long, conflicts_with = "restart")]
    resume: bool,
    /// Start over even though the run folder holds a checkpoint (which is replaced).
    #[arg(long)]
    restart: bool,
    /// Images where the detector finds no face: train on the whole image as the chip (what
    /// `carivis eval` and galleries' `--whole-image` do), or skip them.
    #[arg(long, value_enum, default_value_t = NoFace::WholeImage)]
    no_face: NoFace,
    /// Threads that detect faces and run the trunk (each also uses one ONNX Runtime thread).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Do not add the model's entry to the README of its folder.
    #[arg(long)]
    no_readme: bool,
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    carivis::logging::init(cli.verbose);
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Parses a number in [0, 1).
fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is not in [0, 1)")),
        Err(_) => Err(format!("{text:?} is not a number")),
    }
}

/// What to do with images without a detected face.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum NoFace {
    /// Use the whole image as the chip.
    WholeImage,
    /// Leave the image out.
    Skip,
}

/// The validation figure that chooses the exported epoch.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Selection {
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

/// What the checkpoint's JSON side records.
#[derive(serde::Serialize, serde::Deserialize)]
struct CheckpointMeta {
    options: TrainOptions,
    data: DataRecord,
    classes: Vec<String>,
    next_epoch: usize,
    /// Where the interrupted epoch `next_epoch` stands (`None` at an epoch boundary).
    progress: Option<EpochProgress>,
    steps_done: usize,
    rng: Rng,
    best: Option<Best>,
    trunk_sha256: String,
    /// The safetensors file (in the run folder) holding this checkpoint's tensors.
    tensors: String,
    seconds: f64,
}

/// What decides which images train and validate; a resumed run must use the same.
#[derive(Clone, PartialEq, Debug, serde::Serialize, serde::Deserialize)]
struct DataRecord {
    split: SplitOptions,
    exclude_pairs: Vec<PathBuf>,
    no_face: String,
}

impl DataRecord {
    fn of(cli: &Cli) -> Self {
        Self {
            split: split_options(cli),
            exclude_pairs: cli.exclude_pairs.clone(),
            no_face: format!("{:?}", cli.no_face),
        }
    }
}

/// The best validation so far and the epoch that reached it.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Best {
    epoch: usize,
    validation: Validation,
    holdout: Option<Validation>,
}

/// Everything prepared before the first step.
struct Prepared {
    dataset: Dataset,
    train: Examples,
    validation: Examples,
    holdout: Option<Examples>,
    descriptor: DescriptorModel,
    pretrained: BranchWeights,
    trunk_sha256: String,
    face_counts: BTreeMap<String, usize>,
    excluded_unmatched: usize,
}

fn run(cli: &Cli) -> Result<ExitCode> {
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    let run_dir = cli.run_dir.clone().unwrap_or_else(|| {
        let mut dir = cli.out.clone().into_os_string();
        dir.push(".train");
        PathBuf::from(dir)
    });
    check_out_path(&cli.out)?;
    let meta_path = run_dir.join("checkpoint.json");
    let saved = saved_checkpoint(cli, &meta_path)?;
    let Some(prepared) = prepare(cli, &stop)? else {
        eprintln!("interrupted while preparing; the cached maps are kept, run again to go on");
        return Ok(ExitCode::from(130));
    };
    print_data_summary(&prepared);
    let options = train_options(cli);
    let mut trainer = Trainer::new(
        &prepared.pretrained,
        prepared.dataset.classes.len(),
        options,
    )?;
    let (first_epoch, mut progress, mut best, previous_seconds) = match saved {
        Some(meta) => resume(&mut trainer, meta, &run_dir, &prepared)?,
        None => (0, None, None, 0.0),
    };
    if trainer.steps_done() == 0 {
        let before = trainer.validate(&prepared.validation, false)?;
        println!(
            "before training (every branch = dlib's last block): validation caricature–photo AUC {:.4}, TAR@FAR1% {:.3}",
            before.cross_modal_auc, before.cross_modal_tar
        );
        if let Some(holdout) = &prepared.holdout {
            let unseen = trainer.validate(holdout, false)?;
            println!(
                "before training: unseen people caricature–photo AUC {:.4}, TAR@FAR1% {:.3}",
                unseen.cross_modal_auc, unseen.cross_modal_tar
            );
        }
    }
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    let mut steps = CsvLog::open(&run_dir.join("steps.csv"), &step_header(), !cli.resume)?;
    let mut epochs = CsvLog::open(&run_dir.join("epochs.csv"), EPOCH_HEADER, !cli.resume)?;
    let train_started = Instant::now();
    let per_epoch = trainer.steps_per_epoch(&prepared.train);
    let bar = step_bar((cli.epochs.saturating_sub(first_epoch) * per_epoch) as u64);
    let mut interrupted = false;
    for epoch in first_epoch..cli.epochs {
        let epoch_started = Instant::now();
        let mut weight_sum = [0f64; 3];
        let mut step_count = 0usize;
        let mut epoch_progress = progress
            .take()
            .unwrap_or_else(|| trainer.start_epoch(&prepared.train));
        bar.inc(epoch_progress.next_batch as u64);
        let completed =
            trainer.train_epoch(epoch, &prepared.train, &mut epoch_progress, &stop, |r| {
                for (s, w) in weight_sum.iter_mut().zip(r.weight) {
                    *s += f64::from(w);
                }
                step_count += 1;
                if let Err(e) = steps.line(&step_row(r)) {
                    tracing::error!("{e}");
                }
                bar.set_message(format!(
                    "epoch {} loss {:.2}/{:.2}/{:.2} w {:.2}/{:.2}/{:.2}",
                    epoch + 1,
                    r.loss[0],
                    r.loss[1],
                    r.loss[2],
                    r.weight[0],
                    r.weight[1],
                    r.weight[2]
                ));
                bar.inc(1);
            })?;
        steps.flush()?;
        if !completed {
            interrupted = true;
            let position = Position {
                next_epoch: epoch,
                progress: Some(epoch_progress),
                seconds: previous_seconds + started.elapsed().as_secs_f64(),
            };
            save_checkpoint(cli, &trainer, &run_dir, &prepared, position, &best)?;
            break;
        }
        let validation = trainer.validate(&prepared.validation, true)?;
        let holdout = match &prepared.holdout {
            Some(h) => Some(trainer.validate(h, false)?),
            None => None,
        };
        let mean_weight = weight_sum.map(|s| s / step_count.max(1) as f64);
        epochs.line(&epoch_row(
            epoch,
            epoch_started.elapsed().as_secs_f64(),
            &validation,
            mean_weight,
        ))?;
        epochs.flush()?;
        bar.println(format!(
            "epoch {:>3}: validation accuracy {} · caricature–photo AUC {:.4}, TAR@FAR1% {:.3} · weights {:.3}/{:.3}/{:.3}{}",
            epoch + 1,
            format_accuracy(&validation),
            validation.cross_modal_auc,
            validation.cross_modal_tar,
            mean_weight[0],
            mean_weight[1],
            mean_weight[2],
            holdout.as_ref().map_or(String::new(), |h| format!(
                " · unseen people AUC {:.4}, TAR@FAR1% {:.3}",
                h.cross_modal_auc, h.cross_modal_tar
            ))
        ));
        let improved = best
            .as_ref()
            .is_none_or(|b: &Best| cli.select.score(&validation) > cli.select.score(&b.validation));
        if improved {
            export(
                &prepared.descriptor,
                &trainer.branch_weights()?,
                &run_dir.join(BEST_MODEL),
            )?;
            best = Some(Best {
                epoch,
                validation,
                holdout,
            });
        }
        let position = Position {
            next_epoch: epoch + 1,
            progress: None,
            seconds: previous_seconds + started.elapsed().as_secs_f64(),
        };
        save_checkpoint(cli, &trainer, &run_dir, &prepared, position, &best)?;
    }
    bar.finish_and_clear();
    let total_seconds = previous_seconds + started.elapsed().as_secs_f64();
    if interrupted {
        eprintln!(
            "interrupted: checkpoint saved in {}; `--resume` goes on from the next step ({} is unchanged)",
            run_dir.display(),
            cli.out.display()
        );
        return Ok(ExitCode::from(130));
    }
    let Some(best) = best else {
        bail!(
            "no epoch was trained (--epochs {} and the checkpoint is at epoch {first_epoch})",
            cli.epochs
        );
    };
    publish_best(&run_dir, &cli.out)?;
    let plots = plot_log(&run_dir.join("steps.csv"), &run_dir, per_epoch.max(1))?;
    let summary = summary_json(
        cli,
        &prepared,
        &trainer,
        &best,
        total_seconds,
        train_started.elapsed().as_secs_f64(),
    )?;
    write_atomically(
        &run_dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    if !cli.no_readme {
        write_readme_entry(cli, &summary)?;
    }
    println!(
        "wrote {} (best epoch {} of {}: caricature–photo AUC {:.4}, TAR@FAR1% {:.3}); logs and plots in {}: {}",
        cli.out.display(),
        best.epoch + 1,
        cli.epochs,
        best.validation.cross_modal_auc,
        best.validation.cross_modal_tar,
        run_dir.display(),
        plots
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "time {:.0} s (training {:.0} s), peak memory {}",
        total_seconds,
        train_started.elapsed().as_secs_f64(),
        peak_memory().map_or("unknown".into(), |kb| format!(
            "{:.0} MiB",
            kb as f64 / 1024.0
        ))
    );
    Ok(ExitCode::SUCCESS)
}

/// Refuses an output path that cannot be written before hours of work.
fn check_out_path(out: &Path) -> Result<()> {
    if out.extension().and_then(|e| e.to_str()) != Some("onnx") {
        bail!("{}: the output must be an .onnx file", out.display());
    }
    if out.is_dir() {
        bail!("{}: is a folder", out.display());
    }
    Ok(())
}

fn split_options(cli: &Cli) -> SplitOptions {
    SplitOptions {
        validation_fraction: cli.validation_fraction,
        holdout_identities: cli.holdout_identities,
        seed: cli.seed,
    }
}

fn train_options(cli: &Cli) -> TrainOptions {
    TrainOptions {
        epochs: cli.epochs,
        batch: cli.batch as usize,
        learning_rate: cli.lr,
        warmup_epochs: cli.warmup_epochs,
        lr_drop_epoch: cli.lr_drop_epoch,
        block_lr_multiplier: cli.block_lr_multiplier,
        unit_lr_multiplier: cli.unit_lr_multiplier,
        logit_scale: cli.logit_scale,
        cosine_scale: cli.cosine_scale,
        centre_weight: cli.centre_weight,
        centre_alpha: cli.centre_alpha,
        dropout: cli.dropout as f32,
        weighting: cli.weighting,
        rmsprop: RmsPropConfig {
            epsilon: cli.rmsprop_epsilon,
            clip_norm: cli.clip_norm,
            ..RmsPropConfig::default()
        },
        seed: cli.seed,
    }
}

/// Reads the images, excludes, splits, and computes (or loads) every trunk map; `None` when
/// Ctrl-C stopped it.
fn prepare(cli: &Cli, stop: &AtomicBool) -> Result<Option<Prepared>> {
    let (source, images) = read_images(cli)?;
    check_images(&images, &source)?;
    let (mut excluded, excluded_unmatched) = named_by_pairs(&images, &cli.exclude_pairs)?;
    if !cli.exclude_pairs.is_empty() && excluded.is_empty() {
        bail!(
            "none of the images named by {} is in {}: is it the right protocol for this data?",
            cli.exclude_pairs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            source.display()
        );
    }
    let Some(hashes) = hash_images(&images, stop)? else {
        return Ok(None);
    };
    let excluded_hashes: HashSet<&String> = excluded.iter().map(|&i| &hashes[i]).collect();
    let copies: Vec<usize> = (0..images.len())
        .filter(|i| !excluded.contains(i) && excluded_hashes.contains(&hashes[*i]))
        .collect();
    if !copies.is_empty() {
        tracing::info!(
            "{} byte-identical copies of excluded images also excluded",
            copies.len()
        );
    }
    excluded.extend(copies);
    let dataset = split(images, &excluded, &split_options(cli))?;
    let base = cli
        .base
        .clone()
        .unwrap_or_else(|| models_dir(cli).join(carivis::embed::DLIB_SPEC.file));
    let descriptor = DescriptorModel::split(read_model(&base)?, &base)?;
    let pretrained = descriptor.pretrained_branch(&base)?;
    let trunk_bytes = encode(&descriptor.trunk());
    let trunk_sha256 = sha256_hex(&trunk_bytes);
    let cache_root = cli.cache.clone().unwrap_or_else(default_cache_root);
    let whole_image = matches!(cli.no_face, NoFace::WholeImage);
    let settings = format!(
        "{:?} five-point {}{}",
        DetectorConfig::default(),
        carivis::train::features::CHIP_SIZE,
        if whole_image {
            " whole image when no face"
        } else {
            ""
        }
    );
    let cache = MapCache::new(&cache_root, &trunk_sha256, &settings);
    let trunk_path = cache.dir().join("trunk.onnx");
    write_atomically(&trunk_path, &trunk_bytes)?;
    let wanted: Vec<usize> = (0..dataset.images.len())
        .filter(|&i| dataset.roles[i] != Role::Excluded)
        .collect();
    let maps = compute_maps(cli, &dataset, &wanted, &hashes, &cache, &trunk_path, stop)?;
    if stop.load(Ordering::SeqCst) {
        return Ok(None);
    }
    let mut face_counts = BTreeMap::new();
    for (&i, outcome) in wanted.iter().zip(&maps) {
        let kind = match outcome {
            ImageMaps::Face(_) => "face",
            ImageMaps::WholeImage(_) => "whole image (no face)",
            ImageMaps::NoFace => "no face",
            ImageMaps::Failed(e) => {
                tracing::warn!("{e}");
                "unreadable"
            }
        };
        *face_counts
            .entry(format!("{} {kind}", dataset.images[i].modality))
            .or_default() += 1;
    }
    let by_image: std::collections::HashMap<usize, ImageMaps> =
        wanted.into_iter().zip(maps).collect();
    let examples = |role: Role, label: &dyn Fn(usize) -> Option<u32>| {
        let mut ex = Examples {
            maps: Vec::new(),
            labels: Vec::new(),
            modalities: Vec::new(),
        };
        for i in dataset.with_role(role) {
            let pair = match by_image.get(&i) {
                Some(ImageMaps::Face(pair) | ImageMaps::WholeImage(pair)) => Some(pair),
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
    let validation = examples(Role::Validation, &class_of);
    let holdout_people: Vec<String> = dataset
        .with_role(Role::Holdout)
        .into_iter()
        .map(|i| dataset.images[i].identity.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let holdout = (!holdout_people.is_empty()).then(|| {
        examples(Role::Holdout, &|i: usize| {
            holdout_people
                .binary_search(&dataset.images[i].identity)
                .ok()
                .map(|p| p as u32)
        })
    });
    if train.is_empty() {
        bail!("no training image has a detectable face");
    }
    check_validation_pairs(&validation)?;
    Ok(Some(Prepared {
        dataset,
        train,
        validation,
        holdout,
        descriptor,
        pretrained,
        trunk_sha256,
        face_counts,
        excluded_unmatched,
    }))
}

fn read_images(cli: &Cli) -> Result<(PathBuf, Vec<LabelledImage>)> {
    match (&cli.manifest, &cli.cavi) {
        (Some(csv), _) => Ok((csv.clone(), read_manifest(csv, cli.only.as_deref())?)),
        (None, Some(dir)) => Ok((dir.clone(), read_layout(dir)?)),
        (None, None) => bail!("give --manifest CSV or --cavi DIR"),
    }
}

fn models_dir(cli: &Cli) -> PathBuf {
    cli.models.clone().unwrap_or_else(default_models_dir)
}

fn default_cache_root() -> PathBuf {
    carivis::eval::cache::default_cache_dir()
        .parent()
        .map_or_else(|| PathBuf::from(".cache"), |p| p.join("train"))
}

/// sha256 of every image (cache keys and duplicate detection), with a progress bar; `None`
/// when Ctrl-C stopped it.
fn hash_images(images: &[LabelledImage], stop: &AtomicBool) -> Result<Option<Vec<String>>> {
    let bar = count_bar("hashing", images.len() as u64);
    let mut hashes = Vec::with_capacity(images.len());
    for image in images {
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let bytes = std::fs::read(&image.path)
            .with_context(|| format!("cannot read {}", image.path.display()))?;
        hashes.push(sha256_hex(&bytes));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Some(hashes))
}

/// Refuses a validation set that cannot choose an epoch: it needs a person with both a photo
/// and a caricature, and two different people.
fn check_validation_pairs(validation: &Examples) -> Result<()> {
    let people_with = |m: Modality| -> std::collections::BTreeSet<u32> {
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
        bail!(
            "the validation images ({}) have no same-person and different-person caricature–photo pairs to choose the epoch with: raise --validation-fraction (people need about 1/fraction photos and caricatures each)",
            validation.len()
        );
    }
    Ok(())
}

fn compute_maps(
    cli: &Cli,
    dataset: &Dataset,
    wanted: &[usize],
    hashes: &[String],
    cache: &MapCache,
    trunk: &Path,
    stop: &AtomicBool,
) -> Result<Vec<ImageMaps>> {
    let whole_image = matches!(cli.no_face, NoFace::WholeImage);
    let runtime = Runtime::init(RuntimeConfig {
        device: Device::Auto,
        intra_threads: 1,
    })?;
    let models = models_dir(cli);
    let workers = (0..cli.jobs.max(1))
        .map(|_| {
            MapWorker::open(
                &runtime,
                &models,
                trunk,
                DetectorConfig::default(),
                whole_image,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let paths: Vec<PathBuf> = wanted
        .iter()
        .map(|&i| dataset.images[i].path.clone())
        .collect();
    let wanted_hashes: Vec<String> = wanted.iter().map(|&i| hashes[i].clone()).collect();
    let bar = count_bar("faces and trunk maps", paths.len() as u64);
    let maps = image_maps(workers, &paths, &wanted_hashes, cache, &bar, stop)?;
    bar.finish_and_clear();
    Ok(maps)
}

fn count_bar(what: &str, len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{bar:30}}] {{pos}}/{{len}} images, {{per_sec}}, eta {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

fn step_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("training [{bar:25}] {pos}/{len} steps, eta {eta} · {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

fn print_data_summary(p: &Prepared) {
    let counts = p.dataset.counts();
    println!(
        "images: {}",
        counts
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "faces: {}",
        p.face_counts
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if p.excluded_unmatched > 0 {
        println!(
            "{} images named by the pair files are not in the data",
            p.excluded_unmatched
        );
    }
    println!(
        "training on {} images of {} people; validation {} images{}",
        p.train.len(),
        p.dataset.classes.len(),
        p.validation.len(),
        p.holdout.as_ref().map_or(String::new(), |h| format!(
            "; unseen people {} images",
            h.len()
        ))
    );
}

fn format_accuracy(v: &Validation) -> String {
    v.accuracy.map_or("-".into(), |a| {
        TASK_NAMES
            .iter()
            .zip(a)
            .map(|(t, x)| format!("{t} {x:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// Writes the multi-task model from the trainer's current branches.
fn export(descriptor: &DescriptorModel, weights: &[BranchWeights], out: &Path) -> Result<()> {
    let branches: Vec<(&str, &BranchWeights)> = TASK_NAMES.iter().copied().zip(weights).collect();
    write_model(&descriptor.export(&branches), out)?;
    Ok(())
}

/// The best epoch's model inside the run folder; copied to `--out` when training ends.
const BEST_MODEL: &str = "best.onnx";

/// Copies the best model to the output path atomically.
fn publish_best(run_dir: &Path, out: &Path) -> Result<()> {
    let best = run_dir.join(BEST_MODEL);
    let bytes = std::fs::read(&best).with_context(|| format!("cannot read {}", best.display()))?;
    write_atomically(out, &bytes)?;
    Ok(())
}

/// Where a checkpoint stands in training.
struct Position {
    next_epoch: usize,
    progress: Option<EpochProgress>,
    seconds: f64,
}

/// Writes the tensors to a new file, then the description naming it (so a crash between the
/// two leaves the previous checkpoint whole), then removes older tensor files.
fn save_checkpoint(
    cli: &Cli,
    trainer: &Trainer,
    run_dir: &Path,
    prepared: &Prepared,
    position: Position,
    best: &Option<Best>,
) -> Result<()> {
    let tensors = format!("checkpoint-{}.safetensors", trainer.steps_done());
    write_atomically(&run_dir.join(&tensors), &trainer.state_bytes()?)?;
    let meta = CheckpointMeta {
        options: trainer.options().clone(),
        data: DataRecord::of(cli),
        classes: prepared.dataset.classes.clone(),
        next_epoch: position.next_epoch,
        progress: position.progress,
        steps_done: trainer.steps_done(),
        rng: trainer.rng().clone(),
        best: best.clone(),
        trunk_sha256: prepared.trunk_sha256.clone(),
        tensors: tensors.clone(),
        seconds: position.seconds,
    };
    write_atomically(
        &run_dir.join("checkpoint.json"),
        serde_json::to_string_pretty(&meta)?.as_bytes(),
    )?;
    for entry in std::fs::read_dir(run_dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("checkpoint-") && name.ends_with(".safetensors") && name != tensors {
            std::fs::remove_file(entry.path()).ok();
        }
    }
    Ok(())
}

/// The checkpoint to resume from (`--resume`), read before any work; refuses to start afresh
/// over an existing checkpoint unless `--restart`.
fn saved_checkpoint(cli: &Cli, meta_path: &Path) -> Result<Option<CheckpointMeta>> {
    if !cli.resume {
        if meta_path.exists() && !cli.restart {
            bail!(
                "{} holds a checkpoint: `--resume` to go on, or `--restart` to start over and replace it",
                meta_path.display()
            );
        }
        return Ok(None);
    }
    let text = std::fs::read_to_string(meta_path)
        .with_context(|| format!("--resume: cannot read {}", meta_path.display()))?;
    let meta: CheckpointMeta = serde_json::from_str(&text).with_context(|| {
        format!(
            "--resume: {} is not a checkpoint description",
            meta_path.display()
        )
    })?;
    let mut wanted = train_options(cli);
    wanted.epochs = meta.options.epochs;
    if wanted != meta.options {
        bail!(
            "--resume: the hyper-parameters differ from the checkpoint's (only --epochs may change): checkpoint {:?}",
            meta.options
        );
    }
    if DataRecord::of(cli) != meta.data {
        bail!(
            "--resume: the data split differs from the checkpoint's (seed, --validation-fraction, --holdout-identities, --exclude-pairs, --no-face): checkpoint {:?}",
            meta.data
        );
    }
    Ok(Some(meta))
}

/// Restores the trainer from a checkpoint made on the same people and trunk, and cuts the
/// logs back to what the checkpoint has seen.
fn resume(
    trainer: &mut Trainer,
    meta: CheckpointMeta,
    run_dir: &Path,
    prepared: &Prepared,
) -> Result<(usize, Option<EpochProgress>, Option<Best>, f64)> {
    if meta.classes != prepared.dataset.classes {
        bail!("--resume: the checkpoint was trained on other people than this data holds");
    }
    if meta.trunk_sha256 != prepared.trunk_sha256 {
        bail!("--resume: the checkpoint was trained on another trunk model");
    }
    let tensors_path = run_dir.join(&meta.tensors);
    let tensors = candle_core::safetensors::load(&tensors_path, &candle_core::Device::Cpu)
        .with_context(|| format!("--resume: cannot read {}", tensors_path.display()))?;
    trainer.restore(tensors, meta.rng, meta.steps_done)?;
    keep_log_rows(&run_dir.join("steps.csv"), 1, meta.steps_done)?;
    keep_log_rows(&run_dir.join("epochs.csv"), 0, meta.next_epoch)?;
    eprintln!(
        "resuming at epoch {}{}",
        meta.next_epoch + 1,
        meta.progress
            .as_ref()
            .map_or(String::new(), |p| format!(", batch {}", p.next_batch + 1))
    );
    Ok((meta.next_epoch, meta.progress, meta.best, meta.seconds))
}

/// Keeps the header and the rows of a CSV log whose integer column `column` is below `limit`
/// (rows a crash or an interrupt wrote after the checkpoint are dropped).
fn keep_log_rows(path: &Path, column: usize, limit: usize) -> Result<()> {
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
    write_atomically(path, format!("{}\n", kept.join("\n")).as_bytes())?;
    Ok(())
}

/// Peak resident memory of this process in KiB (Linux).
fn peak_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn summary_json(
    cli: &Cli,
    p: &Prepared,
    trainer: &Trainer,
    best: &Best,
    total_seconds: f64,
    training_seconds: f64,
) -> Result<serde_json::Value> {
    let model =
        std::fs::read(&cli.out).with_context(|| format!("cannot read {}", cli.out.display()))?;
    Ok(serde_json::json!({
        "model": cli.out,
        "sha256": sha256_hex(&model),
        "bytes": model.len(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "options": trainer.options(),
        "images": p.dataset.counts(),
        "faces": p.face_counts,
        "people": p.dataset.classes.len(),
        "training_images": p.train.len(),
        "validation_images": p.validation.len(),
        "best_epoch": best.epoch + 1,
        "validation": best.validation,
        "unseen_people": best.holdout,
        "seconds_total": total_seconds,
        "seconds_training": training_seconds,
        "peak_memory_kib": peak_memory(),
        "trunk_sha256": p.trunk_sha256,
    }))
}

fn write_readme_entry(cli: &Cli, summary: &serde_json::Value) -> Result<()> {
    let name = cli
        .out
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let readme = cli.out.parent().unwrap_or(Path::new(".")).join("README.md");
    let v = &summary["validation"];
    let body = format!(
        "## Multi-task model: `{name}`\n\n\
- **Made by**: `{command}` (carivis-train {version}), seed {seed}, best epoch {epoch} of {epochs}, \
{seconds:.0} s on this machine (trunk maps from the cache when present), peak memory {memory}.\n\
- **sha256** `{sha}`, {bytes} bytes.\n\
- **Data**: {images}; faces found: {faces}. {people} people, {train} training and {val} validation images.\n\
- **Validation** (held-back images of the training people, shared branch, every caricature–photo pair): \
AUC {auc:.4}, TAR at FAR 1% {tar:.3}, top-1 accuracy {acc}.\n\
- **Input** `input`: float32 N×3×150×150, raw RGB 0–255 (as `dlib_resnet_v1.onnx`). **Outputs** \
`emb_shared`, `emb_photo`, `emb_caricature`: float32 N×128, L2-normalised.\n",
        command = summary["command"].as_str().unwrap_or(""),
        version = env!("CARGO_PKG_VERSION"),
        seed = cli.seed,
        epoch = summary["best_epoch"],
        epochs = cli.epochs,
        seconds = summary["seconds_total"].as_f64().unwrap_or(0.0),
        memory = summary["peak_memory_kib"]
            .as_u64()
            .map_or("unknown".into(), |kb| format!(
                "{:.0} MiB",
                kb as f64 / 1024.0
            )),
        sha = summary["sha256"].as_str().unwrap_or(""),
        bytes = summary["bytes"],
        images = counts_text(&summary["images"]),
        faces = counts_text(&summary["faces"]),
        people = summary["people"],
        train = summary["training_images"],
        val = summary["validation_images"],
        auc = v["cross_modal_auc"].as_f64().unwrap_or(f64::NAN),
        tar = v["cross_modal_tar"].as_f64().unwrap_or(f64::NAN),
        acc = v["accuracy"].as_array().map_or("-".into(), |a| TASK_NAMES
            .iter()
            .zip(a)
            .map(|(t, x)| format!("{t} {:.3}", x.as_f64().unwrap_or(f64::NAN)))
            .collect::<Vec<_>>()
            .join(", ")),
    );
    upsert_readme_section(&readme, &name, &body)?;
    Ok(())
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

    #[test]
    fn fractions_must_be_in_the_unit_interval() {
        assert_eq!(fraction("0.25"), Ok(0.25));
        assert_eq!(fraction("0"), Ok(0.0));
        assert!(fraction("1").unwrap_err().contains("not in [0, 1)"));
        assert!(fraction("half").unwrap_err().contains("not a number"));
    }
}
