//! Hearth's own transport (`hearth_engine::transport`, through the participant's
//! `WebRtcPeer`) against webrtc-rs `rtc`'s `RTCPeerConnection` as the other peer, both in
//! memory with virtual time: ICE-lite, DTLS, SRTP both ways, offers from either side,
//! m-line recycling under churn, close_notify, and hostile input on a live connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hearth_actors::webrtc::{
    Certificate, CodecParams, Inbound, PeerEvent, PeerSetup, SenderKey, WebRtcPeer,
};
use hearth_engine::forwarder::ForwardedHeader;
use hearth_engine::media::{Codec, MediaKind, Ssrc};
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

const SERVER: &str = "127.0.0.1:7882";
const CLIENT: &str = "127.0.0.2:40000";

struct Pair {
    server: WebRtcPeer,
    client: RTCPeerConnection,
    now: Instant,
    server_addr: SocketAddr,
    client_addr: SocketAddr,
    events: Vec<PeerEvent>,
    inbound: Vec<Inbound>,
    client_rtp: Vec<rtc::rtp::Packet>,
    /// The client's address before it moved (see `client_moves_and_keeps_its_call`).
    old_client_addr: Option<SocketAddr>,
}

impl Pair {
    fn new() -> Pair {
        let now = Instant::now();
        let server_addr: SocketAddr = SERVER.parse().unwrap();
        let client_addr: SocketAddr = CLIENT.parse().unwrap();
        let server = WebRtcPeer::new(
            PeerSetup {
                advertised: server_addr,
                certificate: Certificate::generate().unwrap(),
                ufrag: "hearthufrag0001".into(),
                pwd: "hearthpassword0123456789".into(),
            },
            now,
        )
        .unwrap();
        let client = hearth_tests::rtc_client(client_addr).unwrap();
        Pair {
            server,
            client,
            now,
            server_addr,
            client_addr,
            events: Vec::new(),
            inbound: Vec::new(),
            client_rtp: Vec::new(),
            old_client_addr: None,
        }
    }

    /// One round: datagrams both ways, events and media collected, 5 ms of virtual time.
    fn step(&mut self) {
        while let Some(msg) = self.client.poll_write() {
            self.server
                .handle_datagram(self.now, self.client_addr, msg.message);
        }
        while let Some((to, data)) = self.server.poll_datagram() {
            if Some(to) == self.old_client_addr {
                continue; // the client left that address: lost, as on a real network
            }
            assert_eq!(to, self.client_addr, "the server only answers the client");
            let _ = self.client.handle_read(TaggedBytesMut {
                now: self.now,
                transport: TransportContext {
                    local_addr: self.client_addr,
                    peer_addr: self.server_addr,
                    ecn: None,
                    transport_protocol: TransportProtocol::UDP,
                },
                message: data,
            });
        }
        while self.client.poll_event().is_some() {}
        while let Some(msg) = self.client.poll_read() {
            if let RTCMessage::RtpPacket(_, p) = msg.message {
                self.client_rtp.push(p);
            }
        }
        while let Some(e) = self.server.poll_event() {
            self.events.push(e);
        }
        while let Some(i) = self.server.poll_inbound() {
            self.inbound.push(i);
        }
        self.now += Duration::from_millis(5);
        let _ = self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
    }

    /// Steps until `done` holds; panics after 2,000 rounds (10 s of virtual time).
    fn drive(&mut self, what: &str, mut done: impl FnMut(&mut Pair) -> bool) {
        for _ in 0..2_000 {
            if done(self) {
                return;
            }
            self.step();
        }
        panic!("{what}: not reached; events {:?}", self.events);
    }

