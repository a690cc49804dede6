//! Property tests that feed arbitrary and mutated input into every entry point of the
//! transport: RFC 7983 demux (STUN, DTLS, SRTP/SRTCP, others) from validated and strange
//! addresses, ICE checks, and SDP offers and answers. None may panic, nothing may be sent to
//! an address ICE did not validate, and a failed negotiation changes nothing.
//!
//! `HEARTH_PROPTEST_CASES=100000 cargo test -p hearth-engine transport::fuzz --release` is
//! the long-running mode (about ten minutes on one core).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use proptest::prelude::*;

use super::dtls::DtlsIdentity;
use super::ice::{IceLite, binding_request};
use super::peer::{Peer, PeerConfig};
use super::sdp::{LocalParams, Negotiator};

fn cases() -> u32 {
    super::proptest_cases()
}

fn identity() -> DtlsIdentity {
    static ID: OnceLock<DtlsIdentity> = OnceLock::new();
    ID.get_or_init(|| DtlsIdentity::generate().expect("test identity"))
        .clone()
}

const PWD: &str = "serverpassword0123456789";

fn peer(now: Instant) -> Peer {
    Peer::new(
        PeerConfig {
            advertised: "127.0.0.1:7882".parse().unwrap(),
            identity: identity(),
            ufrag: "srvufrag".into(),
            pwd: PWD.into(),
            session_id: 7,
            rtcp_ssrc: 9,
        },
        now,
    )
}

/// A real-looking browser offer to mutate.
const OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS stream\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\nc=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:Kx3b\r\na=ice-pwd:wR0n9bYk8p2yYF1Hf3pQ8Vbq\r\n\
a=ice-options:trickle\r\na=fingerprint:sha-256 0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9\r\n\
a=setup:actpass\r\na=mid:0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=sendrecv\r\na=msid:stream audio\r\n\
a=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\n\
a=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=ssrc:1001 cname:c\r\na=ssrc:1001 msid:stream audio\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:Kx3b\r\n\
a=ice-pwd:wR0n9bYk8p2yYF1Hf3pQ8Vbq\r\na=fingerprint:sha-256 0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9\r\n\
a=setup:actpass\r\na=mid:1\r\na=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\na=sendrecv\r\n\
a=msid:stream video\r\na=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:96 VP8/90000\r\n\
a=rtcp-fb:96 goog-remb\r\na=rtcp-fb:96 transport-cc\r\na=rtcp-fb:96 ccm fir\r\n\
a=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
a=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
a=rtpmap:103 rtx/90000\r\na=fmtp:103 apt=102\r\na=ssrc-group:FID 2001 2002\r\n\
a=ssrc:2001 cname:c\r\na=ssrc:2002 cname:c\r\n";

/// One mutation of the offer's lines.
#[derive(Clone, Debug)]
enum Edit {
    Delete(usize),
    Duplicate(usize),
    Garble(usize, Vec<u8>),
    Insert(usize, String),
}

fn mutate(edits: &[Edit]) -> String {
    let mut lines: Vec<String> = OFFER.split("\r\n").map(str::to_owned).collect();
    for e in edits {
        let n = lines.len().max(1);
        match e {
            Edit::Delete(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            Edit::Duplicate(i) if !lines.is_empty() => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Edit::Garble(i, bytes) if !lines.is_empty() => {
                let line = &mut lines[i % n];
                let keep = line.len().min(bytes.len() % 40);
                let mut s: String = line.chars().take(keep).collect();
                s.extend(bytes.iter().map(|b| char::from(b' ' + b % 95)));
                *line = s;
            }
            Edit::Insert(i, text) => lines.insert(i % n, text.clone()),
            _ => {}
        }
    }
    lines.join("\r\n")
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Duplicate),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 0..24)
        )
            .prop_map(|(i, b)| Edit::Garble(i, b)),
        (
            any::<usize>(),
            prop_oneof![
                Just("m=video 0 UDP/TLS/RTP/SAVPF 96".to_owned()),
                Just("m=application 9 UDP/DTLS/SCTP webrtc-datachannel".to_owned()),
                Just("a=mid:0".to_owned()),
                Just("a=ssrc-group:FID 1 2 3".to_owned()),
                Just("a=extmap:15 urn:x".to_owned()),
                Just("a=rtpmap:300 VP8/90000".to_owned()),
                Just("a=bundle-only".to_owned()),
                Just("a=setup:passive".to_owned()),
                "[ -~]{0,60}",
            ]
        )
            .prop_map(|(i, t)| Edit::Insert(i, t)),
    ]
}

