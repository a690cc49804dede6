use super::*;

fn negotiator() -> Negotiator {
    Negotiator::new(
        LocalParams {
            ufrag: "srvufrag".into(),
            pwd: "serverpassword0123456789".into(),
            fingerprint: "AA:BB".into(),
            candidate: "candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host".into(),
        },
        42,
    )
}

const SESSION: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
a=fingerprint:sha-256 11:22:33\r\na=ice-ufrag:cliu\r\na=ice-pwd:clientpassword0123456789\r\n";

fn audio(mid: &str, port: u16, extra: &str) -> String {
    format!(
        "m=audio {port} UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\n\
a=setup:actpass\r\na=rtcp-mux\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\n\
a=rtpmap:0 PCMU/8000\r\na=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=ssrc:1234 cname:x\r\n{extra}"
    )
}

fn video(mid: &str) -> String {
    format!(
        "m=video 9 UDP/TLS/RTP/SAVPF 120 124 126\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\n\
a=setup:actpass\r\na=rtcp-mux\r\na=sendonly\r\na=rtpmap:120 VP8/90000\r\n\
a=rtcp-fb:120 nack\r\na=rtcp-fb:120 nack pli\r\na=rtcp-fb:120 goog-remb\r\n\
a=rtpmap:124 rtx/90000\r\na=fmtp:124 apt=120\r\na=rtpmap:126 H264/90000\r\n\
a=fmtp:126 profile-level-id=42e01f;level-asymmetry-allowed=1;packetization-mode=0\r\n\
a=ssrc:10 cname:x\r\na=ssrc:11 cname:x\r\na=ssrc-group:FID 10 11\r\n"
    )
}

#[test]
fn answers_a_firefox_style_offer_with_a_bundle_only_section() {
    let mut n = negotiator();
    let offer = format!(
        "{SESSION}a=group:BUNDLE 0 1\r\n{}{}",
        video("0"),
        audio("1", 0, "a=bundle-only\r\n")
    );
    let (answer, applied) = n.apply_offer(&offer).unwrap();
    assert_eq!(applied.remote.ufrag, "cliu");
    assert_eq!(applied.remote.fingerprints, vec!["11:22:33".to_owned()]);
    let s = n.sections();
    assert!(!s[1].rejected, "bundle-only is not a rejection");
    assert!(s[0].remote_sends && s[1].remote_sends);
    // Only the codecs we forward, in the offerer's payload types, with RTX.
    assert_eq!(s[0].codecs.len(), 1, "{:?}", s[0].codecs);
    assert_eq!(s[0].codecs[0].pt, 120);
    assert_eq!(s[0].codecs[0].rtx_pt, Some(124));
    assert_eq!(s[0].codecs[0].feedback, vec!["nack", "nack pli"]);
    assert_eq!(s[0].remote_ssrcs, vec![10]);
    assert_eq!(s[0].remote_rtx, vec![(11, 10)]);
    assert_eq!(s[1].codecs.len(), 1);
    assert!(answer.contains("a=group:BUNDLE 0 1"), "{answer}");
    assert!(answer.contains("a=setup:passive"));
    assert!(answer.contains("a=recvonly"));
    assert!(answer.contains("a=ice-lite"));
    assert!(!answer.contains("PCMU"));
    assert!(
        !answer.contains("H264"),
        "packetization-mode 0 is not forwarded"
    );
}

#[test]
fn a_port_zero_section_without_bundle_only_is_rejected() {
    let mut n = negotiator();
    let offer = format!(
        "{SESSION}a=group:BUNDLE 0\r\n{}{}",
        audio("0", 9, ""),
        audio("1", 0, "")
    );
    let (answer, _) = n.apply_offer(&offer).unwrap();
    assert!(n.sections()[1].rejected);
    assert!(answer.contains("a=group:BUNDLE 0\r\n"), "{answer}");
    assert!(answer.contains("m=audio 0 "), "{answer}");
}

#[test]
fn malformed_and_hostile_offers_change_nothing() {
    let mut n = negotiator();
    let no_fp = format!(
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-ufrag:cliu\r\n\
a=ice-pwd:clientpassword0123456789\r\n{}",
        audio("0", 9, "")
    );
    assert!(matches!(n.apply_offer(&no_fp), Err(SdpError::Invalid(_))));
    let passive = format!("{SESSION}{}", audio("0", 9, "a=setup:passive\r\n"));
    assert!(matches!(
        n.apply_offer(&passive),
        Err(SdpError::Negotiation(_))
    ));
    let many: String = (0..MAX_SECTIONS + 1)
        .map(|i| audio(&i.to_string(), 9, ""))
        .collect();
    assert!(matches!(
        n.apply_offer(&format!("{SESSION}{many}")),
        Err(SdpError::Negotiation(_))
    ));
    let published: String = (0..MAX_PUBLISHED + 1)
        .map(|i| audio(&i.to_string(), 9, ""))
        .collect();
    assert!(matches!(
        n.apply_offer(&format!("{SESSION}{published}")),
        Err(SdpError::Negotiation(_))
    ));
    let huge = "a".repeat(MAX_SDP_BYTES + 1);
    assert!(matches!(n.apply_offer(&huge), Err(SdpError::Invalid(_))));
    assert!(n.apply_offer("not sdp at all").is_err());
    assert!(n.sections().is_empty(), "nothing was applied");
    // A valid offer still works afterwards.
    assert!(
        n.apply_offer(&format!("{SESSION}{}", audio("0", 9, "")))
            .is_ok()
    );
}

