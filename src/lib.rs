//! carivis: recognise people in live video and video files, from galleries of photos and
//! caricatures. The data path, one module per stage: `capture` → `detect` → `align` → `embed`
//! → `gallery` → `render` → sinks, wired together only in `pipeline`.

#![deny(missing_docs)]

pub mod align;
pub mod capture;
pub mod caricature;
pub mod cv;
pub mod detect;
pub mod embed;
pub mod eval;
pub mod files;
pub mod gallery;
pub mod jobs;
pub mod logging;
pub mod models;
pub mod pipeline;
pub mod render;
pub mod rng;
pub mod runtime;
pub mod serve;
pub mod sink;
pub mod track;
pub mod train;
pub mod types;
