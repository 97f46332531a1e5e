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
    /// Chooses the epoch (same people as training, other images).
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
    /// Seed of the split.
    pub seed: u64,
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

/// Assigns roles: `excluded` images first, then `holdout_identities` whole people (chosen by
/// the seed), then per person and modality a `validation_fraction` of the rest.
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
    if options.holdout_identities + 2 > people.len() {
        return Err(TrainError::HoldoutTooLarge {
            holdout: options.holdout_identities,
            people: people.len(),
        });
    }
    let held_out: HashSet<&str> = people[..options.holdout_identities]
        .iter()
        .map(String::as_str)
        .collect();
    let mut roles: Vec<Role> = (0..images.len())
        .map(|i| {
            if excluded.contains(&i) {
                Role::Excluded
            } else if held_out.contains(images[i].identity.as_str()) {
                Role::Holdout
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
    for members in groups.values_mut() {
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
