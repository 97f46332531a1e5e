//! The per-task losses (softmax cross-entropy + centre loss), the centre tables and their
//! update rule, and how the three task losses are weighted.

use candle_core::{Device, Tensor};

use super::TrainError;
use super::net::{BranchOutput, EMBEDDING_DIM, TASKS};

/// How the three task losses are weighted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weighting {
    /// The unit is trained on `Σ wᵢ/(Lᵢ+0.01)`: weight moves to the task with the largest loss.
    Dynamic,
    /// Equal fixed weights (⅓ each).
    Fixed,
    /// The unit is trained on `Σ wᵢ·Lᵢ` like the rest (weight drifts to the easiest task).
    Naive,
}

/// Added to each loss in the dynamic unit's objective.
const DYNAMIC_EPSILON: f64 = 0.01;

/// Class centres of one branch (`classes × 128`), moved by the centre-loss rule, not by
/// gradients. The original code shares one table across the branches; here each branch has
/// its own, since their embeddings live in different spaces.
#[derive(Clone, Debug, PartialEq)]
pub struct CentreTable {
    values: Vec<f32>,
}

impl CentreTable {
    /// All centres at the origin.
    pub fn new(classes: usize) -> Self {
        Self {
            values: vec![0.0; classes * EMBEDDING_DIM],
        }
    }

    /// A table from saved values (`classes × 128`).
    pub fn from_values(values: Vec<f32>) -> Self {
        Self { values }
    }

    /// The centres, row-major.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The table as a `classes × 128` tensor (a constant for the loss).
    pub fn tensor(&self, device: &Device) -> Result<Tensor, TrainError> {
        let classes = self.values.len() / EMBEDDING_DIM;
        Ok(Tensor::from_slice(
            &self.values,
            (classes, EMBEDDING_DIM),
            device,
        )?)
    }

    /// `c_y ← c_y − (1 − α)·mean_{i: yᵢ=y}(c_y − xᵢ)` for every class in the batch
    /// (`embeddings` row-major, one row per label).
    pub fn update(&mut self, embeddings: &[f32], labels: &[u32], alpha: f32) {
        let mut sums: std::collections::HashMap<u32, (Vec<f32>, usize)> =
            std::collections::HashMap::new();
        for (row, &label) in embeddings.chunks(EMBEDDING_DIM).zip(labels) {
            let c = &self.values[label as usize * EMBEDDING_DIM..][..EMBEDDING_DIM];
            let (sum, n) = sums
                .entry(label)
                .or_insert_with(|| (vec![0.0; EMBEDDING_DIM], 0));
            for ((s, ci), xi) in sum.iter_mut().zip(c).zip(row) {
                *s += ci - xi;
            }
            *n += 1;
        }
        for (label, (sum, n)) in sums {
            let c = &mut self.values[label as usize * EMBEDDING_DIM..][..EMBEDDING_DIM];
            for (ci, s) in c.iter_mut().zip(sum) {
                *ci -= (1.0 - alpha) * s / n as f32;
            }
        }
    }
}

/// One task's loss on the rows of a batch that belong to it.
pub struct TaskLoss {
    /// `cross-entropy + centre_weight × centre loss` (a scalar tensor).
    pub loss: Tensor,
    /// Cross-entropy value.
    pub cross_entropy: f32,
    /// Centre-loss value (`½‖x − c_y‖²`, batch mean).
    pub centre: f32,
    /// Share of rows whose top class is the label.
    pub accuracy: f32,
    /// The rows' normalised embeddings, row-major (for the centre update).
    pub embeddings: Vec<f32>,
    /// The rows' labels.
    pub labels: Vec<u32>,
}

/// The loss of one task on the batch rows `rows` (labels `labels`), or `None` when the batch
/// has no row of this task.
pub fn task_loss(
    out: &BranchOutput,
    rows: &[u32],
    labels: &[u32],
    centres: &Tensor,
    centre_weight: f64,
) -> Result<Option<TaskLoss>, TrainError> {
    if rows.is_empty() {
        return Ok(None);
    }
    let device = out.logits.device();
    let index = Tensor::from_slice(rows, rows.len(), device)?;
    let target = Tensor::from_slice(labels, labels.len(), device)?;
    let logits = out.logits.index_select(&index, 0)?;
    let embeddings = out.embedding.index_select(&index, 0)?;
    let cross_entropy = candle_nn::loss::cross_entropy(&logits, &target)?;
    let centre = (embeddings
        .sub(&centres.index_select(&target, 0)?)?
        .sqr()?
        .sum(1)?
        .mean_all()?
        * 0.5)?;
    let loss = (&cross_entropy + (&centre * centre_weight)?)?;
    let predicted = logits.argmax(1)?.to_vec1::<u32>()?;
    let correct = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    Ok(Some(TaskLoss {
        loss,
        cross_entropy: cross_entropy.to_scalar()?,
        centre: centre.to_scalar()?,
        accuracy: correct as f32 / rows.len() as f32,
        embeddings: embeddings.flatten_all()?.to_vec1()?,
        labels: labels.to_vec(),
    }))
}

/// The two objectives of one step: what the network minimises (`Σ wᵢ·Lᵢ`, weights held
/// constant) and what the weight unit minimises (`None` for fixed weights).
pub struct Objectives {
    /// Minimised by the branches.
    pub network: Tensor,
    /// Minimised by the weight unit.
    pub unit: Option<Tensor>,
}

