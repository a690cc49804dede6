//! Scenarios: how many meetings, who publishes what, how fast they join. Presets model the
//! scenarios of LiveKit's published benchmarks so the numbers can be compared.

use std::time::Duration;

use crate::media::VideoProfile;
use crate::peer::Sending;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Scenario {
    pub preset: Option<String>,
    pub meetings: usize,
    pub participants: usize,
    /// Participants (from the first) sending audio; the rest of the audio senders are
    /// muted microphones sending Opus silence.
    pub audio_publishers: usize,
    /// Of the audio publishers, how many speak.
    pub speakers: usize,
    pub video_publishers: usize,
    pub video: VideoProfile,
    /// The last N participants of each meeting only receive.
    pub subscribers_only: usize,
    /// Participants joining per second.
    pub ramp: f64,
    #[serde(with = "secs")]
    pub duration: Duration,
    pub seed: u64,
    /// The `mixed` preset: meeting shapes and their shares (percent); empty for a uniform
    /// scenario. Meeting `m`'s shape is `mix[kinds[m]]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mix: Vec<MixPart>,
    #[serde(skip)]
    kinds: Vec<u8>,
    /// Participants of the meetings before each meeting (mixed scenarios), and the total.
    #[serde(skip)]
    before: Vec<usize>,
}

/// One kind of meeting in a `mixed` scenario.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MixPart {
    pub share_pct: u32,
    pub shape: Scenario,
}

/// The default proportions of `--preset mixed`.
pub const DEFAULT_MIX: &str = "audio-rooms:70,video-meeting:25,livestream:5";

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// A named preset's shape: (participants, audio publishers, speakers, video publishers,
/// video profile, subscribers only), given the participants asked for.
pub fn preset(name: &str, participants: Option<usize>) -> Result<Scenario, String> {
    let sd = VideoProfile {
        bitrate_bps: 300_000,
        fps: 30,
        simulcast: false,
    };
    let hd = VideoProfile {
        bitrate_bps: 1_200_000,
        fps: 30,
        simulcast: false,
    };
    let s = |participants, audio, speakers, video_pubs, video, subs| Scenario {
        preset: Some(name.to_owned()),
        audio_publishers: audio,
        speakers,
        video_publishers: video_pubs,
        video,
        subscribers_only: subs,
        ..Scenario::custom(participants)
    };
    match name {
        // Many small meetings, one speaker each, everyone's microphone on.
        "audio-rooms" => {
            let p = participants.unwrap_or(4);
            Ok(s(p, p, 1, 0, sd, 0))
        }
        // 10 speakers and N listeners in one meeting.
        "big-audio-room" => {
            let p = participants.unwrap_or(100).max(10);
            Ok(s(p, 10, 10, 0, sd, p - 10))
        }
        // 8 people on camera (360p, 300 kbit/s), one speaking.
        "video-meeting" => {
            let p = participants.unwrap_or(8);
            Ok(s(p, p, 1, p.min(10), sd, 0))
        }
        // One publisher (720p, 1.2 Mbit/s + audio), everyone else watching.
        "livestream" => {
            let p = participants.unwrap_or(100).max(2);
            Ok(s(p, 1, 1, 1, hd, p - 1))
        }
        "mixed" => {
            let mut m = s(1, 0, 0, 0, sd, 0);
            m.mix = parse_mix(DEFAULT_MIX)?;
            Ok(m)
        }
        other => Err(format!(
            "unknown preset {other:?}: audio-rooms, big-audio-room, video-meeting, livestream, mixed"
        )),
    }
}

/// Parses `--mix`: `preset:percent,...` (each preset at its default size), shares adding
/// up to 100.
pub fn parse_mix(text: &str) -> Result<Vec<MixPart>, String> {
    let mut parts = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, share) = item
            .split_once(':')
            .ok_or_else(|| format!("--mix: {item:?} is not preset:percent"))?;
        if name == "mixed" {
            return Err("--mix: a mix cannot contain itself".into());
        }
        let share: u32 = share
            .parse()
            .map_err(|_| format!("--mix: {share:?} is not a whole percentage"))?;
        if share > 0 {
            parts.push(MixPart {
                share_pct: share,
                shape: preset(name, None)?,
            });
        }
    }
    if parts.iter().map(|p| p.share_pct).sum::<u32>() != 100 {
        return Err("--mix: the shares must add up to 100".into());
    }
    Ok(parts)
}

impl Scenario {
    /// No preset: `participants` per meeting, everyone's microphone on, one speaking.
    pub fn custom(participants: usize) -> Scenario {
        Scenario {
            preset: None,
            meetings: 1,
            participants,
            audio_publishers: participants,
            speakers: 1.min(participants),
            video_publishers: 0,
            video: VideoProfile {
                bitrate_bps: 300_000,
                fps: 30,
                simulcast: false,
            },
            subscribers_only: 0,
            ramp: 100.0,
            duration: Duration::from_secs(60),
            seed: 1,
            mix: Vec::new(),
            kinds: Vec::new(),
            before: Vec::new(),
        }
    }

