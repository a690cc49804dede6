//! Whole request flows through the front door and an allocation, in virtual time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::Lifetimes;
use super::allocation::{AllocateParams, Allocation, AllocationLimits, Reply};
use super::auth::Authenticator;
use super::front::{self, FrontAction};
use super::policy::{Cidr, PeerPolicy};
use crate::stun::{Class, Message, MessageBuilder, attr, long_term_key, method};

const REALM: &str = "hearth";
const CLIENT: &str = "198.51.100.7:50000";
const RELAY: &str = "203.0.113.1:49200";
const PEER: &str = "192.0.2.99:6000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Fixture {
    t0: Instant,
    auth: Authenticator,
    policy: PeerPolicy,
    key: [u8; 16],
}

fn fixture() -> Fixture {
    let t0 = Instant::now();
    let mut auth = Authenticator::new(REALM, [5; 32], Duration::from_secs(600), t0);
    auth.add_user("alice", "wonderland");
    // Test peers live in the documentation range, which the default policy denies.
    let policy = PeerPolicy::new().allow(Cidr::parse("192.0.2.0/24").unwrap());
    Fixture {
        t0,
        key: long_term_key("alice", REALM, "wonderland"),
        auth,
        policy,
    }
}

impl Fixture {
    fn signed(
        &self,
        m: u16,
        tid: u8,
        fill: impl FnOnce(MessageBuilder) -> MessageBuilder,
    ) -> Vec<u8> {
        self.signed_at(self.t0, m, tid, fill)
    }

    /// Signed with a nonce fresh at `at`.
    fn signed_at(
        &self,
        at: Instant,
        m: u16,
        tid: u8,
        fill: impl FnOnce(MessageBuilder) -> MessageBuilder,
    ) -> Vec<u8> {
        fill(MessageBuilder::new(m, Class::Request, [tid; 12]))
            .attr(attr::USERNAME, b"alice")
            .attr(attr::REALM, REALM.as_bytes())
            .attr(attr::NONCE, self.auth.nonce(at).as_bytes())
            .integrity(&self.key)
            .fingerprint()
            .build()
    }

    fn allocate(&self) -> (Allocation, Vec<u8>) {
        let bytes = self.signed(method::ALLOCATE, 1, |b| {
            b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24)
        });
        let msg = Message::parse(&bytes).unwrap();
        let FrontAction::Allocate(req) =
            front::handle(&msg, addr(CLIENT), &self.auth, self.t0, 0, false, None)
        else {
            panic!("allocate refused");
        };
        Allocation::new(
            self.t0,
            AllocateParams {
                relay: addr(RELAY),
                client: addr(CLIENT),
                auth: req.auth,
                requested_lifetime: req.requested_lifetime,
                transaction_id: req.transaction_id,
                lifetimes: Lifetimes::default(),
                limits: AllocationLimits::default(),
                software: None,
                reservation_token: None,
            },
        )
    }

    fn send(&self, a: &mut Allocation, at: Instant, bytes: &[u8]) -> Vec<u8> {
        let msg = Message::parse(bytes).unwrap();
        match a.handle(at, &msg, &self.auth, &self.policy, 0) {
            Reply::Respond(r) | Reply::Delete(r) => r,
            other => panic!("expected a response, got {other:?}"),
        }
    }
}

fn code_of(response: &[u8]) -> Option<u16> {
    Message::parse(response)
        .unwrap()
        .error_code()
        .map(|(c, _)| c)
}

#[test]
fn binding_answers_with_the_reflexive_address() {
    let f = fixture();
    let req = MessageBuilder::new(method::BINDING, Class::Request, [4; 12]).build();
    let FrontAction::Respond(r) = front::handle(
        &Message::parse(&req).unwrap(),
        addr(CLIENT),
        &f.auth,
        f.t0,
        0,
        false,
        Some("hearth"),
    ) else {
        panic!()
    };
    let m = Message::parse(&r).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS), Some(addr(CLIENT)));
    assert_eq!(m.check_fingerprint(), Some(true));
}

