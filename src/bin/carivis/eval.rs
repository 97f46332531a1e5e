//! `carivis eval verify|identify`: accuracy of the recognition chain on labelled data, as a
//! JSON report with ROC/CMC plots and thresholds a gallery can import.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::ProgressBar;

use crate::args::{BranchArg, PairFormatArg, RecognizerArgs, asked_or_per_core};
use crate::progress::show_job;
use crate::search_args::{FallbackArg, SearchArgs};
use carivis::eval::cache::default_cache_dir;
use carivis::eval::embed_map::{EmbedMapInput, embed_map};
use carivis::eval::identify::IdentifyOptions;
use carivis::eval::protocol::{named_by_pairs, read_layout, read_manifest};
use carivis::eval::{
    BranchChoice, EvalError, Faces, IdentifyInput, ImageSummary, VerifyInput, identify, plots,
    verify,
};
use carivis::jobs::Progress;
use carivis::pipeline::still::{FaceSearch, Fallback};
use carivis::types::LabelledImage;

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Caricature–photo verification on a pair file (CaVI or WebCaricature format): 10-fold
    /// accuracy, ROC AUC, TAR at FAR 1% and 0.1%, EER.
    Verify(VerifyArgs),
    /// Caricature→photo and photo→caricature identification: rank-1/5/10 (CMC) on all images
    /// and over seeded random splits, open-set DIR at FAR 1%, pair thresholds per direction.
    Identify(IdentifyArgs),
    /// A t-SNE map of a few people's photos and caricatures as the model embeds them (shared
    /// branch) beside the same map by a baseline model (default: the dlib descriptor), as
    /// OUT/embed-map.png; people the model never saw show whether it generalises.
    EmbedMap(EmbedMapArgs),
}

#[derive(Args)]
pub struct CommonArgs {
    /// Embedding branch to compare (auto: shared across modalities, the modality's own within
    /// one; a single-output model has only `shared`).
    #[arg(long, value_enum, default_value_t = BranchArg::Auto)]
    branch: BranchArg,
    /// Folder for report.json and the plots (created if missing).
    #[arg(long, value_name = "DIR", default_value = "eval-out")]
    out: PathBuf,
    /// Embedding cache folder [default: $CARIVIS_CACHE, else $XDG_CACHE_HOME/carivis/eval,
    /// else ~/.cache/carivis/eval].
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Worker threads embedding images, each with its own model sessions [default: CPU cores].
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// The chip embedded for an image where no detection pass finds a face.
    #[arg(long, value_enum, default_value_t = FallbackArg::BestWindow)]
    fallback: FallbackArg,
    #[command(flatten)]
    recognizer: RecognizerArgs,
    #[command(flatten)]
    search: SearchArgs,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The pair file.
    #[arg(long, value_name = "FILE")]
    pairs: PathBuf,
    /// Folder the pair file's paths are relative to (letter case is ignored when needed).
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// Pair-file format [default: recognised from the first line].
    #[arg(long, value_enum)]
    format: Option<PairFormatArg>,
    /// Cross-validation folds (pair i in fold i mod N).
    #[arg(long, default_value_t = 10)]
    folds: usize,
    #[command(flatten)]
    common: CommonArgs,
}

/// The labels' file or folder: exactly one of the two.
#[derive(Args)]
#[group(id = "labels", required = true, multiple = false)]
pub struct LabelSource {
    /// Manifest CSV `path,identity,modality,…` (paths relative to its folder).
    #[arg(long, value_name = "CSV")]
    manifest: Option<PathBuf>,
    /// Folder laid out as `Real/<identity>/*` and `Caricature/<identity>/*`.
    #[arg(long, value_name = "DIR")]
    layout: Option<PathBuf>,
}

/// Where the labelled images come from, and which of them to use.
#[derive(Args)]
pub struct LabelArgs {
    #[command(flatten)]
    source: LabelSource,
    /// With --manifest: only rows whose path starts with PREFIX (e.g. `cavi/`).
    #[arg(long, value_name = "PREFIX")]
    only: Option<String>,
    /// Only the images named by this pair file (repeatable): identification among images a
    /// trained model never saw (e.g. CaVI's testing_1.txt, which carivis-train excludes).
    #[arg(long, value_name = "FILE")]
    only_pairs: Vec<PathBuf>,
}

