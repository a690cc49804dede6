//! The per-packet cost of sending forwarded RTP, in process and without the kernel, split
//! into what Hearth's transport adds and what the cipher alone costs, beside one loopback
//! `sendto`. Deterministic (no sockets in the first two rows, virtual time), so it also runs
//! under `valgrind --tool=callgrind` for instruction counts.
//!
//!     cargo bench -p hearth-tests --bench forwarding            # prints a Markdown table
//!     PACKETS=20000 valgrind --tool=callgrind target/release/deps/forwarding-*  (built by the above)
//!
//! Rows:
//! 1. `WebRtcPeer::send_rtp` + draining `poll_datagram` on a connected Hearth peer (ICE,
//!    DTLS and SRTP negotiated with an `rtc` client in memory): what sending one forwarded
//!    packet costs inside the transport.
//! 2. `rtc::srtp` `Context::encrypt_rtp` of the same packet with the negotiated profile
//!    (AEAD AES-128-GCM): the cipher's share, the floor of any short path.
//! 3. `sendto` of the encrypted size on a loopback UDP socket (a thread drains the receiver).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hearth_actors::webrtc::{
    Certificate, CodecParams, PeerEvent, PeerSetup, SenderKey, WebRtcPeer,
};
use hearth_engine::forwarder::ForwardedHeader;
use hearth_engine::media::{Codec, MediaKind};
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;

const PAYLOAD: usize = 80; // an Opus speech frame with Hearth's loadgen trailer, about