#[test]
fn allocate_challenge_then_success() {
    let f = fixture();
    let first = MessageBuilder::new(method::ALLOCATE, Class::Request, [1; 12])
        .u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24)
        .build();
    let FrontAction::Respond(r) = front::handle(
        &Message::parse(&first).unwrap(),
        addr(CLIENT),
        &f.auth,
        f.t0,
        0,
        false,
        None,
    ) else {
        panic!()
    };
    assert_eq!(code_of(&r), Some(401));
    let (a, response) = f.allocate();
    let m = Message::parse(&response).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.xor_address(attr::XOR_RELAYED_ADDRESS), Some(addr(RELAY)));
    assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS), Some(addr(CLIENT)));
    assert_eq!(m.u32_attr(attr::LIFETIME), Some(600));
    assert!(m.check_integrity(&f.key));
    assert_eq!(a.expires(), f.t0 + Duration::from_secs(600));
}

#[test]
fn allocate_errors() {
    let f = fixture();
    let check = |fill: &dyn Fn(MessageBuilder) -> MessageBuilder, code: u16| {
        let bytes = f.signed(method::ALLOCATE, 1, fill);
        let FrontAction::Respond(r) = front::handle(
            &Message::parse(&bytes).unwrap(),
            addr(CLIENT),
            &f.auth,
            f.t0,
            0,
            false,
            None,
        ) else {
            panic!("expected {code}")
        };
        assert_eq!(code_of(&r), Some(code));
    };
    check(&|b| b, 400);
    check(&|b| b.u32_attr(attr::REQUESTED_TRANSPORT, 6 << 24), 442);
    check(
        &|b| {
            b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24)
                .attr(attr::DONT_FRAGMENT, &[])
        },
        420,
    );
    check(
        &|b| {
            b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24)
                .attr(attr::EVEN_PORT, &[0x80])
                .attr(attr::RESERVATION_TOKEN, &[0; 8])
        },
        400,
    );
    check(
        &|b| {
            b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24)
                .attr(attr::RESERVATION_TOKEN, &[0; 4])
        },
        400,
    );
    check(
        &|b| {
            b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24)
                .u32_attr(attr::REQUESTED_ADDRESS_FAMILY, 0x02 << 24)
        },
        440,
    );
    // Requests other than Allocate without an allocation: 437 after authentication.
    let refresh = f.signed(method::REFRESH, 2, |b| b);
    let FrontAction::Respond(r) = front::handle(
        &Message::parse(&refresh).unwrap(),
        addr(CLIENT),
        &f.auth,
        f.t0,
        0,
        false,
        None,
    ) else {
        panic!()
    };
    assert_eq!(code_of(&r), Some(437));
    assert!(Message::parse(&r).unwrap().check_integrity(&f.key));
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_nonce() {
    let f = fixture();
    let bytes = f.signed(method::ALLOCATE, 1, |b| {
        b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24)
    });
    let later = f.t0 + Duration::from_secs(601);
    let FrontAction::Respond(r) = front::handle(
        &Message::parse(&bytes).unwrap(),
        addr(CLIENT),
        &f.auth,
        later,
        0,
        false,
        None,
    ) else {
        panic!()
    };
    let m = Message::parse(&r).unwrap();
    assert_eq!(m.error_code().map(|e| e.0), Some(438));
    assert_ne!(m.text(attr::NONCE), Some(f.auth.nonce(f.t0).as_str()));
    assert_eq!(m.text(attr::REALM), Some(REALM));
}

