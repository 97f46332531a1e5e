//! Figures from similarity scores: ROC, AUC, equal error rate, k-fold accuracy and TAR at FAR
//! with thresholds chosen on the training folds, CMC ranks and open-set DIR at FAR. A pair is
//! accepted (same person) when its score reaches the threshold (`score ≥ t`), as in galleries.

use serde::Serialize;

/// A scored comparison: cosine similarity, and whether both sides are the same person.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    /// Cosine similarity.
    pub score: f32,
    /// Same person.
    pub genuine: bool,
}

/// Why figures cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum MetricError {
    /// A set of pairs lacks one class.
    #[error("{0}: needs both same-person and different-person pairs")]
    OneClass(&'static str),
    /// Fewer pairs than folds.
    #[error("{pairs} pairs cannot be split into {folds} folds")]
    TooFewPairs {
        /// Pairs given.
        pairs: usize,
        /// Folds asked for.
        folds: usize,
    },
}

/// Mean and standard deviation (population, numpy's default) over folds or splits.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MeanStd {
    /// Mean.
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
}

impl MeanStd {
    /// Mean and standard deviation of `values` (zeros when empty).
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self {
                mean: 0.0,
                std: 0.0,
            };
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        Self {
            mean,
            std: var.sqrt(),
        }
    }
}

/// One point of a ROC curve: accepting scores ≥ `threshold` gives these rates.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RocPoint {
    /// The threshold.
    pub threshold: f32,
    /// False accept rate (different-person pairs accepted).
    pub far: f64,
    /// True accept rate (same-person pairs accepted).
    pub tar: f64,
}

/// Scores sorted from most to least similar.
fn sorted_desc(pairs: &[Scored]) -> Vec<Scored> {
    let mut sorted = pairs.to_vec();
    sorted.sort_by(|a, b| b.score.total_cmp(&a.score));
    sorted
}

/// Numbers of same-person and different-person pairs; an error when either is zero.
fn class_counts(pairs: &[Scored], what: &'static str) -> Result<(usize, usize), MetricError> {
    let genuine = pairs.iter().filter(|p| p.genuine).count();
    let impostor = pairs.len() - genuine;
    if genuine == 0 || impostor == 0 {
        return Err(MetricError::OneClass(what));
    }
    Ok((genuine, impostor))
}

/// Every cut of `sorted` (scores descending) between distinct scores: how many pairs the cut
/// accepts, and how many of those are genuine and impostor pairs.
fn cuts(sorted: &[Scored]) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    let (mut tp, mut fp) = (0usize, 0usize);
    sorted.iter().enumerate().filter_map(move |(i, p)| {
        if p.genuine {
            tp += 1;
        } else {
            fp += 1;
        }
        let boundary = sorted.get(i + 1).is_none_or(|next| next.score < p.score);
        boundary.then_some((i + 1, tp, fp))
    })
}

/// The ROC curve from "accept nothing" to "accept everything", one point per distinct score.
pub fn roc(pairs: &[Scored]) -> Result<Vec<RocPoint>, MetricError> {
    let (genuine, impostor) = class_counts(pairs, "ROC")?;
    let sorted = sorted_desc(pairs);
    let mut points = vec![RocPoint {
        threshold: sorted[0].score.next_up(),
        far: 0.0,
        tar: 0.0,
    }];
    points.extend(cuts(&sorted).map(|(accepted, tp, fp)| RocPoint {
        threshold: sorted[accepted - 1].score,
        far: fp as f64 / impostor as f64,
        tar: tp as f64 / genuine as f64,
    }));
    Ok(points)
}

/// Area under the ROC curve (trapezoids; ties count one half, as Mann–Whitney's U).
pub fn auc(roc: &[RocPoint]) -> f64 {
    roc.windows(2)
        .map(|w| (w[1].far - w[0].far) * (w[1].tar + w[0].tar) / 2.0)
        .sum()
}

/// Equal error rate: where the false accept rate equals the false reject rate, interpolated
/// linearly between ROC points.
pub fn eer(roc: &[RocPoint]) -> f64 {
    for w in roc.windows(2) {
        let (a, b) = (w[0], w[1]);
        let (frr_a, frr_b) = (1.0 - a.tar, 1.0 - b.tar);
        if b.far >= frr_b {
            let denominator = (b.far - a.far) - (frr_b - frr_a);
            let u = if denominator.abs() < f64::EPSILON {
                0.0
            } else {
                (frr_a - a.far) / denominator
            };
            return a.far + u * (b.far - a.far);
        }
    }
    0.0
}

