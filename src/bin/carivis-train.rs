//! `carivis-train`: trains the multi-task photo/caricature embedding model and exports it to
//! ONNX for the pipeline (see issue: dynamic multi-task learning).

use std::process::ExitCode;

use clap::Parser;

/// Train the multi-task photo/caricature embedding model (not yet available in this build).
#[derive(Parser)]
#[command(name = "carivis-train", version)]
struct Cli {}

fn main() -> ExitCode {
    Cli::parse();
    eprintln!(
        "error: training is not implemented yet; the pipeline runs the pretrained dlib descriptor"
    );
    ExitCode::FAILURE
}
