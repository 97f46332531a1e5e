//! `carivis-train`: trains the multi-task photo/caricature embedding model on cached trunk maps
//! and exports it to ONNX for the pipeline. Parsing, progress display and printing only; the
//! session lives in `carivis::train::session`.

#[path = "carivis/cli_enum.rs"]
mod cli_enum;
#[path = "carivis/progress.rs"]
mod progress;
#[path = "carivis/search_args.rs"]
mod search_args;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::ProgressBar;
use search_args::{FallbackArg, SearchArgs};

use carivis::models::default_models_dir;
use carivis::pipeline::still::FaceSearch;
use carivis::train::bank::BankSettings;
use carivis::train::data::SplitOptions;
use carivis::train::folds::{self, FoldEvent, FoldsConfig};
use carivis::train::loss::Weighting;
use carivis::train::optim::RmsPropConfig;
use carivis::train::session::{
    self, DataSource, Event, Finish, NoFace, Selection, Start, TrainConfig,
};
use carivis::train::trainer::TrainOptions;

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
    #[arg(long, value_name = "FILE", required_unless_present = "cv_identities")]
    out: Option<PathBuf>,
    /// Run the unseen-people protocol instead of training one model: split the people into
    /// this many identity-disjoint folds (seeded), train on the others and measure each fold's
    /// people beside dlib's descriptor; resumes at the first fold without figures.
    #[arg(long, value_name = "FOLDS", requires = "report", conflicts_with_all = ["out", "holdout_identities"], value_parser = clap::value_parser!(u32).range(2..))]
    cv_identities: Option<u32>,
    /// Folder of the unseen-people protocol: each fold's model, run and figures, and
    /// `report.md`, `report.json`, `roc.png`.
    #[arg(long, value_name = "DIR", requires = "cv_identities")]
    report: Option<PathBuf>,
    /// Never train on images named by this pair file (repeatable), nor on byte-identical copies.
    #[arg(long, value_name = "FILE")]
    exclude_pairs: Vec<PathBuf>,
    /// Share of each person's photos and caricatures held back to choose the epoch.
    #[arg(long, default_value_t = 0.1, value_parser = fraction)]
    validation_fraction: f64,
    /// Leave this many whole people out of training, for an unseen-people check.
    #[arg(long, default_value_t = 0, value_name = "N")]
    holdout_identities: usize,
    /// Choose the epoch on this many whole people left out of training instead of on
    /// --validation-fraction of every person's images [default: 0; 16 with --cv-identities].
    #[arg(long, value_name = "N")]
    validation_identities: Option<usize>,
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
    #[arg(long, value_enum, default_value_t = WeightingArg::Dynamic)]
    weighting: WeightingArg,
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
    /// Additive margin on the true class's cosine (CosFace; with --cosine-scale > 0).
    #[arg(long, default_value_t = 0.0, value_name = "M")]
    margin: f64,
    /// Weight of the term that keeps the photos' shared and photo embeddings near dlib's
    /// descriptor (mean 1 − cosine), so that training does not forget what dlib knows.
    #[arg(long, default_value_t = 0.0, value_name = "WEIGHT")]
    dlib_anchor: f64,
    /// Synthetic caricatures per training photo added to training (`carivis caricature`'s
    /// warp at a seeded strength 1.3–2.3, half of them cartoon-styled, with alignment jitter
    /// and brightness/contrast changes; cached like the maps); 0 = none.
    #[arg(long, default_value_t = 0, value_name = "K")]
    synthetic_caricatures: usize,
    /// Export the trained branches as they are (the photo branch may still be dlib's), instead
    /// of each branch's best mix of dlib's and the trained weights on validation.
    #[arg(long)]
    no_interpolation: bool,
    /// Let the validation people choose a trained photo branch (or mix) over dlib's descriptor
    /// when it scores higher there; by default `emb_photo` is dlib's descriptor, which no
    /// validation-chosen photo branch has beaten on held-out people (README).
    #[arg(long)]
    validated_photo_branch: bool,
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
    #[arg(long, value_enum, default_value_t = SelectionArg::Tar)]
    select: SelectionArg,
    /// Continue from the run folder's checkpoint.
    #[arg(long, conflicts_with = "restart")]
    resume: bool,
    /// Start over even though the run folder holds a checkpoint (which is replaced).
    #[arg(long)]
    restart: bool,
    /// Images where no detection pass finds a face: train on the fallback chip (what
    /// `carivis eval` embeds), or skip them.
    #[arg(long, value_enum, default_value_t = NoFaceArg::Fallback)]
    no_face: NoFaceArg,
    /// The fallback chip of images without a face.
    #[arg(long, value_enum, default_value_t = FallbackArg::BestWindow)]
    fallback: FallbackArg,
    #[command(flatten)]
    search: SearchArgs,
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

