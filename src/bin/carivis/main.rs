//! The `carivis` command line: parses arguments, calls the library, prints. No logic of its own.

mod args;
mod caricature;
mod cli_enum;
mod eval;
mod gallery;
mod progress;
mod recognise;
mod search_args;
mod serve;
mod video;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use args::{AlignerArgs, DetectorArgs, RuntimeArgs, open_finder};
use carivis::align::{Aligner, DLIB_CHIP_SIZE};
use carivis::capture::load_image;
use carivis::detect::{FaceFinder, FoundFace};
use carivis::models::SHIPPED;
use carivis::runtime::check_model;
use carivis::types::RgbImage;
use search_args::SearchArgs;

/// Recognise people in live video and video files, also when the gallery knows them only
/// from caricatures.
#[derive(Parser)]
#[command(name = "carivis", version, propagate_version = true)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect the ONNX models carivis runs.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Find faces in images: boxes, scores and five landmarks per face, largest first.
    Detect(DetectArgs),
    /// Write the aligned chip of every face as a PNG: what the embedding model sees.
    Align(AlignArgs),
    /// Create, fill and inspect galleries of known people (photos and caricatures).
    Gallery {
        #[command(subcommand)]
        command: gallery::GalleryCommand,
    },
    /// Who is in these images? Every face is matched against a gallery.
    Identify(recognise::IdentifyArgs),
    /// Are the largest faces of two images the same person?
    Verify(recognise::VerifyArgs),
    /// Print the embeddings of every face, as JSON, for other tools.
    Embed(recognise::EmbedArgs),
    /// Annotate video files offline: every frame, boxes and names drawn, MP4 (+ JSON Lines) out.
    Annotate(video::AnnotateArgs),
    /// Recognise people live from a camera (or a file played in real time) in a window.
    Live(video::LiveArgs),
    /// Measure the video pipeline: fps, per-stage times, latency, queue occupancy.
    Bench(video::BenchArgs),
    /// List the cameras found.
    Cameras,
    /// Serve recognition over HTTP (identify, verify, enrol) with a live view of the streams.
    ///
    /// Requests are answered like `carivis identify`, `verify` and `gallery add` (full-resolution
    /// detection with the retry passes); the --input streams run like `carivis live`
    /// (--max-side, --min-face, --detect-every apply to them). Routes: POST /v1/identify,
    /// POST /v1/verify, GET /v1/gallery, POST|DELETE /v1/gallery/NAME, GET /v1/streams/I.mjpeg,
    /// GET /v1/events, GET /healthz, GET /metrics, GET / (a page with the streams). An
    /// enrolment is used by the running streams at once. SIGINT or SIGTERM stops accepting,
    /// finishes the requests in flight, ends the streams, closes the sinks and exits 0.
    Serve(serve::ServeArgs),
    /// Write synthetic caricatures of photos: the face's shape exaggerated, optionally cartoon-styled.
    ///
    /// The largest face in each image is found, the offsets of its five landmarks (eyes, nose
    /// tip, mouth corners) from the mean face are multiplied by --strength, and the image is
    /// warped to match by a thin-plate spline that keeps the image border in place. Each
    /// caricature is written as DIR/STEM_caricature.png (STEM: the input's file name without
    /// its extension), replacing any earlier one. An image that cannot be read or has no face
    /// is reported and skipped; the exit status is 1 if any was.
    Caricature(caricature::CaricatureArgs),
    /// Measure accuracy on labelled data: verification pairs, identification.
    Eval {
        #[command(subcommand)]
        command: eval::EvalCommand,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Load every shipped model, print file, checksum, inputs/outputs and provider, and run
    /// one inference; exits non-zero on any problem.
    Check {
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
}

#[derive(Args)]
struct DetectArgs {
    /// Image files to search.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// One JSON object per image on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Keep only the largest face.
    #[arg(long)]
    largest: bool,
    #[command(flatten)]
    detector: DetectorArgs,
    #[command(flatten)]
    search: SearchArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
struct AlignArgs {
    /// Image files.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// Folder for the chips (created if missing); files are named IMAGE-STEM_faceN.png.
    #[arg(long, short, value_name = "DIR")]
    out: PathBuf,
    /// Keep only the largest face.
    #[arg(long)]
    largest: bool,
    #[command(flatten)]
    aligner: AlignerArgs,
    #[command(flatten)]
    detector: DetectorArgs,
    #[command(flatten)]
    search: SearchArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    carivis::logging::init(cli.verbose);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Models {
            command: ModelsCommand::Check { runtime },
        } => models_check(&runtime),
        Command::Detect(args) => detect(&args),
        Command::Align(args) => align(&args),
        Command::Gallery { command } => gallery::run(command),
        Command::Identify(args) => recognise::identify(&args),
        Command::Verify(args) => recognise::verify(&args),
        Command::Embed(args) => recognise::embed(&args),
        Command::Annotate(args) => video::annotate(&args),
        Command::Live(args) => video::live(&args),
        Command::Bench(args) => video::bench(&args),
        Command::Cameras => video::cameras(),
        Command::Serve(args) => serve::serve(&args),
        Command::Caricature(args) => caricature::run(&args),
        Command::Eval { command } => eval::run(command),
    }
}

fn models_check(args: &RuntimeArgs) -> Result<ExitCode> {
    let runtime = args.runtime()?;
    let dir = args.models_dir();
    println!("ONNX Runtime library: {}", runtime.library().display());
    println!("models folder:        {}", dir.display());
    let mut failed = 0;
    for spec in &SHIPPED {
        match check_model(&runtime, &dir, spec) {
            Ok(report) => {
                println!("\n{}", report.path.display());
                println!("  sha256   {}", report.sha256);
                for input in &report.inputs {
                    println!("  input    {input}");
                }
                for output in &report.outputs {
                    println!("  output   {output}");
                }
                println!("  provider {}", report.provider);
                println!("  ok: one inference in {:.1} ms", report.run_ms);
            }
            Err(e) => {
                failed += 1;
                println!("\n{}\n  FAILED: {e}", dir.join(spec.file).display());
            }
        }
    }
    if failed > 0 {
        eprintln!(
            "error: {failed} of {} models failed the check",
            SHIPPED.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    println!("\nall {} models ok", SHIPPED.len());
    Ok(ExitCode::SUCCESS)
}

/// Reads an image and finds its faces; errors name the file.
fn load_and_detect(finder: &mut FaceFinder, path: &Path) -> Result<(RgbImage, Vec<FoundFace>)> {
    let image = load_image(path)?;
    let faces = finder
        .find(&image)
        .with_context(|| path.display().to_string())?;
    Ok((image, faces))
}

/// Runs `each` on every path, reporting failures on stderr one by one; exit code 1 if any failed.
pub fn for_each_file(paths: &[PathBuf], mut each: impl FnMut(&Path) -> Result<()>) -> ExitCode {
    let failed = paths
        .iter()
        .filter(|path| match each(path) {
            Ok(()) => false,
            Err(e) => {
                eprintln!("error: {e:#}");
                true
            }
        })
        .count();
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[derive(serde::Serialize)]
struct ImageFaces<'a> {
    image: &'a Path,
    width: u32,
    height: u32,
    faces: Vec<FoundFace>,
}

fn detect(args: &DetectArgs) -> Result<ExitCode> {
    let mut detector = open_finder(
        &args.runtime.runtime()?,
        &args.runtime.models_dir(),
        args.detector.config(args.largest),
        args.search.retry(),
    )?;
    Ok(for_each_file(&args.images, |path| {
        let (image, faces) = load_and_detect(&mut detector, path)?;
        print_faces(
            &ImageFaces {
                image: path,
                width: image.width(),
                height: image.height(),
                faces,
            },
            args.json,
        )
    }))
}

fn align(args: &AlignArgs) -> Result<ExitCode> {
    let mut detector = open_finder(
        &args.runtime.runtime()?,
        &args.runtime.models_dir(),
        args.detector.config(args.largest),
        args.search.retry(),
    )?;
    let aligner = Aligner::new(args.aligner.mode(), DLIB_CHIP_SIZE);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    Ok(for_each_file(&args.images, |path| {
        let (image, faces) = load_and_detect(&mut detector, path)?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (i, found) in faces.iter().enumerate() {
            let chip = aligner
                .align(&image, &found.face)
                .with_context(|| format!("{}: face {i}", path.display()))?;
            let target = args.out.join(format!("{stem}_face{i}.png"));
            chip.save(&target)
                .with_context(|| format!("cannot write {}", target.display()))?;
            println!("{}", target.display());
        }
        Ok(())
    }))
}

fn print_faces(result: &ImageFaces<'_>, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(result)?);
        return Ok(());
    }
    println!(
        "{} ({}×{}): {} face(s)",
        result.image.display(),
        result.width,
        result.height,
        result.faces.len()
    );
    for (i, found) in result.faces.iter().enumerate() {
        let face = &found.face;
        let b = face.bbox;
        let [le, re, ..] = face.landmarks;
        println!(
            "  #{i:<2} box ({:7.1},{:7.1})–({:7.1},{:7.1})  score {:.4}  eyes ({:.1},{:.1}) ({:.1},{:.1})  pass {}",
            b.x1, b.y1, b.x2, b.y2, face.score, le[0], le[1], re[0], re[1], found.pass
        );
    }
    Ok(())
}