impl LabelArgs {
    /// The manifest or folder, and its labelled images (those the pair files name, if any).
    fn images(&self) -> Result<(PathBuf, Vec<LabelledImage>)> {
        let (source, images) = match (&self.source.manifest, &self.source.layout) {
            (Some(csv), _) => (csv.clone(), read_manifest(csv, self.only.as_deref())?),
            (None, Some(dir)) => (dir.clone(), read_layout(dir)?),
            (None, None) => anyhow::bail!("give --manifest CSV or --layout DIR"),
        };
        Ok((source, only_named_by(images, &self.only_pairs)?))
    }
}

#[derive(Args)]
pub struct IdentifyArgs {
    #[command(flatten)]
    labels: LabelArgs,
    /// Random probe/gallery splits.
    #[arg(long, default_value_t = 10)]
    splits: usize,
    /// Seed of the first split.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fraction of identities left out of the gallery per split (open set).
    #[arg(long, default_value_t = 0.1)]
    unknown: f64,
    /// False-alarm rate for open-set DIR and the thresholds.
    #[arg(long, default_value_t = 0.01)]
    far: f64,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct EmbedMapArgs {
    #[command(flatten)]
    labels: LabelArgs,
    /// People drawn (among those with photos and caricatures).
    #[arg(long, default_value_t = 10)]
    people: usize,
    /// Seed of the draw and of the layouts.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Model of the first panel [default: MODELS/dlib_resnet_v1.onnx].
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
}

/// Runs an eval subcommand.
pub fn run(command: EvalCommand) -> Result<ExitCode> {
    match command {
        EvalCommand::Verify(args) => run_verify(&args),
        EvalCommand::Identify(args) => run_identify(&args),
        EvalCommand::EmbedMap(args) => run_embed_map(&args),
    }
}

/// Opens one detector/aligner/embedder per worker and runs `evaluate` with them, an embedding
/// progress bar and Ctrl-C (which stops embedding; what was embedded stays cached).
fn with_faces<T>(
    common: &CommonArgs,
    evaluate: impl FnOnce(Faces) -> Result<T, EvalError>,
) -> Result<T> {
    with_faces_of(common, &[&common.recognizer], |mut faces| {
        evaluate(faces.remove(0))
    })
}

/// As [`with_faces`], with one set of workers per recogniser (one Ctrl-C flag, one bar).
fn with_faces_of<T>(
    common: &CommonArgs,
    recognizers: &[&RecognizerArgs],
    evaluate: impl FnOnce(Vec<Faces>) -> Result<T, EvalError>,
) -> Result<T> {
    let jobs = asked_or_per_core(common.jobs);
    let workers = recognizers
        .iter()
        .map(|r| {
            (0..jobs)
                .map(|_| r.still_faces(search(common), true))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    let bar = ProgressBar::new(0);
    let progress = |p: Progress| show_job(&bar, p, "embedding");
    let cache_dir = common.cache.clone().unwrap_or_else(default_cache_dir);
    let faces = workers
        .into_iter()
        .map(|workers| Faces {
            workers,
            cache_dir: cache_dir.clone(),
            progress: &progress,
            stop: &stop,
        })
        .collect();
    let result = evaluate(faces);
    bar.finish_and_clear();
    Ok(result?)
}

/// How faces are searched for, with the fallback chip.
fn search(common: &CommonArgs) -> FaceSearch {
    FaceSearch {
        retry: common.search.retry(),
        fallback: common.fallback.into(),
    }
}

/// The options as recorded in reports.
fn options_json(common: &CommonArgs) -> serde_json::Value {
    let r = &common.recognizer;
    serde_json::json!({
        "embedder": r.embedder_path(),
        "align": format!("{:?}", r.aligner.mode()),
        "detector": format!("{:?}", r.detector.config(true)),
        "search": search(common).describe(),
        "branch": BranchChoice::from(common.branch),
        "batch": r.batch,
        "device": format!("{:?}", r.runtime.device),
    })
}

/// Writes `report` (with options, time and version added) as OUT/report.json and says where.
fn write_report(
    common: &CommonArgs,
    report: impl serde::Serialize,
    command: &str,
    started: Instant,
) -> Result<ExitCode> {
    let path = write_report_file(&common.out, report, command, options_json(common), started)?;
    println!(
        "report: {} ({:.0} s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn write_report_file(
    out: &Path,
    report: impl serde::Serialize,
    command: &str,
    options: serde_json::Value,
    started: Instant,
) -> Result<PathBuf> {
    let mut value = serde_json::to_value(report)?;
    value["command"] = serde_json::json!(command);
    value["carivis_version"] = serde_json::json!(env!("CARGO_PKG_VERSION"));
    value["options"] = options;
    value["seconds"] = serde_json::json!(started.elapsed().as_secs_f64());
    let path = out.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&value)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn print_images(images: &ImageSummary, fallback: Fallback) {
    println!(
        "images: {} ({} from cache, {} embedded now, {} unreadable), {} paths ({} mentions) matched only ignoring case, {} missing",
        images.images,
        images.counts.cached,
        images.counts.computed,
        images.unreadable.len(),
        images.resolved_ignoring_case,
        images.mentions_resolved_ignoring_case,
        images.missing.len()
    );
    for (modality, d) in &images.detection {
        let passes: Vec<String> = d.by_pass.iter().map(|(p, n)| format!("{p} {n}")).collect();
        println!(
            "  {modality:<10} face found in {}/{} ({:.1}%; by pass: {}), {fallback} fallback for {}",
            d.detected,
            d.images,
            100.0 * d.rate,
            passes.join(", "),
            d.fallback
        );
    }
    for path in &images.missing {
        eprintln!("warning: no file matches {path}");
    }
    for reason in &images.unreadable {
        eprintln!("warning: left out: {reason}");
    }
}

fn run_verify(args: &VerifyArgs) -> Result<ExitCode> {
    let started = Instant::now();
    std::fs::create_dir_all(&args.common.out)
        .with_context(|| format!("cannot create {}", args.common.out.display()))?;
    let input = VerifyInput {
        pairs_file: args.pairs.clone(),
        root: args.root.clone(),
        format: args.format.map(Into::into),
        folds: args.folds,
        fars: vec![0.01, 0.001],
        branch: args.common.branch.into(),
    };
    let report = with_faces(&args.common, |faces| verify(&input, faces))?;
    let v = &report.verification;
    print_images(&report.images, args.common.fallback.into());
    println!(
        "pairs: {} scored ({} same, {} different), {} skipped",
        v.pairs, v.genuine, v.impostor, report.dataset.pairs_skipped
    );
    println!(
        "accuracy ({}-fold): {:.2}% ± {:.2}   AUC {:.4}   EER {:.2}%",
        v.folds,
        100.0 * v.accuracy.mean,
        100.0 * v.accuracy.std,
        v.auc,
        100.0 * v.eer
    );
    for t in &v.tar_at_far {
        println!(
            "TAR @ FAR {}%: {:.2}% ± {:.2} (held-out FAR {:.2}%)",
            100.0 * t.far_target,
            100.0 * t.tar.mean,
            100.0 * t.tar.std,
            100.0 * t.far_measured.mean
        );
    }
    for (direction, m) in &report.thresholds.measured {
        println!("threshold {direction} at FAR 1%: {:.4}", m.value);
    }
    let roc = args.common.out.join("roc.png");
    if let Err(e) = plots::roc_png(
        &roc,
        "ROC: caricature–photo verification",
        &[(format!("AUC {:.3}", v.auc), &v.roc)],
    ) {
        eprintln!("warning: {e}");
    }
    write_report(&args.common, &report, "verify", started)
}

fn run_identify(args: &IdentifyArgs) -> Result<ExitCode> {
    let started = Instant::now();
    std::fs::create_dir_all(&args.common.out)
        .with_context(|| format!("cannot create {}", args.common.out.display()))?;
    let (source, images) = args.labels.images()?;
    let input = IdentifyInput {
        source,
        images,
        branch: args.common.branch.into(),
        options: IdentifyOptions {
            splits: args.splits,
            seed: args.seed,
            unknown_fraction: args.unknown,
            far: args.far,
            max_rank: 20,
            impostor_pairs: 200_000,
        },
    };
    let report = with_faces(&args.common, |faces| identify(&input, faces))?;
    print_images(&report.images, args.common.fallback.into());
    println!("identities: {}", report.identities);
    for d in &report.directions {
        println!(
            "{} → {}: all {} probes vs {} entries: rank-1 {:.2}%, rank-5 {:.2}%, rank-10 {:.2}%",
            d.probe,
            d.gallery,
            d.all.probes,
            d.gallery_entries,
            100.0 * d.all.rank1,
            100.0 * d.all.rank5,
            100.0 * d.all.rank10
        );
        println!(
            "  {} splits, {} identities left out: rank-1 {:.2}% ± {:.2}, rank-5 {:.2}% ± {:.2}, rank-10 {:.2}% ± {:.2}, DIR @ FAR {}% {:.2}% ± {:.2}",
            args.splits,
            d.splits.unknown_identities,
            100.0 * d.splits.rank1.mean,
            100.0 * d.splits.rank1.std,
            100.0 * d.splits.rank5.mean,
            100.0 * d.splits.rank5.std,
            100.0 * d.splits.rank10.mean,
            100.0 * d.splits.rank10.std,
            100.0 * args.far,
            100.0 * d.splits.dir_at_far.mean,
            100.0 * d.splits.dir_at_far.std
        );
    }
    for p in &report.pairs {
        println!(
            "pairs {}–{}: {} same, {} different (sampled): AUC {:.4}, EER {:.2}%, threshold @ FAR {}% {:.4} (TAR {:.2}%)",
            p.a,
            p.b,
            p.genuine,
            p.impostor,
            p.auc,
            100.0 * p.eer,
            100.0 * args.far,
            p.threshold_at_far,
            100.0 * p.tar_at_far
        );
    }
    let curves: Vec<(String, &[f64])> = report
        .directions
        .iter()
        .map(|d| (format!("{} → {}", d.probe, d.gallery), d.all.cmc.as_slice()))
        .collect();
    let cmc = args.common.out.join("cmc.png");
    if let Err(e) = plots::cmc_png(&cmc, "CMC: cross-modal identification", &curves) {
        eprintln!("warning: {e}");
    }
    write_report(&args.common, &report, "identify", started)
}

fn run_embed_map(args: &EmbedMapArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let common = &args.common;
    std::fs::create_dir_all(&common.out)
        .with_context(|| format!("cannot create {}", common.out.display()))?;
    let (_, images) = args.labels.images()?;
    let mut baseline = common.recognizer.clone();
    baseline.embedder = Some(args.baseline.clone().unwrap_or_else(|| {
        common
            .recognizer
            .runtime
            .models_dir()
            .join(carivis::embed::DLIB_SPEC.file)
    }));
    let title = |r: &RecognizerArgs| {
        let path = r.embedder_path();
        let name = path.file_name().unwrap_or(path.as_os_str());
        format!("{} (shared branch)", name.to_string_lossy())
    };
    let input = EmbedMapInput {
        images,
        people: args.people,
        seed: args.seed,
        out: common.out.join("embed-map.png"),
    };
    let recognizers = [&baseline, &common.recognizer];
    let report = with_faces_of(common, &recognizers, |faces| {
        let models = recognizers.iter().map(|r| title(r)).zip(faces).collect();
        embed_map(&input, models)
    })?;
    for panel in &report.panels {
        print_images(&panel.images, common.fallback.into());
        println!("{}: {} images drawn", panel.title, panel.points);
    }
    println!(
        "{} people: {}; map: {}",
        report.people.len(),
        report.people.join(", "),
        report.out.display()
    );
    write_report(common, &report, "embed-map", started)
}

/// The images named by the pair files (all of them when none is given).
fn only_named_by(images: Vec<LabelledImage>, pair_files: &[PathBuf]) -> Result<Vec<LabelledImage>> {
    if pair_files.is_empty() {
        return Ok(images);
    }
    let (named, unmatched) = named_by_pairs(&images, pair_files)?;
    if named.is_empty() {
        anyhow::bail!("none of the labelled images is named by the pair files");
    }
    if unmatched > 0 {
        eprintln!("{unmatched} images named by the pair files are not among the labelled images");
    }
    Ok(images
        .into_iter()
        .enumerate()
        .filter(|(i, _)| named.contains(i))
        .map(|(_, image)| image)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The eval commands as clap parses them.
    #[derive(Parser)]
    struct Eval {
        #[command(subcommand)]
        command: EvalCommand,
    }

    fn parses(args: &[&str]) -> bool {
        Eval::try_parse_from(std::iter::once("eval").chain(args.iter().copied())).is_ok()
    }

    #[test]
    fn labels_come_from_one_source_with_any_filters() {
        let filtered = [
            "--manifest",
            "m.csv",
            "--only",
            "cavi/",
            "--only-pairs",
            "t.txt",
        ];
        for command in ["identify", "embed-map"] {
            let args: Vec<&str> = std::iter::once(command).chain(filtered).collect();
            assert!(parses(&args), "{args:?}");
            assert!(parses(&[command, "--layout", "dir"]));
            assert!(!parses(&[
                command,
                "--manifest",
                "m.csv",
                "--layout",
                "dir"
            ]));
            assert!(
                !parses(&[command, "--only", "cavi/"]),
                "a source is required"
            );
        }
    }
}