cli_enum! {
    /// How the three task losses are weighted.
    WeightingArg => Weighting {
        /// The unit is trained on Σ wᵢ/(Lᵢ+0.01): weight moves to the hardest task.
        Dynamic,
        /// Equal fixed weights.
        Fixed,
        /// The unit is trained on Σ wᵢ·Lᵢ like the rest.
        Naive,
    }
}

cli_enum! {
    /// What to do with images without a detected face.
    NoFaceArg => NoFace {
        /// Use the fallback chip.
        Fallback,
        /// Leave the image out.
        Skip,
    }
}

cli_enum! {
    /// The validation figure that chooses the exported epoch.
    SelectionArg => Selection {
        /// TAR at FAR 1% (the operating point of galleries' thresholds).
        Tar,
        /// Area under the ROC curve.
        Auc,
    }
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

/// The session's configuration, built once from the command line.
fn config(cli: &Cli) -> TrainConfig {
    let models_dir = cli.models.clone().unwrap_or_else(default_models_dir);
    let data = match (&cli.manifest, &cli.cavi) {
        (Some(csv), _) => DataSource::Manifest {
            csv: csv.clone(),
            only: cli.only.clone(),
        },
        (None, dir) => DataSource::Layout(dir.clone().unwrap_or_default()),
    };
    let out = cli
        .out
        .clone()
        .or_else(|| cli.report.as_ref().map(|r| r.join("model.onnx")))
        .unwrap_or_default();
    let start = match (cli.resume, cli.restart) {
        (true, _) => Start::Resume,
        (false, true) => Start::Restart,
        (false, false) => Start::Fresh,
    };
    TrainConfig {
        data,
        exclude_pairs: cli.exclude_pairs.clone(),
        split: SplitOptions {
            validation_fraction: cli.validation_fraction,
            holdout_identities: cli.holdout_identities,
            validation_identities: cli
                .validation_identities
                .unwrap_or(if cli.cv_identities.is_some() { 16 } else { 0 }),
            fold: None,
            seed: cli.seed,
        },
        no_face: cli.no_face.into(),
        bank: BankSettings {
            variants: cli.synthetic_caricatures,
            seed: cli.seed,
        },
        faces: FaceSearch {
            fallback: cli.fallback.into(),
            ..cli.search.search()
        },
        options: TrainOptions {
            epochs: cli.epochs,
            batch: cli.batch as usize,
            learning_rate: cli.lr,
            warmup_epochs: cli.warmup_epochs,
            lr_drop_epoch: cli.lr_drop_epoch,
            block_lr_multiplier: cli.block_lr_multiplier,
            unit_lr_multiplier: cli.unit_lr_multiplier,
            logit_scale: cli.logit_scale,
            cosine_scale: cli.cosine_scale,
            margin: cli.margin,
            dlib_anchor: cli.dlib_anchor,
            interpolate: !cli.no_interpolation,
            validated_photo_branch: cli.validated_photo_branch,
            centre_weight: cli.centre_weight,
            centre_alpha: cli.centre_alpha,
            dropout: cli.dropout as f32,
            weighting: cli.weighting.into(),
            rmsprop: RmsPropConfig {
                epsilon: cli.rmsprop_epsilon,
                clip_norm: cli.clip_norm,
                ..RmsPropConfig::default()
            },
            seed: cli.seed,
        },
        select: cli.select.into(),
        base: cli
            .base
            .clone()
            .unwrap_or_else(|| models_dir.join(carivis::embed::DLIB_SPEC.file)),
        models_dir,
        cache_root: cli.cache.clone().unwrap_or_else(default_cache_root),
        jobs: cli.jobs,
        out: out.clone(),
        run_dir: cli.run_dir.clone().unwrap_or_else(|| {
            let mut dir = out.into_os_string();
            dir.push(".train");
            PathBuf::from(dir)
        }),
        start,
        readme: !cli.no_readme,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    }
}

/// `$CARIVIS_CACHE/../train`, else `~/.cache/carivis/train` (beside the evaluation cache).
fn default_cache_root() -> PathBuf {
    carivis::eval::cache::default_cache_dir()
        .parent()
        .map_or_else(|| PathBuf::from(".cache"), |p| p.join("train"))
}

fn run(cli: &Cli) -> Result<ExitCode> {
    let config = config(cli);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    if let (Some(folds), Some(report)) = (cli.cv_identities, &cli.report) {
        return run_folds(config, folds as usize, report, &stop);
    }
    let bar = ProgressBar::new(0);
    let finish = session::run(&config, &|event| show(&bar, event), &stop)?;
    bar.finish_and_clear();
    match finish {
        Finish::Done(summary) => {
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Finish::Interrupted { checkpoint: false } => {
            eprintln!("interrupted while preparing; the cached maps are kept, run again to go on");
            Ok(ExitCode::from(130))
        }
        Finish::Interrupted { checkpoint: true } => {
            eprintln!(
                "interrupted: checkpoint saved in {}; `--resume` goes on from the next step ({} is unchanged)",
                config.run_dir.display(),
                config.out.display()
            );
            Ok(ExitCode::from(130))
        }
    }
}

/// The unseen-people protocol: every fold, then the report's table.
fn run_folds(
    session: TrainConfig,
    folds: usize,
    report: &std::path::Path,
    stop: &AtomicBool,
) -> Result<ExitCode> {
    let config = FoldsConfig {
        session,
        folds,
        report: report.to_path_buf(),
    };
    let bar = ProgressBar::new(0);
    let results = folds::run_folds(
        &config,
        &|event| {
            match event {
            FoldEvent::Start { fold, count } => {
                bar.suspend(|| eprintln!("fold {fold} of {count}"));
            }
            FoldEvent::Skipped(r) => eprintln!("fold {}: figures already in the report", r.fold),
            FoldEvent::Session(event) => show(&bar, event),
            FoldEvent::Done(r) => bar.suspend(|| {
                eprintln!(
                    "fold {}: caricature–photo AUC {:.4} (dlib {:.4}), TAR@FAR1% {:.3} ({:.3}), rank-1 C→P {:.3} ({:.3}), photo AUC {:.4} ({:.4})",
                    r.fold,
                    r.model.auc,
                    r.dlib.auc,
                    r.model.tar_far_1,
                    r.dlib.tar_far_1,
                    r.model.rank1_cp,
                    r.dlib.rank1_cp,
                    r.model.photo_auc,
                    r.dlib.photo_auc
                )
            }),
        }
        },
        stop,
    )?;
    bar.finish_and_clear();
    match results {
        Some(results) => {
            println!("{}", folds::markdown(&results));
            println!("report in {}", report.display());
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("interrupted: run the same command again to resume at this fold");
            Ok(ExitCode::from(130))
        }
    }
}

/// Shows the session's progress events on `bar` and prints the others as lines.
fn show(bar: &ProgressBar, event: Event) {
    match event {
        Event::Jobs(p) => progress::show_job(bar, p, "faces and trunk maps"),
        Event::Training { total, done } => {
            progress::restyle(
                bar,
                "training [{bar:25}] {pos}/{len} steps, eta {eta} · {msg}",
            );
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
        Event::Step(_) => {
            bar.set_message(event.to_string());
            bar.inc(1);
        }
        Event::Resumed { .. } => eprintln!("{event}"),
        Event::Epoch { .. } => bar.println(event.to_string()),
        Event::Prepared(_) | Event::Before { .. } => println!("{event}"),
    }
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
