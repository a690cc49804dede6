//! One TURN allocation (RFC 8656): lifetime, permissions, channel bindings, and the
//! requests that change them (Refresh, CreatePermission, ChannelBind, a repeated Allocate),
//! plus Send indications.
//!
//! The owner (an allocation actor) feeds messages from its client with
//! [`Allocation::handle`] and publishes [`Allocation::view`] to the data paths, which relay
//! ChannelData and peer datagrams with [`RelayView`] without a round trip through the owner.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::auth::{Authenticated, Authenticator};
use super::policy::PeerPolicy;
use super::{Lifetimes, error_response, known_attributes_ok, success};
use crate::stun::{ChannelData, Class, Message, MessageBuilder, attr, method};

/// Channel numbers clients may bind. RFC 8656 §12 narrowed the range to 0x4000-0x4FFF,
/// but RFC 5766 allowed up to 0x7FFF and deployed clients (coturn's among them) still use
/// it; every number in 0x4000-0x7FFF is unambiguous on the wire (first bits 01), so all
/// are accepted.
pub const CHANNEL_MIN: u16 = 0x4000;
pub const CHANNEL_MAX: u16 = 0x7FFF;

/// Limits per allocation.
#[derive(Clone, Copy, Debug)]
pub struct AllocationLimits {
    pub max_permissions: usize,
    pub max_channels: usize,
}

