//! `--chaos-every`: during the hold, every interval, one random participant or meeting
//! actor of this run is killed through the node's public admin API (gRPC
//! `AdminService.ActorTree` to find it, `AdminService.KillActor` to make it fail as a panic
//! would; the admin token is minted from the API key pair, as `hearthctl` does).
//!
//! Each kill records which simulated participants were inside the killed actor (a
//! participant actor: that participant; a meeting actor: every participant of the meeting
//! in a session then), mapped from the participant ids of their join responses. After the
//! run, [`crate::reconnect::Tracker::judge`] says whether they noticed and when they were
//! all back, and which other participants noticed anything within 5 s.
//!
//! Only actors of this run are picked (its meetings are named `lg-<run tag>-<n>`), and only
//! ones whose participants are all in a session: a kill never lands on a participant still
//! coming back from the previous one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_proto::v1 as pb;
use pb::admin_service_client::AdminServiceClient;
use serde::Serialize;
use tonic::transport::Channel;

use crate::reconnect::{KillOutcome, Tracker};

/// Answer time allowed to each admin call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What chaos may kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Participant,
    Meeting,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Participant => "participant",
            Kind::Meeting => "meeting",
        }
    }
}

/// Parses `--chaos-kinds` (`participant,meeting`).
pub fn parse_kinds(s: &str) -> Result<Vec<Kind>, String> {
    let mut kinds = Vec::new();
    for k in s.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        let kind = match k {
            "participant" => Kind::Participant,
            "meeting" => Kind::Meeting,
            "allocation" => {
                return Err(
                    "allocation: the simulated participants do not use TURN, so no allocation \
                     of theirs can be killed"
                        .into(),
                );
            }
            other => {
                return Err(format!(
                    "unknown actor kind {other:?}: participant, meeting"
                ));
            }
        };
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    if kinds.is_empty() {
        return Err("name at least one kind: participant, meeting".into());
    }
    Ok(kinds)
}

/// One kill (or an attempt that found nothing to kill or failed).
#[derive(Clone, Debug)]
pub struct Kill {
    pub at: Instant,
    pub kind: Kind,
    pub actor_id: String,
    /// The meeting's name or the participant's id.
    pub name: String,
    /// Simulated participants inside the killed actor.
    pub affected: Vec<u32>,
    pub error: Option<String>,
}

/// A kill as reported.
#[derive(Clone, Debug, Serialize)]
pub struct KillReport {
    /// Seconds since the start of the run.
    pub t_s: f64,
    pub kind: Kind,
    pub actor_id: String,
    pub name: String,
    /// Simulated participants inside the killed actor.
    pub affected: Vec<u32>,
    #[serde(flatten)]
    pub outcome: Option<KillOutcome>,
    /// Why nothing was killed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChaosReport {
    pub every_s: f64,
    pub kinds: Vec<Kind>,
    /// Kills that happened.
    pub kills: usize,
    /// Attempts that killed nothing (no candidate, or the admin API refused).
    pub failed_kills: usize,
    pub participants_affected: usize,
    /// Affected participants that did not notice or did not come back.
    pub affected_not_back: usize,
    /// Bystanders that noticed something, summed over kills (must be 0).
    pub bystanders_noticed: usize,
    /// From each kill until all its participants were back.
    pub all_back_ms: crate::reconnect::TimeBack,
    pub per_kill: Vec<KillReport>,
}

