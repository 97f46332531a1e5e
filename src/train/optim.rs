//! RMSProp with momentum (TensorFlow's formulation, as the original training used) and
//! clipping by global norm; candle ships only SGD and AdamW.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::TrainError;

/// RMSProp settings.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RmsPropConfig {
    /// Decay of the running mean of squared gradients.
    pub decay: f64,
    /// Momentum.
    pub momentum: f64,
    /// Added to the mean square before the square root.
    pub epsilon: f64,
    /// Gradients are scaled down when their global norm exceeds this (0: no clipping).
    pub clip_norm: f64,
}

impl Default for RmsPropConfig {
    fn default() -> Self {
        Self {
            decay: 0.9,
            momentum: 0.9,
            epsilon: 1.0,
            clip_norm: 5.0,
        }
    }
}

/// RMSProp over one group of variables:
/// `ms ← ρ·ms + (1−ρ)·g²`, `mom ← μ·mom + lr·g/√(ms+ε)`, `θ ← θ − mom`.
pub struct RmsProp {
    vars: Vec<Var>,
    lr_multipliers: Vec<f64>,
    mean_square: Vec<Tensor>,
    moment: Vec<Tensor>,
    config: RmsPropConfig,
}

impl RmsProp {
    /// An optimiser for `vars` with zero state.
    pub fn new(vars: Vec<Var>, config: RmsPropConfig) -> Result<Self, TrainError> {
        let ones = vec![1.0; vars.len()];
        Self::with_multipliers(vars, ones, config)
    }

    /// An optimiser whose variable `i` learns at `lr_multipliers[i]` × the step's rate.
    pub fn with_multipliers(
        vars: Vec<Var>,
        lr_multipliers: Vec<f64>,
        config: RmsPropConfig,
    ) -> Result<Self, TrainError> {
        let zeros = vars
            .iter()
            .map(|v| v.as_tensor().zeros_like())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            mean_square: zeros.clone(),
            moment: zeros,
            vars,
            lr_multipliers,
            config,
        })
    }

    /// The optimiser state (mean squares, then moments), for checkpoints.
    pub fn state(&self) -> Vec<&Tensor> {
        self.mean_square.iter().chain(&self.moment).collect()
    }

    /// Restores the state written by [`RmsProp::state`].
    pub fn set_state(&mut self, state: Vec<Tensor>) -> Result<(), TrainError> {
        let n = self.vars.len();
        if state.len() != 2 * n {
            return Err(super::CheckpointError::OptimiserState {
                found: state.len(),
                expected: 2 * n,
            }
            .into());
        }
        let (ms, mom) = state.split_at(n);
        self.mean_square = ms.to_vec();
        self.moment = mom.to_vec();
        Ok(())
    }

    /// One update with learning rate `lr`; returns the global gradient norm before clipping.
    /// Variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<f64, TrainError> {
        let mut squared = 0.0f64;
        for var in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                squared += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
            }
        }
        let norm = squared.sqrt();
        let clip = if self.config.clip_norm > 0.0 && norm > self.config.clip_norm {
            self.config.clip_norm / norm
        } else {
            1.0
        };
        let c = self.config;
        for (i, var) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // Detached: gradients can carry their own graph, which the state would otherwise
            // chain from step to step (memory grows without bound).
            let g = (g.detach() * clip)?;
            self.mean_square[i] =
                ((&self.mean_square[i] * c.decay)? + (g.sqr()? * (1.0 - c.decay))?)?.detach();
            let denominator = (&self.mean_square[i] + c.epsilon)?.sqrt()?;
            let rate = lr * self.lr_multipliers[i];
            self.moment[i] =
                ((&self.moment[i] * c.momentum)? + (g.div(&denominator)? * rate)?)?.detach();
            var.set(&var.as_tensor().detach().sub(&self.moment[i])?)?;
        }
        Ok(norm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rmsprop_follows_the_formula_and_clips() {
        let device = Device::Cpu;
        let x = Var::new(&[1.0f32, -1.0], &device).unwrap();
        let config = RmsPropConfig {
            clip_norm: 0.0,
            ..RmsPropConfig::default()
        };
        let mut opt = RmsProp::new(vec![x.clone()], config).unwrap();
        // loss = 2·x0 − x1 → gradient (2, −1)
        let loss = (x.as_tensor().narrow(0, 0, 1).unwrap() * 2.0).unwrap()
            - x.as_tensor().narrow(0, 1, 1).unwrap();
        let grads = loss.unwrap().sum_all().unwrap().backward().unwrap();
        let norm = opt.step(&grads, 0.1).unwrap();
        assert!((norm - 5f64.sqrt()).abs() < 1e-6);
        let got = x.as_tensor().to_vec1::<f32>().unwrap();
        let step = |g: f64| 0.1 * g / (0.1 * g * g + 1.0).sqrt();
        assert!(
            (f64::from(got[0]) - (1.0 - step(2.0))).abs() < 1e-6,
            "{got:?}"
        );
        assert!(
            (f64::from(got[1]) - (-1.0 - step(-1.0))).abs() < 1e-6,
            "{got:?}"
        );

        let y = Var::new(&[0.0f32], &device).unwrap();
        let mut clipped = RmsProp::new(
            vec![y.clone()],
            RmsPropConfig {
                clip_norm: 1.0,
                ..RmsPropConfig::default()
            },
        )
        .unwrap();
        let grads = (y.as_tensor() * 10.0)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        clipped.step(&grads, 1.0).unwrap();
        let moved = y.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!(
            (f64::from(moved) + step_for_clipped()).abs() < 1e-6,
            "{moved}"
        );
    }

    /// The gradient 10 clipped to 1, lr 1: 1/√(0.1·1 + 1).
    fn step_for_clipped() -> f64 {
        1.0 / (0.1f64 + 1.0).sqrt()
    }
}
