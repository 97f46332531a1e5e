//! Training data: the labelled images (a manifest or CaVI's folder layout), the checks that
//! make bad input fail early, and the split into training, validation, held-out people and
//! images excluded because an evaluation protocol names them.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use super::TrainError;
use crate::rng::Rng;
use crate::types::{LabelledImage, Modality};

/// What each image is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Trains the network.
    Train,
    /// Chooses the epoch: other images of the training people, or whole validation people.
    Validation,
    /// A person left out of training entirely (the unseen-people check).
    Holdout,
    /// Named by an evaluation protocol (or a byte-identical copy of such an image).
    Excluded,
}

/// How the images are split.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SplitOptions {
    /// Share of each person's photos and of their caricatures kept for validation.
    pub validation_fraction: f64,
    /// Number of whole people left out of training.
    pub holdout_identities: usize,
    /// Whole people (besides the held-out ones) that validate instead of a share of each
    /// person's images; 0 = validate on the training people's images.
    #[serde(default)]
    pub validation_identities: usize,
    /// One fold of the unseen-people protocol: its people are held out (replaces
    /// `holdout_identities`).
    #[serde(default)]
    pub fold: Option<Fold>,
    /// Seed of the split.
    pub seed: u64,
}

/// Fold `index` of `count` identity-disjoint folds: after the seeded shuffle of the people,
/// person `k` is in fold `k mod count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fold {
    /// Number of folds.
    pub count: usize,
    /// This fold (0-based).
    pub index: usize,
}

/// The labelled images and the role of each.
pub struct Dataset {
    /// Every usable image, in input order.
    pub images: Vec<LabelledImage>,
    /// Role of each image.
    pub roles: Vec<Role>,
    /// The training identities (class index = position), sorted.
    pub classes: Vec<String>,
}

impl Dataset {
    /// Class index of image `i` when its person is trained on.
    pub fn class_of(&self, i: usize) -> Option<u32> {
        self.classes
            .binary_search(&self.images[i].identity)
            .ok()
            .map(|c| c as u32)
    }

    /// Indexes of the images with `role`.
    pub fn with_role(&self, role: Role) -> Vec<usize> {
        (0..self.images.len())
            .filter(|&i| self.roles[i] == role)
            .collect()
    }

    /// Number of images per role and modality, for the report.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for (image, role) in self.images.iter().zip(&self.roles) {
            let key = format!("{role:?} {}", image.modality).to_lowercase();
            *counts.entry(key).or_default() += 1;
        }
        counts
    }
}

/// Fails on input nobody can train from: no images, missing files, a single person.
pub fn check_images(images: &[LabelledImage], source: &Path) -> Result<(), TrainError> {
    if images.is_empty() {
        return Err(TrainError::NoImages {
            data: source.to_path_buf(),
        });
    }
    let missing: Vec<&Path> = images
        .iter()
        .map(|i| i.path.as_path())
        .filter(|p| !p.is_file())
        .collect();
    if let Some(first) = missing.first() {
        return Err(TrainError::MissingImages {
            data: source.to_path_buf(),
            missing: missing.len(),
            total: images.len(),
            example: first.to_path_buf(),
        });
    }
    let people: BTreeSet<&str> = images.iter().map(|i| i.identity.as_str()).collect();
    if people.len() < 2 {
        return Err(TrainError::OnePerson {
            data: source.to_path_buf(),
            person: people.iter().next().copied().unwrap_or("").to_string(),
        });
    }
    Ok(())
}

