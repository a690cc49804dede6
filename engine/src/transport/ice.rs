//! ICE-lite (RFC 8445 §2.5) with consent freshness (RFC 7675), as the server side of a
//! browser's ICE agent.
//!
//! The server never sends a check: it only answers binding requests that carry our ufrag in
//! USERNAME and pass MESSAGE-INTEGRITY with our password (and FINGERPRINT when present). An
//! address that sent such a request is *validated*; only validated addresses may carry DTLS
//! and SRTP, and the server sends nothing to any other address. The controlling agent (the
//! browser) nominates with USE-CANDIDATE; the nominated address is where everything goes. A
//! check that nominates another address later moves the transport there (a client that
//! changed networks keeps its call). Consent: a peer that sent no valid check for
//! [`CONSENT_TIMEOUT`] is gone.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::stun::{Class, Message, MessageBuilder, attr, method};

/// RFC 7675: consent expires 30 s after the last valid check.
pub const CONSENT_TIMEOUT: Duration = Duration::from_secs(30);
/// A selected path with no valid check for this long yields to another path that checks in.
/// Browsers send consent checks on the selected pair every 5 s or so (RFC 7675: 4 to 6 s).
pub const STALE_PATH: Duration = Duration::from_secs(7);
/// Validated addresses kept at once (host, reflexive and relayed paths of one client).
pub const MAX_VALIDATED: usize = 8;

/// Why a STUN message was not answered (counted by the caller).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StunReject {
    /// Not a parseable STUN message.
    Malformed,
    /// Not a binding request (a response or indication: ICE-lite sends no requests).
    NotARequest,
    /// USERNAME missing, or not `<our ufrag>:<their ufrag>`.
    WrongUsername,
    /// MESSAGE-INTEGRITY missing or wrong, or FINGERPRINT wrong.
    BadIntegrity,
}

/// What a handled binding request changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StunOutcome {
    /// Answered; `nominated` when the check selected (or re-selected) its address.
    Answered {
        nominated_changed: bool,
    },
    Rejected(StunReject),
}

/// Counters of what ICE refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IceStats {
    pub checks_answered: u64,
    pub malformed: u64,
    pub not_a_request: u64,
    pub wrong_username: u64,
    pub bad_integrity: u64,
}

#[derive(Clone, Copy, Debug)]
struct Validated {
    addr: SocketAddr,
    last_check: Instant,
}

/// The ICE-lite agent of one participant.
#[derive(Debug)]
pub struct IceLite {
    local_ufrag: String,
    local_pwd: String,
    /// The remote ufrag from its SDP; until known, any remote part of USERNAME is accepted
    /// (a check can arrive before the offer/answer that carries it has been applied).
    remote_ufrag: Option<String>,
    validated: Vec<Validated>,
    selected: Option<SocketAddr>,
    /// The controlling agent nominated a path (USE-CANDIDATE): it now considers ICE done.
    nominated: bool,
    transmits: Vec<(SocketAddr, Vec<u8>)>,
    /// Paths dropped to make room, reported by the next `handle_timeout`/`poll_evicted`.
    evicted: Vec<SocketAddr>,
    stats: IceStats,
}

impl IceLite {
    pub fn new(local_ufrag: String, local_pwd: String) -> Self {
        Self {
            local_ufrag,
            local_pwd,
            remote_ufrag: None,
            validated: Vec::new(),
            selected: None,
            nominated: false,
            transmits: Vec::new(),
            evicted: Vec::new(),
            stats: IceStats::default(),
        }
    }

    /// The remote credentials from its SDP. A new ufrag is an ICE restart: checks must carry
    /// it from now on; validated paths stay until consent runs out.
    pub fn set_remote_ufrag(&mut self, ufrag: &str) {
        if self.remote_ufrag.as_deref() != Some(ufrag) {
            self.remote_ufrag = Some(ufrag.to_owned());
        }
    }

    /// An ICE restart (RFC 8445 §9): new local credentials and the remote's new ufrag.
    /// Validated paths stay (media keeps flowing) until their consent, now checked with
    /// the new credentials, runs out.
    pub fn restart(&mut self, local_ufrag: String, local_pwd: String, remote_ufrag: &str) {
        self.local_ufrag = local_ufrag;
        self.local_pwd = local_pwd;
        self.remote_ufrag = Some(remote_ufrag.to_owned());
    }

