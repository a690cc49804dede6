//! What dropping VP9 spatial layers per subscriber adds to a forwarded packet: the
//! forwarder alone (every packet forwarded, as for VP8 or H.264) against the SVC path (the
//! layer indices read, the layer chosen, packets above it skipped with the ones after them
//! renumbered), on a synthetic L3T3 stream: 30 pictures/s, layers of 1, 2 and 4 packets.
//! In process, no cipher, no socket: the engine's share of the per-packet cost only.
//!
//!     cargo bench -p hearth-tests --bench svc        # PACKETS (default 2,000,000)

use std::time::{Duration, Instant};

use bytes::Bytes;
use hearth_engine::codec::vp9_layer;
use hearth_engine::forwarder::Forwarder;
use hearth_engine::media::{MediaKind, MediaPacket, Ssrc};
use hearth_engine::svc::{SvcSelector, SvcVerdict};

/// Packets per spatial layer in each picture (S0, S1, S2).
const LAYER_PACKETS: [usize; 3] = [1, 2, 4];

/// The synthetic stream: each picture's packets in order, with their VP9 descriptors
/// (I with a 15-bit picture id, L, non-flexible; B and E per layer frame, P except on
/// keyframes every 90 pictures).
fn stream(n: usize) -> Vec<MediaPacket> {
    let t0 = Instant::now();
    let mut out = Vec::with_capacity(n);
    let mut seq = 0u16;
    let mut picture = 0u32;
    while out.len() < n {
        let keyframe = picture.is_multiple_of(90);
        for (spatial, &count) in LAYER_PACKETS.iter().enumerate() {
            for k in 0..count {
                let begin = k == 0;
                let end = k + 1 == count;
                let b0 = 0x80
                    | 0x20
                    | if keyframe { 0 } else { 0x40 }
                    | if begin { 0x08 } else { 0 }
                    | if end { 0x04 } else { 0 };
                let pid = (picture & 0x7fff) as u16 | 0x8000;
                let mut payload = vec![b0, (pid >> 8) as u8, pid as u8, (spatial as u8) << 1, 0];
                payload.resize(1000, 0x5a);
                out.push(MediaPacket {
                    ssrc: Ssrc(7),
                    seq,
                    timestamp: picture * 3000,
                    marker: spatial == 2 && end,
                    payload_type: 98,
                    payload: Bytes::from(payload),
                    arrival: t0 + Duration::from_millis(u64::from(picture) * 33),
                    keyframe: keyframe && spatial == 0 && begin,
                    audio_level: None,
                });
                seq = seq.wrapping_add(1);
            }
        }
        picture += 1;
    }
    out.truncate(n);
    out
}

/// ns per packet: every packet through the forwarder.
fn forwarder_only(packets: &[MediaPacket]) -> f64 {
    let mut f = Forwarder::new(Ssrc(1), MediaKind::Video, 90_000);
    let start = Instant::now();
    for p in packets {
        std::hint::black_box(f.forward(p).ok());
    }
    start.elapsed().as_nanos() as f64 / packets.len() as f64
}

/// ns per packet, and the share forwarded: layers up to `target` kept.
fn svc(packets: &[MediaPacket], target: u8) -> (f64, f64) {
    let mut f = Forwarder::new(Ssrc(1), MediaKind::Video, 90_000);
    let mut s = SvcSelector::new(target);
    let mut sent = 0usize;
    let start = Instant::now();
    for p in packets {
        let verdict = match vp9_layer(&p.payload) {
            Some(layer) => s.select(p.seq, layer, p.keyframe, p.marker),
            None => SvcVerdict::Forward { marker: p.marker },
        };
        match verdict {
            SvcVerdict::Forward { .. } => {
                if f.forward(p).is_ok() {
                    sent += 1;
                }
            }
            SvcVerdict::Drop => {
                std::hint::black_box(f.skip(p));
            }
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / packets.len() as f64;
    (ns, sent as f64 / packets.len() as f64)
}

fn main() {
    let n: usize = std::env::var("PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let packets = stream(n);
    // Warm up, then measure.
    forwarder_only(&packets[..n.min(100_000)]);
    let base = forwarder_only(&packets);
    println!("VP9 L3T3 stream, {n} packets (layers of 1, 2, 4 packets per picture)\n");
    println!("| path | ns per packet | packets forwarded |");
    println!("|---|---|---|");
    println!("| forwarder alone (every packet) | {base:.1} | 100 % |");
    for target in [2u8, 1, 0] {
        let (ns, share) = svc(&packets, target);
        println!(
            "| SVC, subscriber on spatial layer {target} | {ns:.1} | {:.0} % |",
            share * 100.0
        );
    }
}