/// The session part of a client's answer (it takes the DTLS client role).
fn answer_head() -> String {
    SESSION.replace("a=ice-ufrag", "a=setup:active\r\na=ice-ufrag")
}

/// The mid of one `m=` block of a description.
fn mid_of(block: &str) -> &str {
    block
        .lines()
        .find_map(|l| l.strip_prefix("a=mid:"))
        .unwrap()
        .trim()
}

/// The client's answer to one of our audio offers: live sections recvonly, inactive ones
/// inactive, rejected ones with port 0.
fn answer_audio_offer(offer: &str) -> String {
    let mut out = answer_head();
    for block in offer.split("m=").skip(1) {
        let mid = mid_of(block);
        let (port, dir) = if block.starts_with("audio 0 ") {
            (0, "inactive")
        } else if block.contains("a=inactive") {
            (9, "inactive")
        } else {
            (9, "recvonly")
        };
        out.push_str(&format!(
            "m=audio {port} UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\n\
a=rtcp-mux\r\na={dir}\r\na=rtpmap:111 opus/48000/2\r\n"
        ));
    }
    out
}

#[test]
fn removed_senders_are_rejected_then_their_slots_recycled() {
    let mut n = negotiator();
    let opus = codec_table().remove(0);
    let sender = |ssrc| Sender {
        kind: MediaKind::Audio,
        codec: opus.clone(),
        ssrc,
        stream_id: "s".into(),
        track_id: format!("t{ssrc}"),
        pt: None,
        rtx_ssrc: 0x0bad_cafe,
        rtx_pt: None,
        removed: false,
    };
    let a = n.add_sender(sender(1));
    let offer = n.create_offer().unwrap();
    n.apply_answer(&answer_audio_offer(&offer)).unwrap();
    assert_eq!(n.sender(a).unwrap().pt, Some(111));
    for round in 2..30 {
        let b = n.add_sender(sender(round));
        n.remove_sender(round as usize - 2);
        let offer = n.create_offer().unwrap();
        n.apply_answer(&answer_audio_offer(&offer)).unwrap();
        assert_eq!(n.sender(b).unwrap().pt, Some(111), "round {round}");
        assert!(
            n.sections().len() <= 3,
            "round {round}: {}",
            n.sections().len()
        );
    }
    assert!(!n.needs_offer());
}

#[test]
fn the_bundle_tag_goes_inactive_instead_of_rejected() {
    // A subscriber whose first section is ours (we offered before the client did): when
    // that sender is removed, rejecting the section would move the BUNDLE tag and the
    // browser would close the transport. It stays in the group, inactive, never recycled.
    let mut n = negotiator();
    let first = n.add_sender(opus_sender(1));
    let second = n.add_sender(opus_sender(2));
    let offer = n.create_offer().unwrap();
    assert!(offer.contains("a=group:BUNDLE h0 h1"), "{offer}");
    n.apply_answer(&answer_audio_offer(&offer)).unwrap();

    // Both removed: the tag goes inactive, the other is rejected.
    n.remove_sender(first);
    n.remove_sender(second);
    assert!(n.needs_offer());
    let offer = n.create_offer().unwrap();
    assert!(offer.contains("a=group:BUNDLE h0\r\n"), "{offer}");
    assert!(offer.contains("m=audio 9 UDP/TLS/RTP/SAVPF 111"), "{offer}");
    assert!(offer.contains("m=audio 0 "), "{offer}");
    let tag = offer.split("m=").nth(1).unwrap();
    assert!(
        tag.contains("a=inactive") && !tag.contains("a=msid"),
        "{tag}"
    );
    n.apply_answer(&answer_audio_offer(&offer)).unwrap();
    assert!(!n.needs_offer(), "the removed senders are settled");
    assert!(n.sender(first).is_none() && n.sender(second).is_none());
    assert!(!n.sections()[0].rejected && n.sections()[0].sender.is_none());

    // New senders recycle the rejected slot, never the inactive tag; the tag stays put.
    for round in 3..20 {
        let key = n.add_sender(opus_sender(round));
        let offer = n.create_offer().unwrap();
        assert!(
            offer.contains("a=group:BUNDLE h0 "),
            "round {round}: {offer}"
        );
        n.apply_answer(&answer_audio_offer(&offer)).unwrap();
        assert_eq!(n.sender(key).unwrap().pt, Some(111), "round {round}");
        assert!(n.sections()[0].sender.is_none(), "round {round}");
        n.remove_sender(key);
        let offer = n.create_offer().unwrap();
        n.apply_answer(&answer_audio_offer(&offer)).unwrap();
        assert!(
            n.sections().len() <= 3,
            "round {round}: {}",
            n.sections().len()
        );
    }
    assert!(!n.needs_offer());
}

/// Answers every section of `offer` recvonly with the offer's own codec lines, dropping the
/// RTX ones when `keep_rtx` is false.
fn answer_video(offer: &str, keep_rtx: bool) -> String {
    let mut out = answer_head();
    for block in offer.split("m=").skip(1) {
        let mut lines = block.lines();
        let m_line = lines.next().unwrap();
        let rtx_pts: Vec<&str> = block
            .lines()
            .filter_map(|l| l.strip_prefix("a=rtpmap:"))
            .filter(|l| l.contains(" rtx/"))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        let mut fields: Vec<&str> = m_line.split(' ').collect();
        if !keep_rtx {
            fields.retain(|f| !rtx_pts.contains(f));
        }
        out.push_str(&format!("m={}\r\nc=IN IP4 0.0.0.0\r\n", fields.join(" ")));
        for l in block.lines().skip(1) {
            let codec_line = l.starts_with("a=rtpmap:")
                || l.starts_with("a=fmtp:")
                || l.starts_with("a=rtcp-fb:");
            let is_rtx = rtx_pts.iter().any(|pt| {
                l.starts_with(&format!("a=rtpmap:{pt} ")) || l.starts_with(&format!("a=fmtp:{pt} "))
            });
            if l.starts_with("a=mid:") || l == "a=rtcp-mux" || (codec_line && (keep_rtx || !is_rtx))
            {
                out.push_str(l);
                out.push_str("\r\n");
            }
        }
        out.push_str("a=recvonly\r\n");
    }
    out
}

