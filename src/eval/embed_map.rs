//! Embedding maps: the photos and caricatures of a few people, embedded by several models and
//! laid out in two dimensions by t-SNE, one panel per model (as the seed paper's figure 2
//! shows the space before and after training).

use std::path::PathBuf;

use serde::Serialize;

use super::plots::{ScatterPoint, scatter_panels_png};
use super::tsne::{TsneConfig, tsne};
use super::{EvalError, Faces, ImageSummary, embed_all, vector};
use crate::gallery::matching::Branch;
use crate::rng::Rng;
use crate::types::{LabelledImage, Modality};

/// What to map.
pub struct EmbedMapInput {
    /// Labelled images to draw the people from.
    pub images: Vec<LabelledImage>,
    /// How many people (drawn among those with at least one photo and one caricature).
    pub people: usize,
    /// Seed of the draw and of the t-SNE layouts.
    pub seed: u64,
    /// The PNG to write.
    pub out: PathBuf,
}

/// One panel's model and what its images gave.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EmbedMapPanel {
    /// The panel's title.
    pub title: String,
    /// The model file (its name and checksum are in the cache file).
    pub model: String,
    /// Images, detection and cache of this model.
    pub images: ImageSummary,
    /// Images drawn (those that could be embedded).
    pub points: usize,
}

/// What an embedding map drew.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EmbedMapReport {
    /// The people drawn, in colour order.
    pub people: Vec<String>,
    /// One per model.
    pub panels: Vec<EmbedMapPanel>,
    /// The PNG written.
    pub out: PathBuf,
}

/// Draws the map: the same people's images through every `(title, faces)` model, each in its
/// shared (cross-modal) branch, t-SNE with the input's seed, panels side by side.
pub fn embed_map(
    input: &EmbedMapInput,
    models: Vec<(String, Faces)>,
) -> Result<EmbedMapReport, EvalError> {
    let people = draw_people(&input.images, input.people, input.seed);
    let images: Vec<&LabelledImage> = input
        .images
        .iter()
        .filter(|i| people.contains(&i.identity))
        .collect();
    let paths: Vec<PathBuf> = images.iter().map(|i| i.path.clone()).collect();
    let modalities: Vec<Modality> = images.iter().map(|i| i.modality).collect();
    let config = TsneConfig {
        seed: input.seed,
        ..TsneConfig::default()
    };
    let (mut panels, mut drawn) = (Vec::new(), Vec::new());
    for (title, faces) in models {
        let (outcomes, summary, model) = embed_all(faces, &paths, &modalities)?;
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for (image, outcome) in images.iter().zip(&outcomes) {
            let Ok(record) = outcome else { continue };
            rows.extend_from_slice(vector(record, Branch::Shared)?);
            let person = people.iter().position(|p| *p == image.identity);
            labels.push((person.unwrap_or(0), image.modality == Modality::Photo));
        }
        let points: Vec<ScatterPoint> = tsne(&rows, model.dim, &config)
            .into_iter()
            .zip(labels)
            .map(|(p, (person, photo))| (p, person, photo))
            .collect();
        panels.push(EmbedMapPanel {
            title: title.clone(),
            model: model.file,
            images: summary,
            points: points.len(),
        });
        drawn.push((title, points));
    }
    scatter_panels_png(&input.out, &drawn)?;
    Ok(EmbedMapReport {
        people,
        panels,
        out: input.out.clone(),
    })
}

/// `count` people with at least one photo and one caricature, drawn with `seed`, sorted by
/// name (so colours follow names, not the draw).
fn draw_people(images: &[LabelledImage], count: usize, seed: u64) -> Vec<String> {
    let has = |name: &str, modality: Modality| {
        images
            .iter()
            .any(|i| i.identity == name && i.modality == modality)
    };
    let mut names: Vec<String> = images.iter().map(|i| i.identity.clone()).collect();
    names.sort_unstable();
    names.dedup();
    names.retain(|n| has(n, Modality::Photo) && has(n, Modality::Caricature));
    Rng::new(seed).shuffle(&mut names);
    names.truncate(count);
    names.sort_unstable();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(identity: &str, modality: Modality) -> LabelledImage {
        LabelledImage {
            path: PathBuf::from(format!("{identity}-{modality}.jpg")),
            identity: identity.into(),
            modality,
        }
    }

    #[test]
    fn people_need_both_modalities_and_the_draw_follows_the_seed() {
        let mut images = vec![image("only-photos", Modality::Photo)];
        for name in ["a", "b", "c", "d", "e", "f"] {
            images.push(image(name, Modality::Photo));
            images.push(image(name, Modality::Caricature));
        }
        let drawn = draw_people(&images, 3, 7);
        assert_eq!(drawn.len(), 3);
        assert!(!drawn.contains(&"only-photos".to_string()));
        assert!(drawn.windows(2).all(|w| w[0] < w[1]), "sorted: {drawn:?}");
        assert_eq!(drawn, draw_people(&images, 3, 7));
        assert_eq!(draw_people(&images, 10, 7).len(), 6);
    }
}
