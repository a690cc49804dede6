//! `--reconnect`: simulated participants that lose their session rejoin as the web client
//! does, and the bookkeeping of what every participant noticed (disconnects, errors, media
//! gaps) and how long it took to be back.
//!
//! A participant *notices* a loss when the server tells it to `reconnect`, its signaling
//! socket closes, or its peer connection fails, while the run goes on. It then rejoins:
//! a new WebSocket, a freshly minted token for the same identity, a new peer connection;
//! between attempts it waits [`Backoff`] (100 ms doubling to 2 s) and it only gives up when
//! the run ends. It is *back* when media flows again: the first media packet received after
//! the rejoin if it receives media from others in its meeting, else when the join is
//! accepted and ICE/DTLS are connected. Time back runs from noticing to being back.
//!
//! Media gaps: every receiver remembers when it last got a packet from each sender (by the
//! sender id of the payload trailer, which survives the sender's rejoins), and a silence of
//! more than [`GAP`] in one sender's media is a gap. A gap in the media of a sender that
//! itself disconnected around then is explained by that disconnect; any other gap, error
//! or disconnect is something a participant noticed.
//!
//! Chaos kills ([`crate::chaos`]) are judged with the same records: the participants inside
//! the killed actor are *affected* (they must notice and come back); every other
//! participant is a *bystander* and must notice nothing within [`WINDOW`] of the kill.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Silence in one sender's media that counts as a gap.
pub const GAP: Duration = Duration::from_millis(500);
/// How long after a kill what participants notice is attributed to it.
pub const WINDOW: Duration = Duration::from_secs(5);
/// Backoff between rejoin attempts: the first delay, doubling up to the last.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The delays between rejoin attempts: 100 ms, 200 ms, 400 ms, ... up to 2 s.
#[derive(Clone, Debug, Default)]
pub struct Backoff {
    attempts: u32,
}

impl Backoff {
    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = BACKOFF_FIRST
            .saturating_mul(1u32 << self.attempts.min(16))
            .min(BACKOFF_MAX);
        self.attempts = self.attempts.saturating_add(1);
        d
    }

    /// A join was accepted: the next loss starts from the first delay again.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

/// A silence of more than [`GAP`] in the media of one sender, as one receiver saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    pub sender: u32,
    /// The last packet before the silence.
    pub start: Instant,
    /// The first packet after it (or when the receiver went away).
    pub end: Instant,
}

/// Something one participant noticed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incident {
    /// It lost its session (the reason: `RECONNECT`, `SOCKET_CLOSED`, `PEER_FAILED`, ...).
    Disconnect {
        at: Instant,
        reason: String,
    },
    /// The server sent an error.
    Error {
        at: Instant,
        code: String,
    },
    Gap(Gap),
}

impl Incident {
    /// When it became noticeable (a gap: once it had lasted [`GAP`]).
    pub fn at(&self) -> Instant {
        match self {
            Incident::Disconnect { at, .. } | Incident::Error { at, .. } => *at,
            Incident::Gap(g) => g.start + GAP,
        }
    }
}

impl Incident {
    /// What happened, `since` a reference time (a kill).
    pub fn describe(&self, since: Instant) -> String {
        let after = |t: Instant| {
            let ms = t.saturating_duration_since(since).as_millis();
            format!("+{ms} ms")
        };
        match self {
            Incident::Disconnect { at, reason } => format!("disconnect {reason} at {}", after(*at)),
            Incident::Error { at, code } => format!("error {code} at {}", after(*at)),
            Incident::Gap(g) => format!(
                "{} ms gap in lg{}'s media from {}",
                g.end.saturating_duration_since(g.start).as_millis(),
                g.sender,
                after(g.start)
            ),
        }
    }
}

/// One participant's record.
#[derive(Clone, Debug, Default)]
pub struct Log {
    pub meeting: String,
    /// Its participant id in the current session (from the join response).
    pub participant_id: Option<String>,
    /// Since when it has been down (noticed a loss and is not back yet).
    pub down_since: Option<Instant>,
    /// Outages that ended: (noticed, back).
    pub outages: Vec<(Instant, Instant)>,
    pub incidents: Vec<Incident>,
    /// Rejoin attempts that failed (connection refused, join refused, timeouts).
    pub failed_attempts: u64,
    /// The server ended its session for good (meeting ended, a fatal error).
    pub ended: bool,
}

