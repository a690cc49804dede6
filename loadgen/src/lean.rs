//! The lean client (`--client lean`): a WebRTC participant that does what a server needs
//! from a browser and no more, at a fraction of the full `rtc` peer connection's cost, so
//! that one generator core can drive a server core to its limit.
//!
//! It is an implementation of its own, independent of Hearth's server transport (it links
//! none of it): webrtc-rs's component crates for DTLS (`rtc-dtls`, as the client) and SRTP
//! (`rtc-srtp`), and here a small SDP writer and reader, the controlling side of ICE towards
//! an ICE-lite server (binding requests with USE-CANDIDATE, then consent checks every few
//! seconds, RFC 7675), and RTCP reduced to what a server relies on (receiver reports once a
//! second; PLI and FIR honoured with a keyframe).
//!
//! What it leaves out, on purpose, compared with the full client: trickle ICE and
//! candidates other than its one host address, header extensions (no transport-wide
//! congestion control feedback, no audio level), NACK and retransmissions (it neither asks
//! for nor answers them), RTX, and renegotiating its own tracks after the first offer. It
//! speaks to ICE-lite servers only (Hearth), not to Janus.
//!
//! Reception: every packet's clear RTP header feeds loss and jitter; one packet in
//! `decrypt_every` per participant is authenticated and decrypted (1, the default, is every
//! packet), and only decrypted packets give latency samples and keyframe counts. A packet
//! that fails authentication is counted (`media_errors`), never accounted as received.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use hmac::{Hmac, Mac};
use rtc_dtls::config::{ConfigBuilder, ExtendedMasterSecretType, HandshakeConfig};
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use rtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc_srtp::context::Context;
use rtc_srtp::protection_profile::ProtectionProfile;
use sha2::{Digest, Sha256};

use crate::media::{self, Trailer};
use crate::peer::{PeerOut, Reception, RtpFields, Sending};

/// Binding requests before ICE succeeded: every 50 ms for 10 s.
const CHECK_EVERY: Duration = Duration::from_millis(50);
const CHECKS_BEFORE_FAILING: u32 = 200;
/// Consent checks once connected (RFC 7675 asks for about 5 s; a server gives up after 30).
const CONSENT_EVERY: Duration = Duration::from_millis(2500);
const CONSENT_LOST_AFTER: Duration = Duration::from_secs(30);
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// The pseudo address of the one DTLS association.
const DTLS_PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 9);
const STUN_COOKIE: u32 = 0x2112_A442;

/// The generator's DTLS certificate and client configuration, shared by all lean peers.
struct Identity {
    config: Arc<HandshakeConfig>,
    fingerprint: String,
    crypto: Arc<dyn rtc_crypto::RTCCryptoProvider>,
}

fn identity() -> Result<&'static Identity, String> {
    static ID: OnceLock<Result<Identity, String>> = OnceLock::new();
    ID.get_or_init(|| {
        let err = |e: &dyn std::fmt::Display| format!("DTLS setup: {e}");
        let crypto = rtc_crypto::default_provider().map_err(|e| err(&e))?;
        let cert = rtc_dtls::crypto::Certificate::generate_self_signed(
            vec!["hearth-loadgen".to_owned()],
            crypto.crypto(),
        )
        .map_err(|e| err(&e))?;
        let der = cert
            .certificate
            .first()
            .ok_or("DTLS setup: the generated certificate is empty")?;
        let fingerprint = fingerprint_of(der.as_ref());
        let config = ConfigBuilder::default()
            .with_crypto_provider(Arc::clone(&crypto))
            .with_certificates(vec![cert.clone()])
            .with_srtp_protection_profiles(vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            ])
            // The server's self-signed certificate is checked against its SDP fingerprint.
            .with_insecure_skip_verify(true)
            .with_extended_master_secret(ExtendedMasterSecretType::Require)
            .with_server_name("hearth".into())
            .build(true, None)
            .map_err(|e| err(&e))?;
        Ok(Identity {
            config: Arc::new(config),
            fingerprint,
            crypto,
        })
    })
    .as_ref()
    .map_err(Clone::clone)
}

fn fingerprint_of(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..len)
        .map(|_| ALPHABET[rand::random::<u32>() as usize % ALPHABET.len()] as char)
        .collect()
}

// ---- SDP ---------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Audio,
    Video,
}

/// One codec line of a description.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Codec {
    pt: u8,
    /// Encoding name as written (`opus`, `VP8`, `rtx`, ...).
    name: String,
    clock: u32,
    channels: Option<u16>,
    fmtp: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

/// One m-section of a remote description.
#[derive(Clone, Debug)]
struct RemoteSection {
    /// `audio`, `video`, or another media type (rejected).
    media: String,
    port0: bool,
    mid: String,
    direction: Direction,
    codecs: Vec<Codec>,
}

/// What a remote description says, as far as this client cares.
#[derive(Clone, Debug, Default)]
struct RemoteDesc {
    ufrag: Option<String>,
    pwd: Option<String>,
    /// `sha-256` fingerprints.
    fingerprints: Vec<String>,
    /// The first UDP candidate.
    candidate: Option<SocketAddr>,
    sections: Vec<RemoteSection>,
}