#[test]
fn permissions_channels_and_data_paths() {
    let f = fixture();
    let (mut a, _) = f.allocate();
    let peer = addr(PEER);
    // No permission yet: Send indications and peer data are dropped.
    let send = MessageBuilder::new(method::SEND, Class::Indication, [9; 12])
        .xor_address(attr::XOR_PEER_ADDRESS, peer)
        .attr(attr::DATA, b"ping")
        .build();
    let msg = Message::parse(&send).unwrap();
    assert!(matches!(
        a.handle(f.t0, &msg, &f.auth, &f.policy, 0),
        Reply::Ignore(_)
    ));
    let mut out = Vec::new();
    assert!(
        !a.view()
            .frame_peer_data(f.t0, peer, b"x", false, [0; 12], &mut out)
    );

    let r = f.send(
        &mut a,
        f.t0,
        &f.signed(method::CREATE_PERMISSION, 3, |b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, peer)
        }),
    );
    assert_eq!(code_of(&r), None);
    let msg = Message::parse(&send).unwrap();
    assert_eq!(
        a.handle(f.t0, &msg, &f.auth, &f.policy, 0),
        Reply::Relay {
            peer,
            data: &b"ping"[..]
        }
    );
    // Peer data without a channel: a Data indication.
    let view = a.view();
    assert!(view.frame_peer_data(f.t0, peer, b"pong", false, [7; 12], &mut out));
    let m = Message::parse(&out).unwrap();
    assert_eq!((m.method(), m.class()), (method::DATA, Class::Indication));
    assert_eq!(m.get(attr::DATA), Some(&b"pong"[..]));
    assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), Some(peer));

    // Bind a channel: ChannelData both ways.
    let r = f.send(
        &mut a,
        f.t0,
        &f.signed(method::CHANNEL_BIND, 4, |b| {
            b.attr(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0])
                .xor_address(attr::XOR_PEER_ADDRESS, peer)
        }),
    );
    assert_eq!(code_of(&r), None);
    let view = a.view();
    let frame = [0x40, 0x01, 0x00, 0x03, b'a', b'b', b'c', 0];
    assert_eq!(
        view.route_channel_data(f.t0, &frame),
        Some((peer, &b"abc"[..]))
    );
    assert!(view.frame_peer_data(f.t0, peer, b"xyz", true, [0; 12], &mut out));
    assert_eq!(out, [0x40, 0x01, 0x00, 0x03, b'x', b'y', b'z', 0]);
    assert!(view.frame_peer_data(f.t0, peer, b"xyz", false, [0; 12], &mut out));
    assert_eq!(out, [0x40, 0x01, 0x00, 0x03, b'x', b'y', b'z']);
    // An unbound channel goes nowhere.
    assert_eq!(
        view.route_channel_data(f.t0, &[0x40, 0x02, 0, 1, b'a']),
        None
    );

    // Rebinding the same channel to another peer, or the peer to another channel: 400.
    let other = addr("192.0.2.100:6000");
    let r = f.send(
        &mut a,
        f.t0,
        &f.signed(method::CHANNEL_BIND, 5, |b| {
            b.attr(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0])
                .xor_address(attr::XOR_PEER_ADDRESS, other)
        }),
    );
    assert_eq!(code_of(&r), Some(400));
    let r = f.send(
        &mut a,
        f.t0,
        &f.signed(method::CHANNEL_BIND, 6, |b| {
            b.attr(attr::CHANNEL_NUMBER, &[0x40, 0x02, 0, 0])
                .xor_address(attr::XOR_PEER_ADDRESS, peer)
        }),
    );
    assert_eq!(code_of(&r), Some(400));
    let r = f.send(
        &mut a,
        f.t0,
        &f.signed(method::CHANNEL_BIND, 7, |b| {
            b.attr(attr::CHANNEL_NUMBER, &[0x80, 0x00, 0, 0])
                .xor_address(attr::XOR_PEER_ADDRESS, other)
        }),
    );
    assert_eq!(code_of(&r), Some(400));
}

#[test]
fn forbidden_peers_get_403_and_nothing_changes() {
    let f = fixture();
    let (mut a, _) = f.allocate();
    let version = a.version();
    for denied in ["127.0.0.1:5000", "10.0.0.1:5000", "[::1]:5000"] {
        let r = f.send(
            &mut a,
            f.t0,
            &f.signed(method::CREATE_PERMISSION, 3, |b| {
                b.xor_address(attr::XOR_PEER_ADDRESS, addr(PEER))
                    .xor_address(attr::XOR_PEER_ADDRESS, addr(denied))
            }),
        );
        assert_eq!(code_of(&r), Some(403), "{denied}");
    }
    assert_eq!(a.version(), version);
    assert!(!a.permits(f.t0, addr(PEER).ip()), "all or none");
}

