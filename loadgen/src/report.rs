//! Measurements over time, the final report (table, JSON) and the chart (SVG).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::Run;
use crate::chaos::ChaosReport;
use crate::reconnect::ReconnectReport;
use crate::scenario::Scenario;
use crate::stats::latency_histogram;

/// The SLO of `--find-max` (and of the exit status).
pub const SLO_LOSS_PCT: f64 = 0.5;
pub const SLO_P99_MS: f64 = 50.0;
pub const SLO_JOIN_P95_MS: u64 = 1000;

/// Counters as of the previous sample.
#[derive(Default)]
pub struct Cumulative {
    packets_in: u64,
    packets_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    expected: u64,
    received: u64,
    cpu_s: Option<f64>,
    own_cpu_s: Option<f64>,
    at: Option<Instant>,
}

/// One second of the run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub t_s: f64,
    pub joined: u64,
    pub connected: u64,
    pub pps_in: f64,
    pub pps_out: f64,
    pub mbps_in: f64,
    pub mbps_out: f64,
    /// Loss over this second (packets expected but not received).
    pub loss_pct: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_p999_ms: f64,
    pub latency_max_ms: f64,
    pub latency_samples: u64,
    pub server_cpu_pct: Option<f64>,
    pub server_rss_mb: Option<f64>,
    /// The load generator's own CPU (100% = one core): near its core count, the generator
    /// is the bottleneck, not the server.
    pub loadgen_cpu_pct: Option<f64>,
    /// With --reconnect: participants down now (lost their session, not back yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnecting: Option<usize>,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

pub async fn sample(run: &Run, prev: &mut Cumulative) -> Sample {
    let now = Instant::now();
    let mut interval = latency_histogram();
    let (mut pin, mut pout, mut bin, mut bout, mut exp, mut rec, mut connected) =
        (0, 0, 0, 0, 0, 0, 0);
    for shard in &run.shards {
        if let Ok(mut t) = shard.totals.lock() {
            let _ = interval.add(&t.latency_interval);
            t.latency_interval.reset();
            pin += t.packets_in;
            pout += t.packets_out;
            bin += t.bytes_in;
            bout += t.bytes_out;
            exp += t.expected;
            rec += t.received;
            connected += t.connected;
        }
    }
    let usage = run.server.lock().await.read().await;
    let own = crate::server::proc_usage(std::process::id()).map(|(cpu, _)| cpu);
    let dt = prev
        .at
        .map_or(1.0, |at| now.duration_since(at).as_secs_f64())
        .max(1e-3);
    let d_exp = exp.saturating_sub(prev.expected);
    let d_rec = rec.saturating_sub(prev.received);
    let loss_pct = if d_exp == 0 {
        0.0
    } else {
        d_exp.saturating_sub(d_rec) as f64 * 100.0 / d_exp as f64
    };
    let cpu_pct = match (usage, prev.cpu_s) {
        (Some((cpu, _)), Some(before)) => Some((cpu - before).max(0.0) * 100.0 / dt),
        _ => None,
    };
    let s = Sample {
        t_s: now.duration_since(run.epoch).as_secs_f64(),
        joined: run.counters.joined.load(Ordering::Relaxed),
        connected,
        pps_in: (pin - prev.packets_in) as f64 / dt,
        pps_out: (pout - prev.packets_out) as f64 / dt,
        mbps_in: (bin - prev.bytes_in) as f64 * 8.0 / dt / 1e6,
        mbps_out: (bout - prev.bytes_out) as f64 * 8.0 / dt / 1e6,
        loss_pct,
        latency_p50_ms: ms(&interval, 0.5),
        latency_p99_ms: ms(&interval, 0.99),
        latency_p999_ms: ms(&interval, 0.999),
        latency_max_ms: if interval.is_empty() {
            0.0
        } else {
            interval.max() as f64 / 1000.0
        },
        latency_samples: interval.len(),
        server_cpu_pct: cpu_pct,
        server_rss_mb: usage.map(|(_, rss)| rss as f64 / 1048576.0),
        loadgen_cpu_pct: match (own, prev.own_cpu_s) {
            (Some(now_s), Some(before)) => Some((now_s - before).max(0.0) * 100.0 / dt),
            _ => None,
        },
        reconnecting: run.ctx.tracker.as_ref().map(|t| t.down()),
    };
    *prev = Cumulative {
        packets_in: pin,
        packets_out: pout,
        bytes_in: bin,
        bytes_out: bout,
        expected: exp,
        received: rec,
        cpu_s: usage.map(|(c, _)| c).or(prev.cpu_s),
        own_cpu_s: own,
        at: Some(now),
    };
    s
}