fn parse_desc(sdp: &str) -> Result<RemoteDesc, String> {
    let mut d = RemoteDesc::default();
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            let f: Vec<&str> = m.split_whitespace().collect();
            if f.len() < 3 {
                return Err(format!("malformed m-line {line:?}"));
            }
            d.sections.push(RemoteSection {
                media: f[0].to_owned(),
                port0: f[1] == "0",
                mid: String::new(),
                direction: Direction::SendRecv,
                codecs: Vec::new(),
            });
            continue;
        }
        let Some(a) = line.strip_prefix("a=") else {
            continue;
        };
        let (key, value) = a.split_once(':').unwrap_or((a, ""));
        match key {
            "ice-ufrag" if d.ufrag.is_none() => d.ufrag = Some(value.to_owned()),
            "ice-pwd" if d.pwd.is_none() => d.pwd = Some(value.to_owned()),
            "fingerprint" => {
                if let Some(("sha-256", fp)) = value.split_once(' ')
                    && !d.fingerprints.iter().any(|f| f.eq_ignore_ascii_case(fp))
                {
                    d.fingerprints.push(fp.trim().to_owned());
                }
            }
            "candidate" if d.candidate.is_none() => {
                let f: Vec<&str> = value.split_whitespace().collect();
                if f.len() >= 6
                    && f[2].eq_ignore_ascii_case("udp")
                    && let (Ok(ip), Ok(port)) = (f[4].parse(), f[5].parse())
                {
                    d.candidate = Some(SocketAddr::new(ip, port));
                }
            }
            _ => {}
        }
        let Some(s) = d.sections.last_mut() else {
            continue;
        };
        match key {
            "mid" => s.mid = value.to_owned(),
            "sendrecv" => s.direction = Direction::SendRecv,
            "sendonly" => s.direction = Direction::SendOnly,
            "recvonly" => s.direction = Direction::RecvOnly,
            "inactive" => s.direction = Direction::Inactive,
            "rtpmap" => {
                let Some((pt, enc)) = value.split_once(' ') else {
                    continue;
                };
                let Ok(pt) = pt.parse() else { continue };
                let mut parts = enc.split('/');
                let name = parts.next().unwrap_or_default().to_owned();
                let clock = parts
                    .next()
                    .and_then(|c| c.parse().ok())
                    .filter(|&c| c > 0)
                    .unwrap_or(90_000);
                let channels = parts.next().and_then(|c| c.parse().ok());
                s.codecs.push(Codec {
                    pt,
                    name,
                    clock,
                    channels,
                    fmtp: None,
                });
            }
            "fmtp" => {
                if let Some((pt, params)) = value.split_once(' ')
                    && let Ok(pt) = pt.parse::<u8>()
                    && let Some(c) = s.codecs.iter_mut().find(|c| c.pt == pt)
                {
                    c.fmtp = Some(params.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok(d)
}

/// One m-section as this client describes it.
#[derive(Clone, Debug)]
struct Section {
    mid: String,
    /// `audio`, `video` or another media type.
    media: String,
    rejected: bool,
    /// One of this client's outgoing tracks.
    ours: Option<Kind>,
    /// The server sends on it (it is one of the server's tracks and live).
    receives: bool,
    /// Ours and the server receives it (an answer follows the offer's direction).
    sends: bool,
    /// The codec in use (ours: as answered; the server's: the one we accepted).
    codec: Option<Codec>,
}

/// An outgoing track.
struct Outgoing {
    kind: Kind,
    mid: String,
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    /// Agreed payload type (after the server's answer).
    pt: Option<u8>,
}

impl Outgoing {
    fn codec(&self) -> Codec {
        match self.kind {
            Kind::Audio => Codec {
                pt: crate::peer::OPUS_PT,
                name: "opus".into(),
                clock: 48_000,
                channels: Some(2),
                fmtp: Some("minptime=10;useinbandfec=1".into()),
            },
            Kind::Video => Codec {
                pt: crate::peer::VP8_PT,
                name: "VP8".into(),
                clock: 90_000,
                channels: None,
                fmtp: None,
            },
        }
    }
}

// ---- STUN --------------------------------------------------------------------------------

fn stun_attr(m: &mut Vec<u8>, typ: u16, value: &[u8]) {
    m.extend_from_slice(&typ.to_be_bytes());
    m.extend_from_slice(&(value.len() as u16).to_be_bytes());
    m.extend_from_slice(value);
    m.resize(m.len().next_multiple_of(4), 0);
}

/// A binding request from the controlling agent (RFC 8445 §7.1.1), with MESSAGE-INTEGRITY
/// under the server's password and FINGERPRINT.
fn binding_request(
    txid: &[u8; 12],
    username: &str,
    remote_pwd: &str,
    tie_breaker: u64,
    nominate: bool,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(&[0x00, 0x01, 0x00, 0x00]);
    m.extend_from_slice(&STUN_COOKIE.to_be_bytes());
    m.extend_from_slice(txid);
    stun_attr(&mut m, 0x0006, username.as_bytes());
    // PRIORITY of a peer-reflexive candidate of type preference 110, component 1.
    stun_attr(
        &mut m,
        0x0024,
        &((110u32 << 24) | (65_535 << 8) | 255).to_be_bytes(),
    );
    stun_attr(&mut m, 0x802A, &tie_breaker.to_be_bytes());
    if nominate {
        stun_attr(&mut m, 0x0025, &[]);
    }
    let set_len = |m: &mut Vec<u8>, extra: usize| {
        let len = (m.len() - 20 + extra) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
    };
    set_len(&mut m, 24);
    let tag = match Hmac::<sha1::Sha1>::new_from_slice(remote_pwd.as_bytes()) {
        Ok(mut mac) => {
            mac.update(&m);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => vec![0; 20],
    };
    stun_attr(&mut m, 0x0008, &tag);
    set_len(&mut m, 8);
    let crc = crc32fast::hash(&m) ^ 0x5354_554e;
    stun_attr(&mut m, 0x8028, &crc.to_be_bytes());
    m
}

/// The transaction id of a binding success response, if `data` is one.
fn binding_success(data: &[u8]) -> Option<[u8; 12]> {
    if data.len() < 20 || data[0..2] != [0x01, 0x01] || data[4..8] != STUN_COOKIE.to_be_bytes() {
        return None;
    }
    data[8..20].try_into().ok()
}

// ---- RTP / RTCP --------------------------------------------------------------------------

/// Clear-text fields of an RTP header and its length (CSRCs and extension included).
struct RtpHead {
    pt: u8,
    seq: u16,
    ts: u32,
    ssrc: u32,
    len: usize,
}

impl RtpHead {
    fn fields(&self, clock: Option<u32>) -> RtpFields {
        RtpFields {
            payload_type: self.pt,
            seq: self.seq,
            timestamp: self.ts,
            ssrc: self.ssrc,
            clock,
        }
    }
}

fn rtp_head(p: &[u8]) -> Option<RtpHead> {
    if p.len() < 12 || p[0] >> 6 != 2 {
        return None;
    }
    let mut len = 12 + 4 * usize::from(p[0] & 0x0f);
    if p[0] & 0x10 != 0 {
        let words = p.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    if len > p.len() {
        return None;
    }
    Some(RtpHead {
        pt: p[1] & 0x7f,
        seq: u16::from_be_bytes([p[2], p[3]]),
        ts: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
        ssrc: u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
        len,
    })
}

/// Media SSRCs a compound RTCP packet asks keyframes of (PLI, FIR).
fn keyframe_requests(mut p: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    while p.len() >= 4 {
        let fmt = p[0] & 0x1f;
        let pt = p[1];
        let len = 4 * (usize::from(u16::from_be_bytes([p[2], p[3]])) + 1);
        let Some(packet) = p.get(..len) else { break };
        if pt == 206 && fmt == 1 && packet.len() >= 12 {
            out.push(u32::from_be_bytes([
                packet[8], packet[9], packet[10], packet[11],
            ]));
        } else if pt == 206 && fmt == 4 {
            for entry in packet.get(12..).unwrap_or_default().chunks_exact(8) {
                out.push(u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]));
            }
        }
        p = &p[len..];
    }
    out
}

/// Whether to decrypt this packet of stream `ssrc`: one in `every` per stream, always its
/// first (the SRTP context learns the stream's rollover counter from it).
fn sampled(seen: &mut std::collections::HashMap<u32, u32>, ssrc: u32, every: u32) -> bool {
    let n = seen.entry(ssrc).or_insert(0);
    let decrypt = n.is_multiple_of(every.max(1));
    *n = n.wrapping_add(1);
    decrypt
}

// ---- the peer ----------------------------------------------------------------------------

struct Srtp {
    tx: Context,
    rx: Context,
    /// Authentication tag length of the negotiated profile.
    tag_len: usize,
}

/// The server's transport parameters, from its first description.
struct Remote {
    ufrag: String,
    pwd: String,
    fingerprints: Vec<String>,
    addr: SocketAddr,
}

pub struct LeanPeer {
    pub id: u32,
    local: SocketAddr,
    ufrag: String,
    pwd: String,
    remote: Option<Remote>,
    tie_breaker: u64,
    /// ICE: the nominated check succeeded.
    ice_up: bool,
    checks_sent: u32,
    next_check: Instant,
    last_response: Option<Instant>,
    outstanding: Vec<[u8; 12]>,
    dtls: Option<Endpoint>,
    srtp: Option<Srtp>,
    /// Agreed sections, in order.
    sections: Vec<Section>,
    /// Our outstanding offer.
    pending: Option<Vec<Section>>,
    need_offer: bool,
    session_version: u64,
    session_id: u64,
    outgoing: Vec<Outgoing>,
    sending: Sending,
    keyframe_due: bool,
    frame: u64,
    next_report: Instant,
    /// Decrypt one received packet in this many per stream (1: all); the first packet of a
    /// stream always (the SRTP context learns its rollover counter from it).
    decrypt_every: u32,
    /// Packets received per SSRC, for the sampling.
    received: std::collections::HashMap<u32, u32>,
    /// Our SSRC in receiver reports when we send nothing.
    report_ssrc: u32,
    pub rx: Reception,
    pub connected: bool,
    pub failed: bool,
    out: Vec<PeerOut>,
    transmit: Vec<BytesMut>,
}

impl LeanPeer {
    pub fn new(
        id: u32,
        local: SocketAddr,
        sending: Sending,
        epoch: Instant,
        decrypt_every: u32,
    ) -> Result<LeanPeer, String> {
        identity()?;
        let now = Instant::now();
        let mut peer = LeanPeer {
            id,
            local,
            ufrag: random_token(8),
            pwd: random_token(24),
            remote: None,
            tie_breaker: rand::random(),
            ice_up: false,
            checks_sent: 0,
            next_check: now,
            last_response: None,
            outstanding: Vec::new(),
            dtls: None,
            srtp: None,
            sections: Vec::new(),
            pending: None,
            need_offer: false,
            session_version: 1,
            session_id: rand::random::<u64>() >> 1,
            outgoing: Vec::new(),
            sending,
            keyframe_due: true,
            frame: 0,
            next_report: now + REPORT_EVERY,
            decrypt_every: decrypt_every.max(1),
            received: std::collections::HashMap::new(),
            report_ssrc: rand::random(),
            rx: Reception::new(epoch),
            connected: false,
            failed: false,
            out: Vec::new(),
            transmit: Vec::new(),
        };
        let kinds = [
            (sending.audio, Kind::Audio, "lean-a"),
            (sending.video.is_some(), Kind::Video, "lean-v"),
        ];
        for (wanted, kind, mid) in kinds {
            if wanted {
                peer.outgoing.push(Outgoing {
                    kind,
                    mid: mid.to_owned(),
                    ssrc: rand::random(),
                    seq: rand::random(),
                    timestamp: rand::random(),
                    pt: None,
                });
                peer.need_offer = true;
            }
        }
        peer.maybe_offer();
        Ok(peer)
    }

    pub fn take_out(&mut self) -> Vec<PeerOut> {
        std::mem::take(&mut self.out)
    }

    fn fail(&mut self, why: String) {
        if !self.failed {
            self.failed = true;
            self.connected = false;
            self.out.push(PeerOut::Failed(why));
        }
    }

    // ---- negotiation ---------------------------------------------------------------------

    fn write(&mut self, sections: &[Section], setup: &str) -> Result<String, String> {
        let id = identity()?;
        self.session_version += 1;
        let mut s = String::with_capacity(512 + 400 * sections.len());
        let bundle: Vec<&str> = sections
            .iter()
            .filter(|s| !s.rejected)
            .map(|s| s.mid.as_str())
            .collect();
        s.push_str(&format!(
            "v=0\r\no=- {} {} IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n",
            self.session_id, self.session_version
        ));
        if !bundle.is_empty() {
            s.push_str(&format!("a=group:BUNDLE {}\r\n", bundle.join(" ")));
        }
        s.push_str("a=msid-semantic: WMS *\r\n");
        for sec in sections {
            let c = match &sec.codec {
                Some(c) if !sec.rejected => c,
                _ => {
                    s.push_str(&format!(
                        "m={} 0 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=mid:{}\r\na=inactive\r\n",
                        sec.media, sec.mid
                    ));
                    continue;
                }
            };
            let pt = c.pt;
            s.push_str(&format!(
                "m={} 9 UDP/TLS/RTP/SAVPF {pt}\r\nc=IN IP4 0.0.0.0\r\na=mid:{}\r\n",
                sec.media, sec.mid
            ));
            s.push_str(&format!(
                "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\na=fingerprint:sha-256 {}\r\na=setup:{setup}\r\n",
                self.ufrag, self.pwd, id.fingerprint
            ));
            let direction = match (sec.ours.is_some() && sec.sends, sec.receives) {
                (true, _) => "sendonly",
                (false, true) => "recvonly",
                (false, false) => "inactive",
            };
            s.push_str(&format!("a={direction}\r\na=rtcp-mux\r\na=rtcp-rsize\r\n"));
            match c.channels {
                Some(ch) => s.push_str(&format!("a=rtpmap:{pt} {}/{}/{ch}\r\n", c.name, c.clock)),
                None => s.push_str(&format!("a=rtpmap:{pt} {}/{}\r\n", c.name, c.clock)),
            }
            if let Some(f) = &c.fmtp {
                s.push_str(&format!("a=fmtp:{pt} {f}\r\n"));
            }
            if let Some(kind) = sec.ours {
                if kind == Kind::Video {
                    s.push_str(&format!(
                        "a=rtcp-fb:{pt} nack pli\r\na=rtcp-fb:{pt} ccm fir\r\n"
                    ));
                }
                if let Some(o) = self.outgoing.iter().find(|o| o.mid == sec.mid) {
                    let track = if kind == Kind::Audio {
                        "audio"
                    } else {
                        "video"
                    };
                    s.push_str(&format!(
                        "a=msid:lg-{id} lg-{id}-{track}\r\na=ssrc:{ssrc} cname:lg-{id}\r\na=ssrc:{ssrc} msid:lg-{id} lg-{id}-{track}\r\n",
                        id = self.id,
                        ssrc = o.ssrc
                    ));
                }
            }
            s.push_str(&format!(
                "a=candidate:1 1 udp 2130706431 {} {} typ host\r\na=end-of-candidates\r\n",
                self.local.ip(),
                self.local.port()
            ));
        }
        Ok(s)
    }

    fn maybe_offer(&mut self) {
        if !self.need_offer || self.pending.is_some() || self.failed {
            return;
        }
        self.need_offer = false;
        let mut next = self.sections.clone();
        for o in &self.outgoing {
            if next.iter().any(|s| s.mid == o.mid) {
                continue;
            }
            next.push(Section {
                mid: o.mid.clone(),
                media: if o.kind == Kind::Audio {
                    "audio"
                } else {
                    "video"
                }
                .into(),
                rejected: false,
                ours: Some(o.kind),
                receives: false,
                sends: true,
                codec: Some(o.codec()),
            });
        }
        match self.write(&next, "actpass") {
            Ok(sdp) => {
                self.pending = Some(next);
                self.out.push(PeerOut::Offer(sdp));
            }
            Err(e) => self.fail(e),
        }
    }

    /// Takes the server's transport parameters from its first description with them.
    fn learn_remote(&mut self, d: &RemoteDesc, now: Instant) {
        if self.remote.is_some() {
            return;
        }
        if let (Some(ufrag), Some(pwd), Some(addr)) = (&d.ufrag, &d.pwd, d.candidate) {
            self.remote = Some(Remote {
                ufrag: ufrag.clone(),
                pwd: pwd.clone(),
                fingerprints: d.fingerprints.clone(),
                addr,
            });
            self.next_check = now;
        }
    }

    pub fn on_remote_offer(&mut self, sdp: String) {
        let now = Instant::now();
        let desc = match parse_desc(&sdp) {
            Ok(d) => d,
            Err(e) => return self.fail(format!("server offer: {e}")),
        };
        if self.pending.take().is_some() {
            // Crossing offers: we are polite, roll ours back and offer again after answering.
            self.need_offer = true;
        }
        let mut next = Vec::with_capacity(desc.sections.len());
        for r in &desc.sections {
            let ours = self
                .sections
                .iter()
                .find(|s| s.mid == r.mid)
                .and_then(|s| s.ours);
            let media_kind = match r.media.as_str() {
                "audio" => Some(Kind::Audio),
                "video" => Some(Kind::Video),
                _ => None,
            };
            let codec = match (ours, media_kind) {
                (Some(kind), _) => {
                    let want = if kind == Kind::Audio { "opus" } else { "VP8" };
                    r.codecs
                        .iter()
                        .find(|c| c.name.eq_ignore_ascii_case(want))
                        .cloned()
                }
                // The server's track: any media codec it offers (nothing is decoded).
                (None, Some(_)) => r
                    .codecs
                    .iter()
                    .find(|c| {
                        !["rtx", "red", "ulpfec", "flexfec-03"]
                            .iter()
                            .any(|n| c.name.eq_ignore_ascii_case(n))
                    })
                    .cloned(),
                (None, None) => None,
            };
            let rejected = r.port0 || codec.is_none();
            next.push(Section {
                mid: r.mid.clone(),
                media: r.media.clone(),
                rejected,
                ours: if rejected { None } else { ours },
                receives: !rejected
                    && ours.is_none()
                    && matches!(r.direction, Direction::SendOnly | Direction::SendRecv),
                // Our track goes out only where the server receives.
                sends: matches!(r.direction, Direction::RecvOnly | Direction::SendRecv),
                codec: if rejected { None } else { codec },
            });
        }
        self.learn_remote(&desc, now);
        match self.write(&next, "active") {
            Ok(answer) => {
                self.sections = next;
                self.sync_payload_types();
                self.out.push(PeerOut::Answer(answer));
            }
            Err(e) => return self.fail(e),
        }
        if self
            .outgoing
            .iter()
            .any(|o| !self.sections.iter().any(|s| s.mid == o.mid))
        {
            self.need_offer = true;
        }
        self.maybe_offer();
        self.start_if_ready(now);
    }

    pub fn on_remote_answer(&mut self, sdp: String) {
        let now = Instant::now();
        let Some(mut offered) = self.pending.take() else {
            return;
        };
        let desc = match parse_desc(&sdp) {
            Ok(d) => d,
            Err(e) => return self.fail(format!("server answer: {e}")),
        };
        for (s, r) in offered.iter_mut().zip(&desc.sections) {
            if r.port0 {
                s.rejected = true;
                s.ours = None;
                s.receives = false;
                continue;
            }
            if let Some(kind) = s.ours {
                s.sends = matches!(r.direction, Direction::RecvOnly | Direction::SendRecv);
                let want = if kind == Kind::Audio { "opus" } else { "VP8" };
                match r.codecs.iter().find(|c| c.name.eq_ignore_ascii_case(want)) {
                    Some(c) => s.codec = Some(c.clone()),
                    None => {
                        s.rejected = true;
                        s.ours = None;
                    }
                }
            }
        }
        self.sections = offered;
        self.sync_payload_types();
        self.keyframe_due = true;
        self.learn_remote(&desc, now);
        self.maybe_offer();
        self.start_if_ready(now);
    }

    fn sync_payload_types(&mut self) {
        for o in &mut self.outgoing {
            o.pt = self
                .sections
                .iter()
                .find(|s| s.mid == o.mid && s.ours.is_some() && s.sends)
                .and_then(|s| s.codec.as_ref())
                .map(|c| c.pt);
        }
    }

    /// The clock rate of a payload type the server sends.
    fn clock_of(&self, pt: u8) -> Option<u32> {
        self.sections
            .iter()
            .filter_map(|s| s.codec.as_ref())
            .find(|c| c.pt == pt)
            .map(|c| c.clock)
    }

    // ---- ICE and DTLS --------------------------------------------------------------------

    fn start_if_ready(&mut self, now: Instant) {
        if self.remote.is_some() && !self.ice_up && self.checks_sent == 0 {
            self.on_timeout(now);
        }
    }

    fn send_check(&mut self, now: Instant) {
        let Some(remote) = &self.remote else { return };
        let txid: [u8; 12] = rand::random();
        let username = format!("{}:{}", remote.ufrag, self.ufrag);
        let request = binding_request(&txid, &username, &remote.pwd, self.tie_breaker, true);
        // Before ICE succeeds every check stays answerable (a loaded server may answer late);
        // consent checks keep the last few.
        let keep = if self.ice_up {
            8
        } else {
            CHECKS_BEFORE_FAILING as usize
        };
        if self.outstanding.len() >= keep {
            self.outstanding.remove(0);
        }
        self.outstanding.push(txid);
        self.checks_sent += 1;
        self.transmit.push(BytesMut::from(&request[..]));
        self.next_check = now
            + if self.ice_up {
                CONSENT_EVERY
            } else {
                CHECK_EVERY
            };
    }

    fn on_stun(&mut self, data: &[u8], now: Instant) {
        let Some(txid) = binding_success(data) else {
            return;
        };
        let Some(i) = self.outstanding.iter().position(|t| *t == txid) else {
            return;
        };
        self.outstanding.remove(i);
        self.last_response = Some(now);
        if !self.ice_up {
            self.ice_up = true;
            self.outstanding.clear();
            self.next_check = now + CONSENT_EVERY;
            self.start_dtls(now);
        }
    }

    fn start_dtls(&mut self, now: Instant) {
        let id = match identity() {
            Ok(id) => id,
            Err(e) => return self.fail(e),
        };
        let mut endpoint = Endpoint::new(self.local, rtc_shared::TransportProtocol::UDP, None);
        if let Err(e) = endpoint.connect(now, DTLS_PEER, Arc::clone(&id.config), None) {
            return self.fail(format!("DTLS: cannot start the handshake: {e}"));
        }
        self.dtls = Some(endpoint);
        self.drain_dtls();
    }

    fn drain_dtls(&mut self) {
        if let Some(d) = &mut self.dtls {
            while let Some(t) = d.poll_transmit() {
                self.transmit.push(t.message);
            }
        }
    }

    fn on_dtls(&mut self, data: &[u8], now: Instant) {
        let Some(d) = &mut self.dtls else { return };
        let events = match d.read(now, DTLS_PEER, None, BytesMut::from(data)) {
            Ok(events) => events,
            Err(e) => {
                if self.srtp.is_none() {
                    // During the handshake an error is fatal (an alert from the server, a
                    // record that breaks the handshake): send what the endpoint queued.
                    self.drain_dtls();
                    self.fail(format!("DTLS: the handshake failed: {e}"));
                } else {
                    self.rx.observed.media_errors += 1;
                }
                return;
            }
        };
        self.drain_dtls();
        for event in events {
            match event {
                EndpointEvent::HandshakeComplete => self.on_handshake(),
                EndpointEvent::PeerClosed => self.fail("DTLS: the server closed".into()),
                _ => {}
            }
        }
    }

    fn on_handshake(&mut self) {
        let keys = (|| {
            let id = identity()?;
            let d = self.dtls.as_ref().ok_or("no DTLS")?;
            let state = d
                .get_connection_state(DTLS_PEER)
                .ok_or("DTLS: the association vanished")?;
            let cert = state
                .peer_certificates
                .first()
                .ok_or("DTLS: the server sent no certificate")?;
            let actual = fingerprint_of(cert);
            let expected = self.remote.as_ref().map(|r| &r.fingerprints);
            if !expected.is_some_and(|fps| fps.iter().any(|f| f.eq_ignore_ascii_case(&actual))) {
                return Err(
                    "DTLS: the server's certificate does not match its SDP fingerprint".into(),
                );
            }
            let profile = match state.srtp_protection_profile() {
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => ProtectionProfile::AeadAes128Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => {
                    ProtectionProfile::Aes128CmHmacSha1_80
                }
                other => return Err(format!("DTLS: unexpected SRTP profile {other:?}")),
            };
            let mut config = rtc_srtp::config::Config {
                profile,
                ..Default::default()
            };
            let material = state
                .export_keying_material(
                    rtc_srtp::config::LABEL_EXTRACTOR_DTLS_SRTP,
                    &[],
                    config.keying_material_len(),
                )
                .map_err(|e| format!("DTLS: keying material: {e}"))?;
            config
                .set_session_keys_from_keying_material(material.as_ref(), true)
                .map_err(|e| format!("SRTP keys: {e}"))?;
            let k = config.keys;
            let ctx = |key: &[u8], salt: &[u8]| {
                Context::new(key, salt, profile, None, None, id.crypto.crypto())
                    .map_err(|e| format!("SRTP context: {e}"))
            };
            Ok::<_, String>(Srtp {
                tx: ctx(&k.local_master_key, &k.local_master_salt)?,
                rx: ctx(&k.remote_master_key, &k.remote_master_salt)?,
                tag_len: profile.rtp_auth_tag_len() + profile.aead_auth_tag_len(),
            })
        })();
        match keys {
            Ok(srtp) => {
                self.srtp = Some(srtp);
                self.connected = true;
                self.keyframe_due = true;
                self.out.push(PeerOut::Connected);
            }
            Err(e) => self.fail(e),
        }
    }

    // ---- datagrams and timers ------------------------------------------------------------

    /// A datagram for this peer arrived (RFC 7983 demultiplexing).
    pub fn on_datagram(&mut self, _from: SocketAddr, data: &[u8], now: Instant) {
        match data.first() {
            Some(0..=3) => self.on_stun(data, now),
            Some(20..=63) => self.on_dtls(data, now),
            Some(128..=191) => {
                if data.len() >= 2 && (192..=223).contains(&data[1]) {
                    self.on_srtcp(data);
                } else {
                    self.on_srtp(data, now);
                }
            }
            _ => {}
        }
    }

    fn on_srtp(&mut self, data: &[u8], now: Instant) {
        let Some(head) = rtp_head(data) else { return };
        if self.srtp.is_none() {
            return;
        }
        let clock = self.clock_of(head.pt);
        let decrypt = sampled(&mut self.received, head.ssrc, self.decrypt_every);
        let Some(srtp) = self.srtp.as_mut() else {
            return;
        };
        if !decrypt {
            let len = data.len().saturating_sub(head.len + srtp.tag_len);
            self.rx.on_rtp_parts(&head.fields(clock), None, len, now);
            return;
        }
        match srtp.rx.decrypt_rtp(data) {
            Ok(plain) => {
                let payload = plain.get(head.len..).unwrap_or_default();
                self.rx
                    .on_rtp_parts(&head.fields(clock), Some(payload), payload.len(), now);
            }
            Err(_) => self.rx.observed.media_errors += 1,
        }
    }

    fn on_srtcp(&mut self, data: &[u8]) {
        let Some(srtp) = self.srtp.as_mut() else {
            return;
        };
        let plain = match srtp.rx.decrypt_rtcp(data) {
            Ok(p) => p,
            Err(_) => {
                self.rx.observed.media_errors += 1;
                return;
            }
        };
        let video = self
            .outgoing
            .iter()
            .find(|o| o.kind == Kind::Video)
            .map(|o| o.ssrc);
        for ssrc in keyframe_requests(&plain) {
            if Some(ssrc) == video {
                self.keyframe_due = true;
                self.rx.observed.keyframe_requests += 1;
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.failed {
            return None;
        }
        let ice = self.remote.as_ref().map(|_| self.next_check);
        let dtls = match (&self.dtls, self.srtp.is_some()) {
            (Some(d), false) => d.poll_timeout(&DTLS_PEER),
            _ => None,
        };
        let report = self.connected.then_some(self.next_report);
        [ice, dtls, report].into_iter().flatten().min()
    }

    pub fn on_timeout(&mut self, now: Instant) {
        if self.failed {
            return;
        }
        if self.remote.is_some() && now >= self.next_check {
            if !self.ice_up && self.checks_sent >= CHECKS_BEFORE_FAILING {
                return self.fail(format!(
                    "ICE: no answer to {CHECKS_BEFORE_FAILING} binding requests"
                ));
            }
            if self.ice_up
                && self
                    .last_response
                    .is_some_and(|t| now.saturating_duration_since(t) > CONSENT_LOST_AFTER)
            {
                return self.fail("ICE: consent lost (no answer for 30 s)".into());
            }
            self.send_check(now);
        }
        if self.srtp.is_none()
            && let Some(d) = &mut self.dtls
        {
            let due = d.poll_timeout(&DTLS_PEER).is_some_and(|t| t <= now);
            if due && d.handle_timeout(DTLS_PEER, now).is_err() {
                return self.fail("DTLS: the handshake timed out".into());
            }
            self.drain_dtls();
        }
        if self.connected && now >= self.next_report {
            self.next_report = now + REPORT_EVERY;
            self.send_report();
        }
    }

    /// One receiver report for every stream received (RFC 3550 §6.4.2), up to 31 blocks.
    fn send_report(&mut self) {
        let Some(srtp) = self.srtp.as_mut() else {
            return;
        };
        let sender_ssrc = self.outgoing.first().map_or(self.report_ssrc, |o| o.ssrc);
        let blocks: Vec<[u8; 24]> = self
            .rx
            .streams
            .iter()
            .take(31)
            .map(|(ssrc, s)| {
                let mut b = [0u8; 24];
                b[0..4].copy_from_slice(&ssrc.to_be_bytes());
                let lost = s.lost().min(0x7f_ffff) as u32;
                b[4..8].copy_from_slice(&lost.to_be_bytes());
                b[8..12].copy_from_slice(&(s.highest_extended() as u32).to_be_bytes());
                b[12..16].copy_from_slice(&(s.jitter_units() as u32).to_be_bytes());
                b
            })
            .collect();
        let mut p = BytesMut::with_capacity(8 + 24 * blocks.len());
        p.put_u8(0x80 | blocks.len() as u8);
        p.put_u8(201);
        p.put_u16((1 + 6 * blocks.len()) as u16);
        p.put_u32(sender_ssrc);
        for b in &blocks {
            p.put_slice(b);
        }
        if let Ok(sealed) = srtp.tx.encrypt_rtcp(&p) {
            self.transmit.push(sealed);
        }
    }

    // ---- media ---------------------------------------------------------------------------

    fn send_rtp(&mut self, i: usize, marker: bool, payload: &[u8]) -> bool {
        let (Some(srtp), Some(o)) = (self.srtp.as_mut(), self.outgoing.get_mut(i)) else {
            return false;
        };
        let Some(pt) = o.pt else { return false };
        let mut p = BytesMut::with_capacity(12 + payload.len());
        p.put_u8(0x80);
        p.put_u8(pt | if marker { 0x80 } else { 0 });
        p.put_u16(o.seq);
        p.put_u32(o.timestamp);
        p.put_u32(o.ssrc);
        p.put_slice(payload);
        o.seq = o.seq.wrapping_add(1);
        match srtp.tx.encrypt_rtp(&p) {
            Ok(sealed) => {
                self.transmit.push(sealed);
                true
            }
            Err(_) => false,
        }
    }

    /// Sends one 20 ms audio frame.
    pub fn send_audio(&mut self, now: Instant) {
        if !self.connected {
            return;
        }
        let Some(i) = self.outgoing.iter().position(|o| o.kind == Kind::Audio) else {
            return;
        };
        let t = Trailer {
            sender: self.id,
            sent_us: self.rx.now_us(now),
        };
        let payload = media::opus_frame(self.sending.speaking, t);
        if self.send_rtp(i, true, &payload) {
            self.rx.observed.packets_out += 1;
        }
        self.outgoing[i].timestamp = self.outgoing[i].timestamp.wrapping_add(960);
    }

    /// Sends one video frame (a keyframe when one was requested).
    pub fn send_video(&mut self, now: Instant) {
        let Some(profile) = self.sending.video else {
            return;
        };
        if !self.connected {
            return;
        }
        let Some(i) = self.outgoing.iter().position(|o| o.kind == Kind::Video) else {
            return;
        };
        if self.outgoing[i].pt.is_none() {
            return;
        }
        let keyframe = std::mem::take(&mut self.keyframe_due);
        let t = Trailer {
            sender: self.id,
            sent_us: self.rx.now_us(now),
        };
        let payloads = media::next_vp8_frame(profile, keyframe, &mut self.frame, t);
        let last = payloads.len().saturating_sub(1);
        for (n, payload) in payloads.iter().enumerate() {
            if self.send_rtp(i, n == last, payload) {
                self.rx.observed.packets_out += 1;
            }
        }
        let o = &mut self.outgoing[i];
        o.timestamp = o.timestamp.wrapping_add(90_000 / profile.fps.max(1));
    }

    /// Hands what is queued for the server to `send`.
    pub fn pump(&mut self, _now: Instant, mut send: impl FnMut(SocketAddr, &[u8])) {
        let Some(to) = self.remote.as_ref().map(|r| r.addr) else {
            self.transmit.clear();
            return;
        };
        for d in self.transmit.drain(..) {
            self.rx.observed.bytes_out += d.len() as u64;
            send(to, &d);
        }
    }

    /// Ends the association with a DTLS `close_notify` (queued for [`Self::pump`]).
    pub fn close(&mut self) {
        if let Some(d) = &mut self.dtls {
            let _ = d.stop(Instant::now(), DTLS_PEER);
        }
        self.drain_dtls();
        self.connected = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binding_request_carries_integrity_and_a_fingerprint_that_check() {
        let txid = [7u8; 12];
        let m = binding_request(&txid, "srv:cli", "serverpassword", 42, true);
        assert_eq!(&m[0..2], &[0, 1]);
        assert_eq!(usize::from(u16::from_be_bytes([m[2], m[3]])), m.len() - 20);
        assert_eq!(&m[8..20], &txid);
        // FINGERPRINT: the last 8 bytes, over everything before them.
        let (body, fp) = m.split_at(m.len() - 8);
        assert_eq!(&fp[0..4], &[0x80, 0x28, 0, 4]);
        let crc = crc32fast::hash(body) ^ 0x5354_554e;
        assert_eq!(&fp[4..8], &crc.to_be_bytes());
        // MESSAGE-INTEGRITY: the 24 bytes before, over everything before it with the
        // length field covering it.
        let (before, mi) = body.split_at(body.len() - 24);
        assert_eq!(&mi[0..4], &[0x00, 0x08, 0, 20]);
        let mut covered = before.to_vec();
        let len = (covered.len() - 20 + 24) as u16;
        covered[2..4].copy_from_slice(&len.to_be_bytes());
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"serverpassword").unwrap();
        mac.update(&covered);
        assert_eq!(&mi[4..], mac.finalize().into_bytes().as_slice());
        // USE-CANDIDATE and the username are there.
        assert!(m.windows(4).any(|w| w == [0x00, 0x25, 0, 0]));
        assert!(m.windows(7).any(|w| w == b"srv:cli"));
    }

    #[test]
    fn a_server_description_gives_credentials_candidate_and_sections() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\na=ice-lite\r\n\
            a=ice-ufrag:abcd\r\na=ice-pwd:secretsecretsecret\r\na=fingerprint:sha-256 AA:BB\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n\
            a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10\r\n\
            a=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=recvonly\r\n\
            a=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
            m=video 0 UDP/TLS/RTP/SAVPF 0\r\na=mid:2\r\na=inactive\r\n";
        let d = parse_desc(sdp).unwrap();
        assert_eq!(d.ufrag.as_deref(), Some("abcd"));
        assert_eq!(d.pwd.as_deref(), Some("secretsecretsecret"));
        assert_eq!(d.fingerprints, ["AA:BB"]);
        assert_eq!(d.candidate, Some("127.0.0.1:7882".parse().unwrap()));
        assert_eq!(d.sections.len(), 3);
        assert_eq!(d.sections[0].direction, Direction::SendOnly);
        assert_eq!(d.sections[0].codecs[0].fmtp.as_deref(), Some("minptime=10"));
        assert_eq!(d.sections[0].codecs[0].channels, Some(2));
        assert_eq!(d.sections[1].codecs.len(), 2);
        assert!(d.sections[2].port0);
    }

    #[test]
    fn rtcp_keyframe_requests_are_found_in_a_compound_packet() {
        // RR (no blocks), PLI for 0x11223344, FIR for 0x55667788, a lying length at the end.
        let mut p = vec![0x80, 201, 0, 1, 0, 0, 0, 9];
        p.extend_from_slice(&[0x81, 206, 0, 2, 0, 0, 0, 9, 0x11, 0x22, 0x33, 0x44]);
        p.extend_from_slice(&[0x84, 206, 0, 4, 0, 0, 0, 9, 0, 0, 0, 0]);
        p.extend_from_slice(&[0x55, 0x66, 0x77, 0x88, 1, 0, 0, 0]);
        p.extend_from_slice(&[0x81, 206, 0, 200, 0, 0]);
        assert_eq!(keyframe_requests(&p), [0x1122_3344, 0x5566_7788]);
    }

    #[test]
    fn sampling_decrypts_each_streams_first_packet_then_one_in_n() {
        let mut seen = std::collections::HashMap::new();
        // Two streams interleaved: a per-participant counter would lock onto one of them.
        let picks: Vec<(u32, bool)> = (0..12)
            .map(|i| {
                let ssrc = if i % 2 == 0 { 7 } else { 9 };
                (ssrc, sampled(&mut seen, ssrc, 3))
            })
            .collect();
        let of = |ssrc: u32| -> Vec<bool> {
            picks
                .iter()
                .filter(|(s, _)| *s == ssrc)
                .map(|(_, d)| *d)
                .collect()
        };
        assert_eq!(of(7), [true, false, false, true, false, false]);
        assert_eq!(of(9), [true, false, false, true, false, false]);
        // Every packet when N is 1 (or 0, read as 1).
        assert!((0..5).all(|_| sampled(&mut seen, 11, 1)));
        assert!((0..5).all(|_| sampled(&mut seen, 12, 0)));
    }

    #[test]
    fn rtp_headers_with_csrcs_and_an_extension_are_measured() {
        let mut p = vec![0x91, 96, 0, 5, 0, 0, 0, 9, 0, 0, 0, 7];
        p.extend_from_slice(&[0, 0, 0, 1]); // one CSRC
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]); // extension of one word
        p.extend_from_slice(b"payload");
        let h = rtp_head(&p).unwrap();
        assert_eq!((h.pt, h.seq, h.ts, h.ssrc, h.len), (96, 5, 9, 7, 24));
        assert!(rtp_head(&p[..20]).is_none());
        assert!(rtp_head(&[0x40; 12]).is_none());
    }
}