#[test]
fn lifetimes_refresh_and_expiry() {
    let f = fixture();
    let (mut a, _) = f.allocate();
    let r = f.send(
        &mut a,
        f.t0,
        &f.signed(method::CREATE_PERMISSION, 3, |b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, addr(PEER))
        }),
    );
    assert_eq!(code_of(&r), None);
    let ip = addr(PEER).ip();
    assert_eq!(a.poll_timeout(), f.t0 + Duration::from_secs(300));
    assert!(a.handle_timeout(f.t0 + Duration::from_secs(301)));
    assert!(
        !a.permits(f.t0 + Duration::from_secs(301), ip),
        "permissions live 300 s"
    );
    // Refresh asks for 2 h: capped at 1 h.
    let t = f.t0 + Duration::from_secs(500);
    let r = f.send(
        &mut a,
        t,
        &f.signed(method::REFRESH, 4, |b| b.u32_attr(attr::LIFETIME, 7200)),
    );
    assert_eq!(
        Message::parse(&r).unwrap().u32_attr(attr::LIFETIME),
        Some(3600)
    );
    assert_eq!(a.expires(), t + Duration::from_secs(3600));
    assert!(a.handle_timeout(t + Duration::from_secs(3599)));
    assert!(!a.handle_timeout(t + Duration::from_secs(3600)));
}

#[test]
fn refresh_zero_deletes_and_repeated_allocate_is_answered_again() {
    let f = fixture();
    let (mut a, first) = f.allocate();
    // A retransmitted Allocate (same transaction) gets the same answer; another one 437.
    let again = f.signed(method::ALLOCATE, 1, |b| {
        b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24)
    });
    assert_eq!(f.send(&mut a, f.t0, &again), first);
    let other = f.signed(method::ALLOCATE, 2, |b| {
        b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24)
    });
    assert_eq!(code_of(&f.send(&mut a, f.t0, &other)), Some(437));
    let bytes = f.signed(method::REFRESH, 3, |b| b.u32_attr(attr::LIFETIME, 0));
    let msg = Message::parse(&bytes).unwrap();
    let Reply::Delete(r) = a.handle(f.t0, &msg, &f.auth, &f.policy, 0) else {
        panic!("lifetime 0 deletes")
    };
    assert_eq!(
        Message::parse(&r).unwrap().u32_attr(attr::LIFETIME),
        Some(0)
    );
    assert!(!a.handle_timeout(f.t0));
}

#[test]
fn other_credentials_get_441() {
    let mut f = fixture();
    f.auth.add_user("bob", "builder");
    let (mut a, _) = f.allocate();
    let bob_key = long_term_key("bob", REALM, "builder");
    let bytes = MessageBuilder::new(method::REFRESH, Class::Request, [8; 12])
        .attr(attr::USERNAME, b"bob")
        .attr(attr::REALM, REALM.as_bytes())
        .attr(attr::NONCE, f.auth.nonce(f.t0).as_bytes())
        .integrity(&bob_key)
        .build();
    assert_eq!(code_of(&f.send(&mut a, f.t0, &bytes)), Some(441));
    // Missing integrity: 401; tampered: 401.
    let unsigned = MessageBuilder::new(method::REFRESH, Class::Request, [8; 12]).build();
    assert_eq!(code_of(&f.send(&mut a, f.t0, &unsigned)), Some(401));
}

#[test]
fn permission_quota_gives_508_and_keeps_state() {
    let f = fixture();
    let (mut a, _) = f.allocate();
    let mut accepted = 0;
    for i in 0..70u8 {
        let peer: SocketAddr = format!("192.0.2.{i}:1").parse().unwrap();
        let r = f.send(
            &mut a,
            f.t0,
            &f.signed(method::CREATE_PERMISSION, i, |b| {
                b.xor_address(attr::XOR_PEER_ADDRESS, peer)
            }),
        );
        if code_of(&r).is_none() {
            accepted += 1;
        } else {
            assert_eq!(code_of(&r), Some(508));
        }
    }
    assert_eq!(accepted, AllocationLimits::default().max_permissions);
}