impl ChaosReport {
    pub fn build(
        kills: &[Kill],
        every: Duration,
        kinds: &[Kind],
        tracker: &Tracker,
        epoch: Instant,
    ) -> ChaosReport {
        let done: Vec<(Instant, &[u32])> = kills
            .iter()
            .filter(|k| k.error.is_none())
            .map(|k| (k.at, &k.affected[..]))
            .collect();
        let per_kill: Vec<KillReport> = kills
            .iter()
            .map(|k| KillReport {
                t_s: k.at.saturating_duration_since(epoch).as_secs_f64(),
                kind: k.kind,
                actor_id: k.actor_id.clone(),
                name: k.name.clone(),
                affected: k.affected.clone(),
                outcome: k.error.is_none().then(|| {
                    let later: Vec<(Instant, &[u32])> =
                        done.iter().filter(|(t, _)| *t > k.at).copied().collect();
                    tracker.judge(k.at, &k.affected, &later)
                }),
                error: k.error.clone(),
            })
            .collect();
        let done: Vec<&KillOutcome> = per_kill.iter().filter_map(|k| k.outcome.as_ref()).collect();
        let backs: Vec<f64> = done.iter().filter_map(|o| o.all_back_ms).collect();
        ChaosReport {
            every_s: every.as_secs_f64(),
            kinds: kinds.to_vec(),
            kills: done.len(),
            failed_kills: per_kill.len() - done.len(),
            participants_affected: per_kill
                .iter()
                .filter(|k| k.outcome.is_some())
                .map(|k| k.affected.len())
                .sum(),
            affected_not_back: done.iter().map(|o| o.affected_not_back).sum(),
            bystanders_noticed: done.iter().map(|o| o.bystanders_noticed.len()).sum(),
            all_back_ms: crate::reconnect::time_back(&backs),
            per_kill,
        }
    }

    /// Every kill's participants came back and no bystander noticed.
    pub fn held(&self) -> bool {
        self.affected_not_back == 0 && self.bystanders_noticed == 0
    }

    pub fn table(&self) -> String {
        let kinds: Vec<&str> = self.kinds.iter().map(|k| k.as_str()).collect();
        let mut out = vec![
            format!(
                "chaos: a kill every {:.1} s ({}): {} kills, {} participants affected, {} not back, {} bystanders noticed; all back p50 / p95 / max {:.0} / {:.0} / {:.0} ms",
                self.every_s,
                kinds.join(", "),
                self.kills,
                self.participants_affected,
                self.affected_not_back,
                self.bystanders_noticed,
                self.all_back_ms.p50,
                self.all_back_ms.p95,
                self.all_back_ms.max,
            ),
            format!(
                "{:>7}  {:<11}  {:<26}  {:>8}  {:>8}  {:>10}  {:>9}",
                "t (s)", "kind", "name", "affected", "noticed", "bystanders", "all back"
            ),
        ];
        for k in &self.per_kill {
            let name: String = k.name.chars().take(26).collect();
            let line = match (&k.outcome, &k.error) {
                (Some(o), _) => format!(
                    "{:>7.1}  {:<11}  {:<26}  {:>8}  {:>8}  {:>10}  {:>9}",
                    k.t_s,
                    k.kind.as_str(),
                    name,
                    k.affected.len(),
                    o.affected_noticed,
                    o.bystanders_noticed.len(),
                    o.all_back_ms
                        .map_or("NOT BACK".to_owned(), |ms| format!("{ms:.0} ms")),
                ),
                (None, e) => format!(
                    "{:>7.1}  {:<11}  nothing killed: {}",
                    k.t_s,
                    k.kind.as_str(),
                    e.as_deref().unwrap_or("?")
                ),
            };
            out.push(line);
        }
        out.join("\n")
    }
}

/// A failed call's status with the chain of its causes (a transport error says why).
fn status_text(call: &str, s: &tonic::Status) -> String {
    let mut text = format!("{call}: {}", s.message());
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    text
}

/// The call failed on the connection (closed, reset), not by the node's answer.
fn connection_failed(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// splitmix64: a small seeded generator (the picks repeat with `--seed`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// An actor that may be killed now, and the simulated participants inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub kind: Kind,
    pub actor_id: String,
    pub name: String,
    pub affected: Vec<u32>,
}

/// The actors of this run (meetings named `prefix...`, participants the tracker knows)
/// whose participants are all in a session.
pub fn candidates(
    actors: &[pb::ActorInfo],
    kind: Kind,
    meeting_prefix: &str,
    tracker: &Tracker,
) -> Vec<Candidate> {
    actors
        .iter()
        .filter(|a| a.kind == kind.as_str())
        .filter_map(|a| {
            let affected = match kind {
                Kind::Participant => vec![tracker.by_participant_id(&a.name)?],
                Kind::Meeting => {
                    if !a.name.starts_with(meeting_prefix) {
                        return None;
                    }
                    tracker.members(&a.name)?
                }
            };
            (!affected.is_empty() && tracker.all_up(&affected)).then(|| Candidate {
                kind,
                actor_id: a.id.clone(),
                name: a.name.clone(),
                affected,
            })
        })
        .collect()
}