fn vp8_sender(ssrc: u32) -> Sender {
    let vp8 = codec_table()
        .into_iter()
        .find(|c| c.codec == Codec::Vp8)
        .unwrap();
    Sender {
        kind: MediaKind::Video,
        codec: vp8,
        ssrc,
        stream_id: "s".into(),
        track_id: format!("t{ssrc}"),
        pt: None,
        rtx_ssrc: ssrc + 1000,
        rtx_pt: None,
        removed: false,
    }
}

/// Video senders are offered with RTX (RFC 4588): an `rtx` payload type per codec with its
/// `apt`, the same in every section of the connection, and an FID group naming the RTX
/// SSRC; an answer that keeps RTX agrees it, one that drops it leaves the sender without.
#[test]
fn video_senders_offer_rtx_and_follow_the_answer() {
    let mut n = negotiator();
    let a = n.add_sender(vp8_sender(1));
    let b = n.add_sender(vp8_sender(2));
    let offer = n.create_offer().unwrap();
    assert!(offer.contains("a=ssrc-group:FID 1 1001"), "{offer}");
    assert!(offer.contains("a=ssrc-group:FID 2 1002"), "{offer}");
    assert!(offer.contains("a=ssrc:1001 cname:hearth"), "{offer}");
    n.apply_answer(&answer_video(&offer, true)).unwrap();
    let (sa, sb) = (n.sender(a).unwrap(), n.sender(b).unwrap());
    let vp8_pt = sa.pt.unwrap();
    let rtx_pt = sa.rtx_pt.expect("RTX agreed");
    assert_ne!(rtx_pt, vp8_pt);
    assert!(
        offer.contains(&format!("a=fmtp:{rtx_pt} apt={vp8_pt}")),
        "{offer}"
    );
    assert_eq!(
        (sb.pt, sb.rtx_pt),
        (Some(vp8_pt), Some(rtx_pt)),
        "one mapping per connection"
    );

    // A later sender reuses the agreed mapping; an answer without RTX declines it.
    let c = n.add_sender(vp8_sender(3));
    let offer = n.create_offer().unwrap();
    assert!(
        offer.contains(&format!("a=fmtp:{rtx_pt} apt={vp8_pt}")),
        "{offer}"
    );
    n.apply_answer(&answer_video(&offer, false)).unwrap();
    assert_eq!(n.sender(c).unwrap().pt, Some(vp8_pt));
    assert_eq!(n.sender(c).unwrap().rtx_pt, None, "declined");
}

/// Audio is offered without RTX (browsers do not retransmit or expect retransmitted Opus).
#[test]
fn audio_senders_offer_no_rtx() {
    let mut n = negotiator();
    let opus = codec_table().remove(0);
    n.add_sender(Sender {
        kind: MediaKind::Audio,
        codec: opus,
        ssrc: 7,
        stream_id: "s".into(),
        track_id: "t".into(),
        pt: None,
        rtx_ssrc: 8,
        rtx_pt: None,
        removed: false,
    });
    let offer = n.create_offer().unwrap();
    assert!(!offer.contains("rtx/"), "{offer}");
    assert!(!offer.contains("FID"), "{offer}");
}

/// A WHEP viewer's offer: receive-only sections, like a browser's
/// `addTransceiver(kind, {direction: 'recvonly'})`.
fn whep_offer(video_codec: &str) -> String {
    format!(
        "{SESSION}a=group:BUNDLE 0 1\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=setup:actpass\r\n\
a=rtcp-mux\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=setup:actpass\r\n\
a=rtcp-mux\r\na=recvonly\r\na=rtpmap:96 {video_codec}/90000\r\na=rtcp-fb:96 nack\r\n\
a=rtcp-fb:96 nack pli\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n"
    )
}

fn opus_sender(ssrc: u32) -> Sender {
    Sender {
        kind: MediaKind::Audio,
        codec: codec_table().remove(0),
        ssrc,
        stream_id: "s".into(),
        track_id: format!("t{ssrc}"),
        pt: None,
        rtx_ssrc: ssrc + 1000,
        rtx_pt: None,
        removed: false,
    }
}

/// WHEP: senders ride in the client's receiving sections, answered sendonly with their
/// SSRCs and the client's payload types; no offer of ours is due afterwards.
#[test]
fn client_offers_only_sessions_place_senders_in_receiving_sections() {
    let mut n = negotiator();
    n.set_bind_senders_to_offers(true);
    let video = n.add_sender(vp8_sender(5));
    let audio = n.add_sender(opus_sender(7));
    let (answer, _) = n.apply_offer(&whep_offer("VP8")).unwrap();
    let s = n.sections();
    assert_eq!((s[0].sender, s[1].sender), (Some(audio), Some(video)));
    assert!(
        s.iter()
            .all(|s| s.local_sends && !s.remote_sends && !s.rejected)
    );
    assert_eq!(answer.matches("a=sendonly").count(), 2, "{answer}");
    assert!(answer.contains("a=ssrc:7 cname:hearth"), "{answer}");
    assert!(answer.contains("a=ssrc-group:FID 5 1005"), "{answer}");
    assert_eq!(n.sender(video).unwrap().pt, Some(96));
    assert_eq!(n.sender(video).unwrap().rtx_pt, Some(97));
    assert_eq!(n.sender(audio).unwrap().pt, Some(111));
    assert!(!n.needs_offer());

    // The same offer again (an ICE restart, a re-offer) keeps the placement.
    let offer = whep_offer("VP8").replace("o=- 1 1", "o=- 1 2");
    let (answer, _) = n.apply_offer(&offer).unwrap();
    assert_eq!(answer.matches("a=sendonly").count(), 2, "{answer}");
}

