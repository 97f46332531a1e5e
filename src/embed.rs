//! Face embeddings: runs the embedding model on batches of aligned chips. Two model shapes are
//! told apart by their outputs: a single output (the dlib descriptor) or the multi-task model's
//! `emb_shared`, `emb_photo`, `emb_caricature`. Every embedding leaves here L2-normalised.

use std::path::Path;

use ndarray::{Array4, ArrayD, Axis};

use crate::runtime::{Model, ModelSpec, Runtime, RuntimeError};
use crate::types::{Embedding, RgbImage};

/// The dlib ResNet descriptor: 150×150 RGB chips, raw 0–255, → 128-d (not unit length).
pub const DLIB_SPEC: ModelSpec = ModelSpec {
    file: "dlib_resnet_v1.onnx",
    input: "input",
    input_shape: [-1, 3, 150, 150],
    outputs: &["descriptor"],
};

/// Output names of the multi-task model `carivis-train` exports.
pub const MULTI_TASK_OUTPUTS: [&str; 3] = ["emb_shared", "emb_photo", "emb_caricature"];

/// The multi-task model trained on CaVI by `carivis-train` (dlib trunk + shared, photo and
/// caricature branches), each output N×128 and L2-normalised: the default embedder.
pub const MULTI_TASK_SPEC: ModelSpec = ModelSpec {
    file: "carivis_mtl.onnx",
    input: "input",
    input_shape: [-1, 3, 150, 150],
    outputs: &MULTI_TASK_OUTPUTS,
};

/// The embedding model the commands use unless told otherwise.
pub const DEFAULT_EMBEDDER: &str = MULTI_TASK_SPEC.file;

/// Default number of chips per ONNX Runtime run.
pub const DEFAULT_BATCH: usize = 8;

/// Why embedding failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The model could not be loaded or run.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A chip is not the size the model takes.
    #[error("chip is {width}×{height}, the model takes {size}×{size}")]
    ChipSize {
        /// Chip width.
        width: u32,
        /// Chip height.
        height: u32,
        /// The model's chip side.
        size: u32,
    },
}

/// The two model shapes the embedder accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outputs {
    /// One output, used as the shared embedding.
    Single(String),
    /// The three multi-task branches.
    MultiTask,
}

/// Runs an embedding model; one per thread (`&mut self`).
pub struct Embedder {
    model: Model,
    outputs: Outputs,
    input: String,
    chip_size: u32,
    dim: usize,
    batch_size: usize,
}

impl Embedder {
    /// Opens an embedding model and works out its shape from its outputs.
    pub fn open(runtime: &Runtime, path: &Path, batch_size: usize) -> Result<Self, EmbedError> {
        let model = runtime.open(path)?;
        let contract = |reason: String| RuntimeError::ModelContract {
            path: path.to_path_buf(),
            reason,
        };
        let inputs = model.inputs();
        let [input] = inputs.as_slice() else {
            return Err(contract(format!("expected one input, found {}", inputs.len())).into());
        };
        let chip_size = match input.shape.as_slice() {
            [_, 3, h, w] if h == w && *h > 0 => *h as u32,
            _ => return Err(contract(format!("input {input} is not N×3×S×S")).into()),
        };
        let names: Vec<String> = model.outputs().into_iter().map(|o| o.name).collect();
        let outputs = if MULTI_TASK_OUTPUTS
            .iter()
            .all(|n| names.iter().any(|m| m == n))
        {
            Outputs::MultiTask
        } else if let [single] = names.as_slice() {
            Outputs::Single(single.clone())
        } else {
            return Err(contract(format!(
                "outputs {names:?} are neither one embedding nor the multi-task {MULTI_TASK_OUTPUTS:?}"
            ))
            .into());
        };
        let first_output = match &outputs {
            Outputs::Single(name) => name.as_str(),
            Outputs::MultiTask => MULTI_TASK_OUTPUTS[0],
        };
        let dim = match model
            .outputs()
            .iter()
            .find(|o| o.name == first_output)
            .map(|o| o.shape.as_slice())
        {
            Some([_, d]) if *d > 0 => *d as usize,
            _ => {
                return Err(
                    contract(format!("output `{first_output}` is not N×D with a fixed D")).into(),
                );
            }
        };
        Ok(Self {
            input: input.name.clone(),
            model,
            outputs,
            chip_size,
            dim,
            batch_size: batch_size.max(1),
        })
    }

