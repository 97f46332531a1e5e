//! Exact t-SNE (van der Maaten & Hinton 2008) for a few hundred embeddings: Gaussian input
//! affinities at a fixed perplexity (bisection on each point's precision), Student-t output
//! affinities, gradient descent with momentum, early exaggeration and per-coordinate gains.
//! O(n²) per iteration, meant for figures of a few people's images, not for galleries.

use crate::rng::Rng;

/// Settings of a t-SNE run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TsneConfig {
    /// Effective number of neighbours.
    pub perplexity: f64,
    /// Gradient steps.
    pub iterations: usize,
    /// Seed of the initial layout.
    pub seed: u64,
}

impl Default for TsneConfig {
    fn default() -> Self {
        Self {
            perplexity: 20.0,
            iterations: 750,
            seed: 1,
        }
    }
}

/// Iterations with exaggerated input affinities (clusters form first).
const EXAGGERATION_ITERATIONS: usize = 200;
const EXAGGERATION: f64 = 12.0;
const LEARNING_RATE: f64 = 200.0;

/// Two-dimensional positions of `rows` (`dim` values each, row-major).
pub fn tsne(rows: &[f32], dim: usize, config: &TsneConfig) -> Vec<[f64; 2]> {
    let n = rows.len() / dim.max(1);
    if n < 2 {
        return vec![[0.0, 0.0]; n];
    }
    let p = joint_affinities(rows, dim, n, config.perplexity.min((n - 1) as f64 / 3.0));
    let mut rng = Rng::new(config.seed);
    let mut y: Vec<[f64; 2]> = (0..n)
        .map(|_| {
            [
                1e-4 * f64::from(rng.normal()),
                1e-4 * f64::from(rng.normal()),
            ]
        })
        .collect();
    let mut velocity = vec![[0.0f64; 2]; n];
    let mut gains = vec![[1.0f64; 2]; n];
    for iteration in 0..config.iterations {
        let exaggeration = if iteration < EXAGGERATION_ITERATIONS {
            EXAGGERATION
        } else {
            1.0
        };
        let momentum = if iteration < EXAGGERATION_ITERATIONS {
            0.5
        } else {
            0.8
        };
        let gradient = gradient(&p, &y, exaggeration);
        for i in 0..n {
            for d in 0..2 {
                let same_sign = (gradient[i][d] > 0.0) == (velocity[i][d] > 0.0);
                gains[i][d] = if same_sign {
                    (gains[i][d] * 0.8).max(0.01)
                } else {
                    gains[i][d] + 0.2
                };
                velocity[i][d] =
                    momentum * velocity[i][d] - LEARNING_RATE * gains[i][d] * gradient[i][d];
                y[i][d] += velocity[i][d];
            }
        }
    }
    y
}

/// Symmetrised input affinities `P` (n×n, row-major, summing to 1).
fn joint_affinities(rows: &[f32], dim: usize, n: usize, perplexity: f64) -> Vec<f64> {
    let row = |i: usize| &rows[i * dim..][..dim];
    let mut distances = vec![0.0f64; n * n];
    for i in 0..n {
        for j in i + 1..n {
            let d: f64 = row(i)
                .iter()
                .zip(row(j))
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            distances[i * n + j] = d;
            distances[j * n + i] = d;
        }
    }
    let mut p = vec![0.0f64; n * n];
    let target = perplexity.ln();
    for i in 0..n {
        let conditional = conditional_row(&distances[i * n..][..n], i, target);
        p[i * n..][..n].copy_from_slice(&conditional);
    }
    let mut joint = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            joint[i * n + j] = ((p[i * n + j] + p[j * n + i]) / (2.0 * n as f64)).max(1e-12);
        }
    }
    joint
}

/// One point's conditional affinities, its Gaussian's precision found by bisection so that the
/// entropy is `target_entropy` (ln of the perplexity).
fn conditional_row(distances: &[f64], i: usize, target_entropy: f64) -> Vec<f64> {
    let (mut beta, mut low, mut high) = (1.0f64, 0.0f64, f64::INFINITY);
    let mut row = vec![0.0; distances.len()];
    for _ in 0..64 {
        let mut sum = 0.0;
        for (j, d) in distances.iter().enumerate() {
            row[j] = if j == i { 0.0 } else { (-beta * d).exp() };
            sum += row[j];
        }
        let sum = sum.max(1e-300);
        let mean_distance: f64 = distances.iter().zip(&row).map(|(d, r)| d * r).sum::<f64>() / sum;
        let entropy = sum.ln() + beta * mean_distance;
        for r in &mut row {
            *r /= sum;
        }
        if (entropy - target_entropy).abs() < 1e-5 {
            break;
        }
        if entropy > target_entropy {
            low = beta;
            beta = if high.is_finite() {
                (beta + high) / 2.0
            } else {
                beta * 2.0
            };
        } else {
            high = beta;
            beta = (beta + low) / 2.0;
        }
    }
    row
}

/// The gradient of KL(P‖Q) with respect to each position.
fn gradient(p: &[f64], y: &[[f64; 2]], exaggeration: f64) -> Vec<[f64; 2]> {
    let n = y.len();
    let mut kernel = vec![0.0f64; n * n];
    let mut sum = 0.0;
    for i in 0..n {
        for j in i + 1..n {
            let d = (y[i][0] - y[j][0]).powi(2) + (y[i][1] - y[j][1]).powi(2);
            let k = 1.0 / (1.0 + d);
            kernel[i * n + j] = k;
            kernel[j * n + i] = k;
            sum += 2.0 * k;
        }
    }
    let mut grad = vec![[0.0f64; 2]; n];
    for i in 0..n {
        for j in 0..n {
            if i == j {
                continue;
            }
            let k = kernel[i * n + j];
            let force = (exaggeration * p[i * n + j] - k / sum) * k;
            grad[i][0] += 4.0 * force * (y[i][0] - y[j][0]);
            grad[i][1] += 4.0 * force * (y[i][1] - y[j][1]);
        }
    }
    grad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separated_clusters_stay_separated() {
        let mut rng = Rng::new(3);
        let mut rows = Vec::new();
        for cluster in 0..3 {
            for _ in 0..20 {
                for d in 0..8 {
                    let centre = if d == cluster { 10.0 } else { 0.0 };
                    rows.push(centre + rng.normal());
                }
            }
        }
        let y = tsne(&rows, 8, &TsneConfig::default());
        let centre = |c: usize| {
            let points = &y[c * 20..][..20];
            let sx: f64 = points.iter().map(|p| p[0]).sum::<f64>() / 20.0;
            let sy: f64 = points.iter().map(|p| p[1]).sum::<f64>() / 20.0;
            [sx, sy]
        };
        let spread = |c: usize| {
            let m = centre(c);
            y[c * 20..][..20]
                .iter()
                .map(|p| ((p[0] - m[0]).powi(2) + (p[1] - m[1]).powi(2)).sqrt())
                .fold(0.0, f64::max)
        };
        for a in 0..3 {
            for b in a + 1..3 {
                let (ca, cb) = (centre(a), centre(b));
                let gap = ((ca[0] - cb[0]).powi(2) + (ca[1] - cb[1]).powi(2)).sqrt();
                assert!(
                    gap > spread(a) + spread(b),
                    "clusters {a} and {b}: gap {gap}, spreads {} {}",
                    spread(a),
                    spread(b)
                );
            }
        }
    }
}