    fn connected(&self) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, PeerEvent::Connected))
    }

    /// The client offers (its publishing transceivers), the server answers.
    fn client_offers(&mut self) {
        let offer = self.client.create_offer(None).expect("client offer");
        let sdp = offer.sdp.clone();
        self.client
            .set_local_description(self.now, offer)
            .expect("client sets its offer");
        let answer = self
            .server
            .apply_offer(self.now, sdp)
            .expect("server answers");
        self.client
            .set_remote_description(self.now, RTCSessionDescription::answer(answer).unwrap())
            .expect("client takes the answer");
    }

    /// The server offers (its senders), the client answers.
    fn server_offers(&mut self) -> String {
        let offer = self.server.create_offer(self.now).expect("server offer");
        self.client
            .set_remote_description(
                self.now,
                RTCSessionDescription::offer(offer.clone()).unwrap(),
            )
            .expect("client takes the offer");
        let answer = self.client.create_answer(None).expect("client answer");
        let sdp = answer.sdp.clone();
        self.client
            .set_local_description(self.now, answer)
            .expect("client sets its answer");
        if let Err(e) = self.server.apply_answer(self.now, sdp.clone()) {
            panic!("server takes the answer: {e}\noffer:\n{offer}\nanswer:\n{sdp}");
        }
        offer
    }

    fn add_client_audio(&mut self, ssrc: u32) -> RTCRtpSenderId {
        let t = hearth_tests::add_send_only(
            &mut self.client,
            "client-stream",
            &format!("audio-{ssrc}"),
            RtpCodecKind::Audio,
            hearth_tests::opus(),
            ssrc,
        )
        .expect("client transceiver");
        self.client
            .rtp_transceiver(t)
            .and_then(|t| t.sender())
            .expect("sender")
    }

    fn client_send(&mut self, sender: RTCRtpSenderId, ssrc: u32, seq: u16, payload: &[u8]) -> bool {
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::Header {
                version: 2,
                payload_type: 111,
                sequence_number: seq,
                timestamp: u32::from(seq) * 960,
                ssrc,
                ..Default::default()
            },
            payload: Bytes::copy_from_slice(payload),
        };
        self.client
            .rtp_sender(sender)
            .is_some_and(|mut s| s.write_rtp(self.now, packet).is_ok())
    }

    fn server_send(&mut self, key: SenderKey, seq: u16, payload: &[u8]) -> bool {
        self.server
            .send_rtp(
                self.now,
                key,
                ForwardedHeader {
                    ssrc: key.ssrc,
                    seq,
                    timestamp: u32::from(seq) * 960,
                    marker: false,
                },
                Bytes::copy_from_slice(payload),
            )
            .is_ok()
    }
}

fn opus_params() -> CodecParams {
    CodecParams {
        codec: Codec::Opus,
        mime_type: "audio/opus".into(),
        clock_rate: 48_000,
        channels: 2,
        fmtp: "minptime=10;useinbandfec=1".into(),
    }
}

#[test]
fn client_publishes_through_a_client_offer() {
    let mut p = Pair::new();
    let sender = p.add_client_audio(0x1111_2222);
    p.client_offers();
    p.drive("connected", |p| p.connected());
    let mut seq = 100u16;
    p.drive("media received", |p| {
        let payload = [0xFC, seq as u8, 3, 4, 5];
        p.client_send(sender, 0x1111_2222, seq, &payload);
        seq = seq.wrapping_add(1);
        p.inbound.iter().any(|i| matches!(i, Inbound::Rtp(_)))
    });
    let opened = p
        .events
        .iter()
        .find_map(|e| match e {
            PeerEvent::TrackOpened(t) => Some(t.clone()),
            _ => None,
        })
        .expect("track opened");
    assert_eq!(opened.ssrc, Ssrc(0x1111_2222));
    assert_eq!(opened.kind, MediaKind::Audio);
    assert_eq!(opened.codec.codec, Codec::Opus);
    let Some(Inbound::Rtp(pkt)) = p.inbound.iter().find(|i| matches!(i, Inbound::Rtp(_))) else {
        unreachable!()
    };
    assert_eq!(pkt.ssrc, Ssrc(0x1111_2222));
    assert_eq!(pkt.payload.len(), 5);
    assert_eq!(pkt.payload[0], 0xFC);
    assert!(
        p.events
            .iter()
            .any(|e| matches!(e, PeerEvent::PathValidated(a) if *a == p.client_addr)),
        "the client's address was validated by ICE"
    );
}