pub struct Chaos {
    client: AdminServiceClient<Channel>,
    key: String,
    secret: String,
    kinds: Vec<Kind>,
    rng: Rng,
    meeting_prefix: String,
    tracker: Arc<Tracker>,
}

impl Chaos {
    /// Connects to the node's gRPC API (on its HTTP URL).
    pub async fn connect(
        url: &str,
        key: &str,
        secret: &str,
        kinds: Vec<Kind>,
        seed: u64,
        meeting_prefix: String,
        tracker: Arc<Tracker>,
    ) -> Result<Chaos, String> {
        let endpoint = Channel::from_shared(url.to_owned())
            .map_err(|e| format!("--url {url}: {e}"))?
            .connect_timeout(CALL_TIMEOUT)
            .tcp_nodelay(true);
        let channel = tokio::time::timeout(CALL_TIMEOUT, endpoint.connect())
            .await
            .map_err(|_| format!("no gRPC connection to {url} within {CALL_TIMEOUT:?}"))?
            .map_err(|e| format!("cannot reach the gRPC API at {url}: {e}"))?;
        Ok(Chaos {
            client: AdminServiceClient::new(channel),
            key: key.to_owned(),
            secret: secret.to_owned(),
            kinds,
            rng: Rng(seed ^ 0x0063_6861_6f73),
            meeting_prefix,
            tracker,
        })
    }

    /// A request with a fresh node-wide admin token.
    fn request<T>(&self, message: T) -> Result<tonic::Request<T>, String> {
        let token = crate::jwt::mint(
            &self.key,
            &self.secret,
            "",
            "hearth-loadgen-chaos",
            crate::jwt::Grants {
                publish: false,
                subscribe: false,
                admin: true,
            },
            300,
        );
        let mut req = tonic::Request::new(message);
        req.set_timeout(CALL_TIMEOUT);
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the API key cannot be sent in gRPC metadata".to_owned())?;
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }

    /// Checks the admin API answers (credentials, reachability) before the run.
    pub async fn check(&mut self) -> Result<usize, String> {
        let req = self.request(pb::ActorTreeRequest {})?;
        let tree = self
            .client
            .actor_tree(req)
            .await
            .map_err(|s| status_text("ActorTree", &s))?;
        Ok(tree.into_inner().actors.len())
    }

    /// The supervision tree; asked again once if the connection failed (the channel
    /// reconnects; reading the tree changes nothing).
    async fn tree(&mut self) -> Result<Vec<pb::ActorInfo>, String> {
        let mut retried = false;
        loop {
            let req = self.request(pb::ActorTreeRequest {})?;
            match self.client.actor_tree(req).await {
                Ok(t) => return Ok(t.into_inner().actors),
                Err(s) if !retried && connection_failed(&s) => {
                    eprintln!("chaos: {} (asking again)", status_text("ActorTree", &s));
                    retried = true;
                }
                Err(s) => return Err(status_text("ActorTree", &s)),
            }
        }
    }

    /// Kills one actor. If the connection failed the request may or may not have reached
    /// the node: it is sent once more, and NOT_FOUND then means the first one killed it.
    async fn kill_actor(&mut self, actor_id: &str) -> Result<(), String> {
        let mut retried = false;
        loop {
            let req = self.request(pb::KillActorRequest {
                actor_id: actor_id.to_owned(),
            })?;
            match self.client.kill_actor(req).await {
                Ok(_) => return Ok(()),
                Err(s) if retried && s.code() == tonic::Code::NotFound => return Ok(()),
                Err(s) if !retried && connection_failed(&s) => {
                    eprintln!("chaos: {} (sending again)", status_text("KillActor", &s));
                    retried = true;
                }
                Err(s) => return Err(status_text("KillActor", &s)),
            }
        }
    }

