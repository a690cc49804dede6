//! Hearth's actors: the supervision tree, the UDP media mux and the WebRTC adapter.
//!
//! What this crate owns: every long-lived piece of mutable state of a node, each inside one
//! actor (node, meeting supervisor, meeting, participant), plus the driver tasks of the
//! media port. What it must never do: know protobuf or JSON (the gateway converts wire
//! types to the domain types in [`domain`]), name a webrtc-rs type outside [`webrtc`], or
//! put the meeting actor on the per-packet path.
//!
//! Entry point: [`Node::start`], then [`Node::join`] per participant.

pub mod billing;
pub mod cluster;
pub mod congestion;
pub mod data;
pub mod domain;
pub mod events;
pub mod ids;
pub mod inbox;
pub mod leg;
pub mod limits;
pub mod meeting;
pub mod node;
pub mod participant;
pub mod registry;
pub mod removals;
pub mod signal;
pub mod timer;
pub mod transcription;
pub mod turn;
pub mod udp_mux;
pub mod virtual_participant;
pub mod webrtc;

pub use domain::*;
pub use ids::{MeetingId, ParticipantId, TrackId};
pub use meeting::{MeetingSnapshot, MemberView, ParticipantHandle};
pub use node::{Node, NodeConfig, NodeError, TurnAddrs};
pub use signal::{SignalReceiver, SignalSender, signal_channel};
pub use turn::{TurnConfig, UsageEvent};
