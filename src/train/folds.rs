//! The unseen-people protocol: CaVI's people split into identity-disjoint folds (seeded); each
//! fold is trained on the other people (its epoch chosen on validation people drawn from those
//! other people, never on the fold) and measured on its own people, beside dlib's descriptor
//! on the same people. Each fold's figures are written as soon as it ends, so a second run
//! resumes at the first fold without them; the report gives mean ± std over the folds.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use super::data::Fold;
use super::session::{self, CHECKPOINT_FILE, Event, Finish, Start, TrainConfig};
use super::{TrainError, write_atomically};
use crate::eval::metrics::{MeanStd, RocPoint};
use crate::eval::plots::roc_png;
use crate::eval::unseen::UnseenFigures;

/// The protocol's settings: the session every fold starts from, the number of folds and the
/// report folder.
#[derive(Clone, Debug)]
pub struct FoldsConfig {
    /// The training session (its split's fold, output and run folder are set per fold).
    pub session: TrainConfig,
    /// Number of identity-disjoint folds.
    pub folds: usize,
    /// Where each fold's model, run and figures, and the report go.
    pub report: PathBuf,
}

/// One fold's outcome (`fold-K/figures.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FoldResult {
    /// 1-based fold number.
    pub fold: usize,
    /// The epoch exported (1-based).
    pub best_epoch: usize,
    /// Whether the exported photo branch is dlib's descriptor.
    pub photo_is_dlib: bool,
    /// Mix of dlib's and the trained weights in the exported shared branch (0 = dlib's).
    #[serde(default)]
    pub shared_mix: f64,
    /// The trained model on the fold's people.
    pub model: UnseenFigures,
    /// dlib's descriptor on the same people.
    pub dlib: UnseenFigures,
    /// Seconds the fold's session took.
    pub seconds: f64,
}