#[test]
fn server_sends_through_its_own_offer() {
    let mut p = Pair::new();
    let key = p
        .server
        .add_sender(MediaKind::Audio, &opus_params(), "pub-stream", "pub-track")
        .unwrap();
    let offer = p.server_offers();
    assert!(offer.contains("a=ice-lite"), "{offer}");
    assert!(offer.contains("a=setup:actpass"), "{offer}");
    let start = p.now;
    p.drive("connected", |p| p.connected());
    // No DTLS retransmission timer on the way: the handshake completes within a few rounds.
    let took = p.now.duration_since(start);
    assert!(
        took < Duration::from_millis(300),
        "connected after {took:?}"
    );
    let mut seq = 1u16;
    p.drive("client receives", |p| {
        p.server_send(key, seq, &[0xFC, 9, 9, 9]);
        seq += 1;
        !p.client_rtp.is_empty()
    });
    let got = &p.client_rtp[0];
    assert_eq!(got.header.ssrc, key.ssrc.0);
    assert_eq!(&got.payload[..], &[0xFC, 9, 9, 9]);
}

#[test]
fn churned_subscriptions_keep_the_sdp_bounded() {
    let mut p = Pair::new();
    let first = p
        .server
        .add_sender(MediaKind::Audio, &opus_params(), "s0", "t0")
        .unwrap();
    p.server_offers();
    p.drive("connected", |p| p.connected());
    let mut live = vec![first];
    for round in 1..=20 {
        // One joins, one leaves: each exchange adds one sender and removes the oldest.
        let key = p
            .server
            .add_sender(
                MediaKind::Audio,
                &opus_params(),
                &format!("s{round}"),
                &format!("t{round}"),
            )
            .unwrap();
        live.push(key);
        let gone = live.remove(0);
        p.server.remove_sender(gone).unwrap();
        p.server_offers();
        p.step();
    }
    // Without recycling there would be 21 sections; with it, the two live senders and at
    // most two slots waiting to be reused.
    assert!(
        p.server.section_count() <= 4,
        "sections: {}",
        p.server.section_count()
    );
    // The newest sender still delivers.
    let key = *live.last().unwrap();
    let mut seq = 1u16;
    p.client_rtp.clear();
    p.drive("newest sender delivers", |p| {
        p.server_send(key, seq, &[0xFC, 1]);
        seq += 1;
        p.client_rtp.iter().any(|r| r.header.ssrc == key.ssrc.0)
    });
}

#[test]
fn close_notify_ends_the_transport_at_once() {
    let mut p = Pair::new();
    let _ = p.add_client_audio(7);
    p.client_offers();
    p.drive("connected", |p| p.connected());
    p.client.close().expect("client closes");
    let start = p.now;
    p.drive("gone", |p| {
        p.events.iter().any(|e| matches!(e, PeerEvent::Gone(_)))
    });
    assert!(
        p.now.duration_since(start) < Duration::from_millis(100),
        "close noticed within {:?}",
        p.now.duration_since(start)
    );
}

