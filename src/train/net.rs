//! The trainable part of the multi-task network (candle): dlib's last block on the frozen
//! trunk's 256×4×4 map, trained and shared by the three tasks, one head per task (projection
//! and classifier), and the unit that generates the three task weights. Every tensor op is a matrix product because the block
//! works on maps this small: its stride-2 3×3 convolution sees only the top-left 3×3 window
//! of the 4×4 map, and its second 3×3 convolution (padding 1 on a 1×1 map) only its centre tap.

use candle_core::{D, DType, Device, Tensor, Var};

use super::TrainError;
use super::onnx::TRUNK_LEN;

/// Channels of the trunk output and of the block.
pub const CHANNELS: usize = 256;
/// Embedding dimension.
pub const EMBEDDING_DIM: usize = 128;
/// Kernel side of the block's convolutions.
pub const WINDOW: usize = 3;
/// Floats in the top-left 3×3 window of a trunk map.
pub const WINDOW_LEN: usize = CHANNELS * WINDOW * WINDOW;
/// Number of tasks (shared, photo, caricature).
pub const TASKS: usize = 3;
/// Task names, in output order.
pub const TASK_NAMES: [&str; TASKS] = ["shared", "photo", "caricature"];

/// The weights of one branch's block in plain arrays (what the ONNX export writes).
#[derive(Clone, Debug, PartialEq)]
pub struct BranchWeights {
    /// First convolution `[out 256][in 256×3×3]`.
    pub w1: Vec<f32>,
    /// First convolution's bias.
    pub b1: Vec<f32>,
    /// Second convolution's centre taps `[out 256][in 256]`.
    pub w2: Vec<f32>,
    /// Second convolution's bias.
    pub b2: Vec<f32>,
    /// Projection `[in 256][out 128]`.
    pub wfc: Vec<f32>,
}

/// One trunk map rearranged for the branches and the weight unit.
#[derive(Clone, Debug, PartialEq)]
pub struct MapFeatures {
    /// The top-left 3×3 window, channel-major (`[c][y][x]`), what the first convolution sees.
    pub window: Vec<f32>,
    /// The top-left cell of the 2×2 average-pooled skip path (where the block's result is added).
    pub corner: Vec<f32>,
    /// Sum of the ReLU of the other three pooled cells (constant: they get no block result).
    pub rest: Vec<f32>,
    /// The whole map, flattened (the weight unit's input).
    pub flat: Vec<f32>,
}

impl MapFeatures {
    /// Rearranges a 256×4×4 trunk map (`[c][y][x]`).
    pub fn from_map(map: &[f32]) -> Self {
        let side = super::onnx::TRUNK_SIDE;
        let at = |c: usize, y: usize, x: usize| map[(c * side + y) * side + x];
        let pooled = |c: usize, py: usize, px: usize| {
            (at(c, 2 * py, 2 * px)
                + at(c, 2 * py, 2 * px + 1)
                + at(c, 2 * py + 1, 2 * px)
                + at(c, 2 * py + 1, 2 * px + 1))
                / 4.0
        };
        let mut window = Vec::with_capacity(WINDOW_LEN);
        for c in 0..CHANNELS {
            for y in 0..WINDOW {
                for x in 0..WINDOW {
                    window.push(at(c, y, x));
                }
            }
        }
        Self {
            window,
            corner: (0..CHANNELS).map(|c| pooled(c, 0, 0)).collect(),
            rest: (0..CHANNELS)
                .map(|c| {
                    pooled(c, 0, 1).max(0.0) + pooled(c, 1, 0).max(0.0) + pooled(c, 1, 1).max(0.0)
                })
                .collect(),
            flat: map[..TRUNK_LEN].to_vec(),
        }
    }
}

/// A batch of [`MapFeatures`] as tensors.
pub struct BatchInput {
    /// N×2304.
    pub window: Tensor,
    /// N×256.
    pub corner: Tensor,
    /// N×256.
    pub rest: Tensor,
    /// N×4096.
    pub flat: Tensor,
}

impl BatchInput {
    /// Stacks the features of a batch.
    pub fn new(items: &[&MapFeatures], device: &Device) -> Result<Self, TrainError> {
        let n = items.len();
        let stack = |get: fn(&MapFeatures) -> &Vec<f32>, width: usize| {
            let data: Vec<f32> = items.iter().flat_map(|f| get(f).iter().copied()).collect();
            Tensor::from_vec(data, (n, width), device)
        };
        Ok(Self {
            window: stack(|f| &f.window, WINDOW_LEN)?,
            corner: stack(|f| &f.corner, CHANNELS)?,
            rest: stack(|f| &f.rest, CHANNELS)?,
            flat: stack(|f| &f.flat, TRUNK_LEN)?,
        })
    }
}

/// What a task head computes for a batch.
pub struct BranchOutput {
    /// The 128-d projection before normalisation (N×128); the classifier reads it.
    pub raw: Tensor,
    /// The L2-normalised embedding (N×128); the centre loss reads it.
    pub embedding: Tensor,
    /// Class scores (N×classes).
    pub logits: Tensor,
}

