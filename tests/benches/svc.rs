//! What dropping VP9 spatial layers per subscriber adds to a forwarded packet: the
//! forwarder alone (every packet forwarded, as for VP8 or H.264) against the SVC path (the
//! layer indices read, the layer chosen, packets above it skipped with the ones after them
//! renumbered), on a synthetic L3T3 stream: 30 pictures/s, layers of 1, 2 and 4 packets.
//! Then the same for VP8 temporal layers: a synthetic `L1T3` stream (libwebrtc's eight-frame
//! pattern, three packets a frame) through the forwarder and the descriptor rewriting alone
//! (what every VP8 leg did before temporal layers) against [`Vp8Stream`] (the temporal
//! layer read and chosen, pictures above it skipped and numbered past).
//! In process, no cipher, no socket: the engine's share of the per-packet cost only.
//!
//!     cargo bench -p hearth-tests --bench svc        # PACKETS (default 2,000,000)

use std::time::{Duration, Instant};

use bytes::Bytes;
use hearth_engine::codec::{VP8_DESCRIPTOR_MAX, Vp8Munger, vp9_layer};
use hearth_engine::forwarder::Forwarder;
use hearth_engine::media::{MediaKind, MediaPacket, Ssrc};
use hearth_engine::svc::{SvcSelector, SvcVerdict, Vp8Stream};

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
                    layer: None,
                    dependency: None,
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

/// A VP8 `L1T3` stream: libwebrtc's pattern (TL0, TL2 with Y, TL1 with Y, TL2, TL0, TL2,
/// TL1, TL2), three packets a frame, a keyframe every 88 frames.
fn vp8_stream(n: usize) -> Vec<MediaPacket> {
    const PATTERN: [(u8, bool); 8] = [
        (0, false),
        (2, true),
        (1, true),
        (2, false),
        (0, false),
        (2, false),
        (1, false),
        (2, false),
    ];
    let t0 = Instant::now();
    let mut out = Vec::with_capacity(n);
    let (mut seq, mut frame, mut tl0) = (0u16, 0u32, 0u8);
    while out.len() < n {
        let (tid, sync) = PATTERN[frame as usize % 8];
        // Every 88 frames (a TL0 frame, as libwebrtc's keyframes are).
        let keyframe = frame.is_multiple_of(88);
        if tid == 0 && frame > 0 {
            tl0 = tl0.wrapping_add(1);
        }
        let pid = (frame & 0x7fff) as u16;
        for k in 0..3 {
            let mut payload = vec![
                if k == 0 { 0x90 } else { 0x80 },
                0xe0,
                0x80 | (pid >> 8) as u8,
                pid as u8,
                tl0,
                tid << 6 | if sync { 0x20 } else { 0 },
                u8::from(!keyframe || k > 0),
            ];
            payload.resize(1000, 0x5a);
            out.push(MediaPacket {
                ssrc: Ssrc(7),
                seq,
                timestamp: frame * 3000,
                marker: k == 2,
                payload_type: 96,
                payload: Bytes::from(payload),
                arrival: t0 + Duration::from_millis(u64::from(frame) * 33),
                keyframe: keyframe && k == 0,
                audio_level: None,
                layer: None,
                dependency: None,
            });
            seq = seq.wrapping_add(1);
        }
        frame += 1;
    }
    out.truncate(n);
    out
}

/// ns per packet: the forwarder and the descriptor rewriting, every packet.
fn vp8_munged(packets: &[MediaPacket]) -> f64 {
    let mut f = Forwarder::new(Ssrc(1), MediaKind::Video, 90_000);
    let mut m = Vp8Munger::default();
    let mut out = [0u8; VP8_DESCRIPTOR_MAX];
    let start = Instant::now();
    for p in packets {
        if f.forward(p).is_ok() {
            std::hint::black_box(m.munge(f.segments(), false, &p.payload, &mut out));
        }
    }
    start.elapsed().as_nanos() as f64 / packets.len() as f64
}

/// ns per packet, and the share forwarded: temporal layers up to `target` kept.
fn vp8_temporal(packets: &[MediaPacket], target: u8) -> (f64, f64) {
    let mut f = Forwarder::new(Ssrc(1), MediaKind::Video, 90_000);
    let mut s = Vp8Stream::default();
    s.set_temporal_target(target);
    let mut out = [0u8; VP8_DESCRIPTOR_MAX];
    let mut sent = 0usize;
    let start = Instant::now();
    for p in packets {
        if s.leave_out(&mut f, p) {
            continue;
        }
        if f.forward(p).is_ok() {
            std::hint::black_box(s.munge(f.segments(), false, &p.payload, &mut out));
            sent += 1;
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
    let packets = vp8_stream(n);
    vp8_munged(&packets[..n.min(100_000)]);
    let base = vp8_munged(&packets);
    println!("\nVP8 L1T3 stream, {n} packets (three per frame)\n");
    println!("| path | ns per packet | packets forwarded |");
    println!("|---|---|---|");
    println!("| forwarder and descriptor rewriting (every packet) | {base:.1} | 100 % |");
    for (target, name) in [(u8::MAX, "all"), (1, "TL0 and TL1"), (0, "TL0")] {
        let (ns, share) = vp8_temporal(&packets, target);
        println!(
            "| temporal layers, subscriber on {name} | {ns:.1} | {:.0} % |",
            share * 100.0
        );
    }
    // Again last: the first pass over a freshly built stream pays for faulting it in.
    let again = vp8_munged(&packets);
    println!("| forwarder and descriptor rewriting, again | {again:.1} | 100 % |");
}
