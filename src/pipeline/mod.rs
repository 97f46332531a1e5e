//! The only place that wires stages together: [`still`] for single images (detect → align →
//! embed).

pub mod still;