/// A sender whose codec the client cannot receive stays unplaced; its section is inactive.
/// Without the mode, receiving sections never carry our senders (they get our offers).
#[test]
fn senders_are_placed_only_where_their_codec_is_offered_and_only_in_that_mode() {
    let mut n = negotiator();
    n.set_bind_senders_to_offers(true);
    n.add_sender(vp8_sender(5));
    let (answer, _) = n.apply_offer(&whep_offer("H264")).unwrap();
    assert_eq!(n.sections()[1].sender, None);
    assert!(answer.contains("a=inactive"), "{answer}");
    assert!(n.needs_offer());

    let mut n = negotiator();
    n.add_sender(vp8_sender(5));
    let (answer, _) = n.apply_offer(&whep_offer("VP8")).unwrap();
    assert!(!answer.contains("a=sendonly"), "{answer}");
    assert!(n.needs_offer());
}

/// The browser's answer to an offer of ours: every section mirrored, `application` kept
/// (or rejected with port 0).
fn answer_all(offer: &str, reject_data: bool) -> String {
    let mut out = String::from(SESSION);
    for part in offer.split("m=").skip(1) {
        let mid = mid_of(part);
        if part.starts_with("application") {
            let port = if reject_data { 0 } else { 9 };
            out.push_str(&format!(
                "m=application {port} UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
a=mid:{mid}\r\na=setup:active\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n"
            ));
        } else {
            out.push_str(&format!(
                "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\n\
a=setup:active\r\na=rtcp-mux\r\na=recvonly\r\na=rtpmap:96 VP8/90000\r\n"
            ));
        }
    }
    out
}

/// A client that asked for data channels gets their SCTP section in our next offer (alone
/// if there is nothing else to offer), once; agreed, later offers keep it, and a client's
/// own data channel section is answered with our SCTP parameters.
#[test]
fn data_channel_sections_are_offered_once_and_answered() {
    let mut n = negotiator();
    assert!(!n.needs_offer());
    n.offer_data_channels();
    assert!(n.needs_offer(), "the section alone is worth an offer");
    let offer = n.create_offer().unwrap();
    assert!(
        offer.contains("m=application 9 UDP/DTLS/SCTP webrtc-datachannel"),
        "{offer}"
    );
    assert!(offer.contains("a=sctp-port:5000"), "{offer}");
    assert!(offer.contains("a=max-message-size:65536"), "{offer}");
    n.apply_answer(&answer_all(&offer, false)).unwrap();
    assert!(n.has_data_channels());
    assert!(!n.needs_offer());
    n.add_sender(vp8_sender(1));
    let offer = n.create_offer().unwrap();
    assert_eq!(offer.matches("m=application").count(), 1, "{offer}");
    n.apply_answer(&answer_all(&offer, false)).unwrap();
    assert!(n.has_data_channels());

    // Refused by the client: not offered again.
    let mut n = negotiator();
    n.offer_data_channels();
    let offer = n.create_offer().unwrap();
    n.apply_answer(&answer_all(&offer, true)).unwrap();
    assert!(!n.has_data_channels());
    n.offer_data_channels();
    assert!(!n.needs_offer());

    // The client's own section (an offerer that opens channels first).
    let mut n = negotiator();
    let client = format!(
        "{SESSION}a=group:BUNDLE 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
c=IN IP4 0.0.0.0\r\na=mid:0\r\na=setup:actpass\r\na=sctp-port:5000\r\n"
    );
    let (answer, _) = n.apply_offer(&client).unwrap();
    assert!(n.has_data_channels());
    assert!(
        answer.contains("m=application 9 UDP/DTLS/SCTP webrtc-datachannel"),
        "{answer}"
    );
    assert!(answer.contains("a=setup:passive"), "{answer}");
    // A second one in the same connection is rejected.
    let two = format!(
        "{client}m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
a=mid:1\r\na=setup:actpass\r\n"
    )
    .replace("BUNDLE 0", "BUNDLE 0 1");
    let (answer, _) = n.apply_offer(&two).unwrap();
    assert!(answer.contains("m=application 0 "), "{answer}");
}

/// A Chromium camera with three simulcast encodings.
fn simulcast_offer(rids: &str, simulcast: &str) -> String {
    format!(
        "{SESSION}a=group:BUNDLE 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=setup:actpass\r\n\
a=rtcp-mux\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\n\
a=fmtp:97 apt=96\r\na=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n{rids}{simulcast}"
    )
}

