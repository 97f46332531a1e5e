//! `carivis gallery ...`: create, add, remove, list, rebuild, set-thresholds, set-search, index,
//! copy.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use indicatif::ProgressBar;

use crate::args::{GalleryArg, ModalityArg, RecognizerArgs, RuntimeArgs, open_embedder};
use crate::progress::restyle;
use crate::search_args::{SearchArgs, parse_floats};
use carivis::capture::{IMAGE_EXTENSIONS, images_in, load_image};
use carivis::embed::DEFAULT_EMBEDDER;
use carivis::eval::{apply_thresholds, read_thresholds};
use carivis::files::file_sha256;
use carivis::gallery::index::HnswParams;
use carivis::gallery::store::Enrolment;
use carivis::gallery::{Gallery, IndexOrigin, Location, NewEntry, check_name};
use carivis::pipeline::answers::{self, AnswerError, EnrolmentFace, FaceChoice};
use carivis::pipeline::still::{FaceSearch, StillFaces, model_id};
use carivis::types::{Face, FaceBox, Modality};

#[derive(Subcommand)]
pub enum GalleryCommand {
    /// Create an empty gallery for the embedding model: a new or empty folder, or a new
    /// gallery name in a PostgreSQL database with pgvector (the schema is made when missing).
    Create {
        /// The gallery: a folder, or postgres://USER@HOST/DB?gallery=NAME.
        #[arg(value_name = "DIR|URL")]
        gallery: GalleryArg,
        /// Embedding model [default: MODELS/carivis_mtl.onnx].
        #[arg(long, value_name = "FILE")]
        embedder: Option<PathBuf>,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Enrol a person's faces from images or folders of images.
    Add(AddArgs),
    /// Remove every entry of a person.
    Remove {
        /// The gallery: a folder, or postgres://USER@HOST/DB?gallery=NAME.
        #[arg(value_name = "DIR|URL")]
        gallery: GalleryArg,
        /// The person's name, exactly as listed.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        writer: WriterArgs,
    },
    /// List people and entries.
    List {
        /// The gallery: a folder, or postgres://USER@HOST/DB?gallery=NAME.
        #[arg(value_name = "DIR|URL")]
        gallery: GalleryArg,
        /// One JSON object with every entry instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-embed every entry with the current embedding model (after the model changed).
    Rebuild {
        /// The gallery: a folder, or postgres://USER@HOST/DB?gallery=NAME.
        #[arg(value_name = "DIR|URL")]
        gallery: GalleryArg,
        #[command(flatten)]
        recognizer: RecognizerArgs,
        #[command(flatten)]
        writer: WriterArgs,
    },
    /// Import the per-direction thresholds measured by `carivis eval` (FAR 1%); directions a
    /// report did not measure keep their value; later reports win.
    SetThresholds {
        /// The gallery: a folder, or postgres://USER@HOST/DB?gallery=NAME.
        #[arg(value_name = "DIR|URL")]
        gallery: GalleryArg,
        /// Evaluation report(s) (report.json).
        #[arg(long = "from", required = true, value_name = "REPORT.json")]
        from: Vec<PathBuf>,
        #[command(flatten)]
        writer: WriterArgs,
    },
    /// Set how many candidates a search of a large gallery's HNSW graph keeps (galleries of
    /// 2,000 or more entries of a modality; smaller ones are searched exactly): more finds
    /// the exact nearest entries more often and costs time per query (README, "Many
    /// machines", has recall and times up to a million entries).
    SetSearch {
        /// The gallery: a folder, or postgres://USER@HOST/DB?gallery=NAME.
        #[arg(value_name = "DIR|URL")]
        gallery: GalleryArg,
        /// Candidates kept per search (hnsw ef_search).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
        ef_search: u32,
        #[command(flatten)]
        writer: WriterArgs,
    },
    /// Build a folder gallery's search graphs now, with progress, and keep them in the folder:
    /// otherwise the first process that opens the gallery after a change builds them before
    /// it starts (under 2 minutes at 10^5 entries, over half an hour at 10^6 on 2 cores).
    /// Shows each index: entries, graph or exact search, and the time it took.
    Index {
        /// The gallery: a folder, or postgres://USER@HOST/DB?gallery=NAME (a database
        /// gallery's in-memory graphs are built here but not kept: each process builds its own).
        #[arg(value_name = "DIR|URL")]
        gallery: GalleryArg,
    },
    /// Copy a gallery (entries, embeddings, model, settings) to a new gallery.
    Copy {
        /// The gallery to copy (folder or URL).
        #[arg(value_name = "SRC")]
        src: GalleryArg,
        /// The new gallery: a new or empty folder, or a new gallery name in a database.
        #[arg(value_name = "DST")]
        dst: GalleryArg,
    },
}

/// Options of commands that change a gallery.
#[derive(Args)]
pub struct WriterArgs {
    /// Seconds to wait for another process that is changing the gallery to finish.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS", value_parser = parse_seconds)]
    lock_timeout: f64,
}

impl WriterArgs {
    pub fn lock_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.lock_timeout)
    }
}

