//! A sans-IO TURN server (RFC 8656 over the STUN of RFC 8489).
//!
//! * [`front`]: what arrives from a client 5-tuple that has no allocation: Binding,
//!   the authentication round trip, Allocate validation; everything else there is refused
//!   (437) or dropped.
//! * [`allocation`]: one allocation's state and requests (Refresh, CreatePermission,
//!   ChannelBind, Send), and [`allocation::RelayView`], the snapshot the data paths relay with.
//! * [`auth`]: long-term and ephemeral (TURN REST API) credentials, stateless nonces.
//! * [`policy`]: which peers may be relayed to.
//! * [`rate`]: the per-allocation bandwidth quota.
//!
//! Same input and same time give the same output: no clock, no randomness (nonce keys and
//! transaction ids come from the caller).

pub mod allocation;
pub mod auth;
pub mod front;
pub mod policy;
pub mod rate;

use std::time::Duration;

use crate::stun::{Class, Message, MessageBuilder, attr};

/// Lifetimes of allocations, permissions and channels (RFC 8656 defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    /// Allocation lifetime when the client asks for none or less: 600 s.
    pub default: Duration,
    /// Longest allocation lifetime granted: 3600 s.
    pub max: Duration,
    /// Permission lifetime: 300 s.
    pub permission: Duration,
    /// Channel binding lifetime: 600 s.
    pub channel: Duration,
    /// After a channel binding expires, its number and its peer stay reserved for this
    /// long before either may be bound otherwise: 300 s (RFC 8656 §12).
    pub channel_hold: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            default: Duration::from_secs(600),
            max: Duration::from_secs(3600),
            permission: Duration::from_secs(300),
            channel: Duration::from_secs(600),
            channel_hold: Duration::from_secs(300),
        }
    }
}

/// Attributes this server understands in requests; other comprehension-required ones
/// (below 0x8000) get 420 Unknown Attribute. DONT-FRAGMENT is deliberately absent: relayed
/// datagrams are sent without the DF bit, so a client that needs it is told so (420).
const KNOWN: &[u16] = &[
    attr::EVEN_PORT,
    attr::RESERVATION_TOKEN,
    attr::MAPPED_ADDRESS,
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::ERROR_CODE,
    attr::CHANNEL_NUMBER,
    attr::LIFETIME,
    attr::XOR_PEER_ADDRESS,
    attr::DATA,
    attr::REALM,
    attr::NONCE,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::REQUESTED_TRANSPORT,
    attr::PASSWORD_ALGORITHM,
    attr::USERHASH,
    attr::XOR_MAPPED_ADDRESS,
    attr::PRIORITY,
    attr::USE_CANDIDATE,
    attr::PADDING,
    attr::RESPONSE_PORT,
];

/// Ok, or the unknown comprehension-required attribute types for a 420.
pub(crate) fn known_attributes_ok(msg: &Message<'_>) -> Result<(), Vec<u16>> {
    let mut unknown = Vec::new();
    msg.unknown_required(KNOWN, &mut unknown);
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(unknown)
    }
}

/// A success response with `fill`'s attributes, MESSAGE-INTEGRITY (`key`) and FINGERPRINT.
pub(crate) fn success(
    method: u16,
    tid: [u8; 12],
    key: &[u8],
    software: Option<&str>,
    fill: impl FnOnce(MessageBuilder) -> MessageBuilder,
) -> Vec<u8> {
    let mut b = fill(MessageBuilder::new(method, Class::Success, tid));
    if let Some(s) = software {
        b = b.attr(attr::SOFTWARE, s.as_bytes());
    }
    b.integrity(key).fingerprint().build()
}

/// An error response to `msg`; with `key` (the request was authenticated) it carries
/// MESSAGE-INTEGRITY.
pub fn error_response(
    msg: &Message<'_>,
    code: u16,
    reason: &str,
    key: Option<&[u8]>,
    software: Option<&str>,
) -> Vec<u8> {
    let mut b = MessageBuilder::new(msg.method(), Class::Error, msg.transaction_id())
        .error_code(code, reason);
    if let Some(s) = software {
        b = b.attr(attr::SOFTWARE, s.as_bytes());
    }
    if let Some(key) = key {
        b = b.integrity(key);
    }
    b.fingerprint().build()
}

#[cfg(test)]
mod tests;