/// dlib's last block (stride-2 3×3 convolution, ReLU, the second convolution's centre tap,
/// the zero-padded residual add, ReLU, global average), trained and shared by the three
/// tasks: every task's loss reaches it, so the task weights trade the tasks off.
pub struct Block {
    w1t: Var,
    b1: Var,
    w2t: Var,
    b2: Var,
}

impl Block {
    /// The block with the convolutions of `weights`.
    pub fn new(weights: &BranchWeights, device: &Device) -> Result<Self, TrainError> {
        Ok(Self {
            w1t: transposed_var(&weights.w1, CHANNELS, WINDOW_LEN, device)?,
            b1: var(&weights.b1, (1, CHANNELS), device)?,
            w2t: transposed_var(&weights.w2, CHANNELS, CHANNELS, device)?,
            b2: var(&weights.b2, (1, CHANNELS), device)?,
        })
    }

    /// The block's variables, in a fixed order (checkpoints rely on it).
    pub fn vars(&self) -> Vec<&Var> {
        vec![&self.w1t, &self.b1, &self.w2t, &self.b2]
    }

    /// The pooled 256-channel output (N×256); `dropout_mask` (N×256, already scaled by
    /// 1/(1−p)) only in training.
    pub fn forward(
        &self,
        input: &BatchInput,
        dropout_mask: Option<&Tensor>,
    ) -> Result<Tensor, TrainError> {
        let h1 = input
            .window
            .matmul(self.w1t.as_tensor())?
            .broadcast_add(self.b1.as_tensor())?
            .relu()?;
        let h2 = h1
            .matmul(self.w2t.as_tensor())?
            .broadcast_add(self.b2.as_tensor())?;
        let pooled = ((input.corner.add(&h2)?.relu()? + &input.rest)? * 0.25)?;
        Ok(match dropout_mask {
            Some(mask) => pooled.mul(mask)?,
            None => pooled,
        })
    }

    /// The convolutions' current weights with `wfc` as the projection (export layout).
    pub fn weights_with(&self, wfc: Vec<f32>) -> Result<BranchWeights, TrainError> {
        Ok(BranchWeights {
            w1: untransposed(&self.w1t)?,
            b1: flat(&self.b1)?,
            w2: untransposed(&self.w2t)?,
            b2: flat(&self.b2)?,
            wfc,
        })
    }
}

/// One task's head on the shared block: its own 256→128 projection (starting as dlib's) and a
/// softmax classifier over the training identities.
pub struct Head {
    wfc: Var,
    classifier_w: Var,
    classifier_b: Var,
    cosine_scale: Option<f64>,
}

impl Head {
    /// A head with projection `wfc` (`256 × 128`, row-major) and a classifier initialised from
    /// `classifier_init` (`EMBEDDING_DIM × classes`): linear on the raw projection, or, with
    /// `cosine_scale`, `scale × cos(embedding, class weight)` (no bias).
    pub fn new(
        wfc: &[f32],
        classifier_init: Vec<f32>,
        classes: usize,
        cosine_scale: Option<f64>,
        device: &Device,
    ) -> Result<Self, TrainError> {
        Ok(Self {
            wfc: var(wfc, (CHANNELS, EMBEDDING_DIM), device)?,
            classifier_w: var(&classifier_init, (EMBEDDING_DIM, classes), device)?,
            classifier_b: Var::zeros((1, classes), DType::F32, device)?,
            cosine_scale,
        })
    }

    /// Every trainable variable, projection then classifier, in a fixed order.
    pub fn vars(&self) -> Vec<&Var> {
        vec![&self.wfc, &self.classifier_w, &self.classifier_b]
    }

    /// The pretrained projection (learns at the blocks' rate, left alone during warm-up).
    pub fn projection_var(&self) -> &Var {
        &self.wfc
    }

    /// The classifier's variables (trained alone during warm-up).
    pub fn classifier_vars(&self) -> Vec<&Var> {
        vec![&self.classifier_w, &self.classifier_b]
    }

    /// The projection's current weights.
    pub fn projection(&self) -> Result<Vec<f32>, TrainError> {
        flat(&self.wfc)
    }

    /// Projects the block's pooled output; `margin` (N×classes: the additive margin at each
    /// row's label, zero elsewhere) is subtracted from the cosines before scaling (CosFace),
    /// only in training and only with a cosine classifier.
    pub fn forward(
        &self,
        pooled: &Tensor,
        margin: Option<&Tensor>,
    ) -> Result<BranchOutput, TrainError> {
        let raw = pooled.matmul(self.wfc.as_tensor())?;
        let embedding = l2_normalise_rows(&raw)?;
        let logits = match self.cosine_scale {
            Some(scale) => {
                let columns = l2_normalise_rows(&self.classifier_w.as_tensor().t()?)?.t()?;
                let cosines = embedding.matmul(&columns)?;
                let cosines = match margin {
                    Some(margin) => cosines.sub(margin)?,
                    None => cosines,
                };
                (cosines * scale)?
            }
            None => raw
                .matmul(self.classifier_w.as_tensor())?
                .broadcast_add(self.classifier_b.as_tensor())?,
        };
        Ok(BranchOutput {
            raw,
            embedding,
            logits,
        })
    }
}