/// A non-negative, finite number of seconds.
fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Ok(s),
        _ => Err(format!("{text:?} is not a number of seconds (0 or more)")),
    }
}

#[derive(Args)]
pub struct AddArgs {
    /// The gallery: a folder, or postgres://USER@HOST/DB?gallery=NAME.
    #[arg(value_name = "DIR|URL")]
    gallery: GalleryArg,
    /// Display name of the person (any text; stored as is, never used as a file name).
    #[arg(long)]
    name: String,
    /// What the images are.
    #[arg(long, value_enum)]
    modality: ModalityArg,
    /// Images, or folders of images (jpg, png, bmp, webp, tiff).
    #[arg(required = true, value_name = "IMAGE_OR_DIR")]
    inputs: Vec<PathBuf>,
    /// With several faces in an image, enrol the largest instead of refusing the image.
    #[arg(long)]
    largest: bool,
    /// Enrol the face in this box (x1,y1,x2,y2 in pixels) without detection: for faces the
    /// detector misses.
    #[arg(long, value_parser = parse_floats::<4>, value_name = "X1,Y1,X2,Y2", conflicts_with = "whole_image")]
    r#box: Option<[f32; 4]>,
    /// Enrol the whole image as the face (an already cropped face the detector misses).
    #[arg(long)]
    whole_image: bool,
    #[command(flatten)]
    recognizer: RecognizerArgs,
    #[command(flatten)]
    writer: WriterArgs,
    #[command(flatten)]
    search: SearchArgs,
}

/// Runs a gallery subcommand.
pub fn run(command: GalleryCommand) -> Result<ExitCode> {
    match command {
        GalleryCommand::Create {
            gallery,
            embedder,
            runtime,
        } => create(&gallery.location()?, embedder, &runtime),
        GalleryCommand::Add(args) => add(&args),
        GalleryCommand::Remove {
            gallery,
            name,
            writer,
        } => remove(&gallery.location()?, &name, &writer),
        GalleryCommand::List { gallery, json } => list(&gallery.location()?, json),
        GalleryCommand::Rebuild {
            gallery,
            recognizer,
            writer,
        } => rebuild(&gallery.location()?, &recognizer, &writer),
        GalleryCommand::SetThresholds {
            gallery,
            from,
            writer,
        } => set_thresholds(&gallery.location()?, &from, &writer),
        GalleryCommand::SetSearch {
            gallery,
            ef_search,
            writer,
        } => set_search(&gallery.location()?, ef_search as usize, &writer),
        GalleryCommand::Index { gallery } => index(&gallery.location()?),
        GalleryCommand::Copy { src, dst } => copy(&src.location()?, &dst.location()?),
    }
}

/// A name as shown in tables: control characters and quotes escaped.
pub fn shown(name: &str) -> String {
    name.escape_debug().to_string()
}

fn create(
    gallery: &Location,
    embedder: Option<PathBuf>,
    runtime: &RuntimeArgs,
) -> Result<ExitCode> {
    let path = embedder.unwrap_or_else(|| runtime.models_dir().join(DEFAULT_EMBEDDER));
    let embedder = open_embedder(&runtime.runtime()?, &path, 1)?;
    let model = model_id(&embedder);
    Gallery::create(gallery, model.clone())?;
    println!(
        "created gallery {gallery} for model {} ({}-d, branches: {})",
        model.file,
        model.dim,
        model.branches.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// Image files named directly, or found (sorted) in the folders named.
fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let found = images_in(input)
                .with_context(|| format!("cannot read folder {}", input.display()))?;
            if found.is_empty() {
                bail!(
                    "folder {} holds no images ({})",
                    input.display(),
                    IMAGE_EXTENSIONS.join(", ")
                );
            }
            files.extend(found);
        } else {
            files.push(input.clone());
        }
    }
    Ok(files)
}