impl Log {
    fn disconnects(&self) -> impl Iterator<Item = Instant> + '_ {
        self.incidents.iter().filter_map(|i| match i {
            Incident::Disconnect { at, .. } => Some(*at),
            _ => None,
        })
    }

    /// True if it noticed a disconnect in `from..=to`.
    fn disconnected_within(&self, from: Instant, to: Instant) -> bool {
        self.disconnects().any(|at| at >= from && at <= to)
    }
}

/// Every participant's record, shared by their tasks, the shards' gap reports and chaos.
#[derive(Default)]
pub struct Tracker {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    logs: HashMap<u32, Log>,
    by_participant_id: HashMap<String, u32>,
    /// When the run ended (participants leave): what comes after is not noticed.
    stopped_at: Option<Instant>,
}

/// Time back over a set of outages (ms).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TimeBack {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

/// Nearest-rank percentiles of `values` (any order).
pub fn time_back(values: &[f64]) -> TimeBack {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let q = |q: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        let rank = (q * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    };
    TimeBack {
        count: v.len(),
        p50: q(0.5),
        p95: q(0.95),
        max: v.last().copied().unwrap_or(0.0),
    }
}

/// What `--reconnect` reports.
#[derive(Clone, Debug, Serialize)]
pub struct ReconnectReport {
    /// Participants that lost their session at least once.
    pub participants_disconnected: usize,
    /// Sessions lost, and sessions back (media flowing again).
    pub disconnects: usize,
    pub reconnects: usize,
    /// Rejoin attempts that failed before one succeeded.
    pub failed_attempts: u64,
    /// Participants down when the run ended: lost, never came back.
    pub not_back: usize,
    /// From noticing the loss to media flowing again.
    pub time_back_ms: TimeBack,
    /// Participants that never disconnected but noticed something: an error, or a media gap
    /// longer than 500 ms from a sender that did not disconnect then.
    pub others_noticed: usize,
    /// Their ids (at most 20).
    pub others_noticed_ids: Vec<u32>,
}

/// How one kill went.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KillOutcome {
    /// Affected participants that noticed (a disconnect) within the window.
    pub affected_noticed: usize,
    /// Affected participants that did not come back (by the end of the run).
    pub affected_not_back: usize,
    /// Other participants that noticed anything within the window.
    pub bystanders_noticed: Vec<u32>,
    /// What the first few of them noticed.
    pub bystander_incidents: Vec<String>,
    /// From the kill until every affected participant was back.
    pub all_back_ms: Option<f64>,
}

impl Tracker {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// A participant of the plan (before its first join).
    pub fn planned(&self, id: u32, meeting: &str) {
        self.with(|s| {
            s.logs.entry(id).or_default().meeting = meeting.to_owned();
        });
    }

    /// A join was accepted: its participant id in this session.
    pub fn joined(&self, id: u32, participant_id: &str) {
        self.with(|s| {
            let log = s.logs.entry(id).or_default();
            if let Some(old) = log.participant_id.replace(participant_id.to_owned()) {
                s.by_participant_id.remove(&old);
            }
            s.by_participant_id.insert(participant_id.to_owned(), id);
        });
    }

    /// Its session was lost at `at`: starts an outage, unless one is running (a rejoin
    /// attempt failed); either way its participant id is gone.
    pub fn lost(&self, id: u32, at: Instant, reason: &str) {
        self.with(|s| {
            let log = s.logs.entry(id).or_default();
            if let Some(pid) = log.participant_id.take() {
                s.by_participant_id.remove(&pid);
            }
            if log.down_since.is_none() {
                log.down_since = Some(at);
                log.incidents.push(Incident::Disconnect {
                    at,
                    reason: reason.to_owned(),
                });
            }
        });
    }

    /// Media flows again: the outage ends.
    pub fn back(&self, id: u32, at: Instant) {
        self.with(|s| {
            let log = s.logs.entry(id).or_default();
            if let Some(since) = log.down_since.take() {
                log.outages.push((since, at));
            }
        });
    }

    pub fn attempt_failed(&self, id: u32) {
        self.with(|s| s.logs.entry(id).or_default().failed_attempts += 1);
    }

    /// The server ended its session for good (no rejoin).
    pub fn ended(&self, id: u32) {
        self.with(|s| {
            let log = s.logs.entry(id).or_default();
            log.ended = true;
            if let Some(pid) = log.participant_id.take() {
                s.by_participant_id.remove(&pid);
            }
        });
    }

    pub fn error(&self, id: u32, at: Instant, code: &str) {
        self.with(|s| {
            s.logs
                .entry(id)
                .or_default()
                .incidents
                .push(Incident::Error {
                    at,
                    code: code.to_owned(),
                });
        });
    }

