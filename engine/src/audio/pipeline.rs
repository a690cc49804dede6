//! [`TrackAudio`]: one track's received Opus RTP payloads in, utterance events out.
//!
//! RTP packets are placed on a 48 kHz timeline by their timestamp (position 0 is the first
//! packet's first sample), decoded ([`super::opus`]), resampled to 16 kHz
//! ([`super::resample`]) and segmented ([`super::segment`]). Event times are ms of that
//! timeline, i.e. since the first packet of the track.
//!
//! # Sequence and timestamp handling
//!
//! - **Old, duplicate, reordered** (sequence number not newer than the newest seen): ignored
//!   and counted; the gap it belonged to was already filled. After [`RESYNC_AFTER`] such
//!   packets in a row, the sender is taken to have restarted its sequence numbers: the next
//!   one is accepted as a discontinuity.
//! - **Loss** (sequence gap) then a timestamp gap: the gap is filled with the decoder's
//!   packet-loss concealment for at most [`MAX_PLC_MS`], then silence.
//! - **DTX** (contiguous sequence, timestamp jumps by more than the last packet's duration):
//!   the gap is filled with silence. So are DTX packets themselves (frames of 0-1 byte).
//! - **Big gaps**: at most [`MAX_GAP_FILL_MS`] of filler per gap; the rest of the gap is
//!   skipped: the timeline advances without audio ([`Segmenter::skip`]), so times stay right.
//! - **Implausible timestamps** (jumping back more than [`MAX_OVERLAP_MS`], or forward by more
//!   than the wall time since the previous packet plus [`TIMESTAMP_SLACK_MS`]): a sender
//!   restart or garbage. The packet is placed by wall time instead (the gap since the last
//!   packet's end as measured by `now_ms`) and the timestamp mapping is re-anchored there.
//! - **Slight overlap** (timestamp a little behind the end of the previous packet): the audio
//!   is appended anyway, so it lands up to that much later than its timestamp says.
//! - **Unparseable payloads** (bad framing): counted, no audio; the next gap is treated as
//!   loss. **Corrupt content** (the decoder rejects it): concealment of the packet's duration.
//!
//! # Wall clock
//!
//! `now_ms` (the caller's monotonic ms, e.g. since the pipeline was created) only decides when
//! audio last arrived: if an utterance is open and no audio has arrived for `silence_end_ms`,
//! [`TrackAudio::handle_timeout`] ends it (the publisher muted or paused, or DTX stopped
//! sending). [`TrackAudio::poll_timeout`] says when that is due.

use super::opus::{DecodeOutcome, OPUS_RATE, OpusMonoDecoder, parse_packet};
use super::resample::Resampler48To16;
use super::segment::{Segmenter, SegmenterConfig, UtteranceEvent};
use crate::seq::{seq_diff, ts_diff};

/// Most filler (concealment or silence) inserted for one gap; the rest is skipped.
pub const MAX_GAP_FILL_MS: u64 = 1_000;
/// Most decoder concealment per gap; the rest of the filler is silence.
pub const MAX_PLC_MS: u64 = 100;
/// A timestamp may run ahead of the wall-clock gap between two packets by this much
/// (jitter, bursts) before it counts as a discontinuity.
pub const TIMESTAMP_SLACK_MS: u64 = 2_000;
/// A timestamp further behind the timeline than this is a discontinuity.
pub const MAX_OVERLAP_MS: u64 = 1_000;
/// Old-looking packets in a row after which the sequence is re-synchronised.
pub const RESYNC_AFTER: u32 = 50;

const RATE_PER_MS: u64 = OPUS_RATE as u64 / 1_000;
/// Longest wall-clock interval taken into account ([`crate::MAX_INTERVAL`]).
const MAX_INTERVAL_MS: u64 = crate::MAX_INTERVAL.as_secs() * 1_000;
/// Chunk of silence fed at a time.
static ZEROS: [f32; 960] = [0.0; 960];

/// Packets whose sender-measured level is this quiet (-dBov) or quieter are not decoded.
pub const SILENT_LEVEL_DBOV: u8 = 60;