fn progress(len: usize) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    restyle(
        &bar,
        "{msg} [{bar:30}] {pos}/{len} images, {per_sec}, eta {eta}",
    );
    bar
}

/// The face to enrol from one image, how it was found, and its embedding.
fn enrolment_face(faces: &mut StillFaces, args: &AddArgs, path: &Path) -> Result<EnrolmentFace> {
    let image = load_image(path)?;
    let choice = match (&args.r#box, args.whole_image) {
        (Some(b), _) => FaceChoice::Box(FaceBox {
            x1: b[0],
            y1: b[1],
            x2: b[2],
            y2: b[3],
        }),
        (None, true) => FaceChoice::WholeImage,
        (None, false) => FaceChoice::Detected {
            largest: args.largest,
        },
    };
    answers::enrolment_face(faces, &image, choice).map_err(|e| {
        let hint = match e {
            AnswerError::NoFace => {
                "; give the face with --box x1,y1,x2,y2, or --whole-image for a cropped face"
            }
            AnswerError::SeveralFaces(_) => {
                "; add --largest to enrol the largest, or --box to choose one"
            }
            _ => "",
        };
        anyhow::anyhow!("{}: {e}{hint}", path.display())
    })
}

fn add(args: &AddArgs) -> Result<ExitCode> {
    check_name(&args.name)?;
    let files = expand_inputs(&args.inputs)?;
    let mut gallery =
        Gallery::open_for_update(&args.gallery.location()?, args.writer.lock_timeout())?;
    let mut faces = args.recognizer.still_faces(args.search.search(), false)?;
    gallery.check_model(&faces.model_id())?;
    let bar = progress(files.len());
    bar.set_message(format!("adding {}", shown(&args.name)));
    let mut failed = 0;
    for path in &files {
        match enrolment_face(&mut faces, args, path)
            .and_then(|found| add_entry(&mut gallery, args, path, found))
        {
            Ok(()) => {}
            Err(e) => {
                failed += 1;
                bar.suspend(|| eprintln!("error: {e:#}"));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let added = files.len() - failed;
    if added > 0 {
        gallery.save()?;
    }
    println!(
        "added {added} of {} image(s) as {:?} ({}); gallery now holds {} entries",
        files.len(),
        args.name,
        Modality::from(args.modality),
        gallery.entries().len()
    );
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn add_entry(
    gallery: &mut Gallery,
    args: &AddArgs,
    path: &Path,
    found: EnrolmentFace,
) -> Result<()> {
    let EnrolmentFace {
        face,
        enrolment,
        embedding,
    } = found;
    let source = std::fs::canonicalize(path).with_context(|| path.display().to_string())?;
    let entry = NewEntry {
        name: args.name.clone(),
        modality: args.modality.into(),
        source_sha256: file_sha256(&source).with_context(|| source.display().to_string())?,
        source,
        bbox: face.bbox.to_array(),
        landmarks: (enrolment == Enrolment::FivePoint).then_some(face.landmarks),
        enrolment,
    };
    gallery.add(entry, &embedding)?;
    Ok(())
}

fn remove(location: &Location, name: &str, writer: &WriterArgs) -> Result<ExitCode> {
    let mut gallery = Gallery::open_for_update(location, writer.lock_timeout())?;
    let removed = gallery.remove(name)?;
    gallery.save()?;
    println!(
        "removed {removed} entries of {}; {} entries remain",
        shown(name),
        gallery.entries().len()
    );
    Ok(ExitCode::SUCCESS)
}

fn list(location: &Location, json: bool) -> Result<ExitCode> {
    let gallery = Gallery::open_unchecked(location)?;
    if json {
        let value = serde_json::json!({
            "gallery": location.to_string(),
            "model": gallery.model(),
            "settings": gallery.settings(),
            "entries": gallery.entries(),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    let model = gallery.model();
    println!(
        "gallery {location}: model {} (sha256 {:.12}…), {} entries",
        model.file,
        model.sha256,
        gallery.entries().len()
    );
    println!("{:<32} {:>7} {:>11}", "name", "photos", "caricatures");
    for person in gallery.people() {
        println!(
            "{:<32} {:>7} {:>11}",
            shown(&person.name),
            person.photos,
            person.caricatures
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn rebuild(
    location: &Location,
    recognizer: &RecognizerArgs,
    writer: &WriterArgs,
) -> Result<ExitCode> {
    let mut gallery = Gallery::open_for_update(location, writer.lock_timeout())?;
    let mut faces = recognizer.still_faces(FaceSearch::default(), false)?;
    let model = faces.model_id();
    let bar = progress(gallery.entries().len());
    bar.set_message("re-embedding");
    let mut embeddings = Vec::with_capacity(gallery.entries().len());
    for entry in gallery.entries() {
        let image = load_image(&entry.source).context("cannot re-read an enrolled image")?;
        let sha = file_sha256(&entry.source)?;
        if sha != entry.source_sha256 {
            bail!(
                "{} changed since it was enrolled (sha256 differs); remove {:?} and add it again",
                entry.source.display(),
                entry.name
            );
        }
        let [x1, y1, x2, y2] = entry.bbox;
        let bbox = FaceBox { x1, y1, x2, y2 };
        let embedding = match entry.landmarks {
            Some(landmarks) => faces.embed_landmarked(
                &image,
                &Face {
                    bbox,
                    score: 1.0,
                    landmarks,
                },
            )?,
            None => faces.embed_box(&image, bbox)?,
        };
        embeddings.push(embedding);
        bar.inc(1);
    }
    bar.finish_and_clear();
    gallery.replace_model(model.clone(), &embeddings)?;
    gallery.save()?;
    println!(
        "re-embedded {} entries with {} (sha256 {:.12}…)",
        embeddings.len(),
        model.file,
        model.sha256
    );
    Ok(ExitCode::SUCCESS)
}

fn set_thresholds(
    location: &Location,
    reports: &[PathBuf],
    writer: &WriterArgs,
) -> Result<ExitCode> {
    let mut gallery = Gallery::open_for_update(location, writer.lock_timeout())?;
    let mut thresholds = gallery.settings().thresholds;
    for report in reports {
        let section = read_thresholds(report)?;
        thresholds = apply_thresholds(thresholds, &section, report, &gallery.model().sha256)?;
        for (direction, m) in &section.measured {
            println!(
                "{direction}: {:.4} (FAR {}%, {} same / {} different pairs, {})",
                m.value,
                100.0 * section.far,
                m.genuine,
                m.impostor,
                report.display()
            );
        }
    }
    gallery.set_thresholds(thresholds);
    gallery.save()?;
    println!("thresholds of {location}: {thresholds:?}");
    Ok(ExitCode::SUCCESS)
}

fn set_search(location: &Location, ef_search: usize, writer: &WriterArgs) -> Result<ExitCode> {
    let mut gallery = Gallery::open_for_update(location, writer.lock_timeout())?;
    let params = gallery.settings().hnsw;
    gallery.set_search_params(HnswParams {
        ef_search,
        ..params
    });
    gallery.save()?;
    println!(
        "search of {location}: ef_search {ef_search} (was {}), M {}, ef_construction {}",
        params.ef_search, params.max_connections, params.ef_construction
    );
    Ok(ExitCode::SUCCESS)
}

fn index(location: &Location) -> Result<ExitCode> {
    let gallery = Gallery::open_unchecked(location)?;
    let bar = ProgressBar::hidden();
    let summaries = gallery.build_indexes_reporting(|p| {
        let what = format!("{} branch, {} entries", p.branch.name(), p.modality);
        if bar.message() != what {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            restyle(&bar, "{msg} [{bar:30}] {pos}/{len} in the graph, eta {eta}");
            bar.set_length(p.vectors as u64);
            bar.set_message(what);
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        bar.set_position(p.inserted as u64);
    });
    bar.finish_and_clear();
    println!("search indexes of {location} (branch, entries' modality):");
    let kept = match location {
        Location::Folder(_) => "built and kept in the folder",
        Location::Postgres(_) => "built in memory (each process builds its own)",
    };
    for s in summaries {
        let how = match s.origin {
            IndexOrigin::Exact => "exact search, no graph",
            IndexOrigin::GraphBuilt => kept,
            IndexOrigin::GraphKept => "graph read from the folder",
        };
        println!(
            "  {:<10} {:<10} {:>9} entries: {how} ({:.1} s)",
            s.branch.name(),
            s.modality.to_string(),
            s.vectors,
            s.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn copy(src: &Location, dst: &Location) -> Result<ExitCode> {
    let source = Gallery::open_unchecked(src)?;
    let copy = Gallery::create_copy(dst, &source)?;
    println!(
        "copied {} entries from {src} to {dst}",
        copy.entries().len()
    );
    Ok(ExitCode::SUCCESS)
}
