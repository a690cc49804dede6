//! The front door: messages from a client 5-tuple that has no allocation yet.

use std::net::SocketAddr;
use std::time::Instant;

use super::auth::{Authenticated, Authenticator};
use super::{error_response, known_attributes_ok};
use crate::stun::{Class, Message, MessageBuilder, attr, method};

/// What to do with a message from a client without an allocation.
#[derive(Debug, PartialEq, Eq)]
pub enum FrontAction {
    /// Send this response.
    Respond(Vec<u8>),
    /// An authenticated, valid Allocate: create the allocation (or answer 486/508 when a
    /// quota or the port range says no).
    Allocate(AllocateRequest),
    /// Nothing to send; the reason is for counters.
    Drop(&'static str),
}

/// A validated Allocate request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocateRequest {
    pub auth: Authenticated,
    pub requested_lifetime: Option<u32>,
    pub transaction_id: [u8; 12],
    /// EVEN-PORT: an even relay port; `Some(true)` also reserves the next port (R bit).
    pub even_port: Option<bool>,
    /// RESERVATION-TOKEN: take the port an earlier EVEN-PORT request reserved.
    pub reservation_token: Option<[u8; 8]>,
}

/// REQUESTED-TRANSPORT value for UDP (protocol number 17 in the top byte).
const UDP: u8 = 17;

/// Handles one message from `from`, which has no allocation. `ipv6_relay` says whether
/// IPv6 relayed addresses can be offered.
pub fn handle(
    msg: &Message<'_>,
    from: SocketAddr,
    auth: &Authenticator,
    now: Instant,
    unix_now: u64,
    ipv6_relay: bool,
    software: Option<&str>,
) -> FrontAction {
    match (msg.class(), msg.method()) {
        (Class::Request, method::BINDING) => {
            let mut b = MessageBuilder::new(method::BINDING, Class::Success, msg.transaction_id())
                .xor_address(attr::XOR_MAPPED_ADDRESS, from);
            if let Some(s) = software {
                b = b.attr(attr::SOFTWARE, s.as_bytes());
            }
            FrontAction::Respond(b.fingerprint().build())
        }
        (Class::Request, method::ALLOCATE) => {
            allocate(msg, auth, now, unix_now, ipv6_relay, software)
        }
        (Class::Request, method::REFRESH | method::CREATE_PERMISSION | method::CHANNEL_BIND) => {
            match auth.check(msg, now, unix_now) {
                Ok(who) => FrontAction::Respond(error_response(
                    msg,
                    437,
                    "Allocation Mismatch",
                    Some(&who.key),
                    software,
                )),
                Err(reject) => {
                    FrontAction::Respond(auth.reject_response(msg, reject, now, software))
                }
            }
        }
        (Class::Request, _) => FrontAction::Respond(error_response(
            msg,
            400,
            "Bad Request: unsupported method",
            None,
            software,
        )),
        (Class::Indication, _) => FrontAction::Drop("indication without an allocation"),
        (Class::Success | Class::Error, _) => FrontAction::Drop("response from a client"),
    }
}

fn allocate(
    msg: &Message<'_>,
    auth: &Authenticator,
    now: Instant,
    unix_now: u64,
    ipv6_relay: bool,
    software: Option<&str>,
) -> FrontAction {
    if let Err(unknown) = known_attributes_ok(msg) {
        return FrontAction::Respond(
            MessageBuilder::new(method::ALLOCATE, Class::Error, msg.transaction_id())
                .error_code(420, "Unknown Attribute")
                .unknown_attributes(&unknown)
                .fingerprint()
                .build(),
        );
    }
    let who = match auth.check(msg, now, unix_now) {
        Ok(who) => who,
        Err(reject) => {
            return FrontAction::Respond(auth.reject_response(msg, reject, now, software));
        }
    };
    let key = who.key;
    let Some(transport) = msg.get(attr::REQUESTED_TRANSPORT) else {
        return FrontAction::Respond(error_response(
            msg,
            400,
            "Bad Request: REQUESTED-TRANSPORT missing",
            Some(&key),
            software,
        ));
    };
    if transport.len() != 4 {
        return FrontAction::Respond(error_response(
            msg,
            400,
            "Bad Request",
            Some(&key),
            software,
        ));
    }
    if transport[0] != UDP {
        return FrontAction::Respond(error_response(
            msg,
            442,
            "Unsupported Transport Protocol",
            Some(&key),
            software,
        ));
    }
    if let Some(family) = msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
        let v6 = family.first() == Some(&0x02);
        if family.len() != 4 || !(family[0] == 0x01 || v6) {
            return FrontAction::Respond(error_response(
                msg,
                400,
                "Bad Request",
                Some(&key),
                software,
            ));
        }
        if v6 && !ipv6_relay {
            return FrontAction::Respond(error_response(
                msg,
                440,
                "Address Family not Supported",
                Some(&key),
                software,
            ));
        }
    }
    let even_port = match msg.get(attr::EVEN_PORT) {
        None => None,
        Some([flags, ..]) => Some(flags & 0x80 != 0),
        Some([]) => {
            return FrontAction::Respond(error_response(
                msg,
                400,
                "Bad Request: EVEN-PORT",
                Some(&key),
                software,
            ));
        }
    };
    let reservation_token = match msg.get(attr::RESERVATION_TOKEN) {
        None => None,
        Some(v) => match <[u8; 8]>::try_from(v) {
            Ok(token) => Some(token),
            Err(_) => {
                return FrontAction::Respond(error_response(
                    msg,
                    400,
                    "Bad Request: RESERVATION-TOKEN",
                    Some(&key),
                    software,
                ));
            }
        },
    };
    if even_port.is_some() && reservation_token.is_some() {
        // RFC 8656 §7.2: the two are mutually exclusive.
        return FrontAction::Respond(error_response(
            msg,
            400,
            "Bad Request: EVEN-PORT with RESERVATION-TOKEN",
            Some(&key),
            software,
        ));
    }
    FrontAction::Allocate(AllocateRequest {
        auth: who,
        requested_lifetime: msg.u32_attr(attr::LIFETIME),
        transaction_id: msg.transaction_id(),
        even_port,
        reservation_token,
    })
}