/// The lowest threshold at which at most `far` of the different-person scores are accepted
/// (`None` without any).
pub fn threshold_at_far(impostor_scores: &[f32], far: f64) -> Option<f32> {
    let mut sorted = impostor_scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let allowed = (far * sorted.len() as f64 + 1e-9).floor() as usize;
    sorted.get(allowed.min(sorted.len() - 1)).map(|s| {
        if allowed >= sorted.len() {
            *s
        } else {
            s.next_up()
        }
    })
}

/// Fractions of same-person pairs accepted (TAR) and of different-person pairs accepted (FAR)
/// at `threshold` (0 for an absent class).
pub fn rates_at(pairs: &[Scored], threshold: f32) -> (f64, f64) {
    let rate = |genuine: bool| {
        let class: Vec<&Scored> = pairs.iter().filter(|p| p.genuine == genuine).collect();
        let accepted = class.iter().filter(|p| p.score >= threshold).count();
        accepted as f64 / class.len().max(1) as f64
    };
    (rate(true), rate(false))
}

/// Fraction of pairs decided right at `threshold`.
pub fn accuracy_at(pairs: &[Scored], threshold: f32) -> f64 {
    let right = pairs
        .iter()
        .filter(|p| (p.score >= threshold) == p.genuine)
        .count();
    right as f64 / pairs.len().max(1) as f64
}

/// The threshold with the best accuracy on `pairs`: midway between the last accepted and the
/// first rejected score of the best cut (the first best cut when several tie).
pub fn best_accuracy_threshold(pairs: &[Scored]) -> f32 {
    let sorted = sorted_desc(pairs);
    let impostors = sorted.iter().filter(|p| !p.genuine).count();
    let (mut best_right, mut best_cut) = (impostors, 0usize);
    for (accepted, tp, fp) in cuts(&sorted) {
        let right = tp + impostors - fp;
        if right > best_right {
            (best_right, best_cut) = (right, accepted);
        }
    }
    match best_cut {
        0 => sorted.first().map_or(0.0, |p| p.score.next_up()),
        k if k == sorted.len() => sorted[k - 1].score,
        k => {
            let (accepted, rejected) = (sorted[k - 1].score, sorted[k].score);
            let mid = ((accepted as f64 + rejected as f64) / 2.0) as f32;
            if mid > rejected {
                mid
            } else {
                rejected.next_up()
            }
        }
    }
}

/// TAR at a target FAR over folds: threshold chosen on the training folds' different-person
/// scores, rates measured on the held-out fold.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TarAtFar {
    /// The FAR aimed at.
    pub far_target: f64,
    /// TAR on the held-out folds.
    pub tar: MeanStd,
    /// FAR actually reached on the held-out folds.
    pub far_measured: MeanStd,
    /// The threshold chosen on all pairs (what a gallery would use).
    pub threshold_all_pairs: f32,
}

/// Verification figures for one set of pairs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verification {
    /// Pairs scored.
    pub pairs: usize,
    /// Same-person pairs.
    pub genuine: usize,
    /// Different-person pairs.
    pub impostor: usize,
    /// Number of folds (pair `i` is in fold `i mod folds`).
    pub folds: usize,
    /// k-fold accuracy: best-accuracy threshold on the other folds, measured on each fold.
    pub accuracy: MeanStd,
    /// Accuracy per held-out fold.
    pub fold_accuracy: Vec<f64>,
    /// Threshold chosen for each held-out fold.
    pub fold_thresholds: Vec<f32>,
    /// Area under the ROC curve, all pairs.
    pub auc: f64,
    /// Equal error rate, all pairs.
    pub eer: f64,
    /// TAR at each target FAR.
    pub tar_at_far: Vec<TarAtFar>,
    /// The ROC curve, all pairs (not written to reports: plotted).
    #[serde(skip)]
    pub roc: Vec<RocPoint>,
}