/// A datagram for one of the RFC 7983 ranges (or any byte), from the client or a stranger.
fn datagram() -> impl Strategy<Value = (bool, Vec<u8>)> {
    (
        any::<bool>(),
        0u8..5,
        proptest::collection::vec(any::<u8>(), 0..1600),
    )
        .prop_map(|(from_client, class, mut data)| {
            if let Some(first) = data.first_mut() {
                *first = match class {
                    0 => *first % 4,
                    1 => 20 + *first % 44,
                    2 => 128 + *first % 64,
                    _ => *first,
                };
            }
            if class == 0 && data.len() >= 8 {
                data[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
            }
            if class == 3 && data.len() >= 2 {
                data[1] = 200 + data[1] % 8; // RTCP packet types
                data[0] = 0x80 | (data[0] & 0x1f);
            }
            (from_client, data)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_datagrams_never_panic_nor_reach_strangers(
        offer_first in any::<bool>(),
        datagrams in proptest::collection::vec(datagram(), 1..40),
    ) {
        let t0 = Instant::now();
        let client: SocketAddr = "127.0.0.2:4000".parse().unwrap();
        let stranger: SocketAddr = "127.0.0.3:5000".parse().unwrap();
        let mut p = peer(t0);
        if offer_first {
            let _ = p.apply_offer(t0, OFFER);
        }
        // The client passes ICE first; the stranger never does.
        let check = binding_request([3; 12], "srvufrag", "Kx3b", PWD, true);
        p.handle_datagram(t0, client, BytesMut::from(&check[..]));
        let mut now = t0;
        for (from_client, data) in datagrams {
            let from = if from_client { client } else { stranger };
            p.handle_datagram(now, from, BytesMut::from(&data[..]));
            now += Duration::from_millis(7);
            p.handle_timeout(now);
            while let Some((to, _)) = p.poll_datagram() {
                prop_assert_ne!(to, stranger);
            }
            while p.poll_event().is_some() {}
            while p.poll_inbound().is_some() {}
        }
        let _ = p.poll_timeout();
    }

    #[test]
    fn mutated_offers_never_panic_and_failures_change_nothing(
        edits in proptest::collection::vec(edit(), 0..8),
        answer_edits in proptest::collection::vec(edit(), 0..8),
    ) {
        let mut n = Negotiator::new(
            LocalParams {
                ufrag: "srvufrag".into(),
                pwd: PWD.into(),
                fingerprint: "AA:BB".into(),
                candidate: "candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host".into(),
            },
            1,
        );
        let offer = mutate(&edits);
        let before = n.sections().len();
        match n.apply_offer(&offer) {
            Ok((answer, _)) => {
                // Our answer is valid SDP that parses again.
                prop_assert!(sdp_parses(&answer), "{}", answer);
            }
            Err(_) => prop_assert_eq!(n.sections().len(), before),
        }
        // An offer of ours, then a mutated answer to it.
        let key = n.add_sender(super::sdp::Sender {
            kind: crate::media::MediaKind::Audio,
            codec: super::sdp::CodecParams {
                codec: crate::media::Codec::Opus,
                mime_type: "audio/opus".into(),
                clock_rate: 48_000,
                channels: 2,
                fmtp: String::new(),
            },
            ssrc: 5,
            stream_id: "s".into(),
            track_id: "t".into(),
            pt: None,
            rtx_ssrc: 6,
            rtx_pt: None,
            removed: false,
        });
        if let Ok(ours) = n.create_offer() {
            prop_assert!(sdp_parses(&ours), "{}", ours);
            let agreed = n.sections().len();
            if n.apply_answer(&mutate(&answer_edits)).is_err() {
                prop_assert_eq!(n.sections().len(), agreed);
                n.rollback();
            }
        }
        let _ = n.sender(key);
    }

    #[test]
    fn arbitrary_stun_never_panics(
        data in proptest::collection::vec(any::<u8>(), 0..600),
        flip in any::<usize>(),
    ) {
        let now = Instant::now();
        let mut ice = IceLite::new("srvufrag".into(), PWD.into());
        let from: SocketAddr = "127.0.0.2:4000".parse().unwrap();
        ice.handle_stun(now, from, &data);
        // A valid check with one bit flipped is refused.
        let mut check = binding_request([1; 12], "srvufrag", "cli", PWD, true);
        let i = flip % check.len();
        check[i] ^= 1 << (flip % 8);
        let _ = ice.handle_stun(now, from, &check);
        while ice.poll_transmit().is_some() {}
    }
}

fn sdp_parses(text: &str) -> bool {
    rtc_sdp::SessionDescription::unmarshal(&mut std::io::Cursor::new(text.as_bytes())).is_ok()
}