proptest! {
    /// Whatever bytes a client sends to its allocation, nothing panics and the allocation
    /// never grants a permission for a peer the policy refuses.
    #[test]
    fn random_messages_never_panic_or_open_forbidden_peers(
        ops in prop::collection::vec((0u8..6, any::<[u8; 4]>(), any::<u16>(), any::<u32>()), 1..60)
    ) {
        let f = fixture();
        let (mut a, _) = f.allocate();
        let mut t = f.t0;
        for (kind, ip, port, n) in ops {
            t += Duration::from_secs(u64::from(n % 400));
            let peer = SocketAddr::from((ip, port));
            let bytes = match kind {
                0 => f.signed(method::CREATE_PERMISSION, ip[0], |b| b.xor_address(attr::XOR_PEER_ADDRESS, peer)),
                1 => f.signed(method::CHANNEL_BIND, ip[1], |b| b.attr(attr::CHANNEL_NUMBER, &[(n >> 24) as u8, n as u8, 0, 0]).xor_address(attr::XOR_PEER_ADDRESS, peer)),
                2 => f.signed(method::REFRESH, ip[2], |b| b.u32_attr(attr::LIFETIME, n % 5000)),
                3 => MessageBuilder::new(method::SEND, Class::Indication, [1; 12]).xor_address(attr::XOR_PEER_ADDRESS, peer).attr(attr::DATA, &ip).build(),
                4 => f.signed(n as u16 & 0xFFF, ip[3], |b| b.attr(port, &ip)),
                _ => {
                    let mut raw = f.signed(method::CREATE_PERMISSION, 1, |b| b);
                    let at = usize::from(port) % raw.len();
                    raw[at] ^= ip[0] | 1;
                    raw
                }
            };
            if let Ok(msg) = Message::parse(&bytes) {
                let _ = a.handle(t, &msg, &f.auth, &f.policy, 0);
            }
            let _ = a.handle_timeout(t);
            let view = a.view();
            if a.permits(t, peer.ip()) {
                prop_assert!(f.policy.permits_ip(peer.ip()));
            }
            // The data paths' snapshot agrees with the allocation, and stream framing keeps
            // ChannelData 4-byte aligned.
            let mut out = Vec::new();
            let framed = view.frame_peer_data(t, peer, &ip, true, [0; 12], &mut out);
            prop_assert_eq!(framed, a.permits(t, peer.ip()) && t < a.expires());
            prop_assert!(!framed || out.len() % 4 == 0);
        }
    }
}

#[test]
fn bypass_forms_get_403_and_send_indications_to_them_are_dropped() {
    let mut f = fixture();
    f.policy = PeerPolicy::new();
    let (mut a, _) = f.allocate();
    let public = addr("[64:ff9b::808:808]:6000");
    for (i, form) in super::policy::BYPASS_FORMS.iter().enumerate() {
        let peer = SocketAddr::new(form.parse().unwrap(), 6000);
        let tid = i as u8;
        let r = f.send(
            &mut a,
            f.t0,
            &f.signed(method::CREATE_PERMISSION, tid, |b| {
                b.xor_address(attr::XOR_PEER_ADDRESS, peer)
            }),
        );
        assert_eq!(code_of(&r), Some(403), "CreatePermission {form}");
        let r = f.send(
            &mut a,
            f.t0,
            &f.signed(method::CHANNEL_BIND, tid, |b| {
                b.attr(attr::CHANNEL_NUMBER, &[0x40, tid, 0, 0])
                    .xor_address(attr::XOR_PEER_ADDRESS, peer)
            }),
        );
        assert_eq!(code_of(&r), Some(403), "ChannelBind {form}");
        let send = MessageBuilder::new(method::SEND, Class::Indication, [tid; 12])
            .xor_address(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::DATA, b"x")
            .build();
        let msg = Message::parse(&send).unwrap();
        assert!(
            matches!(
                a.handle(f.t0, &msg, &f.auth, &f.policy, 0),
                Reply::Ignore(_)
            ),
            "Send {form}"
        );
        assert!(!a.permits(f.t0, peer.ip()), "{form}");
    }
    // A NAT64 form of a public address is fine.
    let r = f.send(
        &mut a,
        f.t0,
        &f.signed(method::CREATE_PERMISSION, 200, |b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, public)
        }),
    );
    assert_eq!(code_of(&r), None);
}