impl Default for AllocationLimits {
    fn default() -> Self {
        Self {
            max_permissions: 64,
            max_channels: 64,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Channel {
    number: u16,
    peer: SocketAddr,
    expires: Instant,
}

/// What the owner does after [`Allocation::handle`].
#[derive(Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// Send this response to the client.
    Respond(Vec<u8>),
    /// Send this response, then delete the allocation (Refresh with lifetime 0).
    Delete(Vec<u8>),
    /// Relay `data` to `peer` from the relayed address (a Send indication).
    Relay { peer: SocketAddr, data: &'a [u8] },
    /// Nothing to do (an indication that is not allowed, a response from the client).
    Ignore(&'static str),
}

/// The state of one allocation.
#[derive(Clone, Debug)]
pub struct Allocation {
    relay: SocketAddr,
    client: SocketAddr,
    auth: Authenticated,
    lifetimes: Lifetimes,
    limits: AllocationLimits,
    expires: Instant,
    permissions: Vec<(IpAddr, Instant)>,
    channels: Vec<Channel>,
    allocate_tid: [u8; 12],
    allocate_response: Vec<u8>,
    software: Option<String>,
    version: u64,
    /// For an SFU credential: the only peers it may relay to.
    only: Option<Vec<SocketAddr>>,
}

/// Everything needed to create an allocation after the front door accepted an Allocate.
#[derive(Clone, Debug)]
pub struct AllocateParams {
    /// The relayed transport address (public IP + relay port).
    pub relay: SocketAddr,
    /// The client's address as the server sees it (XOR-MAPPED-ADDRESS).
    pub client: SocketAddr,
    pub auth: Authenticated,
    /// LIFETIME from the request, if any.
    pub requested_lifetime: Option<u32>,
    pub transaction_id: [u8; 12],
    pub lifetimes: Lifetimes,
    pub limits: AllocationLimits,
    pub software: Option<String>,
    /// The token of the port reserved for a later allocation (EVEN-PORT with R set).
    pub reservation_token: Option<[u8; 8]>,
}

impl Allocation {
    /// Creates the allocation and its Allocate success response.
    pub fn new(now: Instant, p: AllocateParams) -> (Allocation, Vec<u8>) {
        let mut lifetime = p.lifetimes.allocate(p.requested_lifetime);
        if let Some(grant) = &p.auth.sfu {
            // An SFU credential's allocation ends when the credential does.
            lifetime = lifetime.min(grant.valid_for);
        }
        let response = success(
            method::ALLOCATE,
            p.transaction_id,
            &p.auth.key,
            p.software.as_deref(),
            |b| {
                let b = b
                    .xor_address(attr::XOR_RELAYED_ADDRESS, p.relay)
                    .xor_address(attr::XOR_MAPPED_ADDRESS, p.client)
                    .u32_attr(attr::LIFETIME, lifetime.as_secs() as u32);
                match p.reservation_token {
                    Some(token) => b.attr(attr::RESERVATION_TOKEN, &token),
                    None => b,
                }
            },
        );
        let only = p.auth.sfu.as_ref().map(|g| g.peers.clone());
        let allocation = Allocation {
            only,
            relay: p.relay,
            client: p.client,
            auth: p.auth,
            lifetimes: p.lifetimes,
            limits: p.limits,
            expires: now + lifetime,
            permissions: Vec::new(),
            channels: Vec::new(),
            allocate_tid: p.transaction_id,
            allocate_response: response.clone(),
            software: p.software,
            version: 0,
        };
        (allocation, response)
    }

    pub fn relay(&self) -> SocketAddr {
        self.relay
    }

    pub fn client(&self) -> SocketAddr {
        self.client
    }

    pub fn user(&self) -> &str {
        &self.auth.user
    }

    pub fn expires(&self) -> Instant {
        self.expires
    }

    /// Bumped whenever what [`Allocation::view`] returns changes.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Handles one STUN message from the allocation's client.
    pub fn handle<'a>(
        &mut self,
        now: Instant,
        msg: &Message<'a>,
        auth: &Authenticator,
        policy: &PeerPolicy,
        unix_now: u64,
    ) -> Reply<'a> {
        match msg.class() {
            Class::Request => self.request(now, msg, auth, policy, unix_now),
            Class::Indication if msg.method() == method::SEND => {
                self.send_indication(now, msg, policy)
            }
            Class::Indication => Reply::Ignore("indication other than Send"),
            Class::Success | Class::Error => Reply::Ignore("response from a client"),
        }
    }

    fn request<'a>(
        &mut self,
        now: Instant,
        msg: &Message<'a>,
        auth: &Authenticator,
        policy: &PeerPolicy,
        unix_now: u64,
    ) -> Reply<'a> {
        let software = self.software.clone();
        let software = software.as_deref();
        if let Err(unknown) = known_attributes_ok(msg) {
            return Reply::Respond(
                MessageBuilder::new(msg.method(), Class::Error, msg.transaction_id())
                    .error_code(420, "Unknown Attribute")
                    .unknown_attributes(&unknown)
                    .fingerprint()
                    .build(),
            );
        }
        let who = match auth.check(msg, now, unix_now) {
            Ok(who) => who,
            Err(reject) => return Reply::Respond(auth.reject_response(msg, reject, now, software)),
        };
        if who.username != self.auth.username {
            // RFC 8656 §7: requests on an allocation must use its credentials.
            return Reply::Respond(error_response(
                msg,
                441,
                "Wrong Credentials",
                None,
                software,
            ));
        }
        let key = self.auth.key;
        match msg.method() {
            method::ALLOCATE => {
                if msg.transaction_id() == self.allocate_tid {
                    Reply::Respond(self.allocate_response.clone())
                } else {
                    Reply::Respond(error_response(
                        msg,
                        437,
                        "Allocation Mismatch",
                        Some(&key),
                        software,
                    ))
                }
            }
            method::REFRESH => {
                let requested = msg.u32_attr(attr::LIFETIME);
                if requested == Some(0) {
                    self.expires = now;
                    self.version += 1;
                    return Reply::Delete(success(
                        method::REFRESH,
                        msg.transaction_id(),
                        &key,
                        software,
                        |b| b.u32_attr(attr::LIFETIME, 0),
                    ));
                }
                let mut lifetime = self.lifetimes.refresh(requested);
                if let Some(grant) = &who.sfu {
                    lifetime = lifetime.min(grant.valid_for);
                }
                self.expires = now + lifetime;
                self.version += 1;
                Reply::Respond(success(
                    method::REFRESH,
                    msg.transaction_id(),
                    &key,
                    software,
                    |b| b.u32_attr(attr::LIFETIME, lifetime.as_secs() as u32),
                ))
            }
            method::CREATE_PERMISSION => self.create_permission(now, msg, policy),
            method::CHANNEL_BIND => self.channel_bind(now, msg, policy),
            _ => Reply::Respond(error_response(
                msg,
                400,
                "Bad Request: unsupported method",
                Some(&key),
                software,
            )),
        }
    }

