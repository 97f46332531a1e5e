//! Progress bars for the library's progress callbacks, shared by both command-line programs.

use indicatif::{ProgressBar, ProgressStyle};

use carivis::jobs::{Phase, Progress};

/// Restarts `bar` with a new template (the style of every bar here).
pub fn restyle(bar: &ProgressBar, template: &str) {
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.reset();
}

/// Shows a job runner's progress on `bar`: hashing, then `work` (for example "embedding");
/// a new phase starts the bar anew, and a finished phase clears it.
pub fn show_job(bar: &ProgressBar, p: Progress, work: &str) {
    let what = match p.phase {
        Phase::Hashing => "hashing",
        Phase::Processing => work,
    };
    if bar.message() != what || bar.is_finished() {
        restyle(
            bar,
            "{msg} [{bar:30}] {pos}/{len} images, {per_sec}, eta {eta}",
        );
        bar.set_message(what.to_string());
        bar.set_length(p.total as u64);
    }
    bar.set_position(p.done as u64);
    if p.done == p.total {
        bar.finish_and_clear();
    }
}