    /// The nominated address: where every datagram goes.
    pub fn selected(&self) -> Option<SocketAddr> {
        self.selected
    }

    /// True once the controlling agent nominated a path with USE-CANDIDATE.
    pub fn nominated(&self) -> bool {
        self.nominated
    }

    /// True when `from` passed a check and its consent has not expired. Hot path: a scan of
    /// at most [`MAX_VALIDATED`] entries, the selected one first.
    pub fn is_validated(&self, from: SocketAddr) -> bool {
        self.selected == Some(from) || self.validated.iter().any(|v| v.addr == from)
    }

    pub fn stats(&self) -> IceStats {
        self.stats
    }

    /// Handles one STUN datagram from `from`. Answers go to [`Self::poll_transmit`].
    pub fn handle_stun(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> StunOutcome {
        let outcome = self.check(now, from, data);
        match outcome {
            StunOutcome::Answered { .. } => self.stats.checks_answered += 1,
            StunOutcome::Rejected(StunReject::Malformed) => self.stats.malformed += 1,
            StunOutcome::Rejected(StunReject::NotARequest) => self.stats.not_a_request += 1,
            StunOutcome::Rejected(StunReject::WrongUsername) => self.stats.wrong_username += 1,
            StunOutcome::Rejected(StunReject::BadIntegrity) => self.stats.bad_integrity += 1,
        }
        outcome
    }

    fn check(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> StunOutcome {
        let Ok(msg) = Message::parse(data) else {
            return StunOutcome::Rejected(StunReject::Malformed);
        };
        if msg.method() != method::BINDING || msg.class() != Class::Request {
            return StunOutcome::Rejected(StunReject::NotARequest);
        }
        let Some(username) = msg.text(attr::USERNAME) else {
            return StunOutcome::Rejected(StunReject::WrongUsername);
        };
        let Some((ours, theirs)) = username.split_once(':') else {
            return StunOutcome::Rejected(StunReject::WrongUsername);
        };
        if ours != self.local_ufrag
            || theirs.is_empty()
            || self.remote_ufrag.as_deref().is_some_and(|r| r != theirs)
        {
            return StunOutcome::Rejected(StunReject::WrongUsername);
        }
        if !msg.check_integrity(self.local_pwd.as_bytes()) || msg.check_fingerprint() == Some(false)
        {
            return StunOutcome::Rejected(StunReject::BadIntegrity);
        }
        let response = MessageBuilder::new(method::BINDING, Class::Success, msg.transaction_id())
            .xor_address(attr::XOR_MAPPED_ADDRESS, from)
            .integrity(self.local_pwd.as_bytes())
            .fingerprint()
            .build();
        self.transmits.push((from, response));
        self.validate(now, from);
        let use_candidate = msg.get(attr::USE_CANDIDATE).is_some();
        // The selected path went quiet while this one checks in: the client moved (a NAT
        // rebinding or a network change without a new nomination). Follow it rather than
        // waiting out the 30 s of consent.
        let selected_stale = self.selected.is_some_and(|sel| {
            sel != from
                && self
                    .validated
                    .iter()
                    .find(|v| v.addr == sel)
                    .is_none_or(|v| now.saturating_duration_since(v.last_check) >= STALE_PATH)
        });
        let nominate = use_candidate || self.selected.is_none() || selected_stale;
        let changed = nominate && self.selected != Some(from);
        if nominate {
            self.selected = Some(from);
        }
        if use_candidate {
            self.nominated = true;
        }
        StunOutcome::Answered {
            nominated_changed: changed,
        }
    }

    fn validate(&mut self, now: Instant, from: SocketAddr) {
        if let Some(v) = self.validated.iter_mut().find(|v| v.addr == from) {
            v.last_check = now;
            return;
        }
        if self.validated.len() >= MAX_VALIDATED {
            // Forget the stalest path that is not the selected one.
            let stalest = self
                .validated
                .iter()
                .enumerate()
                .filter(|(_, v)| Some(v.addr) != self.selected)
                .min_by_key(|(_, v)| v.last_check)
                .map(|(i, _)| i);
            if let Some(i) = stalest {
                let evicted = self.validated.swap_remove(i);
                self.evicted.push(evicted.addr);
            } else {
                return;
            }
        }
        self.validated.push(Validated {
            addr: from,
            last_check: now,
        });
    }

    /// A path forgotten to make room for a newer one (the caller stops routing it).
    pub fn poll_evicted(&mut self) -> Option<SocketAddr> {
        self.evicted.pop()
    }

    /// A binding response to send: (destination, bytes).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        if self.transmits.is_empty() {
            None
        } else {
            Some(self.transmits.remove(0))
        }
    }

