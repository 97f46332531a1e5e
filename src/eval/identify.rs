//! Identification: each probe against a gallery of the other modality (or the same), exact
//! search over unit vectors, identities scored by their most similar entry. Closed-set CMC on
//! all images, then seeded random splits that leave part of the identities out of the gallery
//! for open-set DIR at FAR; and pair figures (all same-person pairs, sampled different-person
//! pairs) per direction, which give thresholds at FAR.

use serde::Serialize;

use super::metrics::{self, MeanStd, Scored};
use crate::rng::Rng;
use crate::types::Modality;
use crate::types::dot;

/// Protocol settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IdentifyOptions {
    /// Random splits.
    pub splits: usize,
    /// Seed of the first split (split `s` uses `seed + s`).
    pub seed: u64,
    /// Fraction of identities left out of the gallery in each split (open set).
    pub unknown_fraction: f64,
    /// False-alarm rate for DIR and thresholds.
    pub far: f64,
    /// Longest rank of the CMC curve.
    pub max_rank: usize,
    /// Different-person pairs sampled per direction for pair figures.
    pub impostor_pairs: usize,
}

/// One labelled embedding.
#[derive(Clone, Copy, Debug)]
pub struct Sample<'a> {
    /// Identity index.
    pub identity: usize,
    /// Photo or caricature.
    pub modality: Modality,
    /// Unit vector (of the branch in use).
    pub vector: &'a [f32],
}

/// Closed-set figures over one set of probes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClosedSet {
    /// Probes ranked.
    pub probes: usize,
    /// Rank-1, rank-5, rank-10 identification rates.
    pub rank1: f64,
    /// Rank-5 rate.
    pub rank5: f64,
    /// Rank-10 rate.
    pub rank10: f64,
    /// CMC curve, ranks 1..=max_rank.
    pub cmc: Vec<f64>,
}

/// Figures over the random splits.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SplitFigures {
    /// Identities left out of the gallery per split.
    pub unknown_identities: usize,
    /// Closed-set rank-1 on the known identities.
    pub rank1: MeanStd,
    /// Rank-5.
    pub rank5: MeanStd,
    /// Rank-10.
    pub rank10: MeanStd,
    /// Open-set detection-and-identification rate at the false-alarm rate.
    pub dir_at_far: MeanStd,
    /// The open-set threshold chosen per split.
    pub open_set_threshold: MeanStd,
}

/// Figures of one direction (probe modality → gallery modality).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DirectionFigures {
    /// Probe modality.
    pub probe: Modality,
    /// Gallery modality.
    pub gallery: Modality,
    /// Gallery entries.
    pub gallery_entries: usize,
    /// Identities with gallery entries.
    pub gallery_identities: usize,
    /// Probes whose identity has no gallery entry (not ranked; non-mated in open set).
    pub probes_without_mate: usize,
    /// All probes against the whole gallery.
    pub all: ClosedSet,
    /// Mean ± std over the splits.
    pub splits: SplitFigures,
}

/// Per probe, the best similarity to each identity's gallery entries (−∞ without entries).
fn identity_scores(probes: &[Sample], gallery: &[Sample], identities: usize) -> Vec<Vec<f32>> {
    probes
        .iter()
        .map(|p| {
            let mut best = vec![f32::NEG_INFINITY; identities];
            for g in gallery {
                let s = dot(p.vector, g.vector);
                if s > best[g.identity] {
                    best[g.identity] = s;
                }
            }
            best
        })
        .collect()
}

fn closed_set(ranks: &[usize], max_rank: usize) -> ClosedSet {
    let cmc = metrics::cmc(ranks, max_rank.max(10));
    ClosedSet {
        probes: ranks.len(),
        rank1: cmc[0],
        rank5: cmc[4],
        rank10: cmc[9],
        cmc: cmc[..max_rank.max(10)].to_vec(),
    }
}

