//! Command-line options shared by several commands, and how they become library settings.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use crate::search_args::parse_floats;

use carivis::align::AlignMode;
use carivis::detect::{DetectorConfig, FaceFinder, Mtcnn, RetryConfig};
use carivis::embed::{DEFAULT_BATCH, DEFAULT_EMBEDDER, Embedder};
use carivis::eval::BranchChoice;
use carivis::eval::protocol::PairFormat;
use carivis::gallery::Location;
use carivis::models::default_models_dir;
use carivis::pipeline::Pacing;
use carivis::pipeline::still::{FaceSearch, StillFaces};
use carivis::runtime::{Device, Runtime, RuntimeConfig};
use carivis::types::Modality;

crate::cli_enum! {
    /// Which execution provider to use.
    DeviceArg => Device {
        /// CUDA when this build and machine support it, otherwise CPU.
        Auto,
        /// CPU only.
        Cpu,
        /// CUDA, or fail saying why it is unavailable.
        Cuda,
    }
}

crate::cli_enum! {
    /// Which kind of picture.
    ModalityArg => Modality {
        /// A photograph.
        Photo,
        /// A caricature.
        Caricature,
    }
}

crate::cli_enum! {
    /// How frames are paced through the pipeline.
    PacingArg => Pacing {
        /// Files play at their own rate; frames the detector cannot take are dropped.
        Live,
        /// Every frame, in order, as fast as possible.
        Offline,
    }
}

crate::cli_enum! {
    /// Which embedding branch comparisons use.
    BranchArg => BranchChoice {
        /// The shared branch.
        Shared,
        /// The photo branch.
        Photo,
        /// The caricature branch.
        Caricature,
        /// Shared across modalities, the modality's own within one (as galleries choose).
        Auto,
    }
}

crate::cli_enum! {
    /// The pair-file formats understood.
    PairFormatArg => PairFormat {
        /// CaVI: `id Caricature/id\file.jpg id Real/id\file.jpg 0|1`.
        Cavi,
        /// WebCaricature: tab-separated `name C00001 P00001` or `name1 C00039 name2 P00006`.
        Webcaricature,
    }
}

/// Where models come from and how they run.
#[derive(Args, Clone)]
pub struct RuntimeArgs {
    /// Execution provider: auto (CUDA when available, else CPU), cpu, or cuda (fail if unavailable).
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// ONNX Runtime intra-op threads per model session.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Folder holding the ONNX models [default: $CARIVIS_MODELS, else the checkout's models/].
    #[arg(long, value_name = "DIR")]
    pub models: Option<PathBuf>,
}

impl RuntimeArgs {
    /// Loads ONNX Runtime with these settings.
    pub fn runtime(&self) -> Result<Runtime> {
        Ok(Runtime::init(RuntimeConfig {
            device: self.device.into(),
            intra_threads: self.threads.max(1),
        })?)
    }

    /// The models folder in use.
    pub fn models_dir(&self) -> PathBuf {
        self.models.clone().unwrap_or_else(default_models_dir)
    }
}

/// MTCNN settings (defaults are facenet-pytorch's).
#[derive(Args, Clone)]
pub struct DetectorArgs {
    /// Smallest face to find, in pixels.
    #[arg(long, default_value_t = 20.0)]
    pub min_face: f32,
    /// P-Net, R-Net and O-Net score thresholds.
    #[arg(long, value_parser = parse_floats::<3>, default_value = "0.6,0.7,0.7", value_name = "P,R,O")]
    pub thresholds: [f32; 3],
    /// Keep at most N faces per image (the largest).
    #[arg(long, value_name = "N")]
    pub max_faces: Option<usize>,
    /// Detect on a copy whose longer side is at most PX (faster on large frames); boxes are
    /// mapped back to full resolution.
    #[arg(long, value_name = "PX")]
    pub max_side: Option<u32>,
    /// Grey border added around each image before detection, as a fraction of its longer
    /// side (e.g. 0.25 for tightly cropped faces, which MTCNN otherwise misses).
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    pub border: f32,
}