/// Simulcast offers are answered with the layers received, lowest first as offered; bad
/// ones (a rid not declared, duplicates, invalid names) fall back to one stream.
#[test]
fn simulcast_offers_are_answered_with_their_layers() {
    let rids = "a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\n";
    let mut n = negotiator();
    let (answer, _) = n
        .apply_offer(&simulcast_offer(rids, "a=simulcast:send q;h;f\r\n"))
        .unwrap();
    assert_eq!(n.sections()[0].rids, vec!["q", "h", "f"]);
    for line in [
        "a=rid:q recv",
        "a=rid:h recv",
        "a=rid:f recv",
        "a=simulcast:recv q;h;f",
    ] {
        assert!(answer.contains(line), "{line} in {answer}");
    }
    assert!(
        answer.contains("a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"),
        "{answer}"
    );

    for (rids, simulcast) in [
        (rids, "a=simulcast:send q;h;x\r\n"),
        (rids, "a=simulcast:send q;q\r\n"),
        ("a=rid:q! send\r\n", "a=simulcast:send q!\r\n"),
        (rids, ""),
        ("a=rid:q recv\r\n", "a=simulcast:send q\r\n"),
    ] {
        let mut n = negotiator();
        let (answer, _) = n.apply_offer(&simulcast_offer(rids, simulcast)).unwrap();
        assert!(n.sections()[0].rids.is_empty(), "{simulcast}");
        assert!(!answer.contains("a=simulcast"), "{answer}");
    }
    // Without the rid extension, or with SSRCs listed (Firefox): one stream.
    let no_ext = simulcast_offer(rids, "a=simulcast:send q;h;f\r\n").replace(
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n",
        "",
    );
    let with_ssrcs = simulcast_offer(rids, "a=simulcast:send q;h;f\r\na=ssrc:1 cname:x\r\n");
    for offer in [no_ext, with_ssrcs] {
        let mut n = negotiator();
        let (answer, _) = n.apply_offer(&offer).unwrap();
        assert!(n.sections()[0].rids.is_empty());
        assert!(!answer.contains("a=simulcast"), "{answer}");
    }
    // More than three layers: the first three.
    let four = "a=rid:a send\r\na=rid:b send\r\na=rid:c send\r\na=rid:d send\r\n";
    let mut n = negotiator();
    n.apply_offer(&simulcast_offer(four, "a=simulcast:send a;b;c;d\r\n"))
        .unwrap();
    assert_eq!(n.sections()[0].rids, vec!["a", "b", "c"]);
}

/// Our sending sections carry the mid and (video) rid extensions with the ids the BUNDLE
/// group already uses, so a client can later offer simulcast on the same connection.
#[test]
fn sending_sections_carry_mid_and_rid_extensions_with_bundle_ids() {
    let rids = "a=rid:q send\r\na=rid:h send\r\n";
    let mut n = negotiator();
    // The client's own section names rid 10, mid 4 (Chromium's ids)...
    n.apply_offer(&simulcast_offer(rids, "a=simulcast:send q;h\r\n"))
        .unwrap();
    n.add_sender(vp8_sender(1));
    n.add_sender(opus_sender(7));
    let offer = n.create_offer().unwrap();
    let sections: Vec<&str> = offer.split("m=").skip(2).collect();
    let video = sections.iter().find(|s| s.starts_with("video")).unwrap();
    let audio = sections.iter().find(|s| s.starts_with("audio")).unwrap();
    assert!(
        video.contains("a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid"),
        "{video}"
    );
    assert!(video.contains("a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"));
    assert!(video.contains("a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"));
    assert!(
        audio.contains("a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid"),
        "{audio}"
    );
    assert!(!audio.contains("rtp-stream-id"), "{audio}");

    // ...a client that uses other ids gets those, and a default id taken by another
    // extension is not reused.
    let mut n = negotiator();
    let offer = simulcast_offer(rids, "a=simulcast:send q;h\r\n")
        .replace(
            "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
            "a=extmap:7 urn:ietf:params:rtp-hdrext:sdes:mid",
        )
        .replace("a=extmap:11 urn", "a=extmap:4 urn");
    n.apply_offer(&offer).unwrap();
    n.add_sender(vp8_sender(1));
    let ours = n.create_offer().unwrap();
    let video = ours.split("m=").last().unwrap();
    assert!(
        video.contains("a=extmap:7 urn:ietf:params:rtp-hdrext:sdes:mid"),
        "{video}"
    );
    assert!(
        video.contains("a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"),
        "{video}"
    );
}

/// Our sending sections offer the transport-wide sequence extension and `transport-cc`
/// feedback; the extension is kept only if the answer keeps it (forwarded packets carry it
/// only then).
#[test]
fn the_transport_wide_sequence_follows_the_answer() {
    let mut n = negotiator();
    n.add_sender(vp8_sender(1));
    let offer = n.create_offer().unwrap();
    let ext = format!("a=extmap:3 {TRANSPORT_CC_URI}");
    assert!(offer.contains(&ext), "{offer}");
    assert!(offer.contains("transport-cc"), "{offer}");
    // An answer that keeps it.
    let kept =
        answer_video(&offer, true).replace("a=recvonly\r\n", &format!("{ext}\r\na=recvonly\r\n"));
    n.apply_answer(&kept).unwrap();
    assert_eq!(n.sections()[0].extension_id(TRANSPORT_CC_URI), Some(3));
    // A later exchange whose answer drops it: gone.
    n.add_sender(vp8_sender(2));
    let offer = n.create_offer().unwrap();
    n.apply_answer(&answer_video(&offer, true)).unwrap();
    assert!(
        n.sections()
            .iter()
            .all(|s| s.extension_id(TRANSPORT_CC_URI).is_none()),
        "{:?}",
        n.sections()
    );
}

/// A video section with SSRC-group simulcast: `layers` primaries with an RTX each.
fn sim_video(mid: &str, layers: &[u32], group: &str) -> String {
    let mut out = format!(
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\n\
a=setup:actpass\r\na=rtcp-mux\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\n\
a=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n"
    );
    for ssrc in layers {
        out.push_str(&format!(
            "a=ssrc:{ssrc} cname:c\r\na=ssrc:{} cname:c\r\na=ssrc-group:FID {ssrc} {}\r\n",
            ssrc + 1,
            ssrc + 1
        ));
    }
    out.push_str(group);
    out
}

