//! Deciding who a probe is: per-direction thresholds, per-identity scores from the nearest
//! entries, and an honest `unknown` when nobody is similar enough.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::types::Modality;

/// Which embedding branch a comparison uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Branch {
    /// The shared branch: every cross-modal comparison, and everything for single-output models.
    Shared,
    /// The photo branch (photo↔photo with a multi-task model).
    Photo,
    /// The caricature branch (caricature↔caricature with a multi-task model).
    Caricature,
}

impl Branch {
    /// Every branch, in the order models produce them.
    pub const ALL: [Branch; 3] = [Branch::Shared, Branch::Photo, Branch::Caricature];

    /// The branch stored under `name` ([`Branch::name`]), if any.
    pub fn from_name(name: &str) -> Option<Branch> {
        Branch::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The branch to compare a probe of `probe` modality with entries of `entry` modality:
    /// shared across modalities, the modality's own branch within one (when the model has it).
    pub fn for_pair(probe: Modality, entry: Modality, multi_task: bool) -> Branch {
        match (probe, entry, multi_task) {
            (Modality::Photo, Modality::Photo, true) => Branch::Photo,
            (Modality::Caricature, Modality::Caricature, true) => Branch::Caricature,
            _ => Branch::Shared,
        }
    }

    /// The branch's name as stored in galleries and model outputs.
    pub fn name(&self) -> &'static str {
        match self {
            Branch::Shared => "shared",
            Branch::Photo => "photo",
            Branch::Caricature => "caricature",
        }
    }
}

/// Cosine-similarity thresholds per direction (probe modality → entry modality). An identity
/// is returned only when its score reaches the threshold of the direction it matched in.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Photo probe against photo entries.
    pub photo_to_photo: f32,
    /// Photo probe against caricature entries.
    pub photo_to_caricature: f32,
    /// Caricature probe against photo entries.
    pub caricature_to_photo: f32,
    /// Caricature probe against caricature entries.
    pub caricature_to_caricature: f32,
}

impl Thresholds {
    /// Every direction at the same threshold (`--threshold`).
    pub fn uniform(value: f32) -> Self {
        Self {
            photo_to_photo: value,
            photo_to_caricature: value,
            caricature_to_photo: value,
            caricature_to_caricature: value,
        }
    }

    /// The threshold for a probe of one modality against entries of another.
    pub fn get(&self, probe: Modality, entry: Modality) -> f32 {
        match (probe, entry) {
            (Modality::Photo, Modality::Photo) => self.photo_to_photo,
            (Modality::Photo, Modality::Caricature) => self.photo_to_caricature,
            (Modality::Caricature, Modality::Photo) => self.caricature_to_photo,
            (Modality::Caricature, Modality::Caricature) => self.caricature_to_caricature,
        }
    }
}

impl Thresholds {
    /// The thresholds calibrated for a committed model, recognised by the sha256 of its file
    /// (`models/SHA256SUMS`), so a renamed copy keeps them: FAR 1% on CaVI images the model
    /// never trained on (`eval-results/`). Any other model gets the default model's; calibrate
    /// it with `carivis eval` and `carivis gallery set-thresholds`.
    pub fn for_checksum(sha256: &str) -> Self {
        if crate::models::shipped_sha256(DLIB_MODEL_FILE) == Some(sha256) {
            Self::dlib()
        } else {
            Self::default()
        }
    }

    /// Calibrated for the dlib descriptor (L2-normalised).
    pub fn dlib() -> Self {
        Self {
            photo_to_photo: DLIB_PHOTO_THRESHOLD,
            photo_to_caricature: DLIB_CROSS_THRESHOLD,
            caricature_to_photo: DLIB_CROSS_THRESHOLD,
            caricature_to_caricature: DLIB_CARICATURE_THRESHOLD,
        }
    }
}

impl Default for Thresholds {
    /// Calibrated for the default embedder, the multi-task model `carivis_mtl.onnx` (photo
    /// branch for photo↔photo, caricature branch for caricature↔caricature, shared across).
    fn default() -> Self {
        Self {
            photo_to_photo: MTL_PHOTO_THRESHOLD,
            photo_to_caricature: MTL_CROSS_THRESHOLD,
            caricature_to_photo: MTL_CROSS_THRESHOLD,
            caricature_to_caricature: MTL_CARICATURE_THRESHOLD,
        }
    }
}

/// File name of the committed dlib descriptor model (in `models/SHA256SUMS`), whose thresholds
/// differ from the default model's.
const DLIB_MODEL_FILE: &str = "dlib_resnet_v1.onnx";

/// Photo↔photo cosine threshold for the dlib descriptor: FAR 1% over every same-person CaVI
/// photo pair and 200k different-person pairs (`eval-results/identify-five-point`).
pub const DLIB_PHOTO_THRESHOLD: f32 = 0.9064;
/// Caricature↔photo cosine threshold: FAR 1% on the 13,035 pairs of CaVI `testing_1.txt`
/// (`eval-results/verify-five-point`).
pub const DLIB_CROSS_THRESHOLD: f32 = 0.9101;
/// Caricature↔caricature cosine threshold: FAR 1% over CaVI caricature pairs
/// (`eval-results/identify-five-point`).
pub const DLIB_CARICATURE_THRESHOLD: f32 = 0.9262;
/// Photo↔photo threshold of the multi-task model's photo branch (dlib's descriptor in the
/// shipped model): FAR 1% over the photos of CaVI `testing_1.txt`, which it never trained on
/// (`eval-results/identify-mtl`).
pub const MTL_PHOTO_THRESHOLD: f32 = 0.9056;
/// Caricature↔photo threshold of its shared branch: FAR 1% on the pairs of `testing_1.txt`
/// (`eval-results/verify-mtl`).
pub const MTL_CROSS_THRESHOLD: f32 = 0.6638;
/// Caricature↔caricature threshold of its caricature branch: FAR 1% over the caricatures of
/// `testing_1.txt` (`eval-results/identify-mtl`).
pub const MTL_CARICATURE_THRESHOLD: f32 = 0.6921;