fn bind(
    f: &Fixture,
    a: &mut Allocation,
    at: Instant,
    tid: u8,
    number: u16,
    peer: &str,
) -> Option<u16> {
    let peer = addr(peer);
    let r = f.send(
        a,
        at,
        &f.signed_at(at, method::CHANNEL_BIND, tid, |b| {
            b.attr(
                attr::CHANNEL_NUMBER,
                &[(number >> 8) as u8, number as u8, 0, 0],
            )
            .xor_address(attr::XOR_PEER_ADDRESS, peer)
        }),
    );
    code_of(&r)
}

#[test]
fn channel_numbers_and_peers_are_held_five_minutes_after_expiry() {
    let f = fixture();
    let (mut a, _) = f.allocate();
    let s = |n: u64| f.t0 + Duration::from_secs(n);
    let p1 = "192.0.2.1:7000";
    let p2 = "192.0.2.2:7000";
    let r = f.send(
        &mut a,
        s(0),
        &f.signed(method::REFRESH, 9, |b| b.u32_attr(attr::LIFETIME, 3600)),
    );
    assert_eq!(code_of(&r), None);
    assert_eq!(bind(&f, &mut a, s(0), 1, 0x4001, p1), None);
    // Refreshed at 500 s: bound until 1100 s, held until 1400 s.
    assert_eq!(bind(&f, &mut a, s(500), 2, 0x4001, p1), None);
    for t in [600, 1_099, 1_100, 1_200, 1_399] {
        assert!(a.handle_timeout(s(t)), "timers run at {t} s");
        assert_eq!(
            bind(&f, &mut a, s(t), 3, 0x4001, p2),
            Some(400),
            "number rebound at {t} s"
        );
        assert_eq!(
            bind(&f, &mut a, s(t), 4, 0x4002, p1),
            Some(400),
            "peer rebound at {t} s"
        );
    }
    // Expired (1100 s): the data paths no longer use it, though it is still held.
    let frame = [0x40, 0x01, 0x00, 0x01, b'a', 0, 0, 0];
    assert_eq!(a.view().route_channel_data(s(1_100), &frame), None);
    // Once the hold ends both may be bound otherwise, with or without a timer having run.
    assert_eq!(bind(&f, &mut a, s(1_400), 5, 0x4001, p2), None);
    assert_eq!(bind(&f, &mut a, s(1_400), 6, 0x4002, p1), None);
    assert_eq!(
        a.view().route_channel_data(s(1_400), &frame),
        Some((addr(p2), &b"a"[..]))
    );
}

#[test]
fn the_same_binding_may_be_renewed_during_its_hold_and_timers_follow_the_hold() {
    let f = fixture();
    let (mut a, _) = f.allocate();
    let s = |n: u64| f.t0 + Duration::from_secs(n);
    // Keep the allocation itself alive across the test.
    let r = f.send(
        &mut a,
        s(0),
        &f.signed(method::REFRESH, 9, |b| b.u32_attr(attr::LIFETIME, 3600)),
    );
    assert_eq!(code_of(&r), None);
    assert_eq!(bind(&f, &mut a, s(0), 1, 0x4001, "192.0.2.1:7000"), None);
    // Permission expires at 300 s, the channel at 600 s, its hold at 900 s.
    assert_eq!(a.poll_timeout(), s(300));
    assert!(a.handle_timeout(s(300)));
    assert_eq!(a.poll_timeout(), s(900));
    assert!(a.handle_timeout(s(700)));
    assert_eq!(
        a.poll_timeout(),
        s(900),
        "no busy wake-ups after the expiry"
    );
    assert_eq!(bind(&f, &mut a, s(700), 2, 0x4001, "192.0.2.1:7000"), None);
    let frame = [0x40, 0x01, 0x00, 0x01, b'a', 0, 0, 0];
    assert!(a.view().route_channel_data(s(701), &frame).is_some());
    assert!(a.handle_timeout(s(1_600)));
    assert_eq!(a.poll_timeout(), s(1_600) + Duration::from_secs(2_000));
}

