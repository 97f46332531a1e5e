//! The training loop: batches of cached trunk maps (original or mirrored at random), the three
//! task losses with per-task row masks, the weight unit and the two optimisers over disjoint
//! parameter sets on the same forward pass, centre updates, validation and checkpoints.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor, Var};

use super::loss::{
    CentreTable, Objectives, TaskLoss, Weighting, equal_weights, objectives, task_loss,
};
use super::net::{
    BatchInput, Block, BranchOutput, BranchWeights, CHANNELS, EMBEDDING_DIM, Head, MapFeatures,
    TASKS, WeightUnit, l2_normalise_rows,
};
use super::onnx::TRUNK_LEN;
use super::optim::{RmsProp, RmsPropConfig};
use super::{CheckpointError, TrainError};
use crate::eval::metrics::{Scored, auc, rates_at, roc, threshold_at_far};
use crate::eval::unseen::{dot, pairs_within};
use crate::rng::Rng;
use crate::types::Modality;

/// Rows per inference batch in validation.
const INFERENCE_BATCH: usize = 512;
/// FAR at which validation reports TAR.
const VALIDATION_FAR: f64 = 0.01;

/// The training hyper-parameters.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainOptions {
    /// Passes over the training images.
    pub epochs: usize,
    /// Images per step.
    pub batch: usize,
    /// Learning rate of the classifiers (the blocks learn at `block_lr_multiplier` × it).
    pub learning_rate: f64,
    /// Epochs at the start in which only the classifiers learn.
    pub warmup_epochs: usize,
    /// From this epoch (0-based) on, learning rates are divided by 10.
    pub lr_drop_epoch: usize,
    /// The pretrained blocks learn at this multiple of the classifiers' rate.
    pub block_lr_multiplier: f64,
    /// The weight unit's learning rate is this multiple of the branches'.
    pub unit_lr_multiplier: f64,
    /// Scale of the unit's normalised logits before the softmax.
    pub logit_scale: f64,
    /// Classifier: `scale × cosine` of normalised embedding and class weights when > 0, else
    /// linear on the raw projection (the original's).
    pub cosine_scale: f64,
    /// Additive cosine margin at the true class (CosFace) with the cosine classifier; 0 = none.
    pub margin: f64,
    /// Weight of the term that keeps the photos' shared and photo embeddings close to dlib's
    /// descriptor (`mean 1 − cos`), against forgetting what dlib knows; 0 = none.
    pub dlib_anchor: f64,
    /// Whether each exported branch may be a mix `dlib + m·(trained − dlib)` of the weights,
    /// `m` chosen on validation among [`super::session::MIXES`] (weight-space ensembling, as
    /// WiSE-FT); without it the shared and caricature branches are the trained ones and the
    /// photo branch is the trained one or dlib's.
    pub interpolate: bool,
    /// Whether the exported photo branch may be a trained one (or a mix) that beats dlib's
    /// descriptor on the validation people; without it the photo branch is dlib's descriptor.
    /// Off by default: in the unseen-people protocol no validation-chosen trained photo branch
    /// beat dlib on the held-out people (README, "Model generalisation").
    #[serde(default)]
    pub validated_photo_branch: bool,
    /// Weight of the centre loss in each task loss.
    pub centre_weight: f64,
    /// α of the centre update.
    pub centre_alpha: f32,
    /// Dropout probability before the projection.
    pub dropout: f32,
    /// How task losses are weighted.
    pub weighting: Weighting,
    /// RMSProp settings (both optimisers).
    pub rmsprop: RmsPropConfig,
    /// Seed of initialisation, shuffling, mirroring and dropout.
    pub seed: u64,
}

/// Labelled trunk maps.
pub struct Examples {
    /// Each image's maps: the chip's and its mirror image's.
    pub maps: Vec<[MapFeatures; 2]>,
    /// Each image's label (class index for training people).
    pub labels: Vec<u32>,
    /// Each image's modality.
    pub modalities: Vec<Modality>,
}