/// The live progress line: refreshed in place on a terminal, one line per second otherwise.
pub fn progress(s: &Sample, planned: usize) {
    let server = match (s.server_cpu_pct, s.server_rss_mb) {
        (Some(c), Some(r)) => format!(" | server cpu {c:.0}% rss {r:.0} MB"),
        _ => String::new(),
    };
    let own = s
        .loadgen_cpu_pct
        .map(|c| format!(" | loadgen cpu {c:.0}%"))
        .unwrap_or_default()
        + &s.reconnecting
            .map(|n| format!(" | reconnecting {n}"))
            .unwrap_or_default();
    let line = format!(
        "[{:>5.0}s] joined {}/{planned} connected {} | in {:.1}k pkt/s {:.1} Mbit/s | out {:.1}k pkt/s | loss {:.3}% | p50 {:.2} ms p99 {:.2} ms{server}",
        s.t_s,
        s.joined,
        s.connected,
        s.pps_in / 1000.0,
        s.mbps_in,
        s.pps_out / 1000.0,
        s.loss_pct,
        s.latency_p50_ms,
        s.latency_p99_ms,
    ) + &own;
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K{line}");
    } else {
        eprintln!("{line}");
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Slo {
    pub loss_ok: bool,
    pub latency_ok: bool,
    pub join_ok: bool,
    /// With --reconnect: every participant that lost its session came back, nobody else
    /// noticed anything (and, with --chaos-every, no bystander of a kill did). Always true
    /// without --reconnect.
    pub reconnect_ok: bool,
    /// Media was measured: some packets were expected at the receivers. A run where nothing
    /// flowed (nobody published, or nobody connected) cannot hold an SLO.
    pub measured: bool,
    /// Every participant connected, and every one whose meeting had publishers received
    /// media (no connection failure in any phase).
    pub connections_ok: bool,
    /// With --agents: every agent delivered its results (always true without agents).
    pub agents_ok: bool,
    /// With --soak: the server's RSS did not keep growing over the hold.
    pub memory_ok: bool,
    pub held: bool,
}

impl Slo {
    fn of(
        loss_pct: f64,
        p99_ms: f64,
        join_p95_ms: u64,
        joined_all: bool,
        measured: bool,
        connections_ok: bool,
    ) -> Slo {
        let loss_ok = loss_pct < SLO_LOSS_PCT;
        let latency_ok = p99_ms < SLO_P99_MS;
        let join_ok = join_p95_ms < SLO_JOIN_P95_MS && joined_all;
        Slo {
            loss_ok,
            latency_ok,
            join_ok,
            reconnect_ok: true,
            measured,
            connections_ok,
            agents_ok: true,
            memory_ok: true,
            held: measured && loss_ok && latency_ok && join_ok && connections_ok,
        }
    }

    /// Accounts for the participants' losses and returns.
    fn with_reconnect(mut self, r: Option<&ReconnectReport>, c: Option<&ChaosReport>) -> Slo {
        let back = r.is_none_or(|r| r.not_back == 0 && r.others_noticed == 0);
        self.reconnect_ok = back && c.is_none_or(ChaosReport::held);
        self.held &= self.reconnect_ok;
        self
    }
}

/// `--churn`: participants replaced during the hold.
#[derive(Clone, Debug, Serialize)]
pub struct ChurnReport {
    pub rate_per_s: f64,
    /// Participants that left (picked by the churn).
    pub left: u64,
    /// Replacements that joined and got media.
    pub joined: u64,
    /// The replacements' join times (token to first media, ms).
    pub join_ms: Percentiles,
}

/// One minute of a soak (`--soak`).
#[derive(Clone, Debug, Serialize)]
pub struct SoakRow {
    /// Minutes since the start of the run (ramp included).
    pub minute: usize,
    pub server_rss_mb: Option<f64>,
    pub server_cpu_pct: Option<f64>,
    pub loss_pct: f64,
    pub latency_p99_ms: f64,
    pub joined: u64,
    /// Errors of every code since the start.
    pub errors: u64,
}

impl SoakRow {
    /// The row of one minute's samples.
    pub fn of(minute: &[Sample], errors: u64) -> SoakRow {
        let cpu: Vec<f64> = minute.iter().filter_map(|s| s.server_cpu_pct).collect();
        SoakRow {
            minute: minute.last().map_or(0, |s| (s.t_s / 60.0).round() as usize),
            server_rss_mb: minute.iter().rev().find_map(|s| s.server_rss_mb),
            server_cpu_pct: (!cpu.is_empty()).then(|| mean(cpu.into_iter())),
            loss_pct: mean(minute.iter().map(|s| s.loss_pct)),
            latency_p99_ms: minute.iter().map(|s| s.latency_p99_ms).fold(0.0, f64::max),
            joined: minute.last().map_or(0, |s| s.joined),
            errors,
        }
    }

    pub fn line(&self) -> String {
        let opt = |v: Option<f64>, unit: &str| v.map_or("n/a".into(), |v| format!("{v:.1}{unit}"));
        format!(
            "[{:>4}m] server rss {} cpu {} | loss {:.3}% | p99 {:.2} ms | joined {} | errors {}",
            self.minute,
            opt(self.server_rss_mb, " MB"),
            opt(self.server_cpu_pct, "%"),
            self.loss_pct,
            self.latency_p99_ms,
            self.joined,
            self.errors
        )
    }
}

/// A soak's verdict on the server's memory.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    pub rows: Vec<SoakRow>,
    /// RSS at the end of the first minute of the hold, and at the end.
    pub rss_start_mb: Option<f64>,
    pub rss_end_mb: Option<f64>,
    pub rss_growth_pct: Option<f64>,
    /// RSS grew by more than [`SOAK_GROWTH_PCT`] over the hold: a leak is suspected.
    pub rss_growing: bool,
}