/// Identification figures of probes of `probe` modality against a gallery of `gallery`
/// modality drawn from `samples` (a sample is never its own gallery entry).
pub fn identify_direction(
    samples: &[Sample],
    identities: usize,
    probe: Modality,
    gallery: Modality,
    options: &IdentifyOptions,
) -> DirectionFigures {
    let gallery_samples: Vec<Sample> = samples
        .iter()
        .filter(|s| s.modality == gallery)
        .copied()
        .collect();
    let probes: Vec<Sample> = samples
        .iter()
        .filter(|s| s.modality == probe)
        .copied()
        .collect();
    let same_modality = probe == gallery;
    let mut has_entries = vec![0usize; identities];
    for g in &gallery_samples {
        has_entries[g.identity] += 1;
    }
    // With one modality, a probe's own entry must not count: its identity needs another.
    let mated = |p: &Sample| has_entries[p.identity] > usize::from(same_modality);
    let scores = if same_modality {
        leave_one_out_scores(&probes, identities)
    } else {
        identity_scores(&probes, &gallery_samples, identities)
    };
    let present = |j: usize| has_entries[j] > 0;
    let ranks: Vec<usize> = probes
        .iter()
        .zip(&scores)
        .filter(|(p, _)| mated(p))
        .map(|(p, s)| metrics::rank_of(s, p.identity, present))
        .collect();
    let with_entries: Vec<usize> = (0..identities).filter(|&j| present(j)).collect();
    DirectionFigures {
        probe,
        gallery,
        gallery_entries: gallery_samples.len(),
        gallery_identities: with_entries.len(),
        probes_without_mate: probes.len() - ranks.len(),
        all: closed_set(&ranks, options.max_rank),
        splits: split_figures(&probes, &scores, &with_entries, &mated, options),
    }
}

/// Same-modality scores: every other sample of the probes' set, never the probe itself.
fn leave_one_out_scores(samples: &[Sample], identities: usize) -> Vec<Vec<f32>> {
    samples
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut best = vec![f32::NEG_INFINITY; identities];
            for (k, g) in samples.iter().enumerate() {
                let s = dot(p.vector, g.vector);
                if k != i && s > best[g.identity] {
                    best[g.identity] = s;
                }
            }
            best
        })
        .collect()
}

fn split_figures(
    probes: &[Sample],
    scores: &[Vec<f32>],
    with_entries: &[usize],
    mated: &dyn Fn(&Sample) -> bool,
    options: &IdentifyOptions,
) -> SplitFigures {
    let unknown = ((with_entries.len() as f64 * options.unknown_fraction).round() as usize)
        .min(with_entries.len().saturating_sub(1));
    let identities = scores.first().map_or(0, Vec::len);
    let mut figures: [Vec<f64>; 5] = Default::default();
    for split in 0..options.splits {
        let mut rng = Rng::new(options.seed.wrapping_add(split as u64));
        let mut order = with_entries.to_vec();
        rng.shuffle(&mut order);
        let mut known = vec![false; identities];
        for &j in &order[unknown..] {
            known[j] = true;
        }
        let (mut ranks, mut mated_hits, mut non_mated) = (Vec::new(), Vec::new(), Vec::new());
        for (p, s) in probes.iter().zip(scores) {
            if known[p.identity] && mated(p) {
                let rank = metrics::rank_of(s, p.identity, |j| known[j]);
                ranks.push(rank);
                mated_hits.push((rank, s[p.identity]));
            } else if !known[p.identity] {
                let best = (0..identities)
                    .filter(|&j| known[j])
                    .map(|j| s[j])
                    .fold(f32::NEG_INFINITY, f32::max);
                non_mated.push(best);
            }
        }
        let cmc = metrics::cmc(&ranks, 10);
        let (dir, threshold) =
            metrics::dir_at_far(&mated_hits, &non_mated, options.far).unwrap_or((0.0, f32::NAN));
        for (list, value) in figures
            .iter_mut()
            .zip([cmc[0], cmc[4], cmc[9], dir, threshold as f64])
        {
            list.push(value);
        }
    }
    let [rank1, rank5, rank10, dir, threshold] = figures.map(|v| MeanStd::of(&v));
    SplitFigures {
        unknown_identities: unknown,
        rank1,
        rank5,
        rank10,
        dir_at_far: dir,
        open_set_threshold: threshold,
    }
}