    fn create_permission<'a>(
        &mut self,
        now: Instant,
        msg: &Message<'a>,
        policy: &PeerPolicy,
    ) -> Reply<'a> {
        let key = self.auth.key;
        let software = self.software.clone();
        let software = software.as_deref();
        let tid = msg.transaction_id();
        let mut peers: Vec<IpAddr> = Vec::new();
        for a in msg.attributes() {
            if a.typ == attr::MESSAGE_INTEGRITY {
                break;
            }
            if a.typ == attr::XOR_PEER_ADDRESS {
                match crate::stun::decode_xor_address(a.value, &tid) {
                    Some(peer) => peers.push(peer.ip()),
                    None => {
                        return Reply::Respond(error_response(
                            msg,
                            400,
                            "Bad Request: XOR-PEER-ADDRESS",
                            Some(&key),
                            software,
                        ));
                    }
                }
            }
        }
        if peers.is_empty() {
            return Reply::Respond(error_response(
                msg,
                400,
                "Bad Request: no XOR-PEER-ADDRESS",
                Some(&key),
                software,
            ));
        }
        if peers
            .iter()
            .any(|ip| !policy.permits_ip(*ip) || !self.allows_ip(*ip))
        {
            // RFC 8656 §9.2: all or none.
            return Reply::Respond(error_response(msg, 403, "Forbidden", Some(&key), software));
        }
        let mut new: Vec<IpAddr> = peers
            .iter()
            .copied()
            .filter(|ip| !self.permits(now, *ip))
            .collect();
        new.sort_unstable();
        new.dedup();
        let new = new.len();
        if self.live_permissions(now) + new > self.limits.max_permissions {
            return Reply::Respond(error_response(
                msg,
                508,
                "Insufficient Capacity",
                Some(&key),
                software,
            ));
        }
        for ip in peers {
            self.install_permission(now, ip);
        }
        self.version += 1;
        Reply::Respond(success(
            method::CREATE_PERMISSION,
            tid,
            &key,
            software,
            |b| b,
        ))
    }

    fn channel_bind<'a>(
        &mut self,
        now: Instant,
        msg: &Message<'a>,
        policy: &PeerPolicy,
    ) -> Reply<'a> {
        let key = self.auth.key;
        let software = self.software.clone();
        let software = software.as_deref();
        let number = match msg.get(attr::CHANNEL_NUMBER) {
            Some(v) if v.len() == 4 => u16::from_be_bytes([v[0], v[1]]),
            _ => {
                return Reply::Respond(error_response(
                    msg,
                    400,
                    "Bad Request: CHANNEL-NUMBER",
                    Some(&key),
                    software,
                ));
            }
        };
        if !(CHANNEL_MIN..=CHANNEL_MAX).contains(&number) {
            return Reply::Respond(error_response(
                msg,
                400,
                "Bad Request: channel number out of range",
                Some(&key),
                software,
            ));
        }
        let Some(peer) = msg.xor_address(attr::XOR_PEER_ADDRESS) else {
            return Reply::Respond(error_response(
                msg,
                400,
                "Bad Request: XOR-PEER-ADDRESS",
                Some(&key),
                software,
            ));
        };
        if !policy.permits(peer) || !self.allows(peer) {
            return Reply::Respond(error_response(msg, 403, "Forbidden", Some(&key), software));
        }
        // Bindings whose hold ended are gone; the others (live, or expired and held) keep
        // their number and peer to themselves (RFC 8656 §12).
        let hold = self.lifetimes.channel_hold;
        let before = self.channels.len();
        self.channels.retain(|c| c.expires + hold > now);
        if self.channels.len() != before {
            self.version += 1;
        }
        let same_number = self.channels.iter().position(|c| c.number == number);
        let same_peer = self.channels.iter().position(|c| c.peer == peer);
        match (same_number, same_peer) {
            (Some(i), Some(j)) if i == j => {}
            (None, None) => {
                // Held bindings count: they occupy the table until their hold ends.
                if self.channels.len() >= self.limits.max_channels {
                    return Reply::Respond(error_response(
                        msg,
                        508,
                        "Insufficient Capacity",
                        Some(&key),
                        software,
                    ));
                }
            }
            _ => {
                return Reply::Respond(error_response(
                    msg,
                    400,
                    "Bad Request: channel or peer already bound otherwise",
                    Some(&key),
                    software,
                ));
            }
        }
        // A binding installs or refreshes the permission of the peer's address, within the
        // same cap as CreatePermission.
        if !self.permits(now, peer.ip())
            && self.live_permissions(now) >= self.limits.max_permissions
        {
            return Reply::Respond(error_response(
                msg,
                508,
                "Insufficient Capacity",
                Some(&key),
                software,
            ));
        }
        let expires = now + self.lifetimes.channel;
        match same_number {
            Some(i) => self.channels[i].expires = expires,
            None => self.channels.push(Channel {
                number,
                peer,
                expires,
            }),
        }
        self.install_permission(now, peer.ip());
        self.version += 1;
        Reply::Respond(success(
            method::CHANNEL_BIND,
            msg.transaction_id(),
            &key,
            software,
            |b| b,
        ))
    }

    fn send_indication<'a>(
        &self,
        now: Instant,
        msg: &Message<'a>,
        policy: &PeerPolicy,
    ) -> Reply<'a> {
        let (Some(peer), Some(data)) =
            (msg.xor_address(attr::XOR_PEER_ADDRESS), msg.get(attr::DATA))
        else {
            return Reply::Ignore("Send indication without XOR-PEER-ADDRESS or DATA");
        };
        if !self.permits(now, peer.ip()) || !policy.permits(peer) || !self.allows(peer) {
            return Reply::Ignore("no permission for the peer");
        }
        Reply::Relay { peer, data }
    }

    fn install_permission(&mut self, now: Instant, ip: IpAddr) {
        let expires = now + self.lifetimes.permission;
        match self.permissions.iter_mut().find(|(p, _)| *p == ip) {
            Some(entry) => entry.1 = expires,
            None => self.permissions.push((ip, expires)),
        }
    }

    fn live_permissions(&self, now: Instant) -> usize {
        self.permissions.iter().filter(|(_, e)| *e > now).count()
    }

    fn prune(&mut self, now: Instant) {
        let before = (self.permissions.len(), self.channels.len());
        let hold = self.lifetimes.channel_hold;
        self.permissions.retain(|(_, e)| *e > now);
        self.channels.retain(|c| c.expires + hold > now);
        if before != (self.permissions.len(), self.channels.len()) {
            self.version += 1;
        }
    }

    /// False for a peer outside an SFU credential's restriction.
    fn allows(&self, peer: SocketAddr) -> bool {
        only_allows(&self.only, peer)
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        self.only.as_ref().is_none_or(|only| {
            only.iter()
                .any(|a| a.ip().to_canonical() == ip.to_canonical())
        })
    }

    /// True if a permission for `ip` is installed now.
    pub fn permits(&self, now: Instant, ip: IpAddr) -> bool {
        self.permissions.iter().any(|(p, e)| *p == ip && *e > now)
    }

    /// Removes expired permissions and channels; false once the allocation itself expired.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        self.prune(now);
        now < self.expires
    }

    /// The next instant something expires (a channel binding leaves the table when its
    /// hold ends; the data paths stop using it at its expiry by themselves).
    pub fn poll_timeout(&self) -> Instant {
        let hold = self.lifetimes.channel_hold;
        self.permissions
            .iter()
            .map(|(_, e)| *e)
            .chain(self.channels.iter().map(|c| c.expires + hold))
            .fold(self.expires, Instant::min)
    }

    /// A snapshot for the data paths.
    pub fn view(&self) -> RelayView {
        RelayView {
            permissions: self.permissions.clone(),
            channels: self
                .channels
                .iter()
                .map(|c| (c.number, c.peer, c.expires))
                .collect(),
            expires: self.expires,
            only: self.only.clone(),
        }
    }
}