/// One neighbour found for a probe: which entry, in which direction, how similar.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Neighbour {
    /// Index of the entry in the gallery.
    pub entry: usize,
    /// Modality of the entry.
    pub modality: Modality,
    /// Cosine similarity to the probe.
    pub similarity: f32,
}

/// An identity's evidence for one probe.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Candidate {
    /// Display name.
    pub identity: String,
    /// The identity's score: its best entry's similarity, or the mean of its top entries.
    pub similarity: f32,
    /// The threshold of the direction it matched in.
    pub threshold: f32,
    /// Modality of the entries it matched.
    pub matched_modality: Modality,
}

impl Candidate {
    /// How far above (positive) or below its direction's threshold the score is.
    pub fn margin(&self) -> f32 {
        self.similarity - self.threshold
    }
}

/// Groups neighbours by identity and modality, scores each group by the mean of its `top_n`
/// most similar entries, keeps each identity's best direction by margin over its threshold, and
/// returns identities in decreasing margin.
pub fn rank_identities(
    neighbours: &[Neighbour],
    name_of: impl Fn(usize) -> String,
    probe: Modality,
    thresholds: &Thresholds,
    top_n: usize,
) -> Vec<Candidate> {
    let mut groups: HashMap<(String, Modality), Vec<f32>> = HashMap::new();
    for n in neighbours {
        groups
            .entry((name_of(n.entry), n.modality))
            .or_default()
            .push(n.similarity);
    }
    let mut best: HashMap<String, Candidate> = HashMap::new();
    for ((identity, modality), mut sims) in groups {
        sims.sort_by(|a, b| b.total_cmp(a));
        sims.truncate(top_n.max(1));
        let candidate = Candidate {
            similarity: sims.iter().sum::<f32>() / sims.len() as f32,
            threshold: thresholds.get(probe, modality),
            matched_modality: modality,
            identity: identity.clone(),
        };
        match best.get(&identity) {
            Some(existing) if existing.margin() >= candidate.margin() => {}
            _ => {
                best.insert(identity, candidate);
            }
        }
    }
    let mut ranked: Vec<Candidate> = best.into_values().collect();
    ranked.sort_by(|a, b| {
        b.margin()
            .total_cmp(&a.margin())
            .then_with(|| a.identity.cmp(&b.identity))
    });
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_follow_the_model_checksum_not_its_name() {
        let dlib = crate::models::shipped_sha256(DLIB_MODEL_FILE).unwrap();
        let multi_task = crate::models::shipped_sha256("carivis_mtl.onnx").unwrap();
        assert_eq!(Thresholds::for_checksum(dlib), Thresholds::dlib());
        assert_eq!(Thresholds::for_checksum(multi_task), Thresholds::default());
        assert_eq!(
            Thresholds::for_checksum(&"0".repeat(64)),
            Thresholds::default()
        );
    }

    #[test]
    fn cross_modal_pairs_use_the_shared_branch() {
        assert_eq!(
            Branch::for_pair(Modality::Photo, Modality::Caricature, true),
            Branch::Shared
        );
        assert_eq!(
            Branch::for_pair(Modality::Photo, Modality::Photo, true),
            Branch::Photo
        );
        assert_eq!(
            Branch::for_pair(Modality::Photo, Modality::Photo, false),
            Branch::Shared
        );
    }

    #[test]
    fn identities_rank_by_margin_over_their_direction_threshold() {
        let names = ["ann", "ann", "bob"];
        let neighbours = [
            Neighbour {
                entry: 0,
                modality: Modality::Photo,
                similarity: 0.80,
            },
            Neighbour {
                entry: 1,
                modality: Modality::Caricature,
                similarity: 0.70,
            },
            Neighbour {
                entry: 2,
                modality: Modality::Photo,
                similarity: 0.85,
            },
        ];
        let thresholds = Thresholds {
            photo_to_photo: 0.9,
            caricature_to_photo: 0.9,
            photo_to_caricature: 0.6,
            caricature_to_caricature: 0.9,
        };
        let ranked = rank_identities(
            &neighbours,
            |i| names[i].to_string(),
            Modality::Photo,
            &thresholds,
            1,
        );
        assert_eq!(ranked[0].identity, "ann");
        assert_eq!(ranked[0].matched_modality, Modality::Caricature);
        assert!((ranked[0].margin() - 0.1).abs() < 1e-6);
        assert_eq!(ranked[1].identity, "bob");
        assert!(ranked[1].margin() < 0.0);
    }

    #[test]
    fn top_n_scoring_averages_an_identitys_best_entries() {
        let neighbours = [
            Neighbour {
                entry: 0,
                modality: Modality::Photo,
                similarity: 0.9,
            },
            Neighbour {
                entry: 1,
                modality: Modality::Photo,
                similarity: 0.7,
            },
            Neighbour {
                entry: 2,
                modality: Modality::Photo,
                similarity: 0.1,
            },
        ];
        let ranked = rank_identities(
            &neighbours,
            |_| "ann".into(),
            Modality::Photo,
            &Thresholds::uniform(0.5),
            2,
        );
        assert!((ranked[0].similarity - 0.8).abs() < 1e-6);
    }
}
