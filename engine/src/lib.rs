//! Hearth's sans-IO SFU core.
pub mod codec;
pub mod forwarder;
pub mod media;
pub mod seq;
