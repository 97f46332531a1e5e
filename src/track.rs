//! Following faces across frames and deciding each track's identity from several frames, so
//! labels do not flicker. Two halves, so that a face need not be embedded on every frame:
//! [`Linker`] links boxes to tracks and says which faces need a new embedding (it runs before
//! embedding), [`Tracker`] weighs the embedded frames' answers per track (it runs after
//! matching).

use std::collections::HashMap;

use crate::types::{FaceBox, Modality, TrackedFace};

/// Tracker settings.
#[derive(Clone, Copy, Debug)]
pub struct TrackerConfig {
    /// Smallest IoU between a track's last box and a new face for them to be linked.
    pub min_iou: f32,
    /// Frames a track survives without a matching face.
    pub max_missed: u32,
    /// Embedded observations a track needs before its identity is called decided; a new
    /// track's face is embedded on each of its first frames until then.
    pub frames_to_decide: u32,
    /// Weight kept from older votes at each new frame (older evidence fades).
    pub vote_decay: f32,
    /// Once a track is decided, its face is embedded again on every N-th frame only (1 =
    /// every frame); the frames in between keep the track's label.
    pub embed_every: u32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            min_iou: 0.3,
            max_missed: 10,
            frames_to_decide: 3,
            vote_decay: 0.9,
            embed_every: 5,
        }
    }
}

/// Where a face of this frame belongs, from [`Linker::link`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// Track id, stable while the face stays in view.
    pub track: u64,
    /// Whether this frame's face should be embedded and matched.
    pub embed: bool,
}

struct LinkedTrack {
    id: u64,
    bbox: FaceBox,
    missed: u32,
    embedded: u32,
    since_embedded: u32,
}

/// Links one stream's faces to tracks by box overlap (greedily, highest IoU first).
pub struct Linker {
    config: TrackerConfig,
    tracks: Vec<LinkedTrack>,
    next_id: u64,
}

impl Linker {
    /// No tracks yet.
    pub fn new(config: TrackerConfig) -> Self {
        Self {
            config,
            tracks: Vec::new(),
            next_id: 1,
        }
    }

    /// Each box's track, in the order given, and whether it is due for embedding.
    pub fn link(&mut self, boxes: &[FaceBox]) -> Vec<Link> {
        let assignment = self.assign(boxes);
        let mut seen = vec![false; self.tracks.len()];
        let links = boxes
            .iter()
            .zip(assignment)
            .map(|(bbox, slot)| {
                let slot = slot.unwrap_or_else(|| self.start_track(*bbox));
                if slot < seen.len() {
                    seen[slot] = true;
                }
                self.advance(slot, *bbox)
            })
            .collect();
        for (track, seen) in self.tracks.iter_mut().zip(seen) {
            if !seen {
                track.missed += 1;
            }
        }
        let max_missed = self.config.max_missed;
        self.tracks.retain(|t| t.missed <= max_missed);
        links
    }

    fn advance(&mut self, slot: usize, bbox: FaceBox) -> Link {
        let config = self.config;
        let track = &mut self.tracks[slot];
        let embed = track.embedded < config.frames_to_decide
            || track.since_embedded + 1 >= config.embed_every.max(1);
        if embed {
            track.embedded += 1;
            track.since_embedded = 0;
        } else {
            track.since_embedded += 1;
        }
        track.missed = 0;
        track.bbox = bbox;
        Link {
            track: track.id,
            embed,
        }
    }