#[test]
fn ssrc_group_simulcast_is_taken_lowest_layer_first() {
    let mut n = negotiator();
    let offer = format!(
        "{SESSION}a=group:BUNDLE 0\r\n{}",
        sim_video("0", &[100, 200, 300], "a=ssrc-group:SIM 100 200 300\r\n")
    );
    n.apply_offer(&offer).unwrap();
    let s = &n.sections()[0];
    assert_eq!(s.remote_sim, vec![100, 200, 300]);
    assert_eq!(s.remote_ssrcs, vec![100, 200, 300]);
    assert_eq!(s.remote_rtx, vec![(101, 100), (201, 200), (301, 300)]);
    assert!(s.rids.is_empty());

    // More layers than we take: the extra one (and its RTX) is not received at all.
    let mut n = negotiator();
    let offer = format!(
        "{SESSION}a=group:BUNDLE 0\r\n{}",
        sim_video("0", &[10, 20, 30, 40], "a=ssrc-group:SIM 10 20 30 40\r\n")
    );
    n.apply_offer(&offer).unwrap();
    let s = &n.sections()[0];
    assert_eq!(s.remote_sim, vec![10, 20, 30]);
    assert_eq!(s.remote_ssrcs, vec![10, 20, 30]);
    assert_eq!(s.remote_rtx.len(), 3);

    // Malformed groups: no simulcast, the SSRCs stay plain streams.
    for group in [
        "a=ssrc-group:SIM 100 999\r\n", // an SSRC nobody announced
        "a=ssrc-group:SIM 100 100\r\n", // a duplicate
        "a=ssrc-group:SIM 100\r\n",     // one layer
        "a=ssrc-group:SIM 100 two\r\n", // not a number
        "a=ssrc-group:SIM 101 201\r\n", // RTX streams, not primaries
    ] {
        let mut n = negotiator();
        let offer = format!(
            "{SESSION}a=group:BUNDLE 0\r\n{}",
            sim_video("0", &[100, 200], group)
        );
        n.apply_offer(&offer).unwrap();
        assert!(n.sections()[0].remote_sim.is_empty(), "{group}");
        assert_eq!(n.sections()[0].remote_ssrcs, vec![100, 200], "{group}");
    }
}

#[test]
fn a_slot_before_the_bundle_tag_is_never_recycled() {
    // The client's first section is one we reject (no codec we forward); its second, an
    // audio track, is the tag. Our new sender must not take the rejected first slot: its
    // mid would lead the group and become the tag.
    let mut n = negotiator();
    let unsupported = "m=video 9 UDP/TLS/RTP/SAVPF 98\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
a=setup:actpass\r\na=rtcp-mux\r\na=sendonly\r\na=rtpmap:98 XYZ/90000\r\n";
    let offer = format!(
        "{SESSION}a=group:BUNDLE 0 1\r\n{unsupported}{}",
        audio("1", 9, "")
    );
    n.apply_offer(&offer).unwrap();
    assert!(n.sections()[0].rejected && !n.sections()[1].rejected);
    n.add_sender(opus_sender(5));
    let offer = n.create_offer().unwrap();
    let group = offer
        .lines()
        .find(|l| l.starts_with("a=group:BUNDLE"))
        .unwrap();
    assert!(group.starts_with("a=group:BUNDLE 1 "), "{group}");
    assert_eq!(
        offer.matches("m=").count(),
        3,
        "appended, not recycled: {offer}"
    );
}

#[test]
fn an_answer_without_codecs_keeps_the_bundle_tag() {
    let mut n = negotiator();
    let key = n.add_sender(opus_sender(5));
    let offer = n.create_offer().unwrap();
    assert!(offer.contains("a=group:BUNDLE h0"));
    // The client accepts the section but no codec of it (payload type 0 was not offered).
    let answer = answer_head()
        + "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=mid:h0\r\n\
a=rtcp-mux\r\na=recvonly\r\na=rtpmap:0 PCMU/8000\r\n";
    n.apply_answer(&answer).unwrap();
    let tag = &n.sections()[0];
    assert!(!tag.rejected, "the tag stays in the group");
    assert!(tag.sender.is_none() && !tag.local_sends && !tag.codecs.is_empty());
    // The sender is not offered again (the client would refuse it again); a new one goes
    // in a new section after the tag.
    assert!(n.is_refused(key));
    assert!(!n.needs_offer());
    n.add_sender(opus_sender(6));
    let offer = n.create_offer().unwrap();
    assert!(offer.contains("a=group:BUNDLE h0 h1"), "{offer}");
    assert!(n.sender(key).is_some());
    assert!(!offer.contains("a=ssrc:5 "), "{offer}");
}