/// Counters of a [`TrackAudio`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AudioStats {
    /// Packets taken as silence by their audio level, without decoding.
    pub level_silent_packets: u64,
    /// Calls to [`TrackAudio::handle_rtp`].
    pub packets: u64,
    /// Packets decoded to audio.
    pub decoded_packets: u64,
    /// DTX packets (no audio frames), turned into silence.
    pub dtx_packets: u64,
    /// Packets that could not be decoded: bad framing, corrupt content, decoder failure.
    pub decode_errors: u64,
    /// Decoder panics caught (included in `decode_errors`).
    pub decoder_panics: u32,
    /// The decoder was switched off after too many panics; audio is silence from then on.
    pub decoder_disabled: bool,
    /// Old, duplicate or reordered packets ignored.
    pub ignored_packets: u64,
    /// Packets missing from sequence gaps.
    pub lost_packets: u64,
    /// Sequence re-synchronisations and implausible timestamp jumps.
    pub discontinuities: u64,
    /// Audio produced by the decoder's concealment, ms.
    pub concealed_ms: u64,
    /// Silence inserted (DTX, gaps beyond concealment, failed packets), ms.
    pub silence_ms: u64,
    /// Timeline skipped without audio (gaps beyond [`MAX_GAP_FILL_MS`]), ms.
    pub skipped_ms: u64,
    /// Final events (utterances).
    pub utterances: u64,
    /// Interim events.
    pub interims: u64,
    /// Utterances cut at `max_utterance_ms`.
    pub cuts: u64,
    /// Voiced runs too short to be an utterance.
    pub blips: u64,
    /// Events dropped because the caller did not drain them.
    pub events_dropped: u64,
}

#[derive(Clone, Copy, Debug)]
struct RtpState {
    last_seq: u16,
    /// Raw and extended timestamp of the last placed packet.
    last_ts: u32,
    last_ts_ext: i64,
    /// Timeline position = extended timestamp + anchor.
    anchor: i64,
    /// Duration of the last placed packet, 48 kHz samples.
    last_samples: u64,
    /// Wall time of the last placed packet.
    last_arrival_ms: u64,
    old_streak: u32,
    resync: bool,
}

/// Opus decode, 48 -> 16 kHz resampling, VAD and segmentation for one audio track.
#[derive(Debug)]
pub struct TrackAudio {
    decoder: OpusMonoDecoder,
    resampler: Resampler48To16,
    segmenter: Segmenter,
    rtp: Option<RtpState>,
    /// Timeline position of the next sample, 48 kHz samples since the first packet.
    pos48: u64,
    /// Packets were lost or unparseable since the last placed one: conceal the next gap.
    pending_loss: bool,
    last_audio_wall_ms: Option<u64>,
    pcm48: Vec<f32>,
    pcm16: Vec<f32>,
    stats: AudioStats,
}

impl TrackAudio {
    /// A pipeline for a new track.
    pub fn new(cfg: SegmenterConfig) -> Self {
        Self {
            decoder: OpusMonoDecoder::new(),
            resampler: Resampler48To16::new(),
            segmenter: Segmenter::new(cfg),
            rtp: None,
            pos48: 0,
            pending_loss: false,
            last_audio_wall_ms: None,
            pcm48: Vec::with_capacity(2 * super::opus::MAX_PACKET_SAMPLES),
            pcm16: Vec::with_capacity(2 * super::opus::MAX_PACKET_SAMPLES / 3 + 2),
            stats: AudioStats::default(),
        }
    }

    /// The segmenter's (clamped) configuration.
    pub fn config(&self) -> &SegmenterConfig {
        self.segmenter.config()
    }

    /// One received RTP packet of the track: `seq` and `rtp_timestamp` from its header,
    /// `payload` the Opus packet, `now_ms` the caller's wall clock. Never panics.
    pub fn handle_rtp(&mut self, now_ms: u64, seq: u16, rtp_timestamp: u32, payload: &[u8]) {
        self.handle_rtp_with_level(now_ms, seq, rtp_timestamp, payload, None);
    }

