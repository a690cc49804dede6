//! Hearth's gateway: configuration, access tokens, HTTP and WebSocket signaling, the web
//! client, and the `hearth` binary's pieces.
//!
//! The gateway is thin: validate, authorize, convert wire types to domain types
//! ([`convert`] is the only place that does), hand the request to an actor, convert the
//! reply. It owns no meeting state.

pub mod config;
pub mod convert;
pub mod server;
pub mod signaling;
pub mod token;
pub mod web;
