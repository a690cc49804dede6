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
}

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
    };
    let hd = VideoProfile {
        bitrate_bps: 1_200_000,
        fps: 30,
    };
    let s = |participants, audio, speakers, video_pubs, video, subs| Scenario {
        preset: Some(name.to_owned()),
        meetings: 1,
        participants,
        audio_publishers: audio,
        speakers,
        video_publishers: video_pubs,
        video,
        subscribers_only: subs,
        ramp: 100.0,
        duration: Duration::from_secs(60),
        seed: 1,
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
        other => Err(format!(
            "unknown preset {other:?}: audio-rooms, big-audio-room, video-meeting, livestream"
        )),
    }
}

impl Scenario {
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
        self.meetings * self.participants
    }

    pub fn check(&self) -> Result<(), String> {
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
}