    /// [`Self::handle_rtp`] with the sender's RFC 6464 audio level: a packet the sender
    /// measured at [`SILENT_LEVEL_DBOV`] or quieter is taken as silence without decoding it
    /// (decoding is most of the pipeline's cost, and most of a meeting's audio is silence).
    pub fn handle_rtp_with_level(
        &mut self,
        now_ms: u64,
        seq: u16,
        rtp_timestamp: u32,
        payload: &[u8],
        level: Option<crate::media::AudioLevel>,
    ) {
        self.stats.packets += 1;
        let mut st = match self.rtp {
            None => RtpState {
                last_seq: seq,
                last_ts: rtp_timestamp,
                last_ts_ext: 0,
                anchor: 0,
                last_samples: 0,
                last_arrival_ms: now_ms,
                old_streak: 0,
                resync: false,
            },
            Some(mut st) => {
                let d = seq_diff(seq, st.last_seq);
                if d <= 0 {
                    st.old_streak += 1;
                    if st.old_streak < RESYNC_AFTER {
                        self.stats.ignored_packets += 1;
                        self.rtp = Some(st);
                        return;
                    }
                    st.resync = true;
                } else if d > 1 {
                    self.stats.lost_packets += (d - 1) as u64;
                    self.pending_loss = true;
                }
                st.old_streak = 0;
                st.last_seq = seq;
                st
            }
        };

        let info = match parse_packet(payload) {
            Ok(info) => info,
            Err(_) => {
                self.stats.decode_errors += 1;
                self.pending_loss = true;
                self.rtp = Some(st);
                return;
            }
        };

        // Place the packet on the timeline.
        let ts_ext = st.last_ts_ext + ts_diff(rtp_timestamp, st.last_ts);
        // Wall time between packets, capped at a day so no arithmetic below can overflow.
        let elapsed_ms = now_ms
            .saturating_sub(st.last_arrival_ms)
            .min(MAX_INTERVAL_MS);
        let plausible = (elapsed_ms + TIMESTAMP_SLACK_MS) * RATE_PER_MS;
        let pos = i64::try_from(self.pos48).unwrap_or(i64::MAX);
        let mut gap = ts_ext.saturating_add(st.anchor).saturating_sub(pos);
        let implausible = gap > plausible as i64 || gap < -((MAX_OVERLAP_MS * RATE_PER_MS) as i64);
        if self.rtp.is_some() && (st.resync || implausible) {
            self.stats.discontinuities += 1;
            st.resync = false;
            // Place by wall time: the packet started `elapsed` after the previous one did.
            let by_wall = (elapsed_ms * RATE_PER_MS).saturating_sub(st.last_samples);
            gap = by_wall as i64;
            st.anchor = pos.saturating_add(gap).saturating_sub(ts_ext);
        }
        if gap > 0 {
            self.fill_gap(gap as u64);
        }
        self.pending_loss = false;
        st.last_ts = rtp_timestamp;
        st.last_ts_ext = ts_ext;
        st.last_samples = u64::from(info.samples());
        st.last_arrival_ms = now_ms;
        self.rtp = Some(st);

        self.pcm48.clear();
        if level.is_some_and(|l| l.level >= SILENT_LEVEL_DBOV) {
            self.stats.level_silent_packets += 1;
            self.stats.silence_ms += u64::from(info.samples()) / RATE_PER_MS;
            self.pcm48.resize(info.samples() as usize, 0.0);
            self.feed_pcm48();
            self.last_audio_wall_ms = Some(now_ms);
            return;
        }
        match self.decoder.decode(payload, &info, &mut self.pcm48) {
            DecodeOutcome::Decoded => self.stats.decoded_packets += 1,
            DecodeOutcome::Dtx => {
                self.stats.dtx_packets += 1;
                self.stats.silence_ms += u64::from(info.samples()) / RATE_PER_MS;
            }
            DecodeOutcome::Corrupt => {
                self.stats.decode_errors += 1;
                self.stats.concealed_ms += u64::from(info.samples()) / RATE_PER_MS;
            }
            DecodeOutcome::DecoderFailed => {
                self.stats.decode_errors += 1;
                self.stats.silence_ms += u64::from(info.samples()) / RATE_PER_MS;
            }
        }
        let d = self.decoder.stats();
        self.stats.decoder_panics = d.panics;
        self.stats.decoder_disabled = d.disabled;
        self.feed_pcm48();
        self.last_audio_wall_ms = Some(now_ms);
    }