    /// Expires paths whose consent ran out. Returns the addresses forgotten (the caller
    /// stops routing them). When the selected path expires, the freshest other one takes
    /// its place; with none left, [`Self::selected`] becomes `None` and the peer is gone.
    pub fn handle_timeout(&mut self, now: Instant, forgotten: &mut Vec<SocketAddr>) {
        self.validated.retain(|v| {
            let alive = now.saturating_duration_since(v.last_check) < CONSENT_TIMEOUT;
            if !alive {
                forgotten.push(v.addr);
            }
            alive
        });
        if let Some(sel) = self.selected
            && !self.validated.iter().any(|v| v.addr == sel)
        {
            self.selected = self
                .validated
                .iter()
                .max_by_key(|v| v.last_check)
                .map(|v| v.addr);
        }
    }

    /// When the next path's consent runs out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.validated
            .iter()
            .map(|v| v.last_check + CONSENT_TIMEOUT)
            .min()
    }

    /// True once a path was selected and then every path's consent ran out.
    pub fn consent_lost(&self) -> bool {
        self.selected.is_none() && self.stats.checks_answered > 0
    }
}

/// Builds a binding request as a browser would (tests and the in-memory client).
pub fn binding_request(
    tid: [u8; 12],
    server_ufrag: &str,
    client_ufrag: &str,
    server_pwd: &str,
    use_candidate: bool,
) -> Vec<u8> {
    let username = format!("{server_ufrag}:{client_ufrag}");
    let mut b = MessageBuilder::new(method::BINDING, Class::Request, tid)
        .attr(attr::USERNAME, username.as_bytes())
        .u32_attr(attr::PRIORITY, 0x6e00_1eff)
        .attr(attr::ICE_CONTROLLING, &[1, 2, 3, 4, 5, 6, 7, 8]);
    if use_candidate {
        b = b.attr(attr::USE_CANDIDATE, &[]);
    }
    b.integrity(server_pwd.as_bytes()).fingerprint().build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> IceLite {
        IceLite::new("srv".into(), "serverpassword0123456789".into())
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn answers_a_valid_check_and_nominates() {
        let now = Instant::now();
        let mut ice = agent();
        let req = binding_request([1; 12], "srv", "cli", "serverpassword0123456789", true);
        let out = ice.handle_stun(now, addr(5000), &req);
        assert_eq!(
            out,
            StunOutcome::Answered {
                nominated_changed: true
            }
        );
        assert_eq!(ice.selected(), Some(addr(5000)));
        assert!(ice.is_validated(addr(5000)));
        let (to, resp) = ice.poll_transmit().unwrap();
        assert_eq!(to, addr(5000));
        let msg = Message::parse(&resp).unwrap();
        assert_eq!(msg.class(), Class::Success);
        assert!(msg.check_integrity(b"serverpassword0123456789"));
        assert_eq!(msg.check_fingerprint(), Some(true));
        assert_eq!(msg.xor_address(attr::XOR_MAPPED_ADDRESS), Some(addr(5000)));
    }

    #[test]
    fn refuses_wrong_password_ufrag_and_strangers() {
        let now = Instant::now();
        let mut ice = agent();
        ice.set_remote_ufrag("cli");
        let bad_pwd = binding_request([1; 12], "srv", "cli", "wrong", true);
        assert_eq!(
            ice.handle_stun(now, addr(1), &bad_pwd),
            StunOutcome::Rejected(StunReject::BadIntegrity)
        );
        let stranger = binding_request([1; 12], "srv", "other", "serverpassword0123456789", true);
        assert_eq!(
            ice.handle_stun(now, addr(1), &stranger),
            StunOutcome::Rejected(StunReject::WrongUsername)
        );
        let not_ours = binding_request([1; 12], "xyz", "cli", "serverpassword0123456789", true);
        assert_eq!(
            ice.handle_stun(now, addr(1), &not_ours),
            StunOutcome::Rejected(StunReject::WrongUsername)
        );
        assert!(ice.poll_transmit().is_none());
        assert!(!ice.is_validated(addr(1)));
        assert_eq!(ice.selected(), None);
        // A corrupted fingerprint is refused too.
        let mut bad_fp = binding_request([1; 12], "srv", "cli", "serverpassword0123456789", true);
        let n = bad_fp.len();
        bad_fp[n - 1] ^= 1;
        assert_eq!(
            ice.handle_stun(now, addr(1), &bad_fp),
            StunOutcome::Rejected(StunReject::BadIntegrity)
        );
    }

    #[test]
    fn a_new_nomination_moves_the_path_and_consent_expires() {
        let t0 = Instant::now();
        let mut ice = agent();
        let pwd = "serverpassword0123456789";
        ice.handle_stun(
            t0,
            addr(1),
            &binding_request([1; 12], "srv", "c", pwd, true),
        );
        // A check without USE-CANDIDATE validates but does not move the path.
        ice.handle_stun(
            t0,
            addr(2),
            &binding_request([2; 12], "srv", "c", pwd, false),
        );
        assert_eq!(ice.selected(), Some(addr(1)));
        assert!(ice.is_validated(addr(2)));
        let t1 = t0 + Duration::from_secs(10);
        ice.handle_stun(
            t1,
            addr(2),
            &binding_request([3; 12], "srv", "c", pwd, true),
        );
        assert_eq!(ice.selected(), Some(addr(2)));
        let mut gone = Vec::new();
        ice.handle_timeout(t0 + CONSENT_TIMEOUT, &mut gone);
        assert_eq!(gone, vec![addr(1)]);
        assert_eq!(ice.selected(), Some(addr(2)));
        assert_eq!(ice.poll_timeout(), Some(t1 + CONSENT_TIMEOUT));
        gone.clear();
        ice.handle_timeout(t1 + CONSENT_TIMEOUT, &mut gone);
        assert_eq!(gone, vec![addr(2)]);
        assert!(ice.consent_lost());
    }

    #[test]
    fn a_quiet_selected_path_yields_to_one_that_checks_in() {
        let t0 = Instant::now();
        let mut ice = agent();
        let pwd = "serverpassword0123456789";
        ice.handle_stun(
            t0,
            addr(1),
            &binding_request([1; 12], "srv", "c", pwd, true),
        );
        // Another path checking in while the selected one is fresh changes nothing...
        ice.handle_stun(
            t0 + Duration::from_secs(2),
            addr(2),
            &binding_request([2; 12], "srv", "c", pwd, false),
        );
        assert_eq!(ice.selected(), Some(addr(1)));
        // ...but once the selected path has been quiet for STALE_PATH, it follows.
        let out = ice.handle_stun(
            t0 + STALE_PATH,
            addr(2),
            &binding_request([3; 12], "srv", "c", pwd, false),
        );
        assert_eq!(
            out,
            StunOutcome::Answered {
                nominated_changed: true
            }
        );
        assert_eq!(ice.selected(), Some(addr(2)));
    }

    #[test]
    fn validated_paths_are_bounded() {
        let now = Instant::now();
        let mut ice = agent();
        let pwd = "serverpassword0123456789";
        for port in 1..100 {
            ice.handle_stun(
                now + Duration::from_millis(u64::from(port)),
                addr(port),
                &binding_request([port as u8; 12], "srv", "c", pwd, false),
            );
        }
        assert!(ice.validated.len() <= MAX_VALIDATED);
        assert_eq!(ice.selected(), Some(addr(1)), "the first check selects");
        assert!(
            ice.is_validated(addr(1)),
            "the selected path is never evicted"
        );
        assert!(ice.is_validated(addr(99)));
    }
}