    /// Gaps from the shards: (receiver, gap).
    pub fn gaps(&self, gaps: impl IntoIterator<Item = (u32, Gap)>) {
        self.with(|s| {
            for (receiver, gap) in gaps {
                s.logs
                    .entry(receiver)
                    .or_default()
                    .incidents
                    .push(Incident::Gap(gap));
            }
        });
    }

    /// The run ended at `at`: participants leave; nothing after counts.
    pub fn stop(&self, at: Instant) {
        self.with(|s| {
            s.stopped_at.get_or_insert(at);
        });
    }

    /// The simulated participant behind a participant id of the node.
    pub fn by_participant_id(&self, participant_id: &str) -> Option<u32> {
        self.with(|s| s.by_participant_id.get(participant_id).copied())
    }

    /// The participants of `meeting` in a session now, or None while one of them is
    /// down (coming back from a loss).
    pub fn members(&self, meeting: &str) -> Option<Vec<u32>> {
        self.with(|s| {
            let mut v = Vec::new();
            for (id, l) in s.logs.iter().filter(|(_, l)| l.meeting == meeting) {
                if l.down_since.is_some() {
                    return None;
                }
                if l.participant_id.is_some() {
                    v.push(*id);
                }
            }
            v.sort_unstable();
            Some(v)
        })
    }

    /// True if every one of `ids` is in a session now.
    pub fn all_up(&self, ids: &[u32]) -> bool {
        self.with(|s| {
            ids.iter().all(|id| {
                s.logs
                    .get(id)
                    .is_some_and(|l| l.participant_id.is_some() && l.down_since.is_none())
            })
        })
    }

    /// Participants down now (for the progress line).
    pub fn down(&self) -> usize {
        self.with(|s| s.logs.values().filter(|l| l.down_since.is_some()).count())
    }

    pub fn report(&self) -> ReconnectReport {
        self.with(|s| summarize(&s.logs, s.stopped_at))
    }

    /// Judges the kill at `at` of the actor holding `affected`; `later` are the kills
    /// after it (what their own participants notice after them is theirs).
    pub fn judge(&self, at: Instant, affected: &[u32], later: &[(Instant, &[u32])]) -> KillOutcome {
        self.with(|s| {
            let end = s
                .stopped_at
                .map_or(at + WINDOW, |stop| (at + WINDOW).min(stop));
            let later: Vec<(Instant, BTreeSet<u32>)> = later
                .iter()
                .map(|(t, a)| (*t, a.iter().copied().collect()))
                .collect();
            judge_kill(
                &s.logs,
                at,
                end,
                &affected.iter().copied().collect(),
                &later,
            )
        })
    }
}

/// True if the gap lasted more than [`GAP`] before the run ended at `stop`.
fn gap_counts(g: &Gap, stop: Option<Instant>) -> bool {
    let end = stop.map_or(g.end, |s| g.end.min(s));
    end.saturating_duration_since(g.start) > GAP
}

/// A gap in the media of `g.sender` that the sender's own disconnect explains.
fn explained(logs: &HashMap<u32, Log>, g: &Gap) -> bool {
    logs.get(&g.sender).is_some_and(|l| {
        l.disconnected_within(g.start.checked_sub(GAP * 2).unwrap_or(g.start), g.end)
    })
}

pub fn summarize(logs: &HashMap<u32, Log>, stop: Option<Instant>) -> ReconnectReport {
    let mut backs = Vec::new();
    let (mut disconnected, mut disconnects, mut not_back, mut failed) = (0, 0, 0, 0);
    let mut others = Vec::new();
    for (id, log) in logs {
        let n = log.disconnects().count();
        disconnects += n;
        if n > 0 {
            disconnected += 1;
        }
        if log.down_since.is_some() {
            not_back += 1;
        }
        failed += log.failed_attempts;
        backs.extend(
            log.outages
                .iter()
                .map(|(from, to)| to.saturating_duration_since(*from).as_secs_f64() * 1000.0),
        );
        let noticed = n == 0
            && log.incidents.iter().any(|i| match i {
                Incident::Disconnect { .. } => false,
                Incident::Error { at, .. } => stop.is_none_or(|s| *at < s),
                Incident::Gap(g) => gap_counts(g, stop) && !explained(logs, g),
            });
        if noticed {
            others.push(*id);
        }
    }
    others.sort_unstable();
    ReconnectReport {
        participants_disconnected: disconnected,
        disconnects,
        reconnects: backs.len(),
        failed_attempts: failed,
        not_back,
        time_back_ms: time_back(&backs),
        others_noticed: others.len(),
        others_noticed_ids: others.into_iter().take(20).collect(),
    }
}