/// What the protocol reports as it goes.
#[derive(Debug)]
pub enum FoldEvent<'a> {
    /// A fold starts (or resumes its session).
    Start {
        /// 1-based fold.
        fold: usize,
        /// Number of folds.
        count: usize,
    },
    /// A fold's figures were already there.
    Skipped(&'a FoldResult),
    /// An event of the fold's training session.
    Session(Event<'a>),
    /// A fold ended.
    Done(&'a FoldResult),
}

/// Reads one figure of a set of unseen-people figures.
pub type Figure = fn(&UnseenFigures) -> f64;

/// The figures reported, with their names in the report.
pub const FIGURES: [(&str, Figure); 12] = [
    ("caricature–photo verification (10-fold)", |f| {
        f.verification
    }),
    ("caricature–photo AUC", |f| f.auc),
    ("TAR @ FAR 1%", |f| f.tar_far_1),
    ("TAR @ FAR 0.1%", |f| f.tar_far_01),
    ("rank-1 caricature→photo", |f| f.rank1_cp),
    ("rank-5 caricature→photo", |f| f.rank5_cp),
    ("rank-1 photo→caricature", |f| f.rank1_pc),
    ("rank-5 photo→caricature", |f| f.rank5_pc),
    ("photo–photo AUC", |f| f.photo_auc),
    ("photo–photo TAR @ FAR 1%", |f| f.photo_tar_far_1),
    ("open-set DIR @ FAR 1%, caricature→photo", |f| {
        f.dir_far_1_cp
    }),
    ("people per fold", |f| f.people as f64),
];

/// Runs (or resumes) every fold and writes `report.json`, `report.md` and `roc.png`; `None`
/// when Ctrl-C stopped it (the fold under way keeps its checkpoint).
pub fn run_folds(
    config: &FoldsConfig,
    events: &dyn Fn(FoldEvent),
    stop: &AtomicBool,
) -> Result<Option<Vec<FoldResult>>, TrainError> {
    let mut results = Vec::with_capacity(config.folds);
    for index in 0..config.folds {
        let dir = config.report.join(format!("fold-{}", index + 1));
        let figures = dir.join("figures.json");
        if let Some(done) = read_result(&figures)? {
            events(FoldEvent::Skipped(&done));
            results.push(done);
            continue;
        }
        events(FoldEvent::Start {
            fold: index + 1,
            count: config.folds,
        });
        let session = fold_session(config, index, &dir);
        let on_event = |e: Event| events(FoldEvent::Session(e));
        let summary = match session::run(&session, &on_event, stop)? {
            Finish::Done(summary) => summary,
            Finish::Interrupted { .. } => return Ok(None),
        };
        let (Some(model), Some(dlib)) = (summary.best.unseen.clone(), summary.unseen_dlib.clone())
        else {
            return Err(TrainError::BadOutput {
                path: figures,
                reason: "the fold has no held-out people with both photos and caricatures",
            });
        };
        let result = FoldResult {
            fold: index + 1,
            best_epoch: summary.best.epoch + 1,
            photo_is_dlib: summary.best.photo_is_dlib,
            shared_mix: summary.best.shared_mix,
            model,
            dlib,
            seconds: summary.total_seconds,
        };
        write_json(&figures, &result)?;
        events(FoldEvent::Done(&result));
        results.push(result);
    }
    write_report(config, &results)?;
    Ok(Some(results))
}

/// The session of fold `index`: its people held out, its files under `dir`, resumed when a
/// checkpoint is there.
fn fold_session(config: &FoldsConfig, index: usize, dir: &Path) -> TrainConfig {
    let mut session = config.session.clone();
    session.split.holdout_identities = 0;
    session.split.fold = Some(Fold {
        count: config.folds,
        index,
    });
    session.out = dir.join("model.onnx");
    session.run_dir = dir.join("run");
    session.readme = false;
    session.start = if session.run_dir.join(CHECKPOINT_FILE).is_file() {
        Start::Resume
    } else {
        Start::Restart
    };
    session
}

fn read_result(path: &Path) -> Result<Option<FoldResult>, TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| TrainError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    write_atomically(path, text.as_bytes())
}

/// Mean ± std over folds of every figure, for the model and for dlib.
pub fn summarise(results: &[FoldResult]) -> Vec<(&'static str, MeanStd, MeanStd)> {
    FIGURES
        .iter()
        .map(|(name, get)| {
            let of = |pick: fn(&FoldResult) -> &UnseenFigures| {
                MeanStd::of(&results.iter().map(|r| get(pick(r))).collect::<Vec<_>>())
            };
            (*name, of(|r| &r.dlib), of(|r| &r.model))
        })
        .collect()
}

/// The report as a Markdown table (dlib's column beside the model's).
pub fn markdown(results: &[FoldResult]) -> String {
    let mut text = format!(
        "Unseen people: {} identity-disjoint folds of CaVI, mean ± std over folds\n\n\
         | figure | dlib descriptor | trained model |\n|---|---|---|\n",
        results.len()
    );
    for (name, dlib, model) in summarise(results) {
        let cell = |m: MeanStd| {
            if name.starts_with("people") {
                format!("{:.1} ± {:.1}", m.mean, m.std)
            } else {
                format!("{:.4} ± {:.4}", m.mean, m.std)
            }
        };
        text.push_str(&format!("| {name} | {} | {} |\n", cell(dlib), cell(model)));
    }
    let photo_dlib = results.iter().filter(|r| r.photo_is_dlib).count();
    let epochs: Vec<String> = results.iter().map(|r| r.best_epoch.to_string()).collect();
    let mixes: Vec<String> = results.iter().map(|r| r.shared_mix.to_string()).collect();
    text.push_str(&format!(
        "\nChosen on validation people: exported photo branch = dlib's descriptor in {photo_dlib} of {} folds; epochs {}; shared-branch mix of dlib's (0) and the trained (1) weights {}.\n",
        results.len(),
        epochs.join(", "),
        mixes.join(", ")
    ));
    text
}

/// Writes `report.json`, `report.md` and `roc.png` (mean TAR over folds at each FAR).
fn write_report(config: &FoldsConfig, results: &[FoldResult]) -> Result<(), TrainError> {
    let rows: Vec<serde_json::Value> = summarise(results)
        .into_iter()
        .map(
            |(name, dlib, model)| serde_json::json!({"figure": name, "dlib": dlib, "model": model}),
        )
        .collect();
    write_json(
        &config.report.join("report.json"),
        &serde_json::json!({"folds": results, "summary": rows}),
    )?;
    write_atomically(
        &config.report.join("report.md"),
        markdown(results).as_bytes(),
    )?;
    let mean_curve = |pick: fn(&FoldResult) -> &UnseenFigures| -> Vec<RocPoint> {
        let first = &pick(&results[0]).roc;
        (0..first.len())
            .map(|k| RocPoint {
                threshold: 0.0,
                far: first[k].0,
                tar: results.iter().map(|r| pick(r).roc[k].1).sum::<f64>() / results.len() as f64,
            })
            .collect()
    };
    if results.is_empty() {
        return Ok(());
    }
    let path = config.report.join("roc.png");
    roc_png(
        &path,
        "unseen people: caricature–photo ROC (mean over folds)",
        &[
            ("dlib descriptor".into(), &mean_curve(|r| &r.dlib)),
            ("trained model".into(), &mean_curve(|r| &r.model)),
        ],
    )
    .map_err(|source| TrainError::Plot { path, source })
}
