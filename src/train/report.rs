//! What a training run leaves besides the model: the per-step CSV log, the per-epoch
//! validation CSV, PNG plots of the task losses and weights over training, and the model's
//! entry in the models folder's README.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::TrainError;
use super::net::TASK_NAMES;
use super::trainer::{StepRecord, Validation};
use crate::eval::plots::lines_png;

/// Header of the per-step log.
pub fn step_header() -> String {
    let mut columns = vec!["epoch".to_string(), "step".into(), "learning_rate".into()];
    for group in ["loss", "cross_entropy", "centre", "weight", "accuracy"] {
        columns.extend(TASK_NAMES.iter().map(|t| format!("{group}_{t}")));
    }
    columns.push("anchor".into());
    columns.push("grad_norm".into());
    columns.join(",")
}

/// One row of the per-step log.
pub fn step_row(r: &StepRecord) -> String {
    let mut fields = vec![
        r.epoch.to_string(),
        r.step.to_string(),
        r.learning_rate.to_string(),
    ];
    for group in [r.loss, r.cross_entropy, r.centre, r.weight, r.accuracy] {
        fields.extend(group.iter().map(|v| format!("{v:.6}")));
    }
    fields.push(format!("{:.6}", r.anchor));
    fields.push(format!("{:.6}", r.grad_norm));
    fields.join(",")
}

/// Header of the per-epoch log.
pub const EPOCH_HEADER: &str = "epoch,seconds,val_accuracy_shared,val_accuracy_photo,\
val_accuracy_caricature,val_cross_modal_auc,val_cross_modal_tar_far1,val_photo_auc,\
val_photo_tar_far1,mean_weight_shared,mean_weight_photo,mean_weight_caricature";

/// One row of the per-epoch log.
pub fn epoch_row(epoch: usize, seconds: f64, v: &Validation, mean_weight: [f64; 3]) -> String {
    let acc = v.accuracy.unwrap_or([f32::NAN; 3]);
    format!(
        "{epoch},{seconds:.1},{:.4},{:.4},{:.4},{:.5},{:.4},{:.5},{:.4},{:.4},{:.4},{:.4}",
        acc[0],
        acc[1],
        acc[2],
        v.cross_modal_auc,
        v.cross_modal_tar,
        v.photo_auc,
        v.photo_tar,
        mean_weight[0],
        mean_weight[1],
        mean_weight[2]
    )
}

/// An append-only CSV file that writes its header when it starts empty.
pub struct CsvLog {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
}

impl CsvLog {
    /// Opens `path` for appending (`fresh` truncates it first).
    pub fn open(path: &Path, header: &str, fresh: bool) -> Result<Self, TrainError> {
        let io = |source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.create(true);
        if fresh {
            options.write(true).truncate(true);
        } else {
            options.append(true);
        }
        let file = options.open(path).map_err(io)?;
        let empty = file.metadata().map_err(io)?.len() == 0;
        let mut log = Self {
            file: std::io::BufWriter::new(file),
            path: path.to_path_buf(),
        };
        if empty {
            log.line(header)?;
        }
        Ok(log)
    }

