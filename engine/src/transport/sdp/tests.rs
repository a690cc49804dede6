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
        removed: false,
    };
    let answer_all = |offer: &str| {
        // Answer every live section recvonly, rejected ones with port 0.
        let mut out = SESSION.replace("a=ice-ufrag", "a=setup:active\r\na=ice-ufrag");
        for block in offer.split("m=").skip(1) {
            let mid = block
                .lines()
                .find_map(|l| l.strip_prefix("a=mid:"))
                .unwrap()
                .trim();
            let port = if block.starts_with("audio 0 ") { 0 } else { 9 };
            out.push_str(&format!(
                "m=audio {port} UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\n\
a=rtcp-mux\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\n"
            ));
        }
        out
    };
    let a = n.add_sender(sender(1));
    let offer = n.create_offer().unwrap();
    n.apply_answer(&answer_all(&offer)).unwrap();
    assert_eq!(n.sender(a).unwrap().pt, Some(111));
    for round in 2..30 {
        let b = n.add_sender(sender(round));
        n.remove_sender(round as usize - 2);
        let offer = n.create_offer().unwrap();
        n.apply_answer(&answer_all(&offer)).unwrap();
        assert_eq!(n.sender(b).unwrap().pt, Some(111), "round {round}");
        assert!(
            n.sections().len() <= 3,
            "round {round}: {}",
            n.sections().len()
        );
    }
    assert!(!n.needs_offer());
}
