//! `carivis identify`, `verify` and `embed`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use crate::args::{GalleryArg, ModalityArg, RecognizerArgs};
use crate::for_each_file;
use crate::gallery::shown;
use crate::search_args::SearchArgs;
use carivis::capture::load_image;
use carivis::detect::{FoundFace, Pass};
use carivis::gallery::matching::{Branch, Thresholds};
use carivis::gallery::{Gallery, Identification, branch_of};
use carivis::render::UNKNOWN_LABEL;
use carivis::types::{Embedding, Modality};

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

#[derive(Serialize)]
struct IdentifiedImage<'a> {
    image: &'a Path,
    faces: Vec<IdentifiedFace>,
}

#[derive(Serialize)]
struct IdentifiedFace {
    #[serde(rename = "box")]
    bbox: [f32; 4],
    pass: Pass,
    identity: Option<String>,
    similarity: f32,
    threshold: f32,
    matched_modality: Option<Modality>,
    candidates: Vec<CandidateOut>,
}

#[derive(Serialize)]
struct CandidateOut {
    identity: String,
    similarity: f32,
}

fn identified_face(face: &FoundFace, found: Identification, top_k: usize) -> IdentifiedFace {
    IdentifiedFace {
        bbox: face.face.bbox.to_array(),
        pass: face.pass,
        identity: found.identity,
        similarity: found.similarity,
        threshold: found.threshold,
        matched_modality: found.matched_modality,
        candidates: found
            .candidates
            .into_iter()
            .take(top_k)
            .map(|c| CandidateOut {
                identity: c.identity,
                similarity: c.similarity,
            })
            .collect(),
    }
}

/// Identifies every face of every image.
pub fn identify(args: &IdentifyArgs) -> Result<ExitCode> {
    let mut faces = args.recognizer.still_faces(args.search.search(), false)?;
    let gallery = Gallery::open(args.gallery.location()?, &faces.model_id())?;
    let thresholds = args.threshold.map(Thresholds::uniform);
    Ok(for_each_file(&args.images, |path| {
        let image = load_image(path)?;
        let mut result = IdentifiedImage {
            image: path,
            faces: Vec::new(),
        };
        for face in faces
            .faces(&image)
            .with_context(|| path.display().to_string())?
        {
            let found =
                gallery.identify(&face.embedding, args.modality.into(), thresholds.as_ref())?;
            result
                .faces
                .push(identified_face(&face.found, found, args.top_k));
        }
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
    let multi_task = faces.model_id().branches.len() > 1;
    let mut largest = |path: &Path| -> Result<Embedding> {
        let image = load_image(path)?;
        match faces
            .faces(&image)
            .with_context(|| path.display().to_string())?
            .into_iter()
            .next()
        {
            Some(face) => Ok(face.embedding),
            None => bail!("{}: no face found", path.display()),
        }
    };
    let (a, b) = (largest(&args.a)?, largest(&args.b)?);
    let (modality_a, modality_b) = (args.modality_a.into(), args.modality_b.into());
    let branch = Branch::for_pair(modality_a, modality_b, multi_task);
    let similarity = carivis::types::dot(pick(&a, branch), pick(&b, branch));
    let threshold = args.threshold.unwrap_or_else(|| {
        Thresholds::for_checksum(&faces.model_id().sha256).get(modality_a, modality_b)
    });
    let same = similarity >= threshold;
    if args.json {
        let value = serde_json::json!({
            "a": args.a, "b": args.b, "similarity": similarity, "threshold": threshold,
            "branch": branch.name(), "same_person": same,
        });
        println!("{value}");
    } else {
        let verdict = if same {
            "same person"
        } else {
            "different people"
        };
        println!(
            "{verdict}: similarity {similarity:.3} (threshold {threshold:.3}, {} branch)",
            branch.name()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The branch's vector, or the shared one when the model has no such branch.
fn pick(embedding: &Embedding, branch: Branch) -> &[f32] {
    branch_of(embedding, branch).unwrap_or(&embedding.shared)
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