fn only_allows(only: &Option<Vec<SocketAddr>>, peer: SocketAddr) -> bool {
    only.as_ref().is_none_or(|only| {
        only.iter()
            .any(|a| a.port() == peer.port() && a.ip().to_canonical() == peer.ip().to_canonical())
    })
}

/// What the data paths need to relay without asking the allocation's owner: a copy of the
/// permissions and channels with their expiry times.
#[derive(Clone, Debug)]
pub struct RelayView {
    permissions: Vec<(IpAddr, Instant)>,
    channels: Vec<(u16, SocketAddr, Instant)>,
    expires: Instant,
    only: Option<Vec<SocketAddr>>,
}

impl RelayView {
    /// An empty view that relays nothing.
    pub fn closed(now: Instant) -> Self {
        Self {
            permissions: Vec::new(),
            channels: Vec::new(),
            expires: now,
            only: None,
        }
    }

    pub fn permits(&self, now: Instant, ip: IpAddr) -> bool {
        now < self.expires && self.permissions.iter().any(|(p, e)| *p == ip && *e > now)
    }

    /// True if datagrams may pass between the client and `peer` now: a permission for its
    /// address, and (for an SFU credential) the peer is the SFU.
    pub fn permits_peer(&self, now: Instant, peer: SocketAddr) -> bool {
        self.permits(now, peer.ip()) && only_allows(&self.only, peer)
    }

