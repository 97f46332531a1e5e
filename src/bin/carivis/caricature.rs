//! `carivis caricature`: synthetic caricatures of photos.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::ProgressBar;

use crate::args::{DetectorArgs, RuntimeArgs, open_finder};
use crate::progress::restyle;
use crate::search_args::SearchArgs;
use carivis::capture::load_image;
use carivis::caricature::{CaricatureConfig, STRENGTH_RANGE, Style, caricature};
use carivis::detect::FaceFinder;
use carivis::files::write_atomic;
use carivis::types::RgbImage;

crate::cli_enum! {
    /// How the caricature is drawn after the warp.
    StyleArg => Style {
        /// The warped photo as it is.
        #[value(name = "none")]
        Plain,
        /// Smoothed, colour-quantised, with dark edge lines (OpenCV filters).
        Cartoon,
    }
}

/// The options of `carivis caricature` (its help text is on the command in main.rs).
#[derive(Args)]
pub struct CaricatureArgs {
    /// Photos to caricature.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// Folder for the caricatures (created if missing).
    #[arg(long, short, value_name = "DIR")]
    out: PathBuf,
    /// Factor on the landmarks' offsets from the mean face, 1 (unchanged) to 2.5.
    #[arg(long, default_value_t = CaricatureConfig::default().strength, value_parser = parse_strength)]
    strength: f32,
    /// Drawing style: none (the warped photo) or cartoon.
    #[arg(long, value_enum, default_value_t = StyleArg::Plain)]
    style: StyleArg,
    /// Random offset of each exaggerated landmark (standard deviation per coordinate, in
    /// pixels of the 150-pixel alignment chip); 0 for none.
    #[arg(long, default_value_t = 0.0, value_name = "PX")]
    jitter: f32,
    /// Seed of the --jitter offsets: the same seed and settings give the same images (no effect
    /// with --jitter 0).
    #[arg(long, default_value_t = 0, value_name = "N")]
    seed: u64,
    #[command(flatten)]
    detector: DetectorArgs,
    #[command(flatten)]
    search: SearchArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

impl CaricatureArgs {
    fn config(&self) -> CaricatureConfig {
        CaricatureConfig {
            strength: self.strength,
            style: self.style.into(),
            jitter: self.jitter,
            seed: self.seed,
        }
    }
}

fn parse_strength(text: &str) -> Result<f32, String> {
    let strength: f32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if STRENGTH_RANGE.contains(&strength) {
        Ok(strength)
    } else {
        Err(format!(
            "must be between {} and {}",
            STRENGTH_RANGE.start(),
            STRENGTH_RANGE.end()
        ))
    }
}

/// Runs `carivis caricature`.
pub fn run(args: &CaricatureArgs) -> Result<ExitCode> {
    let config = args.config();
    config.validate()?;
    let targets = output_paths(&args.images, &args.out)?;
    let mut finder = open_finder(
        &args.runtime.runtime()?,
        &args.runtime.models_dir(),
        args.detector.config(true),
        args.search.retry(),
    )?;
    let bar = ProgressBar::new(0);
    restyle(
        &bar,
        "caricatures [{bar:30}] {pos}/{len} images, {per_sec}, eta {eta}",
    );
    bar.set_length(args.images.len() as u64);
    let mut failed = 0;
    for (image, target) in args.images.iter().zip(&targets) {
        match caricature_file(&mut finder, image, target, &config) {
            Ok(()) => bar.suspend(|| println!("{}", target.display())),
            Err(e) => {
                failed += 1;
                bar.suspend(|| eprintln!("error: {e:#}"));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let written = args.images.len() - failed;
    eprintln!(
        "{written} of {} caricatures written to {}",
        args.images.len(),
        args.out.display()
    );
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// DIR/STEM_caricature.png for every input; two inputs with one stem are refused up front.
fn output_paths(images: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>> {
    let mut seen: HashMap<PathBuf, &Path> = HashMap::new();
    images
        .iter()
        .map(|image| {
            let stem = image
                .file_stem()
                .with_context(|| format!("{}: not a file name", image.display()))?;
            let target = out.join(format!("{}_caricature.png", stem.to_string_lossy()));
            if let Some(other) = seen.insert(target.clone(), image) {
                bail!(
                    "{} and {} would both be written to {}",
                    other.display(),
                    image.display(),
                    target.display()
                );
            }
            Ok(target)
        })
        .collect()
}

/// One image: read, find the largest face, caricature, write; errors name the file.
fn caricature_file(
    finder: &mut FaceFinder,
    path: &Path,
    target: &Path,
    config: &CaricatureConfig,
) -> Result<()> {
    let image = load_image(path)?;
    let faces = finder
        .find(&image)
        .with_context(|| path.display().to_string())?;
    let Some(found) = faces.first() else {
        bail!("{}: no face found", path.display());
    };
    let drawn = caricature(&image, &found.face, config)
        .with_context(|| format!("{}: cannot make the caricature", path.display()))?;
    write_atomic(target, &png_bytes(&drawn)?)
        .with_context(|| format!("cannot write {}", target.display()))
}

fn png_bytes(image: &RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .context("cannot encode the PNG")?;
    Ok(bytes)
}
