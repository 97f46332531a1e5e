//! `carivis identify`, `verify` and `embed`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use crate::args::{GalleryArg, ModalityArg, RecognizerArgs};
use crate::for_each_file;
use crate::gallery::shown;
use crate::search_args::SearchArgs;
use carivis::capture::load_image;
use carivis::detect::Pass;
use carivis::gallery::Gallery;
use carivis::gallery::matching::Thresholds;
use carivis::pipeline::answers::{self, IdentifiedImage, IdentifyOptions, Side};
use carivis::render::UNKNOWN_LABEL;
use carivis::types::Embedding;

#[derive(Args)]
pub struct IdentifyArgs {
    /// The gallery to match against: a folder, or postgres://USER@HOST/DB?gallery=NAME.
    #[arg(long, value_name = "DIR|URL")]
    gallery: GalleryArg,
    /// Images to identify faces in.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// What the images are (decides which embedding branch and threshold are used).
    #[arg(long, value_enum, default_value_t = ModalityArg::Photo)]
    modality: ModalityArg,
    /// Candidate identities listed per face.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// One cosine-similarity threshold for every direction, instead of the gallery's.
    #[arg(long)]
    threshold: Option<f32>,
    /// One JSON object per image on stdout instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    recognizer: RecognizerArgs,
    #[command(flatten)]
    search: SearchArgs,
}

/// Identifies every face of every image.
pub fn identify(args: &IdentifyArgs) -> Result<ExitCode> {
    let mut faces = args.recognizer.still_faces(args.search.search(), false)?;
    let gallery = Gallery::open(args.gallery.location()?, &faces.model_id())?;
    let thresholds = args.threshold.map(Thresholds::uniform);
    let options = IdentifyOptions {
        modality: args.modality.into(),
        thresholds: thresholds.as_ref(),
        top_k: args.top_k,
    };
    Ok(for_each_file(&args.images, |path| {
        let image = load_image(path)?;
        let result = IdentifiedImage {
            image: path,
            faces: answers::identify(&mut faces, &gallery, &image, options)
                .with_context(|| path.display().to_string())?,
        };
        print_identified(&result, args.json)
    }))
}

fn print_identified(result: &IdentifiedImage<'_>, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(result)?);
        return Ok(());
    }
    println!("{}: {} face(s)", result.image.display(), result.faces.len());
    for (i, face) in result.faces.iter().enumerate() {
        let [x1, y1, x2, y2] = face.bbox;
        let others: Vec<String> = face
            .candidates
            .iter()
            .map(|c| format!("{} {:.3}", shown(&c.identity), c.similarity))
            .collect();
        println!(
            "  #{i:<2} ({x1:.0},{y1:.0})–({x2:.0},{y2:.0})  {}  similarity {:.3} (threshold {:.3})  candidates: {}",
            face.identity.as_deref().map_or(UNKNOWN_LABEL.into(), shown),
            face.similarity,
            face.threshold,
            others.join(", ")
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct VerifyArgs {
    /// First image (its largest face is used).
    a: PathBuf,
    /// Second image (its largest face is used).
    b: PathBuf,
    /// What the first image is.
    #[arg(long, value_enum, default_value_t = ModalityArg::Photo)]
    modality_a: ModalityArg,
    /// What the second image is.
    #[arg(long, value_enum, default_value_t = ModalityArg::Photo)]
    modality_b: ModalityArg,
    /// Cosine-similarity threshold [default: the calibrated one for the two modalities].
    #[arg(long)]
    threshold: Option<f32>,
    /// JSON on stdout instead of a sentence.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    recognizer: RecognizerArgs,
    #[command(flatten)]
    search: SearchArgs,
}

/// Compares the largest faces of two images.
pub fn verify(args: &VerifyArgs) -> Result<ExitCode> {
    let mut faces = args.recognizer.still_faces(args.search.search(), true)?;
    let (a, b) = (load_image(&args.a)?, load_image(&args.b)?);
    let side = |image, modality: ModalityArg| Side {
        image,
        modality: modality.into(),
    };
    let answer = answers::verify(
        &mut faces,
        side(&a, args.modality_a),
        side(&b, args.modality_b),
        args.threshold,
    )
    .map_err(|(i, e)| {
        anyhow::Error::new(*e).context([&args.a, &args.b][i].display().to_string())
    })?;
    if args.json {
        let value = serde_json::json!({
            "a": args.a, "b": args.b, "similarity": answer.similarity, "threshold": answer.threshold,
            "branch": answer.branch, "same_person": answer.same_person,
        });
        println!("{value}");
    } else {
        let verdict = if answer.same_person {
            "same person"
        } else {
            "different people"
        };
        println!(
            "{verdict}: similarity {:.3} (threshold {:.3}, {} branch)",
            answer.similarity, answer.threshold, answer.branch
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct EmbedArgs {
    /// Images to embed every face of.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// JSON Lines on stdout, one object per image (the only output format).
    #[arg(long, default_value_t = true)]
    json: bool,
    #[command(flatten)]
    recognizer: RecognizerArgs,
    #[command(flatten)]
    search: SearchArgs,
}

#[derive(Serialize)]
struct EmbeddedImage<'a> {
    image: &'a Path,
    model_sha256: &'a str,
    faces: Vec<EmbeddedFaceOut>,
}

#[derive(Serialize)]
struct EmbeddedFaceOut {
    #[serde(rename = "box")]
    bbox: [f32; 4],
    score: f32,
    pass: Pass,
    embedding: Embedding,
}

/// Prints every face's embedding as JSON Lines.
pub fn embed(args: &EmbedArgs) -> Result<ExitCode> {
    let mut faces = args.recognizer.still_faces(args.search.search(), false)?;
    let model = faces.model_id();
    Ok(for_each_file(&args.images, |path| {
        let image = load_image(path)?;
        let found = faces
            .faces(&image)
            .with_context(|| path.display().to_string())?;
        let out = EmbeddedImage {
            image: path,
            model_sha256: &model.sha256,
            faces: found
                .into_iter()
                .map(|f| EmbeddedFaceOut {
                    bbox: f.found.face.bbox.to_array(),
                    score: f.found.face.score,
                    pass: f.found.pass,
                    embedding: f.embedding,
                })
                .collect(),
        };
        println!("{}", serde_json::to_string(&out)?);
        Ok(())
    }))
}