#[test]
fn channel_bind_respects_the_permission_cap() {
    let f = fixture();
    let (mut a, _) = f.allocate();
    let max = AllocationLimits::default().max_permissions;
    for i in 0..max {
        let peer: SocketAddr = format!("192.0.2.{i}:1").parse().unwrap();
        let r = f.send(
            &mut a,
            f.t0,
            &f.signed(method::CREATE_PERMISSION, i as u8, |b| {
                b.xor_address(attr::XOR_PEER_ADDRESS, peer)
            }),
        );
        assert_eq!(code_of(&r), None);
    }
    // A new peer's address would be one permission too many.
    assert_eq!(
        bind(&f, &mut a, f.t0, 1, 0x4001, "192.0.2.200:1"),
        Some(508)
    );
    assert!(!a.permits(f.t0, addr("192.0.2.200:1").ip()));
    // A peer whose address has a permission binds fine.
    assert_eq!(bind(&f, &mut a, f.t0, 2, 0x4002, "192.0.2.3:9"), None);
    // Once permissions expire there is room again.
    let later = f.t0 + Duration::from_secs(301);
    assert_eq!(bind(&f, &mut a, later, 3, 0x4003, "192.0.2.200:1"), None);
    // Repeated addresses in one CreatePermission count once.
    let (mut b, _) = f.allocate();
    let r = f.send(
        &mut b,
        f.t0,
        &f.signed(method::CREATE_PERMISSION, 7, |m| {
            (0..max).fold(m, |m, _| {
                m.xor_address(attr::XOR_PEER_ADDRESS, addr("192.0.2.1:1"))
            })
        }),
    );
    assert_eq!(code_of(&r), None);
}

