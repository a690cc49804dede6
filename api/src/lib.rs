//! Hearth's gateway: configuration, access tokens, HTTP and WebSocket signaling, the web
//! client, and the `hearth` binary's pieces.
//!
//! The gateway is thin: validate, authorize, convert wire types to domain types
//! ([`convert`] for signaling and [`grpc::convert`] for the gRPC API are the only places
//! that do), hand the request to an actor, convert the
//! reply. It owns no meeting state.

pub mod config;
pub mod convert;
pub mod grpc;
pub mod listen;
pub mod rest;
pub mod server;
pub mod signaling;
pub mod stt;
pub mod stt_stream;
pub mod token;
pub mod web;
pub mod whip;