/// RSS growth over a soak's hold that is flagged.
pub const SOAK_GROWTH_PCT: f64 = 10.0;

impl SoakReport {
    /// From the run's minute rows; the hold starts `ramp_s` into the run.
    pub fn of(rows: Vec<SoakRow>, ramp_s: f64) -> SoakReport {
        let hold: Vec<&SoakRow> = rows
            .iter()
            .filter(|r| r.minute as f64 * 60.0 >= ramp_s + 60.0)
            .collect();
        let start = hold.first().and_then(|r| r.server_rss_mb);
        let end = hold.last().and_then(|r| r.server_rss_mb);
        let growth = match (start, end) {
            (Some(a), Some(b)) if a > 0.0 && hold.len() >= 2 => Some((b - a) * 100.0 / a),
            _ => None,
        };
        SoakReport {
            rss_start_mb: start,
            rss_end_mb: end,
            rss_growth_pct: growth,
            rss_growing: growth.is_some_and(|g| g > SOAK_GROWTH_PCT),
            rows,
        }
    }
}

/// One agent of a distributed run (`--agents`).
#[derive(Clone, Debug, Serialize)]
pub struct AgentRow {
    pub agent: String,
    /// First meeting index and meetings placed on it (whole meetings).
    pub first_meeting: usize,
    pub meetings: usize,
    pub participants_planned: usize,
    pub participants_connected: u64,
    pub loss_pct: f64,
    pub latency_p99_ms: f64,
    pub loadgen_cpu_pct_avg: Option<f64>,
    pub errors: BTreeMap<String, u64>,
    /// `done`, or why the agent's results are missing (it died or was unreachable).
    pub status: String,
}

/// One stage of `--find-max`.
#[derive(Clone, Debug, Serialize)]
pub struct Stage {
    pub meetings: usize,
    pub participants: usize,
    pub participants_joined: u64,
    pub loss_pct: f64,
    pub latency_p99_ms: f64,
    pub join_p95_ms: u64,
    pub pps_out: f64,
    pub server_cpu_pct: Option<f64>,
    pub server_rss_mb: Option<f64>,
    /// Errors by code so far (cumulative over the stages up to this one).
    pub errors: BTreeMap<String, u64>,
    /// Connection failures by phase so far (cumulative).
    pub connection_failures: BTreeMap<String, u64>,
    pub slo: Slo,
}