impl Examples {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// What one step measured (a row of the training log).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StepRecord {
    /// 0-based epoch.
    pub epoch: usize,
    /// Steps done before this one, over the whole run.
    pub step: usize,
    /// Learning rate of the classifiers (the blocks learn at `block_lr_multiplier` × it).
    pub learning_rate: f64,
    /// Task losses (cross-entropy + weighted centre loss): shared, photo, caricature.
    pub loss: [f32; TASKS],
    /// Cross-entropy per task.
    pub cross_entropy: [f32; TASKS],
    /// Centre loss per task.
    pub centre: [f32; TASKS],
    /// Task weights used.
    pub weight: [f32; TASKS],
    /// Training-batch accuracy per task.
    pub accuracy: [f32; TASKS],
    /// The dlib-anchor term (`mean 1 − cos` to dlib's descriptor over the batch's photos).
    pub anchor: f32,
    /// Global gradient norm of the network before clipping.
    pub grad_norm: f64,
}

/// Validation figures.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Validation {
    /// Top-1 classification accuracy per task (shared: all images; photo: photos;
    /// caricature: caricatures); `None` when the labels are not training classes.
    pub accuracy: Option<[f32; TASKS]>,
    /// AUC of every caricature–photo pair, shared branch.
    pub cross_modal_auc: f64,
    /// TAR at FAR 1% over the same pairs.
    pub cross_modal_tar: f64,
    /// Number of caricature–photo pairs scored.
    pub pairs: usize,
    /// AUC of every photo–photo pair, photo branch.
    pub photo_auc: f64,
    /// TAR at FAR 1% over the same pairs.
    pub photo_tar: f64,
}

/// The network, its optimisers and centre tables.
pub struct Trainer {
    options: TrainOptions,
    device: Device,
    block: Block,
    heads: Vec<Head>,
    reference: Option<(Block, Tensor)>,
    unit: WeightUnit,
    centres: Vec<CentreTable>,
    network_optimiser: RmsProp,
    unit_optimiser: RmsProp,
    rng: Rng,
    steps_done: usize,
}