#[test]
fn hostile_datagrams_on_a_live_connection_change_nothing() {
    let mut p = Pair::new();
    let sender = p.add_client_audio(0x0A0B_0C0D);
    p.client_offers();
    p.drive("connected", |p| p.connected());
    let stranger: SocketAddr = "127.0.0.9:5555".parse().unwrap();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..5_000u32 {
        let len = (next() % 1400) as usize + 1;
        let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        data[0] = match i % 4 {
            0 => data[0] % 4,
            1 => 20 + data[0] % 44,
            2 => 128 + data[0] % 64,
            _ => data[0],
        };
        // Half from the validated client address (past ICE), half from a stranger.
        let from = if i % 2 == 0 { p.client_addr } else { stranger };
        p.server
            .handle_datagram(p.now, from, BytesMut::from(&data[..]));
    }
    // Nothing was sent to the stranger, and the connection still carries media.
    while let Some((to, _)) = p.server.poll_datagram() {
        assert_ne!(to, stranger, "never send to an unvalidated address");
    }
    p.inbound.clear();
    let mut seq = 1u16;
    p.drive("media after garbage", |p| {
        p.client_send(sender, 0x0A0B_0C0D, seq, &[0xFC, 1, 2]);
        seq += 1;
        p.inbound.iter().any(|i| matches!(i, Inbound::Rtp(_)))
    });
    let stats = p.server.stats();
    assert!(stats.unvalidated > 0, "{stats:?}");
    assert!(!p.events.iter().any(|e| matches!(e, PeerEvent::Gone(_))));
}

/// The client publishes first (it offers, the server is the DTLS server), then the server
/// offers a subscription and the `rtc` client answers `passive` (as it does to every ICE-lite
/// offerer): the roles of the first exchange stay, and media flows both ways.
#[test]
fn publish_then_subscribe_keeps_the_dtls_roles() {
    let mut p = Pair::new();
    let sender = p.add_client_audio(0x5151_5151);
    p.client_offers();
    p.drive("connected", |p| p.connected());
    let key = p
        .server
        .add_sender(MediaKind::Audio, &opus_params(), "other", "other-audio")
        .unwrap();
    p.server_offers();
    let mut seq = 1u16;
    p.drive("both directions carry media", |p| {
        p.client_send(sender, 0x5151_5151, seq, &[0xFC, 1, 2]);
        p.server_send(key, seq, &[0xFC, 3, 4]);
        seq += 1;
        !p.client_rtp.is_empty() && p.inbound.iter().any(|i| matches!(i, Inbound::Rtp(_)))
    });
    assert!(!p.events.iter().any(|e| matches!(e, PeerEvent::Gone(_))));
}

/// Every subscription removed (the BUNDLE tag left inactive, the rest rejected), then a new one:
/// the client accepts both offers and the new stream delivers.
#[test]
fn all_subscriptions_removed_then_one_added() {
    let mut p = Pair::new();
    let a = p
        .server
        .add_sender(MediaKind::Audio, &opus_params(), "s", "a")
        .unwrap();
    let b = p
        .server
        .add_sender(MediaKind::Audio, &opus_params(), "s", "b")
        .unwrap();
    p.server_offers();
    p.drive("connected", |p| p.connected());
    p.server.remove_sender(a).unwrap();
    p.server.remove_sender(b).unwrap();
    let offer = p.server_offers();
    // The first section is the BUNDLE tag: it stays in the group, inactive (rejecting it
    // would make a browser close the transport); the other is rejected.
    assert!(offer.contains("a=group:BUNDLE h0\r\n"), "{offer}");
    assert!(offer.contains("m=audio 0 "), "{offer}");
    // The client's consent checks (they keep the ICE ufrag of before) still pass a minute on.
    for _ in 0..12_000 {
        p.step();
    }
    assert!(
        !p.events.iter().any(|e| matches!(e, PeerEvent::Gone(_))),
        "{:?}",
        p.events
    );
    let c = p
        .server
        .add_sender(MediaKind::Audio, &opus_params(), "s", "c")
        .unwrap();
    p.server_offers();
    let mut seq = 1u16;
    p.client_rtp.clear();
    p.drive("the new stream delivers", |p| {
        p.server_send(c, seq, &[0xFC, 5]);
        seq += 1;
        p.client_rtp.iter().any(|r| r.header.ssrc == c.ssrc.0)
    });
}