fn join_histogram(run: &Run) -> Histogram<u64> {
    let mut h = latency_histogram();
    for shard in &run.shards {
        if let Ok(t) = shard.totals.lock() {
            let _ = h.add(&t.join_ms);
        }
    }
    h
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// One `--find-max` stage: `meetings` meetings holding `total` participants.
pub fn stage(samples: &[Sample], meetings: usize, total: usize, run: &Run) -> Stage {
    // The stage's steady part: skip its first two seconds (joins in flight).
    let steady = if samples.len() > 3 {
        &samples[2..]
    } else {
        samples
    };
    let loss = mean(steady.iter().map(|s| s.loss_pct));
    let p99 = steady.iter().map(|s| s.latency_p99_ms).fold(0.0, f64::max);
    let join = join_histogram(run);
    let join_p95 = if join.is_empty() {
        0
    } else {
        join.value_at_quantile(0.95)
    };
    let joined = run.counters.joined.load(Ordering::Relaxed);
    let connected: u64 = run
        .shards
        .iter()
        .filter_map(|sh| sh.totals.lock().ok().map(|t| t.connected))
        .sum();
    let cpu: Vec<f64> = steady.iter().filter_map(|s| s.server_cpu_pct).collect();
    Stage {
        meetings,
        participants: total,
        participants_joined: joined,
        loss_pct: loss,
        latency_p99_ms: p99,
        join_p95_ms: join_p95,
        pps_out: mean(steady.iter().map(|s| s.pps_out)),
        server_cpu_pct: (!cpu.is_empty()).then(|| mean(cpu.into_iter())),
        server_rss_mb: steady
            .iter()
            .filter_map(|s| s.server_rss_mb)
            .reduce(f64::max),
        errors: run.counters.errors_now(),
        connection_failures: run.counters.phases_now(),
        slo: Slo::of(
            loss,
            p99,
            join_p95,
            joined as usize >= total,
            steady.iter().any(|s| s.pps_in > 0.0 || s.pps_out > 0.0),
            // Participants that never connected are counted at the end of their session,
            // which is the run's: a stage checks they all connected by now.
            connected as usize >= total && run.counters.connection_failures() == 0,
        ),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

fn percentiles(h: &Histogram<u64>, scale: f64) -> Percentiles {
    let q = |q: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / scale
        }
    };
    Percentiles {
        p50: q(0.5),
        p95: q(0.95),
        p99: q(0.99),
        p999: q(0.999),
        max: if h.is_empty() {
            0.0
        } else {
            h.max() as f64 / scale
        },
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Packets {
    pub sent: u64,
    pub received: u64,
    pub expected: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub keyframe_requests: u64,
    pub keyframes_received: u64,
    pub send_drops: u64,
    /// Received packets that failed authentication or decryption (lean client).
    pub media_errors: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub pps_in: f64,
    pub pps_out: f64,
    pub mbps_in: f64,
    pub mbps_out: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServerUsage {
    pub source: &'static str,
    pub cpu_pct_avg: Option<f64>,
    pub cpu_pct_max: Option<f64>,
    pub rss_mb_peak: Option<f64>,
    pub rss_mb_end: Option<f64>,
    /// The load generator's own CPU, average over the hold (100% = one core).
    pub loadgen_cpu_pct_avg: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub target: String,
    /// The participants' WebRTC client: full (`rtc`), lean, or floor (no protocol).
    pub client: &'static str,
    pub url: String,
    pub scenario: Scenario,
    pub wall_s: f64,
    pub meetings: usize,
    pub participants_planned: usize,
    pub participants_joined: u64,
    pub participants_connected: u64,
    pub participants_failed: u64,
    pub join_ms: Percentiles,
    pub loss_pct: f64,
    pub packets: Packets,
    /// Averages over the hold period (after the ramp).
    pub throughput: Throughput,
    /// One-way added latency (send to receive, through the node), whole run.
    pub latency_ms: Percentiles,
    pub jitter_ms_avg: f64,
    pub server: ServerUsage,
    pub errors: BTreeMap<String, u64>,
    /// The first few failure reasons, verbatim.
    pub error_examples: Vec<String>,
    /// Participants whose connection failed, by phase (signaling, ice, dtls, transport,
    /// first_media).
    pub connection_failures: BTreeMap<String, u64>,
    pub slo: Slo,
    /// With --churn: leaves and joins during the hold, and the replacements' join times.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn: Option<ChurnReport>,
    /// With --soak: a row per minute and the server's RSS over the hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soak: Option<SoakReport>,
    /// With --agents: one row per agent (an agent lost mid-run breaks the SLO).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<AgentRow>,
    pub stages: Vec<Stage>,
    pub max_held: Option<Stage>,
    /// With --reconnect: disconnects, reconnects and the time back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect: Option<ReconnectReport>,
    /// With --chaos-every: every kill, who was inside, who noticed, when all were back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chaos: Option<ChaosReport>,
    pub timeline: Vec<Sample>,
}

/// What a run measured at its receivers, summed over shards (and, for a controller, over
/// agents): the parts of a report that do not come from the per-second samples.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Parts {
    pub planned: usize,
    pub joined: u64,
    pub connected: u64,
    pub failed: u64,
    pub sent: u64,
    pub received: u64,
    pub expected: u64,
    pub duplicates: u64,
    pub keyframe_requests: u64,
    pub keyframes_in: u64,
    pub media_errors: u64,
    pub send_drops: u64,
    pub jitter_ms_sum: f64,
    pub streams: u64,
    /// Latency of every packet (µs) and join times (ms), as serialized HdrHistograms
    /// (V2, base64), so that agents' histograms merge exactly.
    pub latency_us: String,
    pub join_ms: String,
    /// Join times of `--churn` replacements (serialized like `join_ms`).
    #[serde(default)]
    pub join_ms_churn: String,
    /// Participants `--churn` made leave.
    #[serde(default)]
    pub churned: u64,
    pub errors: BTreeMap<String, u64>,
    pub connection_failures: BTreeMap<String, u64>,
    pub examples: Vec<String>,
}

fn encode_histogram(h: &Histogram<u64>) -> String {
    use base64::Engine as _;
    use hdrhistogram::serialization::Serializer as _;
    let mut out = Vec::new();
    let _ = hdrhistogram::serialization::V2Serializer::new().serialize(h, &mut out);
    base64::engine::general_purpose::STANDARD.encode(out)
}

fn decode_histogram(s: &str) -> Option<Histogram<u64>> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .ok()
}

/// The 99th percentile (ms) of a serialized latency histogram (µs).
pub fn p99_ms(serialized: &str) -> f64 {
    decode_histogram(serialized).map_or(0.0, |h| ms(&h, 0.99))
}

impl Parts {
    /// This process's shards and counters.
    pub fn local(run: &Run) -> Parts {
        let mut latency = latency_histogram();
        let join = join_histogram(run);
        let mut p = Parts {
            planned: run.planned.load(Ordering::Relaxed),
            joined: run.counters.joined.load(Ordering::Relaxed),
            connected: 0,
            failed: 0,
            sent: 0,
            received: 0,
            expected: 0,
            duplicates: 0,
            keyframe_requests: 0,
            keyframes_in: 0,
            media_errors: 0,
            send_drops: 0,
            jitter_ms_sum: 0.0,
            streams: 0,
            latency_us: String::new(),
            join_ms: String::new(),
            join_ms_churn: String::new(),
            churned: run.churned.load(Ordering::Relaxed),
            errors: run.counters.errors_now(),
            connection_failures: run.counters.phases_now(),
            examples: run
                .counters
                .examples
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default(),
        };
        let mut churn_joins = latency_histogram();
        for shard in &run.shards {
            if let Ok(t) = shard.totals.lock() {
                let _ = latency.add(&t.latency_total);
                let _ = churn_joins.add(&t.join_ms_churn);
                p.sent += t.packets_out;
                p.received += t.received;
                p.expected += t.expected;
                p.duplicates += t.duplicates;
                p.keyframe_requests += t.keyframe_requests;
                p.keyframes_in += t.keyframes_in;
                p.media_errors += t.media_errors;
                p.send_drops += t.send_drops;
                p.connected += t.connected;
                p.failed += t.failed;
                p.jitter_ms_sum += t.jitter_ms_sum;
                p.streams += t.streams;
            }
        }
        p.latency_us = encode_histogram(&latency);
        p.join_ms = encode_histogram(&join);
        p.join_ms_churn = encode_histogram(&churn_joins);
        p
    }

    /// Adds another agent's parts (histograms merged exactly).
    pub fn add(&mut self, o: &Parts) {
        self.planned += o.planned;
        self.joined += o.joined;
        self.connected += o.connected;
        self.failed += o.failed;
        self.sent += o.sent;
        self.received += o.received;
        self.expected += o.expected;
        self.duplicates += o.duplicates;
        self.keyframe_requests += o.keyframe_requests;
        self.keyframes_in += o.keyframes_in;
        self.media_errors += o.media_errors;
        self.send_drops += o.send_drops;
        self.jitter_ms_sum += o.jitter_ms_sum;
        self.streams += o.streams;
        self.churned += o.churned;
        for (mine, theirs) in [
            (&mut self.latency_us, &o.latency_us),
            (&mut self.join_ms, &o.join_ms),
            (&mut self.join_ms_churn, &o.join_ms_churn),
        ] {
            let mut h = decode_histogram(mine).unwrap_or_else(latency_histogram);
            if let Some(t) = decode_histogram(theirs) {
                let _ = h.add(&t);
            }
            *mine = encode_histogram(&h);
        }
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &o.connection_failures {
            *self.connection_failures.entry(k.clone()).or_insert(0) += v;
        }
        for e in &o.examples {
            if self.examples.len() < 5 {
                self.examples.push(e.clone());
            }
        }
    }
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub async fn build(
        s: &Scenario,
        run: &Run,
        parts: &Parts,
        samples: &[Sample],
        stages: Vec<Stage>,
        wall: Duration,
        chaos: Option<ChaosReport>,
        agents: Vec<AgentRow>,
    ) -> Report {
        let latency = decode_histogram(&parts.latency_us).unwrap_or_else(latency_histogram);
        let join = decode_histogram(&parts.join_ms).unwrap_or_else(latency_histogram);
        let (sent, received, expected, dups, kf, drops) = (
            parts.sent,
            parts.received,
            parts.expected,
            parts.duplicates,
            parts.keyframe_requests,
            parts.send_drops,
        );
        let (keyframes_in, media_errors) = (parts.keyframes_in, parts.media_errors);
        let (connected, failed, jitter, streams) = (
            parts.connected,
            parts.failed,
            parts.jitter_ms_sum,
            parts.streams,
        );
        let hold = (s.duration.as_secs() as usize).min(samples.len());
        let steady = &samples[samples.len() - hold..];
        let steady = if steady.len() > 3 {
            &steady[2..]
        } else {
            steady
        };
        let loss_pct = if expected == 0 {
            0.0
        } else {
            expected.saturating_sub(received) as f64 * 100.0 / expected as f64
        };
        let latency_ms = percentiles(&latency, 1000.0);
        let join_ms = percentiles(&join, 1.0);
        let (joined, planned) = (parts.joined, parts.planned);
        let cpu: Vec<f64> = steady.iter().filter_map(|x| x.server_cpu_pct).collect();
        let reconnect = run.ctx.tracker.as_ref().map(|t| t.report());
        let mut slo = Slo::of(
            loss_pct,
            latency_ms.p99,
            join_ms.p95 as u64,
            joined as usize >= planned,
            expected > 0,
            connected as usize >= planned && parts.connection_failures.values().sum::<u64>() == 0,
        )
        .with_reconnect(reconnect.as_ref(), chaos.as_ref());
        slo.agents_ok = agents.iter().all(|a| a.status == "done");
        slo.held &= slo.agents_ok;
        let soak = run.args.soak.map(|_| {
            let rows = run.soak_rows.lock().map(|r| r.clone()).unwrap_or_default();
            let first = run.args.meeting_offset;
            let joining = s.participants_before(first + s.meetings) - s.participants_before(first);
            SoakReport::of(rows, joining as f64 / s.ramp)
        });
        // A soak whose server keeps growing does not pass (a leak).
        slo.memory_ok = !soak.as_ref().is_some_and(|k| k.rss_growing);
        slo.held &= slo.memory_ok;
        let max_held = stages.iter().rfind(|st| st.slo.held).cloned();
        Report {
            target: run.args.target.clone(),
            client: run.client_name(),
            url: match run.args.target.as_str() {
                "floor" => format!("udp://{}", run.args.floor_addr),
                _ => run.args.url.clone(),
            },
            scenario: s.clone(),
            wall_s: wall.as_secs_f64(),
            meetings: stages.last().map_or(s.meetings, |st| st.meetings),
            participants_planned: planned,
            participants_joined: joined,
            participants_connected: connected,
            participants_failed: failed,
            join_ms,
            loss_pct,
            packets: Packets {
                sent,
                received,
                expected,
                lost: expected.saturating_sub(received),
                duplicates: dups,
                keyframe_requests: kf,
                keyframes_received: keyframes_in,
                send_drops: drops,
                media_errors,
            },
            throughput: Throughput {
                pps_in: mean(steady.iter().map(|x| x.pps_in)),
                pps_out: mean(steady.iter().map(|x| x.pps_out)),
                mbps_in: mean(steady.iter().map(|x| x.mbps_in)),
                mbps_out: mean(steady.iter().map(|x| x.mbps_out)),
            },
            latency_ms,
            jitter_ms_avg: if streams == 0 {
                0.0
            } else {
                jitter / streams as f64
            },
            server: ServerUsage {
                source: run.server.lock().await.source,
                cpu_pct_avg: (!cpu.is_empty()).then(|| mean(cpu.iter().copied())),
                cpu_pct_max: cpu.iter().copied().reduce(f64::max),
                rss_mb_peak: samples
                    .iter()
                    .filter_map(|x| x.server_rss_mb)
                    .reduce(f64::max),
                rss_mb_end: samples.last().and_then(|x| x.server_rss_mb),
                loadgen_cpu_pct_avg: {
                    let own: Vec<f64> = steady.iter().filter_map(|x| x.loadgen_cpu_pct).collect();
                    (!own.is_empty()).then(|| mean(own.into_iter()))
                },
            },
            error_examples: parts.examples.clone(),
            connection_failures: parts.connection_failures.clone(),
            errors: parts.errors.clone(),
            slo,
            churn: run.args.churn.map(|rate| {
                let joins =
                    decode_histogram(&parts.join_ms_churn).unwrap_or_else(latency_histogram);
                ChurnReport {
                    rate_per_s: rate,
                    left: parts.churned,
                    joined: joins.len(),
                    join_ms: percentiles(&joins, 1.0),
                }
            }),
            soak,
            agents,
            stages,
            max_held,
            reconnect,
            chaos,
            timeline: samples.to_vec(),
        }
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn table(&self) -> String {
        let opt =
            |v: Option<f64>, unit: &str| v.map_or("n/a".to_owned(), |v| format!("{v:.1}{unit}"));
        let mut rows: Vec<(String, String)> = vec![
            ("meetings".into(), self.meetings.to_string()),
            (
                "participants joined / connected / planned".into(),
                format!(
                    "{} / {} / {}",
                    self.participants_joined,
                    self.participants_connected,
                    self.participants_planned
                ),
            ),
            (
                "join time p50 / p95 / p99 / max".into(),
                format!(
                    "{:.0} / {:.0} / {:.0} / {:.0} ms",
                    self.join_ms.p50, self.join_ms.p95, self.join_ms.p99, self.join_ms.max
                ),
            ),
            (
                "loss".into(),
                format!(
                    "{:.3}% ({} of {} packets){}",
                    self.loss_pct,
                    self.packets.lost,
                    self.packets.expected,
                    if self.packets.media_errors > 0 {
                        format!(
                            "; {} failed authentication or decryption",
                            self.packets.media_errors
                        )
                    } else {
                        String::new()
                    }
                ),
            ),
            (
                "added latency p50 / p99 / p99.9 / max".into(),
                format!(
                    "{:.3} / {:.3} / {:.3} / {:.1} ms",
                    self.latency_ms.p50,
                    self.latency_ms.p99,
                    self.latency_ms.p999,
                    self.latency_ms.max
                ),
            ),
            (
                "jitter (avg of streams)".into(),
                format!("{:.2} ms", self.jitter_ms_avg),
            ),
            (
                "into the node (pkt/s, Mbit/s)".into(),
                format!(
                    "{:.0}, {:.1}",
                    self.throughput.pps_out, self.throughput.mbps_out
                ),
            ),
            (
                "out of the node (pkt/s, Mbit/s)".into(),
                format!(
                    "{:.0}, {:.1}",
                    self.throughput.pps_in, self.throughput.mbps_in
                ),
            ),
            (
                format!("server CPU avg / max ({})", self.server.source),
                format!(
                    "{} / {}",
                    opt(self.server.cpu_pct_avg, "%"),
                    opt(self.server.cpu_pct_max, "%")
                ),
            ),
            (
                "server RSS peak / end".into(),
                format!(
                    "{} / {}",
                    opt(self.server.rss_mb_peak, " MB"),
                    opt(self.server.rss_mb_end, " MB")
                ),
            ),
            (
                "load generator CPU (100% = a core)".into(),
                opt(self.server.loadgen_cpu_pct_avg, "%"),
            ),
        ];
        if !self.errors.is_empty() {
            let errors: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k} x{v}"))
                .collect();
            rows.push(("errors".into(), errors.join(", ")));
        }
        if !self.connection_failures.is_empty() {
            let phases: Vec<String> = self
                .connection_failures
                .iter()
                .map(|(k, v)| format!("{k} x{v}"))
                .collect();
            rows.push(("connection failures by phase".into(), phases.join(", ")));
        }
        if let Some(c) = &self.churn {
            rows.push((
                format!("churn ({}/s): left / joined with media", c.rate_per_s),
                format!(
                    "{} / {}; their join p50 / p95 / max {:.0} / {:.0} / {:.0} ms",
                    c.left, c.joined, c.join_ms.p50, c.join_ms.p95, c.join_ms.max
                ),
            ));
        }
        if let Some(soak) = &self.soak {
            for r in &soak.rows {
                rows.push((format!("soak minute {}", r.minute), r.line()));
            }
            rows.push((
                "soak: server RSS over the hold".into(),
                match (soak.rss_start_mb, soak.rss_end_mb, soak.rss_growth_pct) {
                    (Some(a), Some(b), Some(g)) => format!(
                        "{a:.1} -> {b:.1} MB ({g:+.1}%){}",
                        if soak.rss_growing {
                            format!(", GROWING (over {SOAK_GROWTH_PCT}%): a leak is suspected")
                        } else {
                            String::new()
                        }
                    ),
                    _ => "n/a (a hold of at least two minutes after the first)".into(),
                },
            ));
        }
        for a in &self.agents {
            rows.push((
                format!("agent {}", a.agent),
                format!(
                    "meetings {}..{}: {} / {} connected, loss {:.3}%, p99 {:.2} ms, loadgen cpu {}, {}{}",
                    a.first_meeting,
                    a.first_meeting + a.meetings,
                    a.participants_connected,
                    a.participants_planned,
                    a.loss_pct,
                    a.latency_p99_ms,
                    opt(a.loadgen_cpu_pct_avg, "%"),
                    a.status,
                    if a.errors.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ", errors {}",
                            a.errors
                                .iter()
                                .map(|(k, v)| format!("{k} x{v}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                ),
            ));
        }
        for example in &self.error_examples {
            rows.push(("  e.g.".into(), example.clone()));
        }
        if let Some(r) = &self.reconnect {
            rows.push((
                "disconnected participants / disconnects / back".into(),
                format!(
                    "{} / {} / {} ({} not back, {} failed rejoin attempts)",
                    r.participants_disconnected,
                    r.disconnects,
                    r.reconnects,
                    r.not_back,
                    r.failed_attempts
                ),
            ));
            rows.push((
                "time back p50 / p95 / max".into(),
                format!(
                    "{:.0} / {:.0} / {:.0} ms",
                    r.time_back_ms.p50, r.time_back_ms.p95, r.time_back_ms.max
                ),
            ));
            rows.push((
                "others that noticed (error, gap > 500 ms)".into(),
                if r.others_noticed_ids.is_empty() {
                    "0".to_owned()
                } else {
                    format!("{} (lg{:?})", r.others_noticed, r.others_noticed_ids)
                },
            ));
        }
        if let Some(m) = &self.max_held {
            rows.push((
                "largest load that held the SLO".into(),
                format!(
                    "{} meetings, {} participants (loss {:.3}%, p99 {:.2} ms, join p95 {} ms)",
                    m.meetings, m.participants, m.loss_pct, m.latency_p99_ms, m.join_p95_ms
                ),
            ));
        } else if !self.stages.is_empty() {
            rows.push(("largest load that held the SLO".into(), "none".into()));
        }
        let ok = |b: bool| if b { "ok" } else { "FAIL" };
        let (slo_name, why) = if self.reconnect.is_some() {
            (
                "SLO (loss < 0.5%, p99 < 50 ms, join p95 < 1 s, all back, no one else noticed)",
                format!(
                    "broken (loss {}, latency {}, joins {}, connections {}, reconnects {})",
                    ok(self.slo.loss_ok),
                    ok(self.slo.latency_ok),
                    ok(self.slo.join_ok),
                    ok(self.slo.connections_ok),
                    ok(self.slo.reconnect_ok)
                ),
            )
        } else {
            (
                "SLO (loss < 0.5%, p99 < 50 ms, join p95 < 1 s)",
                format!(
                    "broken (loss {}, latency {}, joins {}, connections {})",
                    ok(self.slo.loss_ok),
                    ok(self.slo.latency_ok),
                    ok(self.slo.join_ok),
                    ok(self.slo.connections_ok)
                ),
            )
        };
        let verdict = if self.slo.held {
            "held".into()
        } else if !self.slo.agents_ok {
            "BROKEN: an agent's results are missing (see its row)".into()
        } else if !self.slo.memory_ok {
            "BROKEN: the server's RSS kept growing over the soak (see its rows)".into()
        } else if !self.slo.measured {
            "NOT MEASURED: no media flowed (nobody published, or nobody connected)".into()
        } else {
            why
        };
        rows.push((slo_name.into(), verdict));
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:<w$}  {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Latency percentiles (top) and throughput (bottom) over time, as a standalone SVG.
pub fn svg(samples: &[Sample]) -> String {
    let (w, h, pad) = (900.0, 260.0, 50.0);
    let t0 = samples.first().map_or(0.0, |s| s.t_s);
    let t1 = samples.last().map_or(1.0, |s| s.t_s).max(t0 + 1.0);
    let x = |t: f64| pad + (t - t0) / (t1 - t0) * (w - 2.0 * pad);
    let panel = |title: &str, unit: &str, series: &[(&str, &str, Vec<f64>)], top: f64| -> String {
        let max = series
            .iter()
            .flat_map(|(_, _, v)| v.iter().copied())
            .fold(0.0f64, f64::max)
            .max(1e-3)
            * 1.1;
        let y = |v: f64| top + h - pad - v / max * (h - 2.0 * pad);
        let mut out = format!(
            "<text x=\"{pad}\" y=\"{:.0}\" font-size=\"14\" font-family=\"sans-serif\">{title}</text>\n\
             <line x1=\"{pad}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>\n\
             <line x1=\"{pad}\" y1=\"{:.1}\" x2=\"{pad}\" y2=\"{:.1}\" stroke=\"#888\"/>\n\
             <text x=\"4\" y=\"{:.1}\" font-size=\"11\" font-family=\"sans-serif\">{:.2} {unit}</text>\n\
             <text x=\"4\" y=\"{:.1}\" font-size=\"11\" font-family=\"sans-serif\">0</text>\n",
            top + 20.0,
            y(0.0),
            w - pad,
            y(0.0),
            y(0.0),
            y(max),
            y(max) + 4.0,
            max,
            y(0.0)
        );
        for (i, (name, color, values)) in series.iter().enumerate() {
            let points: Vec<String> = samples
                .iter()
                .zip(values)
                .map(|(s, v)| format!("{:.1},{:.1}", x(s.t_s), y(*v)))
                .collect();
            out += &format!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\n\
                 <text x=\"{:.0}\" y=\"{:.0}\" font-size=\"12\" fill=\"{color}\" font-family=\"sans-serif\">{name}</text>\n",
                points.join(" "),
                w - pad - 240.0 + 80.0 * i as f64,
                top + 20.0
            );
        }
        out
    };
    let lat = panel(
        "one-way added latency (ms)",
        "ms",
        &[
            (
                "p50",
                "#1f77b4",
                samples.iter().map(|s| s.latency_p50_ms).collect(),
            ),
            (
                "p99",
                "#ff7f0e",
                samples.iter().map(|s| s.latency_p99_ms).collect(),
            ),
            (
                "p99.9",
                "#d62728",
                samples.iter().map(|s| s.latency_p999_ms).collect(),
            ),
        ],
        0.0,
    );
    let thr = panel(
        "packets per second (into / out of the node)",
        "pkt/s",
        &[
            ("in", "#2ca02c", samples.iter().map(|s| s.pps_out).collect()),
            ("out", "#9467bd", samples.iter().map(|s| s.pps_in).collect()),
        ],
        h,
    );
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" viewBox=\"0 0 {w} {}\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{lat}{thr}\
         <text x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\" font-family=\"sans-serif\">time (s)</text>\n</svg>\n",
        2.0 * h,
        2.0 * h,
        w / 2.0,
        2.0 * h - 8.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(minute: usize, rss: f64) -> SoakRow {
        SoakRow {
            minute,
            server_rss_mb: Some(rss),
            server_cpu_pct: Some(50.0),
            loss_pct: 0.0,
            latency_p99_ms: 1.0,
            joined: 10,
            errors: 0,
        }
    }

    #[test]
    fn a_soak_flags_rss_that_keeps_growing_over_the_hold() {
        // The ramp (90 s) is left out: the hold's first row is minute 3 (2.5 min and more).
        let steady = SoakReport::of(
            vec![
                row(1, 50.0),
                row(2, 200.0),
                row(3, 250.0),
                row(4, 255.0),
                row(5, 260.0),
            ],
            90.0,
        );
        assert_eq!(steady.rss_start_mb, Some(250.0));
        assert_eq!(steady.rss_end_mb, Some(260.0));
        assert!(!steady.rss_growing, "{:?}", steady.rss_growth_pct);
        let leaking = SoakReport::of(vec![row(1, 100.0), row(2, 120.0), row(3, 140.0)], 0.0);
        assert!(leaking.rss_growing, "{:?}", leaking.rss_growth_pct);
        let short = SoakReport::of(vec![row(1, 100.0)], 0.0);
        assert_eq!(short.rss_growth_pct, None);
        assert!(!short.rss_growing);
    }
}