    /// Side of the square chip the model takes.
    pub fn chip_size(&self) -> u32 {
        self.chip_size
    }

    /// Dimension of each embedding branch.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Names of the branches the model produces, shared first.
    pub fn branch_names(&self) -> Vec<String> {
        match self.outputs {
            Outputs::Single(_) => vec!["shared".into()],
            Outputs::MultiTask => ["shared", "photo", "caricature"].map(String::from).to_vec(),
        }
    }

    /// sha256 of the model file (recorded with every stored embedding).
    pub fn model_sha256(&self) -> &str {
        self.model.sha256()
    }

    /// The model file.
    pub fn model_path(&self) -> &Path {
        self.model.path()
    }

    /// Whether the model has the photo and caricature branches.
    pub fn is_multi_task(&self) -> bool {
        self.outputs == Outputs::MultiTask
    }

    /// Embeds chips, `batch_size` per run, in order.
    pub fn embed(&mut self, chips: &[RgbImage]) -> Result<Vec<Embedding>, EmbedError> {
        let mut embeddings = Vec::with_capacity(chips.len());
        for batch in chips.chunks(self.batch_size) {
            embeddings.extend(self.embed_batch(batch)?);
        }
        Ok(embeddings)
    }

    fn embed_batch(&mut self, chips: &[RgbImage]) -> Result<Vec<Embedding>, EmbedError> {
        let input = chips_tensor(chips, self.chip_size)?;
        let out = self.model.run(&self.input, input.view())?;
        let rows = |name: &str| unit_rows(&out[name]);
        Ok(match &self.outputs {
            Outputs::Single(name) => rows(name)
                .into_iter()
                .map(|shared| Embedding {
                    shared,
                    photo: None,
                    caricature: None,
                })
                .collect(),
            Outputs::MultiTask => {
                let [shared, photo, caricature] = MULTI_TASK_OUTPUTS.map(rows);
                shared
                    .into_iter()
                    .zip(photo)
                    .zip(caricature)
                    .map(|((shared, photo), caricature)| Embedding {
                        shared,
                        photo: Some(photo),
                        caricature: Some(caricature),
                    })
                    .collect()
            }
        })
    }
}

/// Stacks chips into an N×3×S×S float tensor of raw 0–255 RGB (the models normalise inside);
/// every chip must be `size`×`size`.
pub fn chips_tensor(chips: &[RgbImage], size: u32) -> Result<Array4<f32>, EmbedError> {
    let s = size as usize;
    let mut tensor = Array4::<f32>::zeros((chips.len(), 3, s, s));
    for (mut slot, chip) in tensor.outer_iter_mut().zip(chips) {
        if chip.width() != size || chip.height() != size {
            return Err(EmbedError::ChipSize {
                width: chip.width(),
                height: chip.height(),
                size,
            });
        }
        for (x, y, px) in chip.enumerate_pixels() {
            for c in 0..3 {
                slot[[c, y as usize, x as usize]] = f32::from(px[c]);
            }
        }
    }
    Ok(tensor)
}

/// Each row of an N×D output as an L2-normalised vector.
fn unit_rows(output: &ArrayD<f32>) -> Vec<Vec<f32>> {
    output
        .axis_iter(Axis(0))
        .map(|row| l2_normalised(row.iter().copied().collect()))
        .collect()
}

/// The vector scaled to unit length (unchanged when it is all zeros).
pub fn l2_normalised(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l2_normalised_has_unit_length_and_keeps_zero() {
        let v = l2_normalised(vec![3.0, 4.0]);
        assert_eq!(v, vec![0.6, 0.8]);
        assert_eq!(l2_normalised(vec![0.0, 0.0]), vec![0.0, 0.0]);
    }
}