impl Trainer {
    /// A fresh network: the shared block and every head's projection start from `pretrained`;
    /// classifiers and the unit are drawn from the seed.
    pub fn new(
        pretrained: &BranchWeights,
        classes: usize,
        options: TrainOptions,
    ) -> Result<Self, TrainError> {
        let device = Device::Cpu;
        let mut rng = Rng::new(options.seed);
        let classifier_std = (2.0 / (EMBEDDING_DIM + classes) as f32).sqrt();
        let block = Block::new(pretrained, &device)?;
        let heads = (0..TASKS)
            .map(|_| {
                let init = (0..EMBEDDING_DIM * classes)
                    .map(|_| rng.normal() * classifier_std)
                    .collect();
                let scale = (options.cosine_scale > 0.0).then_some(options.cosine_scale);
                Head::new(&pretrained.wfc, init, classes, scale, &device)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let reference = if options.dlib_anchor > 0.0 {
            let projection =
                Tensor::from_slice(&pretrained.wfc, (CHANNELS, EMBEDDING_DIM), &device)?;
            Some((Block::new(pretrained, &device)?, projection))
        } else {
            None
        };
        let unit_init = (0..TRUNK_LEN * TASKS)
            .map(|_| rng.normal() * 0.01)
            .collect();
        let unit = WeightUnit::new(unit_init, options.logit_scale, &device)?;
        let mut network_vars: Vec<Var> = Vec::new();
        let mut multipliers = Vec::new();
        for var in block.vars() {
            network_vars.push(var.clone());
            multipliers.push(options.block_lr_multiplier);
        }
        for head in &heads {
            network_vars.push(head.projection_var().clone());
            multipliers.push(options.block_lr_multiplier);
            for var in head.classifier_vars() {
                network_vars.push(var.clone());
                multipliers.push(1.0);
            }
        }
        let unit_vars: Vec<Var> = unit.vars().into_iter().cloned().collect();
        Ok(Self {
            network_optimiser: RmsProp::with_multipliers(
                network_vars,
                multipliers,
                options.rmsprop,
            )?,
            unit_optimiser: RmsProp::new(unit_vars, options.rmsprop)?,
            centres: (0..TASKS).map(|_| CentreTable::new(classes)).collect(),
            block,
            heads,
            reference,
            unit,
            rng,
            device,
            options,
            steps_done: 0,
        })
    }

    /// The options in use.
    pub fn options(&self) -> &TrainOptions {
        &self.options
    }

    /// Learning rate of the classifiers in `epoch`.
    pub fn learning_rate(&self, epoch: usize) -> f64 {
        if epoch >= self.options.lr_drop_epoch {
            self.options.learning_rate / 10.0
        } else {
            self.options.learning_rate
        }
    }

    /// A fresh random order of `examples` for the next epoch.
    pub fn start_epoch(&mut self, examples: &Examples) -> EpochProgress {
        let mut order: Vec<usize> = (0..examples.len()).collect();
        self.rng.shuffle(&mut order);
        EpochProgress {
            order,
            next_batch: 0,
        }
    }

    /// Steps of one epoch over `examples`.
    pub fn steps_per_epoch(&self, examples: &Examples) -> usize {
        let batch = self.options.batch;
        examples.len() / batch + usize::from(examples.len() % batch >= 2)
    }

    /// Trains on the batches of `progress` not done yet; `on_step` sees every step's record.
    /// Returns `false` when `stop` was set before the epoch ended (`progress` then says where
    /// to go on).
    pub fn train_epoch(
        &mut self,
        epoch: usize,
        examples: &Examples,
        progress: &mut EpochProgress,
        stop: &AtomicBool,
        mut on_step: impl FnMut(&StepRecord),
    ) -> Result<bool, TrainError> {
        let lr = self.learning_rate(epoch);
        let size = self.options.batch;
        while let Some(batch) = progress.order.chunks(size).nth(progress.next_batch) {
            if stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            if batch.len() >= 2 {
                let record = self.step(epoch, batch, examples, lr)?;
                on_step(&record);
            }
            progress.next_batch += 1;
        }
        Ok(true)
    }

    /// One optimisation step on the images `batch`.
    fn step(
        &mut self,
        epoch: usize,
        batch: &[usize],
        examples: &Examples,
        lr: f64,
    ) -> Result<StepRecord, TrainError> {
        let items: Vec<&MapFeatures> = batch
            .iter()
            .map(|&i| &examples.maps[i][usize::from(self.rng.uniform() < 0.5)])
            .collect();
        let input = BatchInput::new(&items, &self.device)?;
        let labels: Vec<u32> = batch.iter().map(|&i| examples.labels[i]).collect();
        let task_rows = task_rows(batch, examples);
        let mask = self.dropout_mask(batch.len())?;
        let pooled = self.block.forward(&input, mask.as_ref())?;
        let margin = self.margin_matrix(&labels)?;
        let reference = self.reference_embeddings(&input)?;
        let photo_rows = &task_rows[1];
        let mut task_losses: Vec<Option<TaskLoss>> = Vec::with_capacity(TASKS);
        let mut anchor_terms = Vec::new();
        for (t, rows) in task_rows.iter().enumerate() {
            let out = self.heads[t].forward(&pooled, margin.as_ref())?;
            if let Some(reference) = &reference
                && t < 2
            {
                anchor_terms.push(anchor_term(&out, reference, photo_rows)?);
            }
            let row_labels: Vec<u32> = rows.iter().map(|&r| labels[r as usize]).collect();
            let centres = self.centres[t].tensor(&self.device)?;
            task_losses.push(task_loss(
                &out,
                rows,
                &row_labels,
                &centres,
                self.options.centre_weight,
            )?);
        }
        let zero = Tensor::zeros((), candle_core::DType::F32, &self.device)?;
        let losses = Tensor::stack(
            &task_losses
                .iter()
                .map(|l| l.as_ref().map_or_else(|| zero.clone(), |l| l.loss.clone()))
                .collect::<Vec<_>>(),
            0,
        )?;
        let weights = match self.options.weighting {
            Weighting::Fixed => equal_weights(&self.device)?,
            _ => self.unit.forward(&input.flat)?,
        };
        let Objectives { network, unit } = objectives(self.options.weighting, &weights, &losses)?;
        let mut anchor: Option<Tensor> = None;
        for term in anchor_terms.into_iter().flatten() {
            anchor = Some(match anchor {
                Some(sum) => (sum + term)?,
                None => term,
            });
        }
        let network = match &anchor {
            Some(anchor) => (network + (anchor * self.options.dlib_anchor)?)?,
            None => network,
        };
        let mut grads = network.backward()?;
        if epoch < self.options.warmup_epochs {
            self.keep_classifier_gradients(&mut grads);
        }
        let grad_norm = self.network_optimiser.step(&grads, lr)?;
        if let Some(unit) = unit {
            self.unit_optimiser
                .step(&unit.backward()?, lr * self.options.unit_lr_multiplier)?;
        }
        for (table, loss) in self.centres.iter_mut().zip(&task_losses) {
            if let Some(loss) = loss {
                table.update(&loss.embeddings, &loss.labels, self.options.centre_alpha);
            }
        }
        let per_task = |f: fn(&TaskLoss) -> f32| {
            std::array::from_fn(|t| task_losses[t].as_ref().map_or(0.0, f))
        };
        let weight: Vec<f32> = weights.to_vec1()?;
        let record = StepRecord {
            epoch,
            step: self.steps_done,
            learning_rate: lr,
            loss: std::array::from_fn(|t| losses.get(t).and_then(|l| l.to_scalar()).unwrap_or(0.0)),
            cross_entropy: per_task(|l| l.cross_entropy),
            centre: per_task(|l| l.centre),
            weight: std::array::from_fn(|t| weight[t]),
            accuracy: per_task(|l| l.accuracy),
            anchor: match &anchor {
                Some(a) => a.to_scalar()?,
                None => 0.0,
            },
            grad_norm,
        };
        self.steps_done += 1;
        Ok(record)
    }

    /// Drops every gradient but the classifiers': during warm-up the pretrained block and
    /// projections stay as they are while the randomly initialised classifiers learn (their
    /// first, random gradients would otherwise damage them).
    fn keep_classifier_gradients(&self, grads: &mut candle_core::backprop::GradStore) {
        let projections = self.heads.iter().map(Head::projection_var);
        for var in self.block.vars().into_iter().chain(projections) {
            grads.remove(var.as_tensor());
        }
    }

    /// The CosFace margin at each row's label (N×classes), or `None` without a margin.
    fn margin_matrix(&self, labels: &[u32]) -> Result<Option<Tensor>, TrainError> {
        if self.options.margin <= 0.0 || self.options.cosine_scale <= 0.0 {
            return Ok(None);
        }
        let classes = self.centres[0].values().len() / EMBEDDING_DIM;
        let mut values = vec![0.0f32; labels.len() * classes];
        for (row, &label) in labels.iter().enumerate() {
            values[row * classes + label as usize] = self.options.margin as f32;
        }
        Ok(Some(Tensor::from_vec(
            values,
            (labels.len(), classes),
            &self.device,
        )?))
    }

    /// dlib's own normalised descriptor of the batch (constant), when the anchor is on.
    fn reference_embeddings(&self, input: &BatchInput) -> Result<Option<Tensor>, TrainError> {
        let Some((block, projection)) = &self.reference else {
            return Ok(None);
        };
        let pooled = block.forward(input, None)?;
        Ok(Some(
            l2_normalise_rows(&pooled.matmul(projection)?)?.detach(),
        ))
    }

    /// A dropout mask (N×256, entries 0 or 1/(1−p)), or `None` without dropout.
    fn dropout_mask(&mut self, rows: usize) -> Result<Option<Tensor>, TrainError> {
        let p = self.options.dropout;
        if p <= 0.0 {
            return Ok(None);
        }
        let keep = 1.0 / (1.0 - p);
        let values: Vec<f32> = (0..rows * CHANNELS)
            .map(|_| if self.rng.uniform() < p { 0.0 } else { keep })
            .collect();
        Ok(Some(Tensor::from_vec(
            values,
            (rows, CHANNELS),
            &self.device,
        )?))
    }

    /// Normalised embeddings (row-major, 128 per image) and predicted classes of each task,
    /// without dropout, on the unmirrored maps.
    pub fn infer(&self, maps: &[&MapFeatures]) -> Result<Inference, TrainError> {
        let mut inference = Inference::default();
        for chunk in maps.chunks(INFERENCE_BATCH) {
            let input = BatchInput::new(chunk, &self.device)?;
            let pooled = self.block.forward(&input, None)?;
            for (t, head) in self.heads.iter().enumerate() {
                let out = head.forward(&pooled, None)?;
                inference.embeddings[t].extend(out.embedding.flatten_all()?.to_vec1::<f32>()?);
                inference.predicted[t].extend(out.logits.argmax(1)?.to_vec1::<u32>()?);
            }
        }
        Ok(inference)
    }

    /// Figures on held-back images; `classified` when their labels are training classes.
    pub fn validate(
        &self,
        examples: &Examples,
        classified: bool,
    ) -> Result<Validation, TrainError> {
        let maps: Vec<&MapFeatures> = examples.maps.iter().map(|m| &m[0]).collect();
        let inference = self.infer(&maps)?;
        let accuracy = classified.then(|| {
            std::array::from_fn(|t| {
                let rows: Vec<usize> = (0..examples.len())
                    .filter(|&i| task_includes(t, examples.modalities[i]))
                    .collect();
                let correct = rows
                    .iter()
                    .filter(|&&i| inference.predicted[t][i] == examples.labels[i])
                    .count();
                correct as f32 / rows.len().max(1) as f32
            })
        });
        let mut validation =
            pair_validation(&inference.embeddings[0], &inference.embeddings[1], examples)?;
        validation.accuracy = accuracy;
        Ok(validation)
    }

    /// The current weights of the three branches (the shared block with each task's
    /// projection, export layout), shared first.
    pub fn branch_weights(&self) -> Result<Vec<BranchWeights>, TrainError> {
        self.heads
            .iter()
            .map(|head| self.block.weights_with(head.projection()?))
            .collect()
    }

    /// Every tensor of the training state, by name (for a checkpoint).
    pub fn state(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        let mut state = HashMap::new();
        for (k, var) in self.block.vars().into_iter().enumerate() {
            state.insert(format!("block.{k}"), var.as_tensor().clone());
        }
        for (t, head) in self.heads.iter().enumerate() {
            for (k, var) in head.vars().into_iter().enumerate() {
                state.insert(format!("head{t}.{k}"), var.as_tensor().clone());
            }
            let centres = &self.centres[t];
            state.insert(format!("centres{t}"), centres.tensor(&self.device)?);
        }
        for (k, var) in self.unit.vars().into_iter().enumerate() {
            state.insert(format!("unit.{k}"), var.as_tensor().clone());
        }
        for (prefix, optimiser) in [
            ("opt.network", &self.network_optimiser),
            ("opt.unit", &self.unit_optimiser),
        ] {
            for (k, t) in optimiser.state().into_iter().enumerate() {
                state.insert(format!("{prefix}.{k}"), t.clone());
            }
        }
        Ok(state)
    }

    /// Restores the tensors written by [`Trainer::state`], the generator and the step count.
    pub fn restore(
        &mut self,
        mut state: HashMap<String, Tensor>,
        rng: Rng,
        steps_done: usize,
    ) -> Result<(), TrainError> {
        let mut take = |name: String| {
            state
                .remove(&name)
                .ok_or(CheckpointError::MissingTensor(name))
        };
        for (k, var) in self.block.vars().into_iter().enumerate() {
            set_checked(var, &take(format!("block.{k}"))?)?;
        }
        for (t, head) in self.heads.iter().enumerate() {
            for (k, var) in head.vars().into_iter().enumerate() {
                set_checked(var, &take(format!("head{t}.{k}"))?)?;
            }
            let centres = take(format!("centres{t}"))?.flatten_all()?.to_vec1()?;
            self.centres[t] = CentreTable::from_values(centres);
        }
        for (k, var) in self.unit.vars().into_iter().enumerate() {
            set_checked(var, &take(format!("unit.{k}"))?)?;
        }
        for (prefix, optimiser) in [
            ("opt.network", &mut self.network_optimiser),
            ("opt.unit", &mut self.unit_optimiser),
        ] {
            let n = optimiser.state().len();
            let tensors = (0..n)
                .map(|k| take(format!("{prefix}.{k}")))
                .collect::<Result<Vec<_>, _>>()?;
            optimiser.set_state(tensors)?;
        }
        self.rng = rng;
        self.steps_done = steps_done;
        Ok(())
    }

    /// The generator's state (saved with checkpoints).
    pub fn rng(&self) -> &Rng {
        &self.rng
    }

    /// Steps done so far.
    pub fn steps_done(&self) -> usize {
        self.steps_done
    }

    /// The state tensors as safetensors bytes.
    pub fn state_bytes(&self) -> Result<Vec<u8>, TrainError> {
        Ok(safetensors::serialize(self.state()?, None).map_err(CheckpointError::from)?)
    }
}

/// Where an epoch stands: its image order and the next batch (saved with a checkpoint taken
/// mid-epoch, so that resuming repeats nothing and skips nothing).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochProgress {
    /// The epoch's order of the training images.
    pub order: Vec<usize>,
    /// Index of the next batch to train.
    pub next_batch: usize,
}

/// Per-task embeddings and predictions of [`Trainer::infer`].
#[derive(Default)]
pub struct Inference {
    /// Row-major normalised embeddings per task.
    pub embeddings: [Vec<f32>; TASKS],
    /// Top class per task and image.
    pub predicted: [Vec<u32>; TASKS],
}

/// Whether task `t` (shared, photo, caricature) trains on images of `modality`.
fn task_includes(t: usize, modality: Modality) -> bool {
    match t {
        0 => true,
        1 => modality == Modality::Photo,
        _ => modality == Modality::Caricature,
    }
}

/// The batch rows each task trains on.
fn task_rows(batch: &[usize], examples: &Examples) -> Vec<Vec<u32>> {
    (0..TASKS)
        .map(|t| {
            (0..batch.len() as u32)
                .filter(|&r| task_includes(t, examples.modalities[batch[r as usize]]))
                .collect()
        })
        .collect()
}

/// Every caricature–photo pair of the examples, scored by the dot product of `embeddings`.
fn cross_modal_pairs(embeddings: &[f32], examples: &Examples) -> Vec<Scored> {
    let (caricatures, photos) = (
        with_modality(examples, Modality::Caricature),
        with_modality(examples, Modality::Photo),
    );
    let mut pairs = Vec::with_capacity(caricatures.len() * photos.len());
    for &c in &caricatures {
        for &p in &photos {
            pairs.push(Scored {
                score: dot(embeddings, c, p),
                genuine: examples.labels[c] == examples.labels[p],
            });
        }
    }
    pairs
}

/// Indexes of the examples of one modality.
fn with_modality(examples: &Examples, modality: Modality) -> Vec<usize> {
    (0..examples.len())
        .filter(|&i| examples.modalities[i] == modality)
        .collect()
}

/// Validation figures (without classification accuracy) of row-major normalised embeddings:
/// `cross` scores every caricature–photo pair, `photo` every photo–photo pair.
pub fn pair_validation(
    cross: &[f32],
    photo: &[f32],
    examples: &Examples,
) -> Result<Validation, TrainError> {
    let pairs = cross_modal_pairs(cross, examples);
    let (cross_modal_auc, cross_modal_tar) = auc_and_tar(&pairs)?;
    let photos = with_modality(examples, Modality::Photo);
    let (photo_auc, photo_tar) = auc_and_tar(&pairs_within(photo, &examples.labels, &photos))?;
    Ok(Validation {
        accuracy: None,
        cross_modal_auc,
        cross_modal_tar,
        pairs: pairs.len(),
        photo_auc,
        photo_tar,
    })
}

/// AUC and TAR at the validation FAR of `pairs` (NaN when one class is missing).
fn auc_and_tar(pairs: &[Scored]) -> Result<(f64, f64), TrainError> {
    if !(pairs.iter().any(|p| p.genuine) && pairs.iter().any(|p| !p.genuine)) {
        return Ok((f64::NAN, f64::NAN));
    }
    let curve = roc(pairs)?;
    let impostors: Vec<f32> = pairs
        .iter()
        .filter(|p| !p.genuine)
        .map(|p| p.score)
        .collect();
    let tar = threshold_at_far(&impostors, VALIDATION_FAR).map_or(0.0, |t| rates_at(pairs, t).0);
    Ok((auc(&curve), tar))
}

/// `mean(1 − cos)` between a head's embeddings and dlib's descriptor on the photo rows, or
/// `None` when the batch has no photo.
fn anchor_term(
    out: &BranchOutput,
    reference: &Tensor,
    photo_rows: &[u32],
) -> Result<Option<Tensor>, TrainError> {
    if photo_rows.is_empty() {
        return Ok(None);
    }
    let index = Tensor::from_slice(photo_rows, photo_rows.len(), reference.device())?;
    let cosines = out
        .embedding
        .index_select(&index, 0)?
        .mul(&reference.index_select(&index, 0)?)?
        .sum(1)?;
    Ok(Some(cosines.affine(-1.0, 1.0)?.mean_all()?))
}

fn set_checked(var: &Var, value: &Tensor) -> Result<(), TrainError> {
    if var.as_tensor().dims() != value.dims() {
        return Err(CheckpointError::Shape {
            found: value.dims().to_vec(),
            expected: var.as_tensor().dims().to_vec(),
        }
        .into());
    }
    Ok(var.set(value)?)
}