/// Combines the task losses (a 3-vector tensor) with the unit's weights (a 3-vector tensor).
pub fn objectives(
    weighting: Weighting,
    weights: &Tensor,
    losses: &Tensor,
) -> Result<Objectives, TrainError> {
    let network = weights.detach().mul(losses)?.sum_all()?;
    let constant_losses = losses.detach();
    let unit = match weighting {
        Weighting::Fixed => None,
        Weighting::Dynamic => Some(
            weights
                .div(&(constant_losses + DYNAMIC_EPSILON)?)?
                .sum_all()?,
        ),
        Weighting::Naive => Some(weights.mul(&constant_losses)?.sum_all()?),
    };
    Ok(Objectives { network, unit })
}

/// Equal weights for [`Weighting::Fixed`].
pub fn equal_weights(device: &Device) -> Result<Tensor, TrainError> {
    Ok(Tensor::from_slice(
        &[1.0f32 / TASKS as f32; TASKS],
        TASKS,
        device,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::train::net::WeightUnit;
    use crate::train::onnx::TRUNK_LEN;
    use crate::train::optim::{RmsProp, RmsPropConfig};

    /// Trains a weight unit alone against constant task losses (task 0 hard, tasks 1 and 2
    /// easy) and returns its weights before and after.
    fn toy_weights(weighting: Weighting) -> (Vec<f32>, Vec<f32>) {
        let device = Device::Cpu;
        let mut rng = Rng::new(11);
        let init = (0..TRUNK_LEN * TASKS)
            .map(|_| rng.normal() * 0.01)
            .collect();
        let unit = WeightUnit::new(init, 2.0, &device).unwrap();
        let flat: Vec<f32> = (0..8 * TRUNK_LEN).map(|_| rng.uniform()).collect();
        let flat = Tensor::from_vec(flat, (8, TRUNK_LEN), &device).unwrap();
        let losses = Tensor::new(&[2.0f32, 0.5, 0.5], &device).unwrap();
        let vars = unit.vars().into_iter().cloned().collect();
        let mut optimiser = RmsProp::new(vars, RmsPropConfig::default()).unwrap();
        let before = unit.forward(&flat).unwrap().to_vec1::<f32>().unwrap();
        for _ in 0..30 {
            let weights = unit.forward(&flat).unwrap();
            let objectives = objectives(weighting, &weights, &losses).unwrap();
            let grads = objectives.unit.unwrap().backward().unwrap();
            optimiser.step(&grads, 0.01).unwrap();
        }
        (
            before,
            unit.forward(&flat).unwrap().to_vec1::<f32>().unwrap(),
        )
    }

    #[test]
    fn dynamic_weighting_moves_weight_to_the_task_with_the_largest_loss() {
        let (before, after) = toy_weights(Weighting::Dynamic);
        assert!(after[0] > before[0] + 0.1, "{before:?} → {after:?}");
        assert!(after[0] > after[1] && after[0] > after[2], "{after:?}");
    }

    #[test]
    fn naive_weighting_moves_weight_away_from_the_task_with_the_largest_loss() {
        let (before, after) = toy_weights(Weighting::Naive);
        assert!(after[0] < before[0] - 0.1, "{before:?} → {after:?}");
        assert!(after[0] < after[1] && after[0] < after[2], "{after:?}");
    }

    #[test]
    fn network_objective_holds_the_weights_constant() {
        let device = Device::Cpu;
        let w = candle_core::Var::new(&[0.2f32, 0.3, 0.5], &device).unwrap();
        let l = candle_core::Var::new(&[1.0f32, 2.0, 3.0], &device).unwrap();
        let o = objectives(Weighting::Dynamic, w.as_tensor(), l.as_tensor()).unwrap();
        let grads = o.network.backward().unwrap();
        assert!(grads.get(w.as_tensor()).is_none());
        let dl = grads.get(l.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(dl, vec![0.2, 0.3, 0.5]);
        let unit_grads = o.unit.unwrap().backward().unwrap();
        assert!(unit_grads.get(l.as_tensor()).is_none());
        let dw = unit_grads
            .get(w.as_tensor())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!((dw[0] - 1.0 / 1.01).abs() < 1e-6, "{dw:?}");
    }

    #[test]
    fn centre_update_moves_half_way_to_the_class_mean() {
        let mut table = CentreTable::new(2);
        let mut x = vec![0.0f32; 2 * EMBEDDING_DIM];
        x[0] = 1.0;
        x[EMBEDDING_DIM] = 0.5;
        table.update(&x, &[1, 1], 0.5);
        // c₁ ← 0 − 0.5·mean(0 − x) = 0.5·mean(x) = (0.375, 0, …)
        assert!((table.values()[EMBEDDING_DIM] - 0.375).abs() < 1e-7);
        assert!(table.values()[..EMBEDDING_DIM].iter().all(|&v| v == 0.0));
        table.update(&x[..EMBEDDING_DIM], &[1], 0.5);
        assert!((table.values()[EMBEDDING_DIM] - (0.375 + 0.5 * (1.0 - 0.375))).abs() < 1e-7);
    }
}