/// VP9 and AV1 are accepted from publishers; VP9 profile 2 (10-bit) is not profile 0, and
/// AV1's profile is compared the same way (a receiver that decodes one may not decode the other).
#[test]
fn vp9_and_av1_are_forwarded_by_profile() {
    let offer = format!(
        "{SESSION}m=video 9 UDP/TLS/RTP/SAVPF 98 100 45 35\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
a=setup:actpass\r\na=rtcp-mux\r\na=sendonly\r\na=rtpmap:98 VP9/90000\r\n\
a=fmtp:98 profile-id=0\r\na=rtpmap:100 VP9/90000\r\na=fmtp:100 profile-id=2\r\n\
a=rtpmap:45 AV1/90000\r\na=fmtp:45 level-idx=5;profile=0;tier=0\r\n\
a=rtpmap:35 AV1/90000\r\na=fmtp:35 profile=1\r\na=ssrc:10 cname:x\r\n"
    );
    let mut n = negotiator();
    let (answer, _) = n.apply_offer(&offer).unwrap();
    assert!(answer.contains("a=rtpmap:98 VP9/90000"), "{answer}");
    assert!(answer.contains("a=rtpmap:45 AV1/90000"), "{answer}");
    assert!(!answer.contains("a=rtpmap:100 "), "VP9 profile 2: {answer}");
    assert!(!answer.contains("a=rtpmap:35 "), "AV1 profile 1: {answer}");
    let vp9 = |fmtp: &str| CodecParams {
        codec: Codec::Vp9,
        mime_type: "video/VP9".into(),
        clock_rate: 90_000,
        channels: 0,
        fmtp: fmtp.into(),
    };
    assert!(same_codec(&vp9(""), &vp9("profile-id=0")));
    assert!(!same_codec(&vp9("profile-id=0"), &vp9("profile-id=2")));
}

/// A client that cannot receive what a sender sends (its answer rejects the section, with
/// port 0 or with no codec in common) is not offered that sender again: the same offer
/// would be refused the same way, in an endless exchange. Other senders still are.
#[test]
fn a_sender_the_client_refused_is_not_offered_again() {
    for by_codecs in [false, true] {
        let mut n = negotiator();
        n.add_sender(opus_sender(1));
        let video = n.add_sender(vp8_sender(2));
        let offer = n.create_offer().unwrap();
        let mut answer = answer_head();
        for block in offer.split("m=").skip(1) {
            let mid = mid_of(block);
            if block.starts_with("video") {
                answer.push_str(&if by_codecs {
                    // Accepted, but only a codec we did not offer.
                    format!(
                        "m=video 9 UDP/TLS/RTP/SAVPF 127\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\n\
a=rtcp-mux\r\na=recvonly\r\na=rtpmap:127 H265/90000\r\n"
                    )
                } else {
                    format!(
                        "m=video 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\n\
a=inactive\r\n"
                    )
                });
            } else {
                answer.push_str(&format!(
                    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\n\
a=rtcp-mux\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\n"
                ));
            }
        }
        n.apply_answer(&answer).unwrap();
        assert!(n.is_refused(video), "by codecs: {by_codecs}");
        assert!(
            !n.needs_offer(),
            "by codecs: {by_codecs}: no offer for the refused sender"
        );
        // A new audio sender is offered, the refused video is not.
        n.add_sender(opus_sender(3));
        assert!(n.needs_offer());
        let offer = n.create_offer().unwrap();
        assert_eq!(
            offer.matches("a=sendonly").count(),
            2,
            "by codecs: {by_codecs}: {offer}"
        );
        assert!(
            !offer.contains("a=ssrc:2 "),
            "by codecs: {by_codecs}: {offer}"
        );
        // Removed, it is forgotten.
        n.remove_sender(video);
        n.apply_answer(&answer_audio_offer(&offer)).unwrap();
        assert!(!n.is_refused(video));
        assert!(!n.needs_offer());
    }
}

/// Our offers list every codec of the kind, the sender's first: a client that cannot
/// decode the sender's codec (Firefox without OpenH264, for an H.264 sender) accepts the
/// section with another one. Nothing can be sent on it: the sender counts as refused.
#[test]
fn an_answer_without_the_senders_codec_refuses_it() {
    let mut n = negotiator();
    let h264 = codec_table()
        .into_iter()
        .find(|c| c.mime_type.eq_ignore_ascii_case("video/H264"))
        .unwrap();
    let key = n.add_sender(Sender {
        codec: h264,
        ..vp8_sender(7)
    });
    let offer = n.create_offer().unwrap();
    let block = offer.split("m=").nth(1).unwrap();
    let mid = mid_of(block);
    let vp8_pt = block
        .lines()
        .find_map(|l| l.strip_prefix("a=rtpmap:")?.strip_suffix(" VP8/90000"))
        .unwrap();
    let answer = answer_head()
        + &format!(
            "m=video 9 UDP/TLS/RTP/SAVPF {vp8_pt}\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\n\
a=rtcp-mux\r\na=recvonly\r\na=rtpmap:{vp8_pt} VP8/90000\r\n"
        );
    n.apply_answer(&answer).unwrap();
    assert_eq!(n.sender(key).unwrap().pt, None);
    assert!(n.is_refused(key));
    assert!(!n.needs_offer());
    // Its section stays, inactive on our side, in the next offer.
    n.add_sender(opus_sender(8));
    let offer = n.create_offer().unwrap();
    let section = offer
        .split("m=")
        .find(|b| b.contains(&format!("a=mid:{mid}\r\n")))
        .unwrap();
    assert!(section.contains("a=inactive"), "{section}");
}

/// An answer that fails part-way (a later section's mid does not match) records no
/// refusal: the offer is taken back and made again whole.
#[test]
fn a_failed_answer_refuses_nothing() {
    let mut n = negotiator();
    let video = n.add_sender(vp8_sender(2));
    n.add_sender(opus_sender(1));
    let offer = n.create_offer().unwrap();
    let mids: Vec<&str> = offer
        .lines()
        .filter_map(|l| l.strip_prefix("a=mid:"))
        .collect();
    let answer = answer_head()
        + &format!(
            "m=video 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:{}\r\na=inactive\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:wrong\r\na=rtcp-mux\r\n\
a=recvonly\r\na=rtpmap:111 opus/48000/2\r\n",
            mids[0]
        );
    assert!(n.apply_answer(&answer).is_err());
    assert!(!n.is_refused(video));
}