    /// Places a mixed scenario's meetings: kinds spread evenly in their proportions (smooth
    /// weighted round robin), so any first N meetings have about the stated mix. The order
    /// repeats every 100 meetings (the shares add up to 100), so one period is kept and a
    /// meeting's kind does not depend on the run's size (an agent's share, a `--find-max`
    /// stage): any index works.
    pub fn place(&mut self) {
        if self.mix.is_empty() {
            return;
        }
        let total: i64 = self.mix.iter().map(|p| i64::from(p.share_pct)).sum();
        let mut current = vec![0i64; self.mix.len()];
        self.kinds = Vec::with_capacity(total as usize);
        self.before = Vec::with_capacity(total as usize + 1);
        let mut sum = 0;
        for _ in 0..total {
            for (c, p) in current.iter_mut().zip(&self.mix) {
                *c += i64::from(p.share_pct);
            }
            let (k, _) = current
                .iter()
                .enumerate()
                .max_by_key(|(k, c)| (**c, std::cmp::Reverse(*k)))
                .unwrap_or((0, &0));
            current[k] -= total;
            self.kinds.push(k as u8);
            self.before.push(sum);
            sum += self.mix[k].shape.participants;
        }
        self.before.push(sum);
    }

    /// The shape of meeting `m` (itself, unless mixed).
    pub fn meeting(&self, m: usize) -> &Scenario {
        if self.kinds.is_empty() {
            return self;
        }
        &self.mix[usize::from(self.kinds[m % self.kinds.len()])].shape
    }

    /// Participants in the meetings before meeting `m`.
    pub fn participants_before(&self, m: usize) -> usize {
        if self.kinds.is_empty() {
            return m * self.participants;
        }
        let period = self.kinds.len();
        let per_period = self.before[period];
        (m / period) * per_period + self.before[m % period]
    }

    /// What participant `index` of a meeting sends.
    pub fn sending(&self, index: usize) -> Sending {
        let receive_only = index >= self.participants.saturating_sub(self.subscribers_only);
        Sending {
            audio: !receive_only && index < self.audio_publishers,
            speaking: index < self.speakers,
            video: (!receive_only && index < self.video_publishers).then_some(self.video),
        }
    }

    /// True if someone else in the meeting of participant `index` sends media.
    pub fn others_send(&self, index: usize) -> bool {
        (0..self.participants).any(|j| {
            let s = self.sending(j);
            j != index && (s.audio || s.video.is_some())
        })
    }

    pub fn total_participants(&self) -> usize {
        self.participants_before(self.meetings)
    }

    pub fn check(&self) -> Result<(), String> {
        for part in &self.mix {
            part.shape.check()?;
        }
        if self.participants == 0 || self.meetings == 0 {
            return Err("--meetings and --participants must be at least 1".into());
        }
        if self.speakers > self.audio_publishers {
            return Err("--speakers cannot exceed --audio-publishers".into());
        }
        if self.subscribers_only > self.participants {
            return Err("--subscribers-only cannot exceed --participants".into());
        }
        if self.ramp <= 0.0 {
            return Err("--ramp must be positive".into());
        }
        if self.total_participants() > 4_000_000 {
            return Err("at most 4 million participants (the address range)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_documented_shapes() {
        let a = preset("audio-rooms", None).expect("preset");
        assert_eq!((a.participants, a.speakers, a.video_publishers), (4, 1, 0));
        assert!(a.sending(0).speaking && a.sending(3).audio && !a.sending(3).speaking);
        let l = preset("livestream", Some(50)).expect("preset");
        assert!(l.sending(0).video.is_some() && l.sending(0).audio);
        assert!(!l.sending(1).audio && l.sending(1).video.is_none());
        let b = preset("big-audio-room", Some(30)).expect("preset");
        assert!(b.sending(9).speaking && !b.sending(10).audio);
        assert!(preset("nope", None).is_err());
        assert!(l.others_send(1) && !l.others_send(0));
        assert!(a.others_send(0) && a.others_send(3));
    }

    #[test]
    fn a_mix_places_meetings_in_its_proportions() {
        let mut m = preset("mixed", None).expect("preset");
        m.mix = parse_mix("audio-rooms:70,video-meeting:25,livestream:5").expect("mix");
        m.meetings = 1000;
        m.place();
        let count = |p: &str| {
            (0..1000)
                .filter(|&i| m.meeting(i).preset.as_deref() == Some(p))
                .count()
        };
        assert_eq!(
            (
                count("audio-rooms"),
                count("video-meeting"),
                count("livestream")
            ),
            (700, 250, 50)
        );
        // Any prefix is close to the mix: the first 20 meetings hold a livestream.
        assert!((0..25).any(|i| m.meeting(i).preset.as_deref() == Some("livestream")));
        assert_eq!(m.total_participants(), 700 * 4 + 250 * 8 + 50 * 100);
        assert_eq!(m.participants_before(1), m.meeting(0).participants);
        // Past the first period, the same order and the same sums.
        assert_eq!(
            m.participants_before(12_345) - m.participants_before(12_300),
            m.participants_before(45) - m.participants_before(0)
        );
        assert!(m.check().is_ok());
        for bad in [
            "audio-rooms:50",
            "nope:100",
            "audio-rooms:x",
            "mixed:100",
            "audio-rooms",
        ] {
            assert!(parse_mix(bad).is_err(), "{bad}");
        }
    }
}