    /// The peer of a bound, unexpired channel whose peer still has a permission.
    pub fn channel_peer(&self, now: Instant, channel: u16) -> Option<SocketAddr> {
        let (_, peer, expires) = self.channels.iter().find(|(n, _, _)| *n == channel)?;
        (*expires > now && self.permits(now, peer.ip())).then_some(*peer)
    }

    /// Where ChannelData from the client goes: `Some((peer, data))` if it may be relayed.
    pub fn route_channel_data<'a>(
        &self,
        now: Instant,
        packet: &'a [u8],
    ) -> Option<(SocketAddr, &'a [u8])> {
        let cd = ChannelData::parse(packet)?;
        Some((self.channel_peer(now, cd.channel)?, cd.data))
    }

    /// Frames a datagram from `peer` for the client into `out` (cleared first): ChannelData
    /// when a channel is bound to the peer, else a Data indication with `tid`. Over a
    /// stream (`stream`), ChannelData is padded to 4 bytes. False if the peer has no
    /// permission: the datagram must be dropped.
    pub fn frame_peer_data(
        &self,
        now: Instant,
        peer: SocketAddr,
        data: &[u8],
        stream: bool,
        tid: [u8; 12],
        out: &mut Vec<u8>,
    ) -> bool {
        out.clear();
        if !self.permits_peer(now, peer) || data.len() > usize::from(u16::MAX) - 64 {
            return false;
        }
        if let Some((number, _, _)) = self
            .channels
            .iter()
            .find(|(_, p, e)| *p == peer && *e > now)
        {
            out.extend_from_slice(&ChannelData::header(*number, data.len()));
            out.extend_from_slice(data);
            if stream {
                while !out.len().is_multiple_of(4) {
                    out.push(0);
                }
            }
        } else {
            let indication = MessageBuilder::new(method::DATA, Class::Indication, tid)
                .xor_address(attr::XOR_PEER_ADDRESS, peer)
                .attr(attr::DATA, data)
                .build();
            out.extend_from_slice(&indication);
        }
        true
    }
}

impl Lifetimes {
    /// Lifetime of a new allocation: the requested one within [default, max].
    pub fn allocate(&self, requested: Option<u32>) -> Duration {
        let requested = requested.map(|s| Duration::from_secs(u64::from(s)));
        requested
            .unwrap_or(self.default)
            .max(self.default)
            .min(self.max)
    }

    /// Lifetime after a Refresh: the requested one (default if absent), at most max.
    pub fn refresh(&self, requested: Option<u32>) -> Duration {
        requested
            .map(|s| Duration::from_secs(u64::from(s)))
            .unwrap_or(self.default)
            .min(self.max)
    }
}