    /// Track index for each box, pairing the highest IoUs first.
    fn assign(&self, boxes: &[FaceBox]) -> Vec<Option<usize>> {
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (o, bbox) in boxes.iter().enumerate() {
            for (t, track) in self.tracks.iter().enumerate() {
                let iou = track.bbox.iou(bbox);
                if iou >= self.config.min_iou {
                    pairs.push((iou, o, t));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut assignment = vec![None; boxes.len()];
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
        self.tracks.push(LinkedTrack {
            id: self.next_id,
            bbox,
            missed: 0,
            embedded: 0,
            since_embedded: 0,
        });
        self.next_id += 1;
        self.tracks.len() - 1
    }
}

/// What one embedded frame says about its face.
#[derive(Clone, Debug, PartialEq)]
pub struct Evidence {
    /// This frame's answer (`None` = unknown).
    pub identity: Option<String>,
    /// Similarity of this frame's best candidate.
    pub similarity: f32,
    /// Modality of the entries it matched.
    pub matched_modality: Option<Modality>,
}

/// One face of one frame, linked to its track.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// The face's track, from [`Linker::link`].
    pub track: u64,
    /// Face box.
    pub bbox: FaceBox,
    /// Detector confidence.
    pub score: f32,
    /// The gallery's answer, when this frame's face was embedded.
    pub evidence: Option<Evidence>,
}

struct Votes {
    votes: HashMap<Option<String>, f32>,
    embedded: u32,
    latest: Evidence,
    missed: u32,
}

impl Votes {
    fn new() -> Self {
        Self {
            votes: HashMap::new(),
            embedded: 0,
            latest: Evidence {
                identity: None,
                similarity: 0.0,
                matched_modality: None,
            },
            missed: 0,
        }
    }

    fn vote(&mut self, bbox: &FaceBox, evidence: &Evidence, decay: f32) {
        self.votes.values_mut().for_each(|w| *w *= decay);
        // Larger, more similar faces are better evidence.
        let weight = bbox.area().max(1.0).sqrt() * evidence.similarity.max(0.05);
        *self.votes.entry(evidence.identity.clone()).or_default() += weight;
        self.embedded += 1;
        self.latest = evidence.clone();
    }

    fn leader(&self) -> Option<String> {
        self.votes
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .and_then(|(identity, _)| identity.clone())
    }
}

/// Decides the identities of one stream's tracks from their embedded frames.
pub struct Tracker {
    config: TrackerConfig,
    tracks: HashMap<u64, Votes>,
}

impl Tracker {
    /// No tracks yet.
    pub fn new(config: TrackerConfig) -> Self {
        Self {
            config,
            tracks: HashMap::new(),
        }
    }

    /// Votes with this frame's evidence and returns the faces with their tracks' identities,
    /// in the order given. A face without evidence keeps its track's label and latest answer.
    pub fn update(&mut self, observations: &[Observation]) -> Vec<TrackedFace> {
        self.tracks.values_mut().for_each(|t| t.missed += 1);
        let out = observations
            .iter()
            .map(|observation| self.observe(observation))
            .collect();
        let max_missed = self.config.max_missed;
        self.tracks.retain(|_, t| t.missed <= max_missed);
        out
    }

    fn observe(&mut self, observation: &Observation) -> TrackedFace {
        let config = self.config;
        let track = self
            .tracks
            .entry(observation.track)
            .or_insert_with(Votes::new);
        track.missed = 0;
        if let Some(evidence) = &observation.evidence {
            track.vote(&observation.bbox, evidence, config.vote_decay);
        }
        TrackedFace {
            track: observation.track,
            bbox: observation.bbox,
            score: observation.score,
            identity: track.leader(),
            similarity: track.latest.similarity,
            matched_modality: track.latest.matched_modality,
            decided: track.embedded >= config.frames_to_decide,
            frame_identity: track.latest.identity.clone(),
            embedded: observation.evidence.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(x: f32) -> FaceBox {
        FaceBox {
            x1: x,
            y1: 0.0,
            x2: x + 100.0,
            y2: 100.0,
        }
    }

    fn seen(track: u64, x: f32, identity: Option<&str>, similarity: f32) -> Observation {
        Observation {
            track,
            bbox: at(x),
            score: 0.99,
            evidence: Some(Evidence {
                identity: identity.map(String::from),
                similarity,
                matched_modality: Some(Modality::Photo),
            }),
        }
    }

    #[test]
    fn a_moving_face_keeps_its_track() {
        let mut linker = Linker::new(TrackerConfig::default());
        let tracks: Vec<u64> = [0.0, 5.0, 10.0, 15.0]
            .iter()
            .map(|&x| linker.link(&[at(x)])[0].track)
            .collect();
        assert_eq!(tracks, [1, 1, 1, 1]);
        let both = linker.link(&[at(15.0), at(500.0)]);
        assert_eq!((both[0].track, both[1].track), (1, 2));
    }

    #[test]
    fn a_decided_track_is_embedded_on_every_nth_frame_only() {
        let mut linker = Linker::new(TrackerConfig::default());
        let embeds: Vec<bool> = (0..13).map(|_| linker.link(&[at(0.0)])[0].embed).collect();
        let expected = [
            true, true, true, false, false, false, false, true, false, false, false, false, true,
        ];
        assert_eq!(embeds, expected);
        let mut every = Linker::new(TrackerConfig {
            embed_every: 1,
            ..TrackerConfig::default()
        });
        assert!((0..6).all(|_| every.link(&[at(0.0)])[0].embed));
    }

    #[test]
    fn tracks_vanish_after_too_many_missed_frames() {
        let mut linker = Linker::new(TrackerConfig {
            max_missed: 1,
            ..TrackerConfig::default()
        });
        linker.link(&[at(0.0)]);
        linker.link(&[]);
        linker.link(&[]);
        assert_eq!(linker.link(&[at(0.0)])[0].track, 2);
    }

    #[test]
    fn one_bad_frame_does_not_flip_the_label() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        for x in [0.0, 5.0, 10.0] {
            tracker.update(&[seen(1, x, Some("ann"), 0.95)]);
        }
        let out = tracker.update(&[seen(1, 15.0, Some("bob"), 0.91)]);
        assert_eq!(out[0].identity.as_deref(), Some("ann"));
        assert_eq!(out[0].frame_identity.as_deref(), Some("bob"));
        assert!(out[0].decided && out[0].embedded);
    }

    #[test]
    fn a_new_track_is_decided_after_a_few_embedded_frames() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        tracker.update(&[seen(1, 0.0, Some("ann"), 0.95)]);
        let both = [
            seen(1, 0.0, Some("ann"), 0.95),
            seen(2, 500.0, Some("bob"), 0.95),
        ];
        assert!(!tracker.update(&both)[1].decided);
        tracker.update(&both);
        let third = tracker.update(&both);
        assert_eq!(
            (third[1].identity.as_deref(), third[1].decided),
            (Some("bob"), true)
        );
    }

    #[test]
    fn a_frame_without_evidence_keeps_the_label_and_latest_answer() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        for _ in 0..3 {
            tracker.update(&[seen(1, 0.0, Some("ann"), 0.8)]);
        }
        let quiet = Observation {
            evidence: None,
            ..seen(1, 4.0, None, 0.0)
        };
        let out = tracker.update(&[quiet]);
        assert_eq!(
            (
                out[0].identity.as_deref(),
                out[0].frame_identity.as_deref(),
                out[0].similarity,
                out[0].embedded,
                out[0].decided
            ),
            (Some("ann"), Some("ann"), 0.8, false, true)
        );
    }
}