impl DetectorArgs {
    /// The detector configuration.
    pub fn config(&self, largest_only: bool) -> DetectorConfig {
        DetectorConfig {
            min_face: self.min_face,
            thresholds: self.thresholds,
            max_faces: self.max_faces,
            largest_only,
            max_side: self.max_side,
            border: self.border,
            ..DetectorConfig::default()
        }
    }
}

/// How faces become chips.
#[derive(Args, Clone)]
pub struct AlignerArgs {
    /// Alignment: five-point (similarity transform to a template) or crop (box + margin).
    #[arg(long, value_enum, default_value_t = AlignChoice::FivePoint)]
    pub align: AlignChoice,
    /// Margin on each side for --align crop, as a fraction of the box size.
    #[arg(long, default_value_t = 0.0)]
    pub crop_margin: f32,
}

/// The alignment modes offered on the command line.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum AlignChoice {
    /// Similarity transform of the five landmarks to the template.
    FivePoint,
    /// The detection box plus a margin, squared.
    Crop,
}

impl AlignerArgs {
    /// The library's alignment mode.
    pub fn mode(&self) -> AlignMode {
        match self.align {
            AlignChoice::FivePoint => AlignMode::FivePoint,
            AlignChoice::Crop => AlignMode::CropOnly {
                margin: self.crop_margin,
            },
        }
    }
}

/// Everything needed to turn images into embeddings.
#[derive(Args, Clone)]
pub struct RecognizerArgs {
    /// Embedding model (ONNX): the dlib descriptor, or a multi-task model from carivis-train
    /// [default: MODELS/carivis_mtl.onnx].
    #[arg(long, value_name = "FILE")]
    pub embedder: Option<PathBuf>,
    /// Chips per embedding run.
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub batch: usize,
    #[command(flatten)]
    pub aligner: AlignerArgs,
    #[command(flatten)]
    pub detector: DetectorArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl RecognizerArgs {
    /// The embedding model file in use.
    pub fn embedder_path(&self) -> PathBuf {
        self.embedder
            .clone()
            .unwrap_or_else(|| self.runtime.models_dir().join(DEFAULT_EMBEDDER))
    }

    /// Opens detector, aligner and embedder; faces are searched for as `search` says.
    pub fn still_faces(&self, search: FaceSearch, largest_only: bool) -> Result<StillFaces> {
        let runtime = self.runtime.runtime()?;
        let detector = open_detector(
            &runtime,
            &self.runtime.models_dir(),
            self.detector.config(largest_only),
        )?;
        let embedder = open_embedder(&runtime, &self.embedder_path(), self.batch)?;
        StillFaces::new(detector, search, self.aligner.mode(), embedder)
            .context("cannot start the face search")
    }
}

/// Opens MTCNN from the models folder.
/// Workers as asked, else one per CPU core (at least one).
pub fn asked_or_per_core(asked: Option<usize>) -> usize {
    asked
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

pub fn open_detector(runtime: &Runtime, models: &Path, config: DetectorConfig) -> Result<Mtcnn> {
    Mtcnn::open(runtime, models, config).context("cannot start the face detector")
}

/// Opens MTCNN with the retry passes.
pub fn open_finder(
    runtime: &Runtime,
    models: &Path,
    config: DetectorConfig,
    retry: RetryConfig,
) -> Result<FaceFinder> {
    FaceFinder::new(open_detector(runtime, models, config)?, retry)
        .context("cannot start the face search")
}

/// Opens an embedding model.
pub fn open_embedder(runtime: &Runtime, path: &Path, batch: usize) -> Result<Embedder> {
    Embedder::open(runtime, path, batch).context("cannot start the embedding model")
}

/// A gallery argument (folder or `postgres://` URL) as typed. It becomes a [`Location`] when
/// a command uses it, so that a bad URL's error is ours, with the password hidden, not clap's,
/// which would echo the value.
#[derive(Clone)]
pub struct GalleryArg(String);

impl std::str::FromStr for GalleryArg {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_string()))
    }
}

impl GalleryArg {
    /// The gallery's folder or database.
    pub fn location(&self) -> Result<Location> {
        Ok(Location::parse(&self.0)?)
    }
}