/// Classifies what participants noticed in `at..=end` after a kill at `at` that hit
/// `affected`: the affected must notice and come back, everyone else must notice nothing
/// (a gap in an affected sender's media is expected). What the participants of a `later`
/// kill (time, affected) notice after it belongs to that kill.
pub fn judge_kill(
    logs: &HashMap<u32, Log>,
    at: Instant,
    end: Instant,
    affected: &BTreeSet<u32>,
    later: &[(Instant, BTreeSet<u32>)],
) -> KillOutcome {
    let hit_by_then = |p: u32, t: Instant| {
        affected.contains(&p) || later.iter().any(|(k, a)| *k <= t && a.contains(&p))
    };
    let within = |t: Instant| t >= at && t <= end;
    let mut noticed = 0;
    let mut not_back = 0;
    let mut all_back: Option<Duration> = Some(Duration::ZERO);
    for id in affected {
        let Some(log) = logs.get(id) else {
            not_back += 1;
            all_back = None;
            continue;
        };
        let Some(lost) = log.disconnects().find(|t| within(*t)) else {
            // Never noticed: its media is not flowing through the killed actor any more,
            // yet it did not rejoin. It is not back.
            not_back += 1;
            all_back = None;
            continue;
        };
        noticed += 1;
        match log.outages.iter().find(|(from, _)| *from == lost) {
            Some((_, back)) => {
                all_back = all_back.map(|m| m.max(back.saturating_duration_since(at)));
            }
            None => {
                not_back += 1;
                all_back = None;
            }
        }
    }
    let mut bystanders: Vec<(u32, String)> = logs
        .iter()
        .filter(|(id, _)| !affected.contains(id))
        .filter_map(|(id, log)| {
            log.incidents
                .iter()
                .filter(|i| within(i.at()) && !hit_by_then(*id, i.at()))
                .find(|i| match i {
                    Incident::Gap(g) => {
                        !hit_by_then(g.sender, i.at()) && g.end.duration_since(g.start) > GAP
                    }
                    _ => true,
                })
                .map(|i| (*id, i.describe(at)))
        })
        .collect();
    bystanders.sort_unstable();
    KillOutcome {
        affected_noticed: noticed,
        affected_not_back: not_back,
        bystanders_noticed: bystanders.iter().map(|(id, _)| *id).collect(),
        bystander_incidents: bystanders
            .into_iter()
            .take(10)
            .map(|(id, what)| format!("lg{id}: {what}"))
            .collect(),
        all_back_ms: all_back.map(|d| d.as_secs_f64() * 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_from_100ms_to_2s_and_resets() {
        let mut b = Backoff::default();
        let d: Vec<u64> = (0..8).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(d, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        for _ in 0..100 {
            assert_eq!(b.next_delay(), BACKOFF_MAX);
        }
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
    }

    #[test]
    fn time_back_percentiles_are_nearest_rank() {
        assert_eq!(time_back(&[]), TimeBack::default());
        let one = time_back(&[42.0]);
        assert_eq!(
            (one.count, one.p50, one.p95, one.max),
            (1, 42.0, 42.0, 42.0)
        );
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let t = time_back(&v);
        assert_eq!((t.count, t.p50, t.p95, t.max), (100, 50.0, 95.0, 100.0));
        let t = time_back(&[300.0, 100.0, 200.0, f64::NAN]);
        assert_eq!((t.count, t.p50, t.p95, t.max), (3, 200.0, 300.0, 300.0));
    }

    /// Four participants in meeting m (1..=4) and four in n (5..=8), all in a session.
    fn tracker() -> Tracker {
        let t = Tracker::default();
        for id in 1..=8 {
            t.planned(id, if id <= 4 { "m" } else { "n" });
            t.joined(id, &format!("PA_{id}"));
        }
        t
    }

    #[test]
    fn a_participant_kill_affects_it_alone() {
        let t = tracker();
        let t0 = Instant::now();
        // 2 is killed: it notices after 5 ms, is back 300 ms later; its meeting's others see
        // a gap in its media (expected), nobody else sees anything.
        t.lost(2, t0 + ms(5), "RECONNECT");
        assert_eq!(t.by_participant_id("PA_2"), None);
        assert!(!t.all_up(&[1, 2]));
        assert_eq!(t.members("m"), None);
        assert_eq!(t.members("n"), Some(vec![5, 6, 7, 8]));
        t.joined(2, "PA_2b");
        t.back(2, t0 + ms(305));
        assert_eq!(t.by_participant_id("PA_2b"), Some(2));
        let gaps = [1, 3, 4].map(|r| {
            (
                r,
                Gap {
                    sender: 2,
                    start: t0,
                    end: t0 + ms(1200),
                },
            )
        });
        t.gaps(gaps);
        let k = t.judge(t0, &[2], &[]);
        assert_eq!(k.affected_noticed, 1);
        assert_eq!(k.affected_not_back, 0);
        assert!(k.bystanders_noticed.is_empty(), "{k:?}");
        assert_eq!(k.all_back_ms, Some(305.0));
        let r = t.report();
        assert_eq!((r.disconnects, r.reconnects, r.not_back), (1, 1, 0));
        assert_eq!(r.participants_disconnected, 1);
        assert_eq!(r.time_back_ms.max, 300.0);
        // The gaps in 2's media are explained by 2's own disconnect.
        assert_eq!(r.others_noticed, 0, "{r:?}");
    }

    #[test]
    fn bystanders_that_notice_are_named() {
        let t = tracker();
        let t0 = Instant::now();
        // Meeting m is killed: 1..=4 notice and come back.
        for id in 1..=4 {
            t.lost(id, t0 + ms(10), "RECONNECT");
            t.back(id, t0 + ms(100 * u64::from(id)));
        }
        // 5 sees a long gap in 6's media (6 never disconnected), 7 an error, 8 a short gap
        // and an error long after the window.
        t.gaps([(
            5,
            Gap {
                sender: 6,
                start: t0 + ms(1000),
                end: t0 + ms(2000),
            },
        )]);
        t.error(7, t0 + ms(4000), "INTERNAL");
        t.gaps([(
            8,
            Gap {
                sender: 5,
                start: t0 + ms(1000),
                end: t0 + ms(1400),
            },
        )]);
        t.error(8, t0 + WINDOW + ms(1), "INTERNAL");
        let k = t.judge(t0, &[1, 2, 3, 4], &[]);
        // Had 7 been killed before its error, that error would have been its own kill's.
        let k2 = t.judge(t0, &[1, 2, 3, 4], &[(t0 + ms(3000), &[7][..])]);
        assert_eq!(k2.bystanders_noticed, [5]);
        assert_eq!(
            k2.bystander_incidents,
            ["lg5: 1000 ms gap in lg6's media from +1000 ms"]
        );
        // Had 6 been killed before the gap became noticeable, the gap would be expected.
        let k3 = t.judge(t0, &[1, 2, 3, 4], &[(t0 + ms(1200), &[6][..])]);
        assert_eq!(k3.bystanders_noticed, [7]);
        assert_eq!(k.affected_noticed, 4);
        assert_eq!(k.bystanders_noticed, [5, 7]);
        assert_eq!(k.all_back_ms, Some(400.0));
        let r = t.report();
        assert_eq!(r.others_noticed, 3, "{r:?}");
        assert_eq!(r.others_noticed_ids, [5, 7, 8]);
    }

    #[test]
    fn affected_that_never_notice_or_never_return_are_not_back() {
        let t = tracker();
        let t0 = Instant::now();
        // 1 noticed and never came back; 2 never noticed; 3 noticed before the kill (an
        // earlier outage) and not again.
        t.lost(1, t0 + ms(20), "SOCKET_CLOSED");
        t.lost(3, t0 - ms(2000), "SOCKET_CLOSED");
        t.back(3, t0 - ms(1000));
        let k = t.judge(t0, &[1, 2, 3], &[]);
        assert_eq!((k.affected_noticed, k.affected_not_back), (1, 3));
        assert_eq!(k.all_back_ms, None);
        let r = t.report();
        assert_eq!((r.not_back, r.disconnects, r.reconnects), (1, 2, 1));
    }

    #[test]
    fn what_happens_after_the_run_ends_is_not_noticed() {
        let t = tracker();
        let t0 = Instant::now();
        t.stop(t0 + ms(1000));
        // Everyone leaves at the end: gaps start at the stop, or just before it.
        t.gaps([
            (
                1,
                Gap {
                    sender: 2,
                    start: t0 + ms(990),
                    end: t0 + ms(4000),
                },
            ),
            (
                2,
                Gap {
                    sender: 1,
                    start: t0 + ms(1010),
                    end: t0 + ms(4000),
                },
            ),
        ]);
        t.error(3, t0 + ms(1500), "TIMEOUT");
        assert_eq!(t.report().others_noticed, 0);
        // A kill 0.9 s before the end: its window ends with the run.
        let k = t.judge(t0 + ms(100), &[4], &[]);
        assert!(k.bystanders_noticed.is_empty(), "{k:?}");
    }
}
