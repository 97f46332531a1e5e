//! The `carivis` command line: parses arguments, calls the library, prints. No logic of its own.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use carivis::align::{AlignMode, Aligner, DLIB_CHIP_SIZE};
use carivis::capture::load_image;
use carivis::detect::{DetectorConfig, Mtcnn};
use carivis::models::{SHIPPED, default_models_dir};
use carivis::runtime::{Device, Runtime, RuntimeConfig, check_model};
use carivis::types::{Face, RgbImage};

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

/// Where models come from and how they run.
#[derive(Args, Clone)]
struct RuntimeArgs {
    /// Execution provider: auto (CUDA when available, else CPU), cpu, or cuda (fail if unavailable).
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// ONNX Runtime intra-op threads per model session.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Folder holding the ONNX models [default: $CARIVIS_MODELS, else the checkout's models/].
    #[arg(long, value_name = "DIR")]
    models: Option<PathBuf>,
}

impl RuntimeArgs {
    fn runtime(&self) -> Result<Runtime> {
        Ok(Runtime::init(RuntimeConfig {
            device: self.device,
            intra_threads: self.threads.max(1),
        })?)
    }

    fn models_dir(&self) -> PathBuf {
        self.models.clone().unwrap_or_else(default_models_dir)
    }
}

/// MTCNN settings (defaults are facenet-pytorch's).
#[derive(Args, Clone)]
struct DetectorArgs {
    /// Smallest face to find, in pixels.
    #[arg(long, default_value_t = 20.0)]
    min_face: f32,
    /// P-Net, R-Net and O-Net score thresholds.
    #[arg(long, value_delimiter = ',', num_args = 3, default_values_t = [0.6, 0.7, 0.7])]
    thresholds: Vec<f32>,
    /// Keep at most N faces per image (the largest).
    #[arg(long, value_name = "N")]
    max_faces: Option<usize>,
    /// Keep only the largest face.
    #[arg(long)]
    largest: bool,
    /// Detect on a copy whose longer side is at most PX (faster on large frames); boxes are
    /// mapped back to full resolution.
    #[arg(long, value_name = "PX")]
    max_side: Option<u32>,
}

impl DetectorArgs {
    fn config(&self) -> DetectorConfig {
        DetectorConfig {
            min_face: self.min_face,
            thresholds: [self.thresholds[0], self.thresholds[1], self.thresholds[2]],
            max_faces: self.max_faces,
            largest_only: self.largest,
            max_side: self.max_side,
            ..DetectorConfig::default()
        }
    }
}

#[derive(Args)]
struct DetectArgs {
    /// Image files to search.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// One JSON object per image on stdout instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    detector: DetectorArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// How faces become chips.
#[derive(Args, Clone)]
struct AlignerArgs {
    /// Alignment: five-point (similarity transform to a template) or crop (box + margin).
    #[arg(long, value_enum, default_value_t = AlignChoice::FivePoint)]
    align: AlignChoice,
    /// Margin on each side for --align crop, as a fraction of the box size.
    #[arg(long, default_value_t = 0.2)]
    crop_margin: f32,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum AlignChoice {
    FivePoint,
    Crop,
}

impl AlignerArgs {
    fn aligner(&self) -> Aligner {
        let mode = match self.align {
            AlignChoice::FivePoint => AlignMode::FivePoint,
            AlignChoice::Crop => AlignMode::CropOnly {
                margin: self.crop_margin,
            },
        };
        Aligner::new(mode, DLIB_CHIP_SIZE)
    }
}

#[derive(Args)]
struct AlignArgs {
    /// Image files.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// Folder for the chips (created if missing); files are named IMAGE-STEM_faceN.png.
    #[arg(long, short, value_name = "DIR")]
    out: PathBuf,
    #[command(flatten)]
    aligner: AlignerArgs,
    #[command(flatten)]
    detector: DetectorArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Models {
            command: ModelsCommand::Check { runtime },
        } => models_check(&runtime),
        Command::Detect(args) => detect(&args),
        Command::Align(args) => align(&args),
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

#[derive(serde::Serialize)]
struct ImageFaces<'a> {
    image: &'a Path,
    width: u32,
    height: u32,
    faces: Vec<Face>,
}

fn open_detector(runtime: &RuntimeArgs, detector: &DetectorArgs) -> Result<Mtcnn> {
    Mtcnn::open(
        &runtime.runtime()?,
        &runtime.models_dir(),
        detector.config(),
    )
    .context("cannot start the face detector")
}

/// Reads an image and finds its faces; errors name the file.
fn load_and_detect(detector: &mut Mtcnn, path: &Path) -> Result<(RgbImage, Vec<Face>)> {
    let image = load_image(path)?;
    let faces = detector
        .detect(&image)
        .with_context(|| path.display().to_string())?;
    Ok((image, faces))
}

/// Runs `each` on every path, reporting failures on stderr one by one; exit code 1 if any failed.
fn for_each_file(paths: &[PathBuf], mut each: impl FnMut(&Path) -> Result<()>) -> ExitCode {
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

fn detect(args: &DetectArgs) -> Result<ExitCode> {
    let mut detector = open_detector(&args.runtime, &args.detector)?;
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
    let mut detector = open_detector(&args.runtime, &args.detector)?;
    let aligner = args.aligner.aligner();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    Ok(for_each_file(&args.images, |path| {
        let (image, faces) = load_and_detect(&mut detector, path)?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (i, face) in faces.iter().enumerate() {
            let chip = aligner
                .align(&image, face)
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
    for (i, face) in result.faces.iter().enumerate() {
        let b = face.bbox;
        let [le, re, ..] = face.landmarks;
        println!(
            "  #{i:<2} box ({:7.1},{:7.1})–({:7.1},{:7.1})  score {:.4}  eyes ({:.1},{:.1}) ({:.1},{:.1})",
            b.x1, b.y1, b.x2, b.y2, face.score, le[0], le[1], re[0], re[1]
        );
    }
    Ok(())
}
