//! JSON Lines: one object per frame, `{"source", "frame", "time_s", "dropped_before", "faces": [...]}`,
//! and one `{"source_status": {...}}` or `{"gallery_status": {...}}` per drop-out or
//! reconnection of a live source or of the gallery's store.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Control, Sink, SinkError};
use crate::types::{AnnotatedFrame, RunEvent, TrackedFace};

/// Writes one line per frame to a file (through a temporary file, renamed when finished).
pub struct JsonlSink {
    path: PathBuf,
    partial: PathBuf,
    out: Option<BufWriter<File>>,
}

/// One frame's line: the same fields wherever a frame is reported (JSON Lines, the HTTP
/// service's events).
#[derive(Serialize)]
pub struct FrameLine<'a> {
    /// Index of the source.
    pub source: usize,
    /// Frame number within the source.
    pub frame: u64,
    /// Position in the source's timeline, in seconds.
    pub time_s: f64,
    /// Frames of this source dropped since its previous line (live pacing).
    pub dropped_before: u64,
    /// The faces, with tracks and identities.
    pub faces: &'a [TrackedFace],
}

impl<'a> FrameLine<'a> {
    /// The line of `frame`.
    pub fn of(frame: &'a AnnotatedFrame) -> Self {
        Self {
            source: frame.frame.source,
            frame: frame.frame.index,
            time_s: frame.frame.time_s,
            dropped_before: frame.frame.dropped_before,
            faces: &frame.faces,
        }
    }
}

impl JsonlSink {
    /// Creates the output (under [`partial_path`] until [`Sink::finish`]).
    pub fn create(path: &Path) -> Result<Self, SinkError> {
        let partial = partial_path(path);
        let file = create_output(path, &partial)?;
        Ok(Self {
            path: path.to_path_buf(),
            partial,
            out: Some(BufWriter::new(file)),
        })
    }

    fn error(&self, e: impl ToString) -> SinkError {
        SinkError::write(&self.path, e)
    }

    /// Writes one JSON object as one line, flushed whole so that a reader following the file
    /// sees every line at once.
    fn write_line(&mut self, value: &impl Serialize) -> Result<(), SinkError> {
        let text = serde_json::to_string(value).map_err(|e| self.error(e))?;
        let out = self.out.as_mut().expect("not finished");
        writeln!(out, "{text}").map_err(|e| SinkError::write(&self.path, e))?;
        out.flush().map_err(|e| self.error(e))
    }
}

/// Creates `path`'s folder when missing, then the file itself (the partial one).
pub fn create_output(path: &Path, partial: &Path) -> Result<File, SinkError> {
    let create = || -> std::io::Result<File> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        File::create(partial)
    };
    create().map_err(|e| SinkError::Create {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// `out.mp4` → `out.partial.mp4`: where an output is written until it is complete (the
/// extension stays last, so writers that pick a container by extension still work).
pub fn partial_path(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.partial.{}", ext.to_string_lossy()),
        None => format!("{stem}.partial"),
    };
    path.with_file_name(name)
}

impl Sink for JsonlSink {
    fn write(&mut self, frame: &AnnotatedFrame) -> Result<Control, SinkError> {
        self.write_line(&FrameLine::of(frame))?;
        Ok(Control::Continue)
    }

    fn event(&mut self, event: &RunEvent) -> Result<(), SinkError> {
        self.write_line(event)
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        if let Some(mut out) = self.out.take() {
            out.flush().map_err(|e| self.error(e))?;
            out.get_ref().sync_all().map_err(|e| self.error(e))?;
            std::fs::rename(&self.partial, &self.path).map_err(|e| self.error(e))?;
        }
        Ok(())
    }
}
