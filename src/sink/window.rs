//! A window showing the annotated frames (minifb, X11). It must stay on the thread that made it.

use std::path::PathBuf;

use minifb::{Key, Window, WindowOptions};

use super::{Control, Sink, SinkError};
use crate::types::AnnotatedFrame;

/// One window per source showing its frames; `q`, Esc or closing one asks the run to stop.
pub struct WindowSink {
    title: String,
    windows: Vec<Option<Window>>,
    buffer: Vec<u32>,
}

impl WindowSink {
    /// Prepares a window; it opens at the first frame, at that frame's size.
    pub fn new(title: &str) -> Self {
        Self {
            title: title.to_string(),
            windows: Vec::new(),
            buffer: Vec::new(),
        }
    }

    fn error(&self, reason: impl ToString) -> SinkError {
        SinkError::Create {
            path: PathBuf::from(format!("window {:?}", self.title)),
            reason: reason.to_string(),
        }
    }
}

impl Sink for WindowSink {
    fn write(&mut self, frame: &AnnotatedFrame) -> Result<Control, SinkError> {
        let (w, h) = (
            frame.frame.image.width() as usize,
            frame.frame.image.height() as usize,
        );
        let source = frame.frame.source;
        if self.windows.len() <= source {
            self.windows.resize_with(source + 1, || None);
        }
        if self.windows[source].is_none() {
            let title = if source == 0 {
                self.title.clone()
            } else {
                format!("{} ({})", self.title, source + 1)
            };
            let window = Window::new(&title, w, h, WindowOptions::default()).map_err(|e| {
                self.error(format!(
                    "{e} (is a display available? set DISPLAY, or use Xvfb)"
                ))
            })?;
            self.windows[source] = Some(window);
        }
        self.buffer.clear();
        self.buffer.extend(
            frame
                .frame
                .image
                .pixels()
                .map(|p| (u32::from(p[0]) << 16) | (u32::from(p[1]) << 8) | u32::from(p[2])),
        );
        let window = self.windows[source].as_mut().expect("opened above");
        if !window.is_open() || window.is_key_down(Key::Escape) || window.is_key_down(Key::Q) {
            return Ok(Control::Stop);
        }
        window
            .update_with_buffer(&self.buffer, w, h)
            .map_err(|e| SinkError::Write {
                path: PathBuf::from(format!("window {:?}", self.title)),
                reason: e.to_string(),
            })?;
        Ok(Control::Continue)
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.windows.clear();
        Ok(())
    }
}
