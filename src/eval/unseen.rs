//! The unseen-people figures: how embeddings of people a model never trained on compare
//! across and within modalities — caricature–photo verification (every same-person pair and
//! as many sampled different-person pairs, 10-fold), AUC, TAR at FAR 1% and 0.1%, rank-1/5
//! identification both ways, photo–photo AUC and TAR, and open-set DIR at FAR 1%.

use serde::{Deserialize, Serialize};

use super::metrics::{MetricError, RocPoint, Scored, cmc, dir_at_far, rank_of, verification};
use crate::rng::Rng;
use crate::types::Modality;

/// Folds of the verification accuracy.
const FOLDS: usize = 10;
/// Points kept of each ROC curve (for plots across folds).
const ROC_POINTS: usize = 81;

/// Embeddings of held-out images with their person and modality.
pub struct UnseenSet<'a> {
    /// Row-major normalised embeddings compared across modalities (128 per image).
    pub cross: &'a [f32],
    /// Row-major normalised embeddings compared photo with photo.
    pub photo: &'a [f32],
    /// Person of each image (any numbering).
    pub people: &'a [u32],
    /// Modality of each image.
    pub modalities: &'a [Modality],
}

/// Every unseen-people figure of one model on one set of people.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnseenFigures {
    /// People in the set.
    pub people: usize,
    /// Caricature–photo pairs scored (same-person and sampled different-person).
    pub pairs: usize,
    /// 10-fold caricature–photo verification accuracy (mean over folds).
    pub verification: f64,
    /// Caricature–photo AUC.
    pub auc: f64,
    /// Caricature–photo TAR at FAR 1% (thresholds from the other folds).
    pub tar_far_1: f64,
    /// Caricature–photo TAR at FAR 0.1%.
    pub tar_far_01: f64,
    /// Rank-1 caricature→photo identification.
    pub rank1_cp: f64,
    /// Rank-5 caricature→photo identification.
    pub rank5_cp: f64,
    /// Rank-1 photo→caricature identification.
    pub rank1_pc: f64,
    /// Rank-5 photo→caricature identification.
    pub rank5_pc: f64,
    /// Photo–photo AUC (every pair).
    pub photo_auc: f64,
    /// Photo–photo TAR at FAR 1%.
    pub photo_tar_far_1: f64,
    /// Open-set caricature→photo DIR at FAR 1% (each probe also scored with its own person
    /// left out of the gallery).
    pub dir_far_1_cp: f64,
    /// The caricature–photo ROC as (FAR, TAR) on a fixed logarithmic FAR axis (for plots and
    /// averages over folds).
    pub roc: Vec<(f64, f64)>,
}

/// The figures of `set`; `seed` draws the different-person pairs.
pub fn unseen_figures(set: &UnseenSet, seed: u64) -> Result<UnseenFigures, MetricError> {
    let of = |m: Modality| -> Vec<usize> {
        (0..set.people.len())
            .filter(|&i| set.modalities[i] == m)
            .collect()
    };
    let (caricatures, photos) = (of(Modality::Caricature), of(Modality::Photo));
    let cross = cross_modal_pairs(set, &caricatures, &photos, seed);
    let cross_figures = verification(&cross, FOLDS, &[0.01, 0.001])?;
    let photo_figures = verification(
        &pairs_within(set.photo, set.people, &photos),
        FOLDS,
        &[0.01],
    )?;
    let (cp, dir) = identification(set, &caricatures, &photos)?;
    let (pc, _) = identification(set, &photos, &caricatures)?;
    Ok(UnseenFigures {
        people: set
            .people
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        pairs: cross.len(),
        verification: cross_figures.accuracy.mean,
        auc: cross_figures.auc,
        tar_far_1: cross_figures.tar_at_far[0].tar.mean,
        tar_far_01: cross_figures.tar_at_far[1].tar.mean,
        rank1_cp: cp[0],
        rank5_cp: cp[4],
        rank1_pc: pc[0],
        rank5_pc: pc[4],
        photo_auc: photo_figures.auc,
        photo_tar_far_1: photo_figures.tar_at_far[0].tar.mean,
        dir_far_1_cp: dir,
        roc: thin(&cross_figures.roc),
    })
}

/// The dot product of rows `a` and `b` of row-major 128-d embeddings.
pub fn dot(rows: &[f32], a: usize, b: usize) -> f32 {
    let row = |i: usize| &rows[i * 128..][..128];
    row(a).iter().zip(row(b)).map(|(x, y)| x * y).sum()
}

/// Every same-person caricature–photo pair and as many different-person pairs drawn by `seed`,
/// shuffled so that the folds mix both.
fn cross_modal_pairs(
    set: &UnseenSet,
    caricatures: &[usize],
    photos: &[usize],
    seed: u64,
) -> Vec<Scored> {
    let mut pairs = Vec::new();
    let mut impostors = Vec::new();
    for &c in caricatures {
        for &p in photos {
            if set.people[c] == set.people[p] {
                pairs.push(Scored {
                    score: dot(set.cross, c, p),
                    genuine: true,
                });
            } else {
                impostors.push((c, p));
            }
        }
    }
    let mut rng = Rng::new(seed);
    rng.shuffle(&mut impostors);
    let wanted = pairs.len().min(impostors.len());
    pairs.extend(impostors[..wanted].iter().map(|&(c, p)| Scored {
        score: dot(set.cross, c, p),
        genuine: false,
    }));
    rng.shuffle(&mut pairs);
    pairs
}