/// Pairs of the training folds and of the held-out fold `k` (pair `i` in fold `i mod folds`).
fn split_fold(pairs: &[Scored], folds: usize, k: usize) -> (Vec<Scored>, Vec<Scored>) {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (i, p) in pairs.iter().enumerate() {
        if i % folds == k {
            test.push(*p);
        } else {
            train.push(*p);
        }
    }
    (train, test)
}

/// Every verification figure for `pairs` with `folds`-fold cross-validation and TAR at each
/// of `fars`.
pub fn verification(
    pairs: &[Scored],
    folds: usize,
    fars: &[f64],
) -> Result<Verification, MetricError> {
    let (genuine, impostor) = class_counts(pairs, "verification")?;
    if folds < 2 || pairs.len() < folds {
        return Err(MetricError::TooFewPairs {
            pairs: pairs.len(),
            folds,
        });
    }
    let mut fold_accuracy = Vec::with_capacity(folds);
    let mut fold_thresholds = Vec::with_capacity(folds);
    let mut tar_far = vec![(Vec::new(), Vec::new()); fars.len()];
    for k in 0..folds {
        let (train, test) = split_fold(pairs, folds, k);
        let threshold = best_accuracy_threshold(&train);
        fold_accuracy.push(accuracy_at(&test, threshold));
        fold_thresholds.push(threshold);
        let train_impostors: Vec<f32> = impostor_scores(&train);
        for (far, (tars, fars_measured)) in fars.iter().zip(&mut tar_far) {
            let t =
                threshold_at_far(&train_impostors, *far).ok_or(MetricError::OneClass("fold"))?;
            let (tar, far_measured) = rates_at(&test, t);
            tars.push(tar);
            fars_measured.push(far_measured);
        }
    }
    let all_impostors = impostor_scores(pairs);
    let tar_at_far = fars
        .iter()
        .zip(tar_far)
        .map(|(far, (tars, fars_measured))| TarAtFar {
            far_target: *far,
            tar: MeanStd::of(&tars),
            far_measured: MeanStd::of(&fars_measured),
            threshold_all_pairs: threshold_at_far(&all_impostors, *far).unwrap_or(f32::NAN),
        })
        .collect();
    let roc = roc(pairs)?;
    Ok(Verification {
        pairs: pairs.len(),
        genuine,
        impostor,
        folds,
        accuracy: MeanStd::of(&fold_accuracy),
        fold_accuracy,
        fold_thresholds,
        auc: auc(&roc),
        eer: eer(&roc),
        tar_at_far,
        roc,
    })
}

/// The different-person scores.
pub fn impostor_scores(pairs: &[Scored]) -> Vec<f32> {
    pairs
        .iter()
        .filter(|p| !p.genuine)
        .map(|p| p.score)
        .collect()
}

/// Rank (1 = best) of identity `truth` among the identities `allowed` lets through, by score;
/// ties count against the true identity.
pub fn rank_of(scores: &[f32], truth: usize, allowed: impl Fn(usize) -> bool) -> usize {
    let own = scores[truth];
    1 + scores
        .iter()
        .enumerate()
        .filter(|&(j, s)| j != truth && allowed(j) && *s >= own)
        .count()
}

/// Cumulative match characteristic: the fraction of probes with rank ≤ r, for r = 1..=max_rank.
pub fn cmc(ranks: &[usize], max_rank: usize) -> Vec<f64> {
    (1..=max_rank)
        .map(|r| ranks.iter().filter(|&&k| k <= r).count() as f64 / ranks.len().max(1) as f64)
        .collect()
}

