//! Command-line options of the face search on still images (retry passes, fallback chip) and
//! the number-list parser, shared by `carivis` and `carivis-train`.

use clap::Args;

use carivis::detect::{PadFill, Passes, RetryConfig};
use carivis::pipeline::still::{FaceSearch, Fallback};

crate::cli_enum! {
    /// Which detection passes run on still images.
    PassesArg => Passes {
        /// The first pass only (facenet-pytorch's MTCNN as it is).
        First,
        /// The first pass; a padded retry where it finds no face clear of the image border;
        /// rotated retries where neither finds any face.
        All,
    }
}

crate::cli_enum! {
    /// How the padding of a retry copy is filled.
    PadFillArg => PadFill {
        /// Mid-grey.
        Grey,
        /// The image's edge pixels, repeated outwards.
        Replicate,
    }
}

crate::cli_enum! {
    /// The chip of an image of one person where no pass finds a face.
    FallbackArg => Fallback {
        /// The whole image, squared about its centre.
        WholeImage,
        /// The centred square, taken as an already aligned face crop.
        CentreSquare,
        /// The window O-Net scores highest, aligned on its landmarks.
        BestWindow,
    }
}

/// How still images are searched for faces (not used on video frames).
#[derive(Args, Clone)]
#[command(next_help_heading = "Face search (still images)")]
pub struct SearchArgs {
    /// Detection passes: `all` retries a padded copy when the first pass finds no face clear of
    /// the image border (tight crops), then rotated copies; `first` is the reference MTCNN only.
    #[arg(long, value_enum, default_value_t = PassesArg::All)]
    pub passes: PassesArg,
    /// Padding of the retry copies on every side, as a fraction of the image's longer side.
    #[arg(long, default_value_t = RetryConfig::default().padding, value_name = "FRACTION")]
    pub retry_padding: f32,
    /// How the retry padding is filled.
    #[arg(long, value_enum, default_value_t = PadFillArg::Grey)]
    pub retry_fill: PadFillArg,
    /// P-Net, R-Net and O-Net score thresholds of the retries (the first pass keeps
    /// --thresholds).
    #[arg(long, value_parser = parse_floats::<3>, default_value = "0.6,0.6,0.5", value_name = "P,R,O")]
    pub retry_thresholds: [f32; 3],
    /// Rotations of the padded copy tried when neither the first pass nor the padded copy finds
    /// any face (degrees, counter-clockwise, comma-separated, e.g. -30,30).
    #[arg(long, value_delimiter = ',', default_values_t = RetryConfig::default().angles, allow_hyphen_values = true, value_name = "DEGREES")]
    pub retry_angles: Vec<i16>,
}

impl SearchArgs {
    /// The retry settings.
    pub fn retry(&self) -> RetryConfig {
        RetryConfig {
            passes: self.passes.into(),
            padding: self.retry_padding,
            fill: self.retry_fill.into(),
            thresholds: self.retry_thresholds,
            angles: self.retry_angles.clone(),
        }
    }

    /// The face-search settings with the default fallback chip.
    pub fn search(&self) -> FaceSearch {
        FaceSearch {
            retry: self.retry(),
            ..FaceSearch::default()
        }
    }
}

/// Parses `N` comma-separated numbers, e.g. `0.6,0.7,0.7` or a box `x1,y1,x2,y2`.
pub fn parse_floats<const N: usize>(text: &str) -> Result<[f32; N], String> {
    let values: Vec<f32> = text
        .split(',')
        .map(|v| {
            v.trim()
                .parse::<f32>()
                .map_err(|_| format!("{v:?} is not a number"))
        })
        .collect::<Result<_, _>>()?;
    values
        .try_into()
        .map_err(|v: Vec<f32>| format!("expected {N} comma-separated numbers, got {}", v.len()))
}