#[test]
fn sfu_credentials_relay_only_to_the_sfu_and_end_with_their_expiry() {
    let mut f = fixture();
    let sfu = addr("192.0.2.50:7882");
    f.auth.set_rest_secret(b"northwind");
    f.auth.set_sfu_peers(&[sfu]);
    let (username, password) = f.auth.sfu_credentials("PA_x", 1_000 + 300).unwrap();
    let key = long_term_key(&username, REALM, &password);
    let signed = |m: u16, tid: u8, fill: &dyn Fn(MessageBuilder) -> MessageBuilder| {
        fill(MessageBuilder::new(m, Class::Request, [tid; 12]))
            .attr(attr::USERNAME, username.as_bytes())
            .attr(attr::REALM, REALM.as_bytes())
            .attr(attr::NONCE, f.auth.nonce(f.t0).as_bytes())
            .integrity(&key)
            .fingerprint()
            .build()
    };
    let bytes = signed(method::ALLOCATE, 1, &|b| {
        b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24)
    });
    let FrontAction::Allocate(req) = front::handle(
        &Message::parse(&bytes).unwrap(),
        addr(CLIENT),
        &f.auth,
        f.t0,
        1_000,
        false,
        None,
    ) else {
        panic!("allocate refused");
    };
    let (mut a, response) = Allocation::new(
        f.t0,
        AllocateParams {
            relay: addr(RELAY),
            client: addr(CLIENT),
            auth: req.auth,
            requested_lifetime: None,
            transaction_id: req.transaction_id,
            lifetimes: Lifetimes::default(),
            limits: AllocationLimits::default(),
            software: None,
            reservation_token: None,
        },
    );
    // The allocation lasts as long as the credential: 300 s, not the default 600 s.
    assert_eq!(
        Message::parse(&response).unwrap().u32_attr(attr::LIFETIME),
        Some(300)
    );
    assert_eq!(a.expires(), f.t0 + Duration::from_secs(300));
    let mut send = |bytes: Vec<u8>, unix_now: u64| {
        let msg = Message::parse(&bytes).unwrap();
        match a.handle(f.t0, &msg, &f.auth, &f.policy, unix_now) {
            Reply::Respond(r) => code_of(&r),
            other => panic!("{other:?}"),
        }
    };
    // Another address, even one the policy allows: 403. The SFU's address: fine.
    let peer = |p: SocketAddr| move |b: MessageBuilder| b.xor_address(attr::XOR_PEER_ADDRESS, p);
    assert_eq!(
        send(
            signed(method::CREATE_PERMISSION, 2, &peer(addr(PEER))),
            1_000
        ),
        Some(403)
    );
    assert_eq!(
        send(signed(method::CREATE_PERMISSION, 3, &peer(sfu)), 1_000),
        None
    );
    let bind = |n: u8, p: SocketAddr| {
        move |b: MessageBuilder| {
            b.attr(attr::CHANNEL_NUMBER, &[0x40, n, 0, 0])
                .xor_address(attr::XOR_PEER_ADDRESS, p)
        }
    };
    assert_eq!(
        send(
            signed(method::CHANNEL_BIND, 4, &bind(1, addr("192.0.2.50:80"))),
            1_000
        ),
        Some(403),
        "another port of the SFU's address"
    );
    assert_eq!(
        send(signed(method::CHANNEL_BIND, 5, &bind(2, sfu)), 1_000),
        None
    );
    // Refresh: capped at what is left of the credential.
    let r = signed(method::REFRESH, 6, &|b| b.u32_attr(attr::LIFETIME, 3600));
    let msg = Message::parse(&r).unwrap();
    let Reply::Respond(resp) = a.handle(f.t0, &msg, &f.auth, &f.policy, 1_100) else {
        panic!()
    };
    assert_eq!(
        Message::parse(&resp).unwrap().u32_attr(attr::LIFETIME),
        Some(200)
    );
    // The data paths: Send to another port of the SFU's address is dropped, and so is
    // what another port sends.
    let indication = |to: SocketAddr| {
        MessageBuilder::new(method::SEND, Class::Indication, [9; 12])
            .xor_address(attr::XOR_PEER_ADDRESS, to)
            .attr(attr::DATA, b"x")
            .build()
    };
    let other_port = addr("192.0.2.50:80");
    let bytes = indication(other_port);
    assert!(matches!(
        a.handle(
            f.t0,
            &Message::parse(&bytes).unwrap(),
            &f.auth,
            &f.policy,
            1_000
        ),
        Reply::Ignore(_)
    ));
    let bytes = indication(sfu);
    assert!(matches!(
        a.handle(
            f.t0,
            &Message::parse(&bytes).unwrap(),
            &f.auth,
            &f.policy,
            1_000
        ),
        Reply::Relay { .. }
    ));
    let view = a.view();
    let mut out = Vec::new();
    assert!(view.frame_peer_data(f.t0, sfu, b"m", false, [0; 12], &mut out));
    assert!(!view.frame_peer_data(f.t0, other_port, b"m", false, [0; 12], &mut out));
    assert!(!view.permits_peer(f.t0, other_port));
    // Revoked or expired: 401.
    let r = signed(method::REFRESH, 7, &|b| b.u32_attr(attr::LIFETIME, 600));
    let code = |a: &mut Allocation, unix_now: u64| {
        let msg = Message::parse(&r).unwrap();
        match a.handle(f.t0, &msg, &f.auth, &f.policy, unix_now) {
            Reply::Respond(r) => code_of(&r),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code(&mut a, 1_300), Some(401), "expired");
    f.auth.revoke("sfu:PA_x", 1_300);
    assert_eq!(code(&mut a, 1_000), Some(401), "revoked");
}