/// Every pair of the rows `members` of `rows`, scored by their dot product; same person when
/// `people` says so.
pub fn pairs_within(rows: &[f32], people: &[u32], members: &[usize]) -> Vec<Scored> {
    let mut pairs = Vec::new();
    for (k, &a) in members.iter().enumerate() {
        for &b in &members[k + 1..] {
            pairs.push(Scored {
                score: dot(rows, a, b),
                genuine: people[a] == people[b],
            });
        }
    }
    pairs
}

/// CMC (ranks 1..=5) of `probes` against a gallery of `entries` (a person's score is their
/// best entry's), and the open-set DIR at FAR 1% where each probe is also a non-mated probe
/// against the gallery without its own person.
fn identification(
    set: &UnseenSet,
    probes: &[usize],
    entries: &[usize],
) -> Result<(Vec<f64>, f64), MetricError> {
    let people: Vec<u32> = entries
        .iter()
        .map(|&e| set.people[e])
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut ranks = Vec::new();
    let mut mated = Vec::new();
    let mut non_mated = Vec::new();
    for &probe in probes {
        let Ok(truth) = people.binary_search(&set.people[probe]) else {
            continue;
        };
        let mut best = vec![f32::NEG_INFINITY; people.len()];
        for &e in entries {
            let k = people.binary_search(&set.people[e]).unwrap_or(0);
            best[k] = best[k].max(dot(set.cross, probe, e));
        }
        let rank = rank_of(&best, truth, |_| true);
        ranks.push(rank);
        mated.push((rank, best[truth]));
        let others = best
            .iter()
            .enumerate()
            .filter(|&(k, _)| k != truth)
            .map(|(_, s)| *s)
            .fold(f32::NEG_INFINITY, f32::max);
        non_mated.push(others);
    }
    if ranks.is_empty() {
        return Err(MetricError::OneClass("identification"));
    }
    let dir = dir_at_far(&mated, &non_mated, 0.01).map_or(0.0, |(d, _)| d);
    Ok((cmc(&ranks, 5), dir))
}

/// The curve's TAR at [`ROC_POINTS`] FARs spaced evenly on a logarithmic axis from 10⁻⁴
/// to 1 (the best TAR among the points whose FAR does not exceed each): curves of different
/// folds share the axis and can be averaged.
fn thin(roc: &[RocPoint]) -> Vec<(f64, f64)> {
    (0..ROC_POINTS)
        .map(|k| {
            let far = 10f64.powf(-4.0 + 4.0 * k as f64 / (ROC_POINTS - 1) as f64);
            let tar = roc
                .iter()
                .filter(|p| p.far <= far)
                .map(|p| p.tar)
                .fold(0.0, f64::max);
            (far, tar)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A set whose cross-modal and photo embeddings are the same rows.
    fn one_space<'a>(
        embeddings: &'a [f32],
        people: &'a [u32],
        modalities: &'a [Modality],
    ) -> UnseenSet<'a> {
        UnseenSet {
            cross: embeddings,
            photo: embeddings,
            people,
            modalities,
        }
    }

    /// Two people, one photo and one caricature each, in separate directions of the space.
    fn rows(vectors: &[[f32; 2]]) -> Vec<f32> {
        vectors
            .iter()
            .flat_map(|v| {
                let mut row = vec![0.0; 128];
                row[0] = v[0];
                row[1] = v[1];
                row
            })
            .collect()
    }

    #[test]
    fn perfectly_separated_people_score_perfectly() {
        let mut vectors = Vec::new();
        let mut people = Vec::new();
        let mut modalities = Vec::new();
        for person in 0..4u32 {
            let angle = person as f32 * 0.7;
            for k in 0..6 {
                let jitter = k as f32 * 0.01;
                vectors.push([(angle + jitter).cos(), (angle + jitter).sin()]);
                people.push(person);
                modalities.push(if k % 2 == 0 {
                    Modality::Photo
                } else {
                    Modality::Caricature
                });
            }
        }
        let embeddings = rows(&vectors);
        let set = one_space(&embeddings, &people, &modalities);
        let f = unseen_figures(&set, 1).unwrap();
        assert_eq!(f.people, 4);
        assert_eq!(f.auc, 1.0);
        assert_eq!(f.rank1_cp, 1.0);
        assert_eq!(f.rank1_pc, 1.0);
        assert_eq!(f.photo_auc, 1.0);
        assert_eq!(f.pairs, 2 * 4 * 3 * 3);
    }

    #[test]
    fn a_caricature_nearer_another_person_ranks_second() {
        let vectors = [[1.0, 0.0], [0.0, 1.0], [0.2, 0.98], [0.0, 1.0]];
        let people = [0, 1, 0, 1];
        let modalities = [
            Modality::Photo,
            Modality::Photo,
            Modality::Caricature,
            Modality::Caricature,
        ];
        let embeddings = rows(&vectors);
        let set = one_space(&embeddings, &people, &modalities);
        let (cmc, _) = identification(&set, &[2, 3], &[0, 1]).unwrap();
        assert_eq!(cmc[0], 0.5);
        assert_eq!(cmc[1], 1.0);
    }
}
