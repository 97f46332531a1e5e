//! Linking faces across frames and deciding each track's identity from several frames, so
//! labels do not flicker; the per-frame evidence is kept alongside.

use std::collections::HashMap;

use crate::types::{FaceBox, Modality, TrackedFace};

/// Tracker settings.
#[derive(Clone, Copy, Debug)]
pub struct TrackerConfig {
    /// Smallest IoU between a track's last box and a new face for them to be linked.
    pub min_iou: f32,
    /// Frames a track survives without a matching face.
    pub max_missed: u32,
    /// Observations a track needs before its identity is called decided.
    pub frames_to_decide: u32,
    /// Weight kept from older votes at each new frame (older evidence fades).
    pub vote_decay: f32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            min_iou: 0.3,
            max_missed: 10,
            frames_to_decide: 3,
            vote_decay: 0.9,
        }
    }
}

/// What one frame says about one face.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// Face box.
    pub bbox: FaceBox,
    /// Detector confidence.
    pub score: f32,
    /// This frame's answer (`None` = unknown).
    pub identity: Option<String>,
    /// Similarity of this frame's best candidate.
    pub similarity: f32,
    /// Modality of the entries it matched.
    pub matched_modality: Option<Modality>,
}

struct Track {
    id: u64,
    bbox: FaceBox,
    missed: u32,
    frames: u32,
    votes: HashMap<Option<String>, f32>,
}

impl Track {
    fn vote(&mut self, observation: &Observation, decay: f32) {
        self.votes.values_mut().for_each(|w| *w *= decay);
        // Larger, more similar faces are better evidence.
        let weight = observation.bbox.area().max(1.0).sqrt() * observation.similarity.max(0.05);
        *self.votes.entry(observation.identity.clone()).or_default() += weight;
        self.frames += 1;
        self.missed = 0;
        self.bbox = observation.bbox;
    }

    fn leader(&self) -> Option<String> {
        self.votes
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .and_then(|(identity, _)| identity.clone())
    }
}

/// Tracks faces of one video stream.
pub struct Tracker {
    config: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u64,
}

impl Tracker {
    /// An empty tracker.
    pub fn new(config: TrackerConfig) -> Self {
        Self {
            config,
            tracks: Vec::new(),
            next_id: 1,
        }
    }

    /// Links this frame's faces to tracks (greedily by IoU), votes, and returns the faces with
    /// their tracks' identities, in the order given.
    pub fn update(&mut self, observations: &[Observation]) -> Vec<TrackedFace> {
        let assignment = self.assign(observations);
        let mut seen = vec![false; self.tracks.len()];
        let mut out = Vec::with_capacity(observations.len());
        for (observation, slot) in observations.iter().zip(assignment) {
            let slot = slot.unwrap_or_else(|| self.start_track(observation.bbox));
            if slot < seen.len() {
                seen[slot] = true;
            }
            let track = &mut self.tracks[slot];
            track.vote(observation, self.config.vote_decay);
            out.push(TrackedFace {
                track: track.id,
                bbox: observation.bbox,
                score: observation.score,
                identity: track.leader(),
                similarity: observation.similarity,
                matched_modality: observation.matched_modality,
                decided: track.frames >= self.config.frames_to_decide,
                frame_identity: observation.identity.clone(),
            });
        }
        for (track, seen) in self.tracks.iter_mut().zip(seen) {
            if !seen {
                track.missed += 1;
            }
        }
        let max_missed = self.config.max_missed;
        self.tracks.retain(|t| t.missed <= max_missed);
        out
    }

    /// Track index for each observation, pairing the highest IoUs first.
    fn assign(&self, observations: &[Observation]) -> Vec<Option<usize>> {
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (o, observation) in observations.iter().enumerate() {
            for (t, track) in self.tracks.iter().enumerate() {
                let iou = track.bbox.iou(&observation.bbox);
                if iou >= self.config.min_iou {
                    pairs.push((iou, o, t));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut assignment = vec![None; observations.len()];
        let mut taken = vec![false; self.tracks.len()];
        for (_, o, t) in pairs {
            if assignment[o].is_none() && !taken[t] {
                assignment[o] = Some(t);
                taken[t] = true;
            }
        }
        assignment
    }

    fn start_track(&mut self, bbox: FaceBox) -> usize {
        self.tracks.push(Track {
            id: self.next_id,
            bbox,
            missed: 0,
            frames: 0,
            votes: HashMap::new(),
        });
        self.next_id += 1;
        self.tracks.len() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(x: f32, identity: Option<&str>, similarity: f32) -> Observation {
        Observation {
            bbox: FaceBox {
                x1: x,
                y1: 0.0,
                x2: x + 100.0,
                y2: 100.0,
            },
            score: 0.99,
            identity: identity.map(String::from),
            similarity,
            matched_modality: Some(Modality::Photo),
        }
    }

    #[test]
    fn a_moving_face_keeps_its_track_and_one_bad_frame_does_not_flip_the_label() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        for x in [0.0, 5.0, 10.0] {
            tracker.update(&[seen(x, Some("ann"), 0.95)]);
        }
        let out = tracker.update(&[seen(15.0, Some("bob"), 0.91)]);
        assert_eq!(out[0].track, 1);
        assert_eq!(out[0].identity.as_deref(), Some("ann"));
        assert_eq!(out[0].frame_identity.as_deref(), Some("bob"));
        assert!(out[0].decided);
    }

    #[test]
    fn a_new_face_gets_a_new_track_and_is_decided_after_a_few_frames() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        tracker.update(&[seen(0.0, Some("ann"), 0.95)]);
        let first = tracker.update(&[seen(0.0, Some("ann"), 0.95), seen(500.0, Some("bob"), 0.95)]);
        assert_eq!(first[1].track, 2);
        assert!(!first[1].decided);
        tracker.update(&[seen(0.0, Some("ann"), 0.95), seen(500.0, Some("bob"), 0.95)]);
        let third = tracker.update(&[seen(0.0, Some("ann"), 0.95), seen(500.0, Some("bob"), 0.95)]);
        assert_eq!(
            (third[1].identity.as_deref(), third[1].decided),
            (Some("bob"), true)
        );
    }

    #[test]
    fn tracks_vanish_after_too_many_missed_frames() {
        let mut tracker = Tracker::new(TrackerConfig {
            max_missed: 1,
            ..TrackerConfig::default()
        });
        tracker.update(&[seen(0.0, None, 0.3)]);
        tracker.update(&[]);
        tracker.update(&[]);
        let out = tracker.update(&[seen(0.0, None, 0.3)]);
        assert_eq!(out[0].track, 2);
        assert_eq!(out[0].identity, None);
    }
}