/// Normalised embeddings (row-major, 128 per map) of a block and projection given as plain
/// weights, for evaluation (dlib's own descriptor when `weights` are dlib's).
pub fn embed_maps(
    weights: &BranchWeights,
    maps: &[&MapFeatures],
    device: &Device,
) -> Result<Vec<f32>, TrainError> {
    let block = Block::new(weights, device)?;
    let projection = var(&weights.wfc, (CHANNELS, EMBEDDING_DIM), device)?;
    let mut out = Vec::with_capacity(maps.len() * EMBEDDING_DIM);
    for chunk in maps.chunks(512) {
        let pooled = block.forward(&BatchInput::new(chunk, device)?, None)?;
        let embedding = l2_normalise_rows(&pooled.matmul(projection.as_tensor())?)?;
        out.extend(embedding.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

fn var(data: &[f32], shape: (usize, usize), device: &Device) -> Result<Var, TrainError> {
    Ok(Var::from_tensor(&Tensor::from_slice(data, shape, device)?)?)
}

fn transposed_var(
    data: &[f32],
    rows: usize,
    cols: usize,
    device: &Device,
) -> Result<Var, TrainError> {
    let t = Tensor::from_slice(data, (rows, cols), device)?
        .t()?
        .contiguous()?;
    Ok(Var::from_tensor(&t)?)
}

fn flat(v: &Var) -> Result<Vec<f32>, TrainError> {
    Ok(v.as_tensor().flatten_all()?.to_vec1::<f32>()?)
}

fn untransposed(v: &Var) -> Result<Vec<f32>, TrainError> {
    Ok(v.as_tensor()
        .t()?
        .contiguous()?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// Each row divided by its L2 norm (rows of zeros stay near zero).
pub fn l2_normalise_rows(x: &Tensor) -> Result<Tensor, TrainError> {
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}

/// The dynamic weight unit: trunk map → fully connected → 3 logits → L2 normalisation →
/// ×scale → softmax → mean over the batch.
pub struct WeightUnit {
    w: Var,
    b: Var,
    scale: f64,
}

impl WeightUnit {
    /// A unit with weights from `init` (`TRUNK_LEN × 3`, row-major) and zero bias.
    pub fn new(init: Vec<f32>, scale: f64, device: &Device) -> Result<Self, TrainError> {
        Ok(Self {
            w: Var::from_tensor(&Tensor::from_vec(init, (TRUNK_LEN, TASKS), device)?)?,
            b: Var::zeros((1, TASKS), DType::F32, device)?,
            scale,
        })
    }

    /// The unit's variables, in a fixed order.
    pub fn vars(&self) -> Vec<&Var> {
        vec![&self.w, &self.b]
    }

    /// The three task weights (a 3-vector summing to 1) for a batch of trunk maps (N×4096).
    pub fn forward(&self, flat: &Tensor) -> Result<Tensor, TrainError> {
        let logits = flat
            .matmul(self.w.as_tensor())?
            .broadcast_add(self.b.as_tensor())?;
        let scaled = (l2_normalise_rows(&logits)? * self.scale)?;
        Ok(candle_nn::ops::softmax(&scaled, D::Minus1)?.mean(0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_features_take_the_window_and_pooled_cells() {
        let map: Vec<f32> = (0..TRUNK_LEN).map(|i| (i % 16) as f32).collect();
        let f = MapFeatures::from_map(&map);
        assert_eq!(
            &f.window[..9],
            &[0.0, 1.0, 2.0, 4.0, 5.0, 6.0, 8.0, 9.0, 10.0]
        );
        assert_eq!(f.corner[0], (0.0 + 1.0 + 4.0 + 5.0) / 4.0);
        let expected_rest = (2.0 + 3.0 + 6.0 + 7.0) / 4.0
            + (8.0 + 9.0 + 12.0 + 13.0) / 4.0
            + (10.0 + 11.0 + 14.0 + 15.0) / 4.0;
        assert_eq!(f.rest[5], expected_rest);
        assert_eq!(f.flat.len(), TRUNK_LEN);
    }

    #[test]
    fn unit_weights_sum_to_one() {
        let device = Device::Cpu;
        let init: Vec<f32> = (0..TRUNK_LEN * TASKS)
            .map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.5)
            .collect();
        let unit = WeightUnit::new(init, 2.0, &device).unwrap();
        let flat = Tensor::ones((4, TRUNK_LEN), DType::F32, &device).unwrap();
        let w = unit.forward(&flat).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(w.len(), 3);
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{w:?}");
        assert!(w.iter().all(|&x| x > 0.0));
    }
}