/// Valid SRTP replayed, tampered with, or on an SSRC nobody announced: dropped and counted,
/// delivered once, and the stream carries on.
#[test]
fn replayed_tampered_and_unannounced_srtp_is_dropped() {
    let mut p = Pair::new();
    let sender = p.add_client_audio(0x7777_0001);
    p.client_offers();
    p.drive("connected", |p| p.connected());
    // Capture one genuine SRTP datagram on its way to the server.
    p.client_send(sender, 0x7777_0001, 500, &[0xFC, 1, 2, 3]);
    let mut captured = None;
    while let Some(msg) = p.client.poll_write() {
        if msg.message.first().is_some_and(|b| (128..=191).contains(b))
            && msg
                .message
                .get(1)
                .is_some_and(|pt| !(192..=223).contains(pt))
        {
            captured = Some(msg.message.clone());
        }
        p.server.handle_datagram(p.now, p.client_addr, msg.message);
    }
    let captured = captured.expect("an SRTP datagram");
    p.step();
    let delivered = |p: &Pair| {
        p.inbound
            .iter()
            .filter(|i| matches!(i, Inbound::Rtp(m) if m.seq == 500))
            .count()
    };
    assert_eq!(delivered(&p), 1);
    let before = p.server.stats();
    // The same datagram again: a replay.
    p.server
        .handle_datagram(p.now, p.client_addr, captured.clone());
    // A flipped bit in the payload: the tag fails.
    let mut tampered = captured.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x40;
    p.server.handle_datagram(p.now, p.client_addr, tampered);
    // Another SSRC in the header (nobody announced it): dropped before any SRTP state.
    let mut stranger_ssrc = captured.clone();
    stranger_ssrc[8..12].copy_from_slice(&0xDEAD_BEEFu32.to_be_bytes());
    p.server
        .handle_datagram(p.now, p.client_addr, stranger_ssrc);
    p.step();
    assert_eq!(delivered(&p), 1, "delivered exactly once");
    let after = p.server.stats();
    assert_eq!(after.srtp_failed, before.srtp_failed + 2, "{after:?}");
    assert_eq!(after.unknown_ssrc, before.unknown_ssrc + 1, "{after:?}");
    // The stream carries on.
    let mut seq = 501u16;
    p.drive("media after the replay", |p| {
        p.client_send(sender, 0x7777_0001, seq, &[0xFC, 4]);
        seq += 1;
        p.inbound
            .iter()
            .any(|i| matches!(i, Inbound::Rtp(m) if m.seq > 500))
    });
}

/// The client's address changes mid-call (a NAT rebinding, a new network) without a new
/// nomination: once its old path has been quiet for a while and the new one passed a check,
/// the server sends there, and media keeps flowing.
#[test]
fn client_moves_and_keeps_its_call() {
    let mut p = Pair::new();
    let key = p
        .server
        .add_sender(MediaKind::Audio, &opus_params(), "s", "a")
        .unwrap();
    p.server_offers();
    p.drive("connected", |p| p.connected());
    let mut seq = 1u16;
    p.drive("media flows", |p| {
        p.server_send(key, seq, &[0xFC, 1]);
        seq += 1;
        !p.client_rtp.is_empty()
    });
    let moved: SocketAddr = "127.0.0.3:41000".parse().unwrap();
    p.old_client_addr = Some(p.client_addr);
    p.client_addr = moved;
    p.client_rtp.clear();
    p.drive("media reaches the new address", |p| {
        p.server_send(key, seq, &[0xFC, 2]);
        seq = seq.wrapping_add(1);
        !p.client_rtp.is_empty()
    });
    assert!(
        p.events
            .iter()
            .any(|e| matches!(e, PeerEvent::PathValidated(a) if *a == moved)),
        "{:?}",
        p.events
    );
    assert!(!p.events.iter().any(|e| matches!(e, PeerEvent::Gone(_))));
}