    /// Kills one random candidate.
    pub async fn kill_one(&mut self) -> Kill {
        let mut kill = Kill {
            at: Instant::now(),
            kind: self.kinds[self.rng.below(self.kinds.len())],
            actor_id: String::new(),
            name: String::new(),
            affected: Vec::new(),
            error: None,
        };
        let actors = match self.tree().await {
            Ok(a) => a,
            Err(e) => {
                kill.error = Some(e);
                return kill;
            }
        };
        // The drawn kind first; the other kinds if it has nothing to kill now.
        let start = self.kinds.iter().position(|k| *k == kill.kind).unwrap_or(0);
        let n = self.kinds.len();
        let pick = (0..n)
            .map(|i| self.kinds[(start + i) % n])
            .map(|k| candidates(&actors, k, &self.meeting_prefix, &self.tracker))
            .find(|c| !c.is_empty());
        let Some(cands) = pick else {
            kill.error = Some("no live actor of this run to kill".into());
            return kill;
        };
        let c = cands[self.rng.below(cands.len())].clone();
        kill.kind = c.kind;
        kill.actor_id = c.actor_id.clone();
        kill.name = c.name;
        kill.affected = c.affected;
        kill.at = Instant::now();
        if let Err(e) = self.kill_actor(&c.actor_id).await {
            kill.error = Some(e);
        }
        kill
    }

    /// Kills at `first`, then every `every`, as long as a kill's window (5 s) ends by
    /// `last`.
    pub async fn run(
        mut self,
        first: tokio::time::Instant,
        last: tokio::time::Instant,
        every: Duration,
    ) -> Vec<Kill> {
        let mut kills = Vec::new();
        let mut next = first;
        while next + crate::reconnect::WINDOW <= last {
            tokio::time::sleep_until(next).await;
            let k = self.kill_one().await;
            match &k.error {
                None => eprintln!(
                    "chaos: killed {} {} (actor {}, {} participants inside)",
                    k.kind.as_str(),
                    k.name,
                    k.actor_id,
                    k.affected.len()
                ),
                Some(e) => eprintln!("chaos: nothing killed: {e}"),
            }
            kills.push(k);
            next += every;
        }
        kills
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(id: &str, kind: &str, name: &str) -> pb::ActorInfo {
        pb::ActorInfo {
            id: id.into(),
            kind: kind.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn kinds_parse_and_allocations_are_refused() {
        assert_eq!(
            parse_kinds("participant, meeting,participant"),
            Ok(vec![Kind::Participant, Kind::Meeting])
        );
        assert_eq!(parse_kinds("meeting"), Ok(vec![Kind::Meeting]));
        assert!(parse_kinds("allocation").is_err());
        assert!(parse_kinds("node").is_err());
        assert!(parse_kinds("").is_err());
    }

    #[test]
    fn candidates_are_this_runs_actors_with_everyone_up() {
        let t = Tracker::default();
        for id in 0..3 {
            t.planned(id, "lg-a-0");
            t.joined(id, &format!("PA_{id}"));
        }
        t.planned(3, "lg-a-1");
        t.joined(3, "PA_3");
        t.planned(4, "lg-a-1");
        t.joined(4, "PA_4");
        let tree = [
            actor("0.1", "node", "node"),
            actor("0.2", "meeting", "lg-a-0"),
            actor("0.3", "participant", "PA_0"),
            actor("0.4", "participant", "PA_1"),
            actor("0.5", "participant", "PA_2"),
            actor("0.6", "meeting", "lg-a-1"),
            actor("0.7", "participant", "PA_3"),
            actor("0.8", "participant", "PA_4"),
            actor("0.9", "meeting", "someone-elses"),
            actor("0.10", "participant", "PA_other"),
        ];
        let p = candidates(&tree, Kind::Participant, "lg-a-", &t);
        assert_eq!(
            p.iter().map(|c| c.affected[0]).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        let m = candidates(&tree, Kind::Meeting, "lg-a-", &t);
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].actor_id.as_str(), &m[0].affected[..]),
            ("0.2", &[0, 1, 2][..])
        );
        // 4 is coming back from a loss: neither it nor its meeting is a candidate.
        t.lost(4, Instant::now(), "RECONNECT");
        let p = candidates(&tree, Kind::Participant, "lg-a-", &t);
        assert_eq!(p.len(), 4);
        let m = candidates(&tree, Kind::Meeting, "lg-a-", &t);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].name, "lg-a-0");
    }

    #[test]
    fn the_generator_is_seeded_and_in_range() {
        let (mut a, mut b) = (Rng(7), Rng(7));
        for n in 1..50 {
            let x = a.below(n);
            assert_eq!(x, b.below(n));
            assert!(x < n);
        }
    }
}