fn packets() -> usize {
    std::env::var("PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

/// Moves datagrams both ways until `done` or 2,000 rounds; virtual time advances 5 ms a round.
fn pump(
    server: &mut WebRtcPeer,
    client: &mut RTCPeerConnection,
    now: &mut Instant,
    server_addr: SocketAddr,
    client_addr: SocketAddr,
    mut done: impl FnMut(&mut WebRtcPeer, &mut RTCPeerConnection, Instant) -> bool,
) {
    for _ in 0..2_000 {
        if done(server, client, *now) {
            return;
        }
        while let Some(msg) = client.poll_write() {
            server.handle_datagram(*now, client_addr, msg.message);
        }
        while let Some((to, data)) = server.poll_datagram() {
            assert_eq!(to, client_addr, "the server answers the client's address");
            let _ = client.handle_read(TaggedBytesMut {
                now: *now,
                transport: TransportContext {
                    local_addr: client_addr,
                    peer_addr: server_addr,
                    ecn: None,
                    transport_protocol: TransportProtocol::UDP,
                },
                message: data,
            });
        }
        while client.poll_event().is_some() {}
        while client.poll_read().is_some() {}
        *now += Duration::from_millis(5);
        let _ = client.handle_timeout(*now);
        server.handle_timeout(*now);
    }
    panic!("the in-memory connection did not come up");
}

/// A Hearth peer connected in memory to an `rtc` client, with one outgoing Opus stream.
struct Pair {
    server: WebRtcPeer,
    key: SenderKey,
    seq: u16,
    ts: u32,
    encrypted_len: usize,
    // Kept alive: the client's state is part of the connection.
    _client: RTCPeerConnection,
}

fn connected_pair(index: u16, certificate: &Certificate, now: &mut Instant) -> Pair {
    let server_addr: SocketAddr = format!("127.0.0.1:{}", 20_000 + index).parse().unwrap();
    let client_addr: SocketAddr = format!("127.0.0.2:{}", 20_000 + index).parse().unwrap();
    let mut server = WebRtcPeer::new(
        PeerSetup {
            advertised: server_addr,
            certificate: certificate.clone(),
            ufrag: format!("bench{index:05}"),
            pwd: "benchpassword0123456789ab".into(),
        },
        *now,
    )
    .expect("server peer");
    let opus = CodecParams {
        codec: Codec::Opus,
        mime_type: "audio/opus".into(),
        clock_rate: 48_000,
        channels: 2,
        fmtp: "minptime=10;useinbandfec=1".into(),
    };
    let key = server
        .add_sender(MediaKind::Audio, &opus, "stream", "track")
        .expect("sender");
    let offer = server.create_offer(*now).expect("offer");
    let mut client = hearth_tests::rtc_client(client_addr).expect("client peer");
    client
        .set_remote_description(
            *now,
            RTCSessionDescription::offer(offer).expect("offer sdp"),
        )
        .expect("client takes the offer");
    let answer = client.create_answer(None).expect("answer");
    let answer_sdp = answer.sdp.clone();
    client
        .set_local_description(*now, answer)
        .expect("client answers");
    server
        .apply_answer(*now, answer_sdp)
        .expect("server takes the answer");
    let mut connected = false;
    pump(
        &mut server,
        &mut client,
        now,
        server_addr,
        client_addr,
        |s, _, _| {
            while let Some(e) = s.poll_event() {
                connected |= matches!(e, PeerEvent::Connected);
            }
            connected
        },
    );
    // Until DTLS is done on both sides and a packet goes out.
    let mut pair_seq: u16 = 1;
    let mut pair_ts: u32 = 0;
    let payload = Bytes::from(vec![0x5a; PAYLOAD]);
    pump(
        &mut server,
        &mut client,
        now,
        server_addr,
        client_addr,
        |s, _, at| {
            let ok = s
                .send_rtp(
                    at,
                    key,
                    ForwardedHeader {
                        ssrc: key.ssrc,
                        seq: pair_seq,
                        timestamp: pair_ts,
                        marker: false,
                    },
                    payload.clone(),
                )
                .is_ok();
            pair_seq = pair_seq.wrapping_add(1);
            pair_ts = pair_ts.wrapping_add(960);
            ok
        },
    );
    while server.poll_datagram().is_some() {}
    Pair {
        server,
        key,
        seq: pair_seq,
        ts: pair_ts,
        encrypted_len: 0,
        _client: client,
    }
}

/// Sends `n` packets round-robin over `pairs`; returns ns per packet.
fn send_round_robin(pairs: &mut [Pair], n: usize, now: Instant, payload: &Bytes) -> f64 {
    let mut bytes_out = 0usize;
    let start = Instant::now();
    for i in 0..n {
        let p = &mut pairs[i % pairs.len()];
        p.server
            .send_rtp(
                now,
                p.key,
                ForwardedHeader {
                    ssrc: p.key.ssrc,
                    seq: p.seq,
                    timestamp: p.ts,
                    marker: false,
                },
                payload.clone(),
            )
            .expect("send");
        while let Some((_, data)) = p.server.poll_datagram() {
            bytes_out += data.len();
            p.encrypted_len = data.len();
        }
        p.seq = p.seq.wrapping_add(1);
        p.ts = p.ts.wrapping_add(960);
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    assert!(bytes_out >= n * PAYLOAD, "every packet came out");
    ns
}

fn main() {
    let n = packets();
    let peers: usize = std::env::var("PEERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut now = Instant::now();
    let certificate = Certificate::generate().expect("certificate");
    let mut pairs: Vec<Pair> = (0..peers.max(1))
        .map(|i| connected_pair(i as u16, &certificate, &mut now))
        .collect();
    let payload = Bytes::from(vec![0x5a; PAYLOAD]);

    // --- 1. The stack's send path, one peer (hot caches) and many (as in a busy node) ---
    let one_ns = send_round_robin(&mut pairs[..1], n, now, &payload);
    let many_ns = send_round_robin(&mut pairs, n, now, &payload);
    let encrypted_len = pairs[0].encrypted_len;
    let ssrc = pairs[0].key.ssrc.0;

    // --- 2. The cipher alone ----------------------------------------------------------------
    let provider = rtc::crypto::default_provider().expect("crypto provider");
    let profile = ProtectionProfile::AeadAes128Gcm;
    let mut ctx = Context::new(
        &[7u8; 16],
        &[9u8; 12],
        profile,
        None,
        None,
        provider.crypto(),
    )
    .expect("srtp context");
    let mut plain = BytesMut::with_capacity(12 + PAYLOAD);
    let start = Instant::now();
    for i in 0..n {
        plain.clear();
        plain.extend_from_slice(&[0x80, 111]);
        plain.extend_from_slice(&(i as u16).to_be_bytes());
        plain.extend_from_slice(&((i as u32) * 960).to_be_bytes());
        plain.extend_from_slice(&ssrc.to_be_bytes());
        plain.extend_from_slice(&payload);
        let out = ctx.encrypt_rtp(&plain).expect("encrypt");
        std::hint::black_box(out);
    }
    let cipher_ns = start.elapsed().as_nanos() as f64 / n as f64;

    // --- 3. One loopback sendto -------------------------------------------------------------
    let rx = UdpSocket::bind("127.0.0.1:0").expect("receiver");
    let rx_addr = rx.local_addr().unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let drain = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut got = 0usize;
        while rx.recv(&mut buf).is_ok() {
            got += 1;
        }
        got
    });
    let tx = UdpSocket::bind("127.0.0.1:0").expect("sender");
    let datagram = vec![0u8; encrypted_len.max(1)];
    let sends = n.min(100_000);
    let start = Instant::now();
    for _ in 0..sends {
        let _ = tx.send_to(&datagram, rx_addr);
    }
    let sendto_ns = start.elapsed().as_nanos() as f64 / sends as f64;
    let received = drain.join().unwrap_or(0);

    println!(
        "forwarded-packet send cost: {n} packets of {PAYLOAD} B payload ({encrypted_len} B on the wire)\n"
    );
    println!("| step | per packet |");
    println!("|---|---|");
    println!(
        "| Hearth peer `send_rtp` + `poll_datagram` (webrtc-rs `rtc` pipeline incl. SRTP), one peer, no kernel | {:.2} µs |",
        one_ns / 1000.0
    );
    println!(
        "| the same, round-robin over {} connected peers | {:.2} µs |",
        pairs.len(),
        many_ns / 1000.0
    );
    println!(
        "| `rtc::srtp` `encrypt_rtp` alone (AEAD AES-128-GCM), one context | {:.2} µs |",
        cipher_ns / 1000.0
    );
    println!(
        "| `sendto` on loopback ({sends} sends, {received} received by a draining thread) | {:.2} µs |",
        sendto_ns / 1000.0
    );
}