/// Assigns roles: `excluded` images first, then the held-out people (`holdout_identities`
/// chosen by the seed, or the people of `fold`), then the validation people or, without them,
/// per person and modality a `validation_fraction` of the rest.
pub fn split(
    images: Vec<LabelledImage>,
    excluded: &HashSet<usize>,
    options: &SplitOptions,
) -> Result<Dataset, TrainError> {
    let mut rng = Rng::new(options.seed);
    let mut people: Vec<String> = images
        .iter()
        .map(|i| i.identity.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    rng.shuffle(&mut people);
    let held_out: HashSet<&str> = people
        .iter()
        .enumerate()
        .filter(|&(k, _)| match options.fold {
            Some(fold) => k % fold.count == fold.index,
            None => k < options.holdout_identities,
        })
        .map(|(_, p)| p.as_str())
        .collect();
    let validation_people: HashSet<&str> = people
        .iter()
        .filter(|p| !held_out.contains(p.as_str()))
        .take(options.validation_identities)
        .map(String::as_str)
        .collect();
    let set_aside = held_out.len() + validation_people.len();
    if set_aside + 2 > people.len() {
        return Err(TrainError::HoldoutTooLarge {
            holdout: set_aside,
            people: people.len(),
        });
    }
    let mut roles: Vec<Role> = (0..images.len())
        .map(|i| {
            let person = images[i].identity.as_str();
            if excluded.contains(&i) {
                Role::Excluded
            } else if held_out.contains(person) {
                Role::Holdout
            } else if validation_people.contains(person) {
                Role::Validation
            } else {
                Role::Train
            }
        })
        .collect();
    let mut groups: BTreeMap<(&str, Modality), Vec<usize>> = BTreeMap::new();
    for (i, image) in images.iter().enumerate() {
        if roles[i] == Role::Train {
            groups
                .entry((image.identity.as_str(), image.modality))
                .or_default()
                .push(i);
        }
    }
    for members in groups
        .values_mut()
        .filter(|_| options.validation_identities == 0)
    {
        rng.shuffle(members);
        let n = (members.len() as f64 * options.validation_fraction).round() as usize;
        for &i in members.iter().take(n.min(members.len().saturating_sub(1))) {
            roles[i] = Role::Validation;
        }
    }
    let classes: Vec<String> = images
        .iter()
        .zip(&roles)
        .filter(|(_, r)| **r == Role::Train)
        .map(|(i, _)| i.identity.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if classes.len() < 2 {
        return Err(TrainError::TooFewPeople {
            people: classes.len(),
        });
    }
    Ok(Dataset {
        images,
        roles,
        classes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(path: &str, identity: &str, modality: Modality) -> LabelledImage {
        LabelledImage {
            path: std::path::PathBuf::from(path),
            identity: identity.into(),
            modality,
        }
    }

    #[test]
    fn split_keeps_validation_within_training_people_and_holds_out_whole_people() {
        let mut images = Vec::new();
        for person in ["a", "b", "c", "d"] {
            for k in 0..10 {
                images.push(image(
                    &format!("{person}/p{k}.jpg"),
                    person,
                    Modality::Photo,
                ));
                images.push(image(
                    &format!("{person}/c{k}.jpg"),
                    person,
                    Modality::Caricature,
                ));
            }
        }
        let options = SplitOptions {
            validation_fraction: 0.2,
            holdout_identities: 1,
            validation_identities: 0,
            fold: None,
            seed: 7,
        };
        let data = split(images, &HashSet::from([0]), &options).unwrap();
        assert_eq!(data.roles[0], Role::Excluded);
        assert_eq!(data.classes.len(), 3);
        let held = data.with_role(Role::Holdout);
        assert_eq!(held.len(), 20);
        let held_person = &data.images[held[0]].identity;
        assert!(!data.classes.contains(held_person));
        for i in data.with_role(Role::Validation) {
            assert!(data.class_of(i).is_some());
        }
        assert!(data.with_role(Role::Validation).len() >= 10);
    }

    /// The people of each role in a split.
    fn people_with(data: &Dataset, role: Role) -> BTreeSet<String> {
        data.with_role(role)
            .into_iter()
            .map(|i| data.images[i].identity.clone())
            .collect()
    }

    #[test]
    fn folds_are_identity_disjoint_and_cover_everyone() {
        let mut images = Vec::new();
        for person in 0..23 {
            for k in 0..3 {
                let name = format!("person {person}");
                images.push(image(&format!("{person}/p{k}.jpg"), &name, Modality::Photo));
                images.push(image(
                    &format!("{person}/c{k}.jpg"),
                    &name,
                    Modality::Caricature,
                ));
            }
        }
        let count = 5;
        let mut seen = BTreeSet::new();
        for index in 0..count {
            let options = SplitOptions {
                validation_fraction: 0.1,
                holdout_identities: 0,
                validation_identities: 3,
                fold: Some(Fold { count, index }),
                seed: 11,
            };
            let data = split(images.clone(), &HashSet::new(), &options).unwrap();
            let (test, validation, train) = (
                people_with(&data, Role::Holdout),
                people_with(&data, Role::Validation),
                people_with(&data, Role::Train),
            );
            assert!((4..=5).contains(&test.len()), "fold {index}: {test:?}");
            assert_eq!(validation.len(), 3);
            assert!(test.is_disjoint(&validation) && test.is_disjoint(&train));
            assert!(validation.is_disjoint(&train));
            assert_eq!(test.len() + validation.len() + train.len(), 23);
            assert_eq!(data.classes, train.iter().cloned().collect::<Vec<_>>());
            assert!(
                seen.is_disjoint(&test),
                "fold {index} repeats a test person"
            );
            seen.extend(test);
        }
        assert_eq!(seen.len(), 23, "every person is tested in exactly one fold");
    }

    #[test]
    fn bad_inputs_are_refused_with_the_reason() {
        let source = Path::new("m.csv");
        let err = check_images(&[], source).unwrap_err().to_string();
        assert!(err.contains("no labelled"), "{err}");
        let missing = [image("/nonexistent/x.jpg", "a", Modality::Photo)];
        let err = check_images(&missing, source).unwrap_err().to_string();
        assert!(
            err.contains("missing") && err.contains("/nonexistent/x.jpg"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.jpg");
        std::fs::write(&file, b"x").unwrap();
        let one = [LabelledImage {
            path: file,
            identity: "solo".into(),
            modality: Modality::Photo,
        }];
        let err = check_images(&one, source).unwrap_err().to_string();
        assert!(err.contains("only one person"), "{err}");
    }
}
