//! The `carivis` command line: parses arguments, calls the library, prints. No logic of its own.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use carivis::capture::load_image;
use carivis::detect::{DetectorConfig, Mtcnn};
use carivis::models::{SHIPPED, default_models_dir};
use carivis::runtime::{Device, Runtime, RuntimeConfig, check_model};
use carivis::types::Face;

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
    image: &'a std::path::Path,
    width: u32,
    height: u32,
    faces: Vec<Face>,
}

fn detect(args: &DetectArgs) -> Result<ExitCode> {
    let runtime = args.runtime.runtime()?;
    let mut detector = Mtcnn::open(&runtime, &args.runtime.models_dir(), args.detector.config())
        .context("cannot start the face detector")?;
    let mut failed = 0;
    for path in &args.images {
        let result = load_image(path)
            .map_err(anyhow::Error::from)
            .and_then(|image| {
                Ok((
                    detector
                        .detect(&image)
                        .with_context(|| path.display().to_string())?,
                    image,
                ))
            });
        match result {
            Ok((faces, image)) => print_faces(
                &ImageFaces {
                    image: path,
                    width: image.width(),
                    height: image.height(),
                    faces,
                },
                args.json,
            )?,
            Err(e) => {
                failed += 1;
                eprintln!("error: {e:#}");
            }
        }
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
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