/// Open-set detection-and-identification rate at a false-alarm rate: the threshold lets
/// through at most `far` of the probes whose person is not in the gallery (their best score),
/// and DIR is the fraction of the other probes ranked first with a score reaching it. `mated`
/// holds (rank, score of the true identity). Returns (DIR, threshold).
pub fn dir_at_far(mated: &[(usize, f32)], non_mated_best: &[f32], far: f64) -> Option<(f64, f32)> {
    let threshold = threshold_at_far(non_mated_best, far)?;
    let hits = mated
        .iter()
        .filter(|&&(rank, score)| rank == 1 && score >= threshold)
        .count();
    Some((hits as f64 / mated.len().max(1) as f64, threshold))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(genuine: &[f32], impostor: &[f32]) -> Vec<Scored> {
        let g = genuine.iter().map(|&score| Scored {
            score,
            genuine: true,
        });
        let i = impostor.iter().map(|&score| Scored {
            score,
            genuine: false,
        });
        g.chain(i).collect()
    }

    #[test]
    fn perfect_separation_gives_accuracy_one_auc_one_eer_zero() {
        let genuine: Vec<f32> = (0..50).map(|i| 0.6 + i as f32 * 0.005).collect();
        let impostor: Vec<f32> = (0..50).map(|i| -0.2 + i as f32 * 0.005).collect();
        let v = verification(&scored(&genuine, &impostor), 10, &[0.01]).unwrap();
        assert_eq!(v.accuracy.mean, 1.0);
        assert_eq!(v.accuracy.std, 0.0);
        assert!((v.auc - 1.0).abs() < 1e-12);
        assert_eq!(v.eer, 0.0);
        assert_eq!(v.tar_at_far[0].tar.mean, 1.0);
    }

    #[test]
    fn identical_distributions_give_auc_one_half() {
        let s = [0.1, 0.2, 0.3, 0.4];
        let roc = roc(&scored(&s, &s)).unwrap();
        assert!((auc(&roc) - 0.5).abs() < 1e-12);
        assert!((eer(&roc) - 0.5).abs() < 0.13);
    }

    #[test]
    fn known_roc_gives_known_tar_at_far() {
        // 100 impostors at 0.00..0.99: FAR 1% lets one through (0.99), so the threshold sits
        // just above 0.98, and three of the five genuine scores reach it.
        let impostor: Vec<f32> = (0..100).map(|i| i as f32 / 100.0).collect();
        let genuine = [0.999, 0.995, 0.985, 0.97, 0.5];
        let t = threshold_at_far(&impostor, 0.01).unwrap();
        assert!(t > 0.98 && t <= 0.99, "{t}");
        let pairs = scored(&genuine, &impostor);
        let (tar, far) = rates_at(&pairs, t);
        assert_eq!(far, 0.01);
        assert!((tar - 0.6).abs() < 1e-12, "{tar}");
        let t0 = threshold_at_far(&impostor, 0.0).unwrap();
        assert_eq!(rates_at(&pairs, t0).1, 0.0);
    }

    #[test]
    fn auc_counts_pairs_ranked_right() {
        // genuine {0.9, 0.4}, impostor {0.5, 0.1}: 3 of 4 genuine–impostor orders right.
        let roc = roc(&scored(&[0.9, 0.4], &[0.5, 0.1])).unwrap();
        assert!((auc(&roc) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn eer_of_a_symmetric_overlap() {
        // Two genuine above, one genuine below one impostor above: FAR = FRR = 1/3 at 0.55.
        let roc = roc(&scored(&[0.9, 0.8, 0.5], &[0.6, 0.3, 0.2])).unwrap();
        assert!((eer(&roc) - 1.0 / 3.0).abs() < 1e-12, "{}", eer(&roc));
    }

    #[test]
    fn best_threshold_splits_between_the_classes() {
        let t = best_accuracy_threshold(&scored(&[0.8, 0.9], &[0.2, 0.4]));
        assert!((t - 0.6).abs() < 1e-6);
    }

    #[test]
    fn one_class_is_an_error() {
        assert!(verification(&scored(&[0.5, 0.6], &[]), 2, &[]).is_err());
    }

    #[test]
    fn ranks_cmc_and_dir() {
        let scores = [0.3, 0.9, 0.5, 0.1];
        assert_eq!(rank_of(&scores, 2, |_| true), 2);
        assert_eq!(rank_of(&scores, 2, |j| j != 1), 1);
        assert_eq!(cmc(&[1, 2, 5], 3), vec![1.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0]);
        let non_mated: Vec<f32> = (0..100).map(|i| i as f32 / 200.0).collect();
        let (dir, t) = dir_at_far(&[(1, 0.9), (1, 0.2), (2, 0.95)], &non_mated, 0.01).unwrap();
        assert!(t > 0.49 && t <= 0.495);
        assert!((dir - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn mean_std_is_the_population_figure() {
        let m = MeanStd::of(&[1.0, 3.0]);
        assert_eq!((m.mean, m.std), (2.0, 1.0));
    }
}