/// Pair figures of one unordered direction, on every same-person pair and a seeded sample of
/// different-person pairs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PairFigures {
    /// One modality.
    pub a: Modality,
    /// The other (may be the same).
    pub b: Modality,
    /// Same-person pairs.
    pub genuine: usize,
    /// Different-person pairs sampled.
    pub impostor: usize,
    /// ROC AUC.
    pub auc: f64,
    /// Equal error rate.
    pub eer: f64,
    /// Threshold at the false accept rate.
    pub threshold_at_far: f32,
    /// TAR at that threshold.
    pub tar_at_far: f64,
}

/// Pair figures between the samples of modality `a` and of modality `b`.
pub fn pair_figures(
    samples: &[Sample],
    a: Modality,
    b: Modality,
    options: &IdentifyOptions,
) -> Option<PairFigures> {
    let side = |m: Modality| -> Vec<Sample> {
        samples
            .iter()
            .filter(|s| s.modality == m)
            .copied()
            .collect()
    };
    let (left, right) = (side(a), side(b));
    let mut pairs = Vec::new();
    for (i, x) in left.iter().enumerate() {
        for (k, y) in right.iter().enumerate() {
            let distinct = a != b || k > i;
            if distinct && x.identity == y.identity {
                pairs.push(Scored {
                    score: dot(x.vector, y.vector),
                    genuine: true,
                });
            }
        }
    }
    let genuine = pairs.len();
    let mut rng = Rng::new(options.seed);
    let mut impostors = Vec::with_capacity(options.impostor_pairs);
    let mut tries = 0usize;
    while impostors.len() < options.impostor_pairs && tries < options.impostor_pairs * 20 {
        tries += 1;
        let (x, y) = (
            left[rng.below(left.len().max(1))],
            right[rng.below(right.len().max(1))],
        );
        if x.identity != y.identity {
            impostors.push(dot(x.vector, y.vector));
        }
    }
    pairs.extend(impostors.iter().map(|&score| Scored {
        score,
        genuine: false,
    }));
    let roc = metrics::roc(&pairs).ok()?;
    let threshold = metrics::threshold_at_far(&impostors, options.far)?;
    Some(PairFigures {
        a,
        b,
        genuine,
        impostor: impostors.len(),
        auc: metrics::auc(&roc),
        eer: metrics::eer(&roc),
        threshold_at_far: threshold,
        tar_at_far: metrics::rates_at(&pairs, threshold).0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> IdentifyOptions {
        IdentifyOptions {
            splits: 3,
            seed: 7,
            unknown_fraction: 0.25,
            far: 0.01,
            max_rank: 10,
            impostor_pairs: 100,
        }
    }

    #[test]
    fn separable_identities_are_all_rank_one() {
        // Four people along the axes; photos and caricatures of each point the same way.
        let axes: Vec<Vec<f32>> = (0..4)
            .map(|i| (0..4).map(|k| f32::from(u8::from(i == k))).collect())
            .collect();
        let samples: Vec<Sample> = (0..4)
            .flat_map(|i| {
                [Modality::Photo, Modality::Caricature, Modality::Photo].map(|modality| Sample {
                    identity: i,
                    modality,
                    vector: &axes[i],
                })
            })
            .collect();
        let f = identify_direction(
            &samples,
            4,
            Modality::Caricature,
            Modality::Photo,
            &options(),
        );
        assert_eq!(f.all.rank1, 1.0);
        assert_eq!(f.all.probes, 4);
        assert_eq!(f.splits.unknown_identities, 1);
        assert_eq!(f.splits.rank1.mean, 1.0);
        assert_eq!(f.splits.dir_at_far.mean, 1.0);
        let same = identify_direction(&samples, 4, Modality::Photo, Modality::Photo, &options());
        assert_eq!(same.all.rank1, 1.0);
        let pairs = pair_figures(&samples, Modality::Photo, Modality::Photo, &options()).unwrap();
        assert_eq!(pairs.genuine, 4);
        assert_eq!(pairs.auc, 1.0);
    }

    #[test]
    fn shuffles_are_seeded() {
        let (mut a, mut b) = ((0..10).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
        Rng::new(3).shuffle(&mut a);
        Rng::new(3).shuffle(&mut b);
        assert_eq!(a, b);
        assert_ne!(a, (0..10).collect::<Vec<_>>());
    }
}