/// The dependency descriptor (AV1's layers) is offered on sending sections of AV1 tracks
/// and accepted from publishing sections whose codec is AV1 (never for VP8, never on
/// audio); two-byte header extensions are allowed by our offers always, by our answers
/// only when the client's offer allowed them, and agreed only when both sides did.
#[test]
fn the_dependency_descriptor_and_two_byte_extensions_follow_the_exchange() {
    let av1 = codec_table()
        .into_iter()
        .find(|c| c.codec == Codec::Av1)
        .unwrap();
    let av1_sender = |ssrc: u32| Sender {
        codec: av1.clone(),
        ..vp8_sender(ssrc)
    };
    let mut n = negotiator();
    n.add_sender(av1_sender(1));
    n.add_sender(vp8_sender(3));
    let offer = n.create_offer().unwrap();
    let ext = format!("a=extmap:16 {DEPENDENCY_DESCRIPTOR_URI}");
    let sections: Vec<&str> = offer.split("m=").skip(1).collect();
    assert!(sections[0].contains(&ext), "{offer}");
    assert!(!sections[1].contains(DEPENDENCY_DESCRIPTOR_URI), "{offer}");
    assert!(offer.contains("a=extmap-allow-mixed"), "{offer}");
    // An answer keeping the descriptor but not allowing mixed forms.
    let answer = answer_video(&offer, true).replacen(
        "a=recvonly\r\n",
        &format!("{ext}\r\na=recvonly\r\n"),
        1,
    );
    n.apply_answer(&answer).unwrap();
    assert_eq!(
        n.sections()[0].extension_id(DEPENDENCY_DESCRIPTOR_URI),
        Some(16)
    );
    assert!(!n.allows_two_byte_extensions());
    // The next answer allows them (session level).
    n.add_sender(av1_sender(2));
    let offer = n.create_offer().unwrap();
    let answer = answer_video(&offer, true).replacen(
        "a=ice-ufrag",
        "a=extmap-allow-mixed\r\na=ice-ufrag",
        1,
    );
    n.apply_answer(&answer).unwrap();
    assert!(n.allows_two_byte_extensions());

    // Publishing: the descriptor offered on audio, VP8 video and AV1 video, without
    // allow-mixed: accepted on the AV1 section only.
    let mut n = negotiator();
    let dd = format!("a=extmap:7 {DEPENDENCY_DESCRIPTOR_URI}\r\n");
    let av1_video = "m=video 9 UDP/TLS/RTP/SAVPF 45\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\n\
a=setup:actpass\r\na=rtcp-mux\r\na=sendonly\r\na=rtpmap:45 AV1/90000\r\n\
a=rtcp-fb:45 nack\r\na=rtcp-fb:45 nack pli\r\na=ssrc:20 cname:x\r\n";
    let offer = format!(
        "{SESSION}a=group:BUNDLE 0 1 2\r\n{}{}{dd}{av1_video}{dd}",
        audio("0", 9, &dd),
        video("1")
    );
    let (answer, _) = n.apply_offer(&offer).unwrap();
    assert!(!answer.contains("a=extmap-allow-mixed"), "{answer}");
    assert_eq!(
        n.sections()[0].extension_id(DEPENDENCY_DESCRIPTOR_URI),
        None
    );
    assert_eq!(
        n.sections()[1].extension_id(DEPENDENCY_DESCRIPTOR_URI),
        None
    );
    assert_eq!(
        n.sections()[2].extension_id(DEPENDENCY_DESCRIPTOR_URI),
        Some(7)
    );
    assert!(!n.allows_two_byte_extensions());
    // The same offer allowing mixed forms: our answer allows them too.
    let mut n = negotiator();
    let offer = offer.replacen("t=0 0\r\n", "t=0 0\r\na=extmap-allow-mixed\r\n", 1);
    let (answer, _) = n.apply_offer(&offer).unwrap();
    assert!(answer.contains("a=extmap-allow-mixed"), "{answer}");
    assert!(n.allows_two_byte_extensions());
}

/// An id the client's own sections use for an extension we did not accept is still taken
/// for the whole BUNDLE group: Chromium refuses an offer that gives it another URI ("RTP
/// extension ID reassignment not supported"). Our new sending sections pick another id.
#[test]
fn extension_ids_the_client_reserved_are_not_given_another_uri() {
    let mut n = negotiator();
    let layers_alloc =
        "a=extmap:16 http://www.webrtc.org/experiments/rtp-hdrext/video-layers-allocation00\r\n";
    let offer = format!(
        "{SESSION}a=group:BUNDLE 0 1\r\n{}{}{layers_alloc}",
        audio("0", 9, ""),
        video("1")
    );
    let (answer, _) = n.apply_offer(&offer).unwrap();
    assert!(!answer.contains("video-layers-allocation00"), "{answer}");
    let av1 = codec_table()
        .into_iter()
        .find(|c| c.codec == Codec::Av1)
        .unwrap();
    n.add_sender(Sender {
        codec: av1,
        ..vp8_sender(5)
    });
    let offer = n.create_offer().unwrap();
    let ours = offer.split("m=").nth(3).unwrap();
    let dd_line = ours
        .lines()
        .find(|l| l.ends_with(DEPENDENCY_DESCRIPTOR_URI))
        .unwrap_or_else(|| panic!("{ours}"));
    assert!(!dd_line.starts_with("a=extmap:16 "), "{ours}");
    assert!(!ours.contains("a=extmap:16 "), "{ours}");
}