    /// Appends a line.
    pub fn line(&mut self, line: &str) -> Result<(), TrainError> {
        writeln!(self.file, "{line}").map_err(|source| TrainError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Flushes to disk.
    pub fn flush(&mut self) -> Result<(), TrainError> {
        self.file.flush().map_err(|source| TrainError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Draws `losses.png` and `weights.png` from the per-step log (the paper's figure: task losses
/// and dynamic weights against training steps), smoothed over `window` steps.
pub fn plot_log(log: &Path, out_dir: &Path, window: usize) -> Result<Vec<PathBuf>, TrainError> {
    let text = std::fs::read_to_string(log).map_err(|source| TrainError::Io {
        path: log.to_path_buf(),
        source,
    })?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let rows: Vec<Vec<f64>> = lines
        .map(|l| {
            l.split(',')
                .map(|v| v.parse().unwrap_or(f64::NAN))
                .collect()
        })
        .collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let curves = |group: &str| -> Vec<(String, Vec<(f64, f64)>)> {
        TASK_NAMES
            .iter()
            .filter_map(|t| {
                let c = column(&format!("{group}_{t}"))?;
                let values: Vec<f64> = rows
                    .iter()
                    .map(|r| r.get(c).copied().unwrap_or(f64::NAN))
                    .collect();
                Some((t.to_string(), moving_average(&values, window)))
            })
            .collect()
    };
    let mut written = Vec::new();
    for (file, title, group, y) in [
        (
            "losses.png",
            "task losses",
            "loss",
            "task loss (softmax + weighted centre loss)",
        ),
        ("weights.png", "task weights", "weight", "weight"),
    ] {
        let path = out_dir.join(file);
        lines_png(&path, title, ("step", y), &curves(group)).map_err(|source| {
            TrainError::Plot {
                path: path.clone(),
                source,
            }
        })?;
        written.push(path);
    }
    Ok(written)
}

/// `(step, mean of the last `window` values)` for each step.
fn moving_average(values: &[f64], window: usize) -> Vec<(f64, f64)> {
    let window = window.max(1);
    values
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let from = (i + 1).saturating_sub(window);
            let slice = &values[from..=i];
            (i as f64, slice.iter().sum::<f64>() / slice.len() as f64)
        })
        .collect()
}

/// Replaces (or appends) the README section of model `name`, delimited by markers so a
/// retrained model replaces its own entry and nothing else. A README that exists but cannot be
/// read as UTF-8 text is refused, never replaced.
pub fn upsert_readme_section(readme: &Path, name: &str, body: &str) -> Result<(), TrainError> {
    let begin = format!("<!-- carivis-train: {name} -->");
    let end = format!("<!-- /carivis-train: {name} -->");
    let old = read_readme(readme)?;
    let section = format!("{begin}\n{}\n{end}", body.trim_end());
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{section}{}", &old[..b], &old[e + end.len()..])
        }
        _ if old.is_empty() => format!("{section}\n"),
        _ => format!("{}\n\n{section}\n", old.trim_end()),
    };
    super::write_atomically(readme, new.as_bytes())
}

/// The README's text; empty when there is none yet.
fn read_readme(readme: &Path) -> Result<String, TrainError> {
    let bytes = match std::fs::read(readme) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => {
            return Err(TrainError::Readme {
                path: readme.to_path_buf(),
                reason: format!("cannot read it ({e})"),
            });
        }
    };
    String::from_utf8(bytes).map_err(|e| TrainError::Readme {
        path: readme.to_path_buf(),
        reason: format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_section_is_replaced_not_duplicated() {
        let dir = tempfile::tempdir().unwrap();
        let readme = dir.path().join("README.md");
        std::fs::write(&readme, "# Models\n\nintro\n").unwrap();
        upsert_readme_section(&readme, "m.onnx", "first").unwrap();
        upsert_readme_section(&readme, "m.onnx", "second").unwrap();
        let text = std::fs::read_to_string(&readme).unwrap();
        assert!(text.starts_with("# Models\n\nintro\n"));
        assert!(text.contains("second") && !text.contains("first"), "{text}");
        assert_eq!(text.matches("<!-- carivis-train: m.onnx -->").count(), 1);
    }

    #[test]
    fn an_unreadable_or_binary_readme_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let readme = dir.path().join("README.md");
        let binary = b"# Models\n\xff\xfe not text".to_vec();
        std::fs::write(&readme, &binary).unwrap();
        let err = upsert_readme_section(&readme, "m.onnx", "entry").unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("README.md") && message.contains("not UTF-8"),
            "{message}"
        );
        assert_eq!(
            std::fs::read(&readme).unwrap(),
            binary,
            "the README is untouched"
        );
        let folder = dir.path().join("folder.md");
        std::fs::create_dir(&folder).unwrap();
        let err = upsert_readme_section(&folder, "m.onnx", "entry").unwrap_err();
        assert!(err.to_string().contains("cannot read it"), "{err}");
    }

    #[test]
    fn step_rows_match_the_header() {
        let record = StepRecord {
            epoch: 0,
            step: 1,
            learning_rate: 0.1,
            loss: [1.0; 3],
            cross_entropy: [1.0; 3],
            centre: [0.1; 3],
            weight: [0.3; 3],
            accuracy: [0.5; 3],
            anchor: 0.1,
            grad_norm: 2.0,
        };
        assert_eq!(
            step_header().split(',').count(),
            step_row(&record).split(',').count()
        );
        assert_eq!(
            moving_average(&[1.0, 3.0, 5.0], 2),
            vec![(0.0, 1.0), (1.0, 2.0), (2.0, 4.0)]
        );
    }
}