    /// Fills a gap of `gap` samples (48 kHz) on the timeline: concealment if packets were
    /// lost, then silence, at most [`MAX_GAP_FILL_MS`]; the rest is skipped.
    fn fill_gap(&mut self, gap: u64) {
        let fill = gap.min(MAX_GAP_FILL_MS * RATE_PER_MS);
        let mut left = fill;
        if self.pending_loss {
            let plc_len = left.min(MAX_PLC_MS * RATE_PER_MS) as usize;
            self.pcm48.clear();
            let plc = self.decoder.conceal(plc_len, &mut self.pcm48);
            self.stats.concealed_ms += plc as u64 / RATE_PER_MS;
            self.stats.silence_ms += (plc_len - plc) as u64 / RATE_PER_MS;
            self.feed_pcm48();
            left -= plc_len as u64;
        }
        self.stats.silence_ms += left / RATE_PER_MS;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            self.feed48(&ZEROS[..n]);
            left -= n as u64;
        }
        let skip = gap - fill;
        if skip > 0 {
            self.stats.skipped_ms += skip / RATE_PER_MS;
            self.pos48 = self.pos48.saturating_add(skip);
            self.resampler.reset();
            let target16 = self.pos48.div_ceil(3);
            let behind = target16.saturating_sub(self.segmenter.position_samples());
            self.segmenter.skip(behind);
            self.sync_segmenter_stats();
        }
    }

    fn feed_pcm48(&mut self) {
        let pcm = std::mem::take(&mut self.pcm48);
        self.feed48(&pcm);
        self.pcm48 = pcm;
        self.pcm48.clear();
    }

    fn feed48(&mut self, samples: &[f32]) {
        self.pos48 = self.pos48.saturating_add(samples.len() as u64);
        self.pcm16.clear();
        self.resampler.process(samples, &mut self.pcm16);
        self.segmenter.push(&self.pcm16);
        self.sync_segmenter_stats();
    }

    fn sync_segmenter_stats(&mut self) {
        let s = self.segmenter.stats();
        self.stats.utterances = s.utterances;
        self.stats.interims = s.interims;
        self.stats.cuts = s.cuts;
        self.stats.blips = s.blips;
        self.stats.events_dropped = s.events_dropped;
    }

    /// Ends an open utterance if no audio has arrived for `silence_end_ms` of wall time.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if self.poll_timeout().is_some_and(|due| now_ms >= due) {
            self.segmenter.finish();
            self.sync_segmenter_stats();
        }
    }

    /// The wall time at which [`TrackAudio::handle_timeout`] would end the open utterance;
    /// `None` while there is none.
    pub fn poll_timeout(&self) -> Option<u64> {
        if !self.segmenter.is_speaking() {
            return None;
        }
        let quiet = u64::from(self.segmenter.config().silence_end_ms);
        self.last_audio_wall_ms.map(|t| t.saturating_add(quiet))
    }

    /// The next event, oldest first. Drain after every `handle_*` call.
    pub fn poll_event(&mut self) -> Option<UtteranceEvent> {
        self.segmenter.poll_event()
    }

    /// Counters so far.
    pub fn stats(&self) -> AudioStats {
        self.stats
    }

    /// Timeline position (end of the audio so far), ms since the first packet.
    pub fn position_ms(&self) -> u64 {
        self.pos48 / RATE_PER_MS
    }

    /// Samples buffered in the pipeline (utterance, pre-roll, queued events, scratch): for
    /// memory accounting. Bounded by the configuration whatever the input.
    pub fn buffered_samples(&self) -> usize {
        self.segmenter.buffered_samples() + self.pcm48.capacity() + self.pcm16.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::opus::tests::{
        SILK_60MS, SPEECH_MONO, SPEECH_SILK, STEREO_CELT, fixture_packets,
    };
    use crate::audio::segment::EndReason;
    use proptest::prelude::*;

    /// The voice in `SPEECH_MONO` and `SPEECH_SILK` runs from about 1010 to 2490 ms.
    const VOICE: (u64, u64) = (1_010, 2_490);

    /// A packet of the stream: wall ms, seq, timestamp, payload.
    type Pkt<'a> = (u64, u16, u32, &'a [u8]);

    /// The fixture as sent: 20 ms apart, sequence and timestamp starting at awkward values
    /// so both wrap during the stream.
    fn stream(data: &[u8], samples_per_packet: u32) -> Vec<Pkt<'_>> {
        fixture_packets(data)
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let i32_ = i as u32;
                (
                    u64::from(i32_ * samples_per_packet / 48),
                    65_500u16.wrapping_add(i as u16),
                    (u32::MAX - 40_000).wrapping_add(i32_ * samples_per_packet),
                    p,
                )
            })
            .collect()
    }

    fn run(track: &mut TrackAudio, packets: &[Pkt<'_>]) -> Vec<UtteranceEvent> {
        let mut events = Vec::new();
        for &(now, seq, ts, payload) in packets {
            track.handle_rtp(now, seq, ts, payload);
            while let Some(e) = track.poll_event() {
                events.push(e);
            }
        }
        events
    }

    fn finals(events: &[UtteranceEvent]) -> Vec<&UtteranceEvent> {
        events.iter().filter(|e| e.is_final).collect()
    }

    fn assert_voice(e: &UtteranceEvent, offset_ms: u64) {
        let (start, end) = (VOICE.0 + offset_ms, VOICE.1 + offset_ms);
        assert!(
            e.start_ms.abs_diff(start) <= 100,
            "start {} vs {start}",
            e.start_ms
        );
        assert!(e.end_ms.abs_diff(end) <= 100, "end {} vs {end}", e.end_ms);
    }

    #[test]
    fn audio_pipeline_real_opus_speech_gives_one_utterance() {
        let mut track = TrackAudio::new(SegmenterConfig::default());
        let events = run(&mut track, &stream(SPEECH_MONO, 960));
        let f = finals(&events);
        assert_eq!(f.len(), 1, "{events:?}");
        assert!(events.len() >= 2, "an interim before the final");
        assert!(events.iter().all(|e| e.segment == 1));
        assert_voice(f[0], 0);
        assert_eq!(f[0].end_reason, Some(EndReason::Silence));
        // 16 kHz audio matching the reported span.
        let audio_ms = f[0].audio.len() as u64 / 16;
        assert!(audio_ms.abs_diff(f[0].end_ms + 200 - f[0].audio_start_ms) <= 10);
        let s = track.stats();
        assert_eq!(
            (s.packets, s.decoded_packets, s.decode_errors),
            (193, 193, 0)
        );
        assert_eq!((s.utterances, s.lost_packets, s.ignored_packets), (1, 0, 0));
        assert_eq!(track.position_ms(), 193 * 20);
        assert_eq!(track.poll_timeout(), None);
    }

    #[test]
    fn audio_pipeline_stereo_celt_and_silk_60ms_decode() {
        let mut track = TrackAudio::new(SegmenterConfig::default());
        let events = run(&mut track, &stream(STEREO_CELT, 960));
        assert!(!events.is_empty(), "the voice starts at once");
        assert_eq!(track.position_ms(), 51 * 20);
        assert!(track.stats().decoded_packets >= 50);

        let mut track = TrackAudio::new(SegmenterConfig::default());
        let mut packets = stream(SILK_60MS, 2_880);
        // The last packet is 40 ms long: its timestamp is still 60 ms after the previous one.
        let events = run(&mut track, &packets);
        assert!(!events.is_empty());
        assert_eq!(track.stats().decoded_packets, 29);
        assert_eq!(track.position_ms(), 28 * 60 + 40);
        // Followed by silence long enough to end the utterance: one final.
        let dtx = [11u8 << 3];
        let (now, seq, ts, _) = packets[28];
        packets.clear();
        for i in 1..=20u16 {
            packets.push((
                now + 60 * u64::from(i),
                seq.wrapping_add(i),
                ts.wrapping_add(2_880 * u32::from(i)),
                &dtx,
            ));
        }
        let events = run(&mut track, &packets);
        assert_eq!(finals(&events).len(), 1);
        assert_eq!(track.stats().dtx_packets, 20);
    }

    #[test]
    fn audio_pipeline_loss_is_concealed_and_times_stay_right() {
        let mut track = TrackAudio::new(SegmenterConfig::default());
        let mut packets = stream(SPEECH_SILK, 960);
        // Lose 3 packets in the voice and 5 in the silence before it.
        packets.drain(80..83);
        packets.drain(20..25);
        let events = run(&mut track, &packets);
        let f = finals(&events);
        assert_eq!(f.len(), 1);
        assert_voice(f[0], 0);
        let s = track.stats();
        assert_eq!(s.lost_packets, 8);
        assert!(s.concealed_ms >= 100, "{s:?}");
        assert_eq!(track.position_ms(), 193 * 20);
    }

    #[test]
    fn audio_pipeline_dtx_gap_is_filled_with_silence() {
        let mut track = TrackAudio::new(SegmenterConfig::default());
        let mut packets = stream(SPEECH_SILK, 960);
        // The sender stops sending during the leading silence (DTX): sequence contiguous,
        // timestamp and wall clock jump by 600 ms.
        packets.drain(10..40);
        for (i, p) in packets.iter_mut().enumerate().skip(10) {
            p.1 = 65_500u16.wrapping_add(i as u16);
        }
        let events = run(&mut track, &packets);
        let f = finals(&events);
        assert_eq!(f.len(), 1);
        assert_voice(f[0], 0);
        let s = track.stats();
        assert_eq!((s.lost_packets, s.concealed_ms, s.silence_ms), (0, 0, 600));
        assert_eq!(track.position_ms(), 193 * 20);
    }

    #[test]
    fn audio_pipeline_packets_the_sender_measured_silent_are_not_decoded() {
        let packets = stream(SPEECH_SILK, 960);
        let silent = crate::media::AudioLevel::from_byte(SILENT_LEVEL_DBOV);
        let loud = crate::media::AudioLevel::from_byte(0x80 | 20);
        // Every packet marked silent: nothing decoded, the timeline still advances.
        let mut track = TrackAudio::new(SegmenterConfig::default());
        for &(now, seq, ts, payload) in &packets {
            track.handle_rtp_with_level(now, seq, ts, payload, Some(silent));
        }
        track.handle_timeout(1_000_000);
        assert!(track.poll_event().is_none(), "silence gives no utterance");
        let s = track.stats();
        assert_eq!(s.decoded_packets, 0);
        assert_eq!(s.level_silent_packets, packets.len() as u64);
        assert_eq!(track.position_ms(), packets.len() as u64 * 20);
        // Marked loud: decoded as without a level, the same utterance comes out.
        let mut track = TrackAudio::new(SegmenterConfig::default());
        let mut events = Vec::new();
        for &(now, seq, ts, payload) in &packets {
            track.handle_rtp_with_level(now, seq, ts, payload, Some(loud));
            while let Some(e) = track.poll_event() {
                events.push(e);
            }
        }
        assert_eq!(finals(&events).len(), 1);
        assert_eq!(track.stats().level_silent_packets, 0);
    }

    #[test]
    fn audio_pipeline_long_gap_is_skipped_not_filled() {
        let mut track = TrackAudio::new(SegmenterConfig::default());
        let mut packets = stream(SPEECH_SILK, 960);
        // 30 s of nothing (a paused track) in the leading silence, by timestamp and wall.
        for p in packets.iter_mut().skip(10) {
            p.0 += 30_000;
            p.2 = p.2.wrapping_add(30_000 * 48);
        }
        let events = run(&mut track, &packets);
        let f = finals(&events);
        assert_eq!(f.len(), 1);
        assert_voice(f[0], 30_000);
        let s = track.stats();
        assert_eq!(s.silence_ms, MAX_GAP_FILL_MS);
        assert_eq!(s.skipped_ms, 30_000 - MAX_GAP_FILL_MS);
        assert_eq!(track.position_ms(), 193 * 20 + 30_000);
    }

    #[test]
    fn audio_pipeline_implausible_timestamp_jump_uses_wall_clock() {
        let mut track = TrackAudio::new(SegmenterConfig::default());
        let mut packets = stream(SPEECH_SILK, 960);
        // The sender's timestamps leap by 10 hours between packets 10 and 11, wall time does
        // not: the packet is placed by wall time (no gap) and the mapping re-anchored.
        for p in packets.iter_mut().skip(10) {
            p.2 = p.2.wrapping_add(10 * 3_600 * 48_000);
        }
        // And later jump backwards by 5 s.
        for p in packets.iter_mut().skip(150) {
            p.2 = p.2.wrapping_sub(5 * 48_000);
        }
        let events = run(&mut track, &packets);
        let f = finals(&events);
        assert_eq!(f.len(), 1);
        assert_voice(f[0], 0);
        let s = track.stats();
        assert_eq!((s.discontinuities, s.skipped_ms, s.silence_ms), (2, 0, 0));
        assert_eq!(track.position_ms(), 193 * 20);
    }

    #[test]
    fn audio_pipeline_ignores_duplicates_and_late_packets() {
        let mut track = TrackAudio::new(SegmenterConfig::default());
        let mut packets = stream(SPEECH_SILK, 960);
        // Duplicate packet 50, swap 60 and 61 (61 first: 60 counts as lost, then arrives
        // late and is ignored).
        let dup = packets[50];
        packets.insert(51, dup);
        packets.swap(61, 62);
        let events = run(&mut track, &packets);
        let f = finals(&events);
        assert_eq!(f.len(), 1);
        assert_voice(f[0], 0);
        let s = track.stats();
        assert_eq!((s.ignored_packets, s.lost_packets), (2, 1));
        assert_eq!(track.position_ms(), 193 * 20);
    }

    #[test]
    fn audio_pipeline_sequence_restart_resyncs() {
        let mut track = TrackAudio::new(SegmenterConfig::default());
        let mut packets = stream(SPEECH_SILK, 960);
        // From packet 5 on, the sequence restarts 30000 lower (looks old).
        for p in packets.iter_mut().skip(5) {
            p.1 = p.1.wrapping_sub(30_000);
        }
        let events = run(&mut track, &packets);
        let s = track.stats();
        assert_eq!(
            (s.ignored_packets, s.discontinuities),
            (u64::from(RESYNC_AFTER) - 1, 1)
        );
        // Resynchronised at packet 54 (1080 ms, placed by wall time): the voice is still found.
        assert_eq!(finals(&events).len(), 1);
    }

    #[test]
    fn audio_pipeline_wall_clock_end_when_packets_stop() {
        let mut track = TrackAudio::new(SegmenterConfig::default());
        let packets = stream(SPEECH_SILK, 960);
        // The publisher mutes mid-utterance: packets stop after 1.9 s.
        let events = run(&mut track, &packets[..95]);
        assert!(finals(&events).is_empty());
        let last = packets[94].0;
        assert_eq!(track.poll_timeout(), Some(last + 500));
        track.handle_timeout(last + 499);
        assert!(track.poll_event().is_none());
        track.handle_timeout(last + 500);
        let e = track.poll_event().expect("a final");
        assert!(e.is_final);
        assert_eq!(e.segment, 1);
        assert_eq!(e.end_reason, Some(EndReason::Timeout));
        assert!(e.start_ms.abs_diff(VOICE.0) <= 100);
        assert!(e.end_ms <= 1_900 && e.end_ms >= 1_700, "{}", e.end_ms);
        assert_eq!(track.poll_timeout(), None);
        // Packets resume later: the rest of the voice is a new segment.
        let resumed: Vec<Pkt<'_>> = packets[95..]
            .iter()
            .map(|&(now, seq, ts, p)| (now + 3_000, seq, ts.wrapping_add(3_000 * 48), p))
            .collect();
        let events = run(&mut track, &resumed);
        let f = finals(&events);
        assert!(f.len() <= 1);
        assert!(f.iter().all(|e| e.segment == 2 && e.start_ms >= 4_900));
    }

    #[test]
    fn audio_pipeline_garbage_payloads_are_counted() {
        let mut track = TrackAudio::new(SegmenterConfig::default());
        let mut seed = 5u32;
        let mut bufs = Vec::new();
        for i in 0..100u32 {
            let mut b: Vec<u8> = (0..(i % 60))
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 24) as u8
                })
                .collect();
            if i % 2 == 0 && !b.is_empty() {
                b[0] = 15 << 3; // valid framing (code 0), garbage content
            }
            bufs.push(b);
        }
        for (i, b) in bufs.iter().enumerate() {
            track.handle_rtp(i as u64 * 20, i as u16, i as u32 * 960, b);
            while track.poll_event().is_some() {}
        }
        let s = track.stats();
        assert_eq!(s.packets, 100);
        assert!(s.decode_errors > 0);
        assert_eq!(s.decoded_packets + s.decode_errors + s.dtx_packets, 100);
    }

    #[derive(Clone, Debug)]
    enum Payload {
        Bytes(Vec<u8>),
        Fixture(usize),
        Flipped(usize, Vec<(usize, u8)>),
        Dtx(u8),
    }

    fn payload_strategy() -> impl Strategy<Value = Payload> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200).prop_map(Payload::Bytes),
            (0usize..193).prop_map(Payload::Fixture),
            (
                0usize..193,
                proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)
            )
                .prop_map(|(i, f)| Payload::Flipped(i, f)),
            any::<u8>().prop_map(Payload::Dtx),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            // 32 by default; HEARTH_PROPTEST_CASES scales it like the crate's other fuzzers.
            cases: (crate::transport::proptest_cases() / 8).max(1),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Arbitrary payloads, sequence numbers, timestamps and wall times: no panic, and the
        /// buffers stay within the configured bounds.
        #[test]
        fn audio_pipeline_arbitrary_input_never_panics(
            steps in proptest::collection::vec(
                (any::<u16>(), any::<u32>(), 0u64..100_000, any::<bool>(), payload_strategy()),
                1..20,
            ),
            max_utterance_ms in 1_000u32..3_000,
        ) {
            let cfg = SegmenterConfig { max_utterance_ms, ..SegmenterConfig::default() };
            let mut track = TrackAudio::new(cfg);
            let silk = fixture_packets(SPEECH_SILK);
            let hybrid = fixture_packets(SPEECH_MONO);
            let (mut now, mut seq, mut ts) = (0u64, 0u16, 0u32);
            let bound = crate::audio::segment::MAX_QUEUED_EVENTS * (max_utterance_ms as usize * 16)
                + 2 * max_utterance_ms as usize * 16
                + 64_000;
            for (dseq, dts, dnow, small, payload) in steps {
                // Mostly small steps (a plausible stream), sometimes anything.
                if small {
                    seq = seq.wrapping_add(dseq % 4);
                    ts = ts.wrapping_add(dts % 20_000);
                    now += dnow % 200;
                } else {
                    seq = dseq;
                    ts = dts;
                    now = now.wrapping_add(dnow.wrapping_mul(dnow));
                }
                let bytes: Vec<u8> = match payload {
                    Payload::Bytes(b) => b,
                    Payload::Fixture(i) => silk[i].to_vec(),
                    Payload::Flipped(i, flips) => {
                        let mut b = if i % 2 == 0 { hybrid[i] } else { silk[i] }.to_vec();
                        for (at, x) in flips {
                            let n = b.len();
                            b[at % n] ^= x;
                        }
                        b
                    }
                    Payload::Dtx(toc) => vec![toc & !3],
                };
                track.handle_rtp(now, seq, ts, &bytes);
                if dnow % 3 == 0 {
                    track.handle_timeout(now);
                }
                prop_assert!(track.buffered_samples() <= bound, "{}", track.buffered_samples());
            }
            let s = track.stats();
            prop_assert!(s.decoded_packets + s.decode_errors + s.dtx_packets <= s.packets);
            let mut last_segment = 0;
            while let Some(e) = track.poll_event() {
                prop_assert!(e.segment >= last_segment);
                prop_assert!(e.audio.len() <= max_utterance_ms as usize * 16);
                prop_assert!(e.start_ms <= e.end_ms || !e.is_final || e.end_reason.is_some());
                last_segment = e.segment;
            }
        }
    }
}
