//! Hearth's sans-IO SFU core.
pub mod codec;
pub mod forwarder;
pub mod keyframe;
pub mod media;
pub mod nack;
pub mod seq;
pub mod stats;
