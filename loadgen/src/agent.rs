//! Runs across machines: `hearth-loadgen agent` on each, and one controller
//! (`hearth-loadgen --agents a:7999,b:7999 <scenario>`) that places whole meetings on the
//! agents (so a meeting's senders and receivers share one clock and latency stays exact),
//! synchronises their start, merges their progress every second and writes one report with
//! a row per agent.
//!
//! The wire is newline-delimited JSON over TCP. The controller sends one job, the command
//! line of the agent's part of the run: its own arguments minus `--agents`, `--json`,
//! `--svg` and `--server-pid`, plus its URL and key pair as resolved (they may have come from
//! the environment), `--meetings N --meeting-offset F --run-tag T --start-at-ms S`. The
//! agent runs exactly what a standalone run would, and answers `{"sample": ...}` every
//! second and `{"result": ...}` at the end (its counters and serialized latency and join
//! histograms, merged exactly by the controller), or `{"error": "..."}`.
//!
//! An agent whose connection closes before its result (it died), or that says nothing for
//! 30 s (its machine did), is reported as lost with the reason, and the run cannot pass its
//! SLO. Live progress sums each agent's latest second (counts, rates) and takes the worst
//! agent's latency percentiles; the report's totals and whole-run percentiles are exact.
//! An agent listens on loopback unless told otherwise; on a network, give it `--token` and
//! the controller `--agent-token` (the job carries the node's API secret in clear: keep the
//! agents on a trusted network). Server CPU and memory come from the controller's own
//! probe (gRPC `AdminService.Stats`, or `/proc` with `--server-pid` on the node's machine).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::report::{self, AgentRow, Cumulative, Parts, Sample};
use crate::scenario::Scenario;
use crate::{Args, Cli, Run};

/// One line from an agent.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Sample(Sample),
    Result(AgentResult),
    Error(String),
}

#[derive(Serialize, Deserialize)]
struct AgentResult {
    parts: Parts,
    loadgen_cpu_pct_avg: Option<f64>,
}

/// The job a controller sends.
#[derive(Serialize, Deserialize)]
struct Job {
    args: Vec<String>,
    /// The agent's `--token`, if it has one.
    #[serde(default)]
    token: Option<String>,
}

/// One wire line, newline included.
fn line(l: &Line) -> String {
    serde_json::to_string(l).unwrap_or_default() + "\n"
}

pub fn sample_line(s: &Sample) -> String {
    line(&Line::Sample(s.clone()))
}

/// The agent's final line: its parts and its own CPU over the hold.
pub fn result_line(parts: &Parts, samples: &[Sample], hold: Duration) -> String {
    let n = (hold.as_secs() as usize).min(samples.len());
    let own: Vec<f64> = samples[samples.len() - n..]
        .iter()
        .filter_map(|s| s.loadgen_cpu_pct)
        .collect();
    line(&Line::Result(AgentResult {
        parts: parts.clone(),
        loadgen_cpu_pct_avg: (!own.is_empty()).then(|| own.iter().sum::<f64>() / own.len() as f64),
    }))
}

// ---- the agent -----------------------------------------------------------------------------

/// Serves controllers, one run at a time (a second controller waits for the first's run).
pub async fn serve(
    listen: SocketAddr,
    local_net: Option<std::net::Ipv4Addr>,
    token: Option<String>,
) -> ExitCode {
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(a) => println!("hearth-loadgen agent listening on {a}"),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                eprintln!("agent: controller {peer} connected");
                job(socket, local_net, token.as_deref()).await;
                eprintln!("agent: controller {peer} done");
            }
            Err(e) => eprintln!("agent: accept failed: {e}"),
        }
    }
}

async fn job(socket: TcpStream, local_net: Option<std::net::Ipv4Addr>, token: Option<&str>) {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    let refuse = |why: String| line(&Line::Error(why));
    let job = match tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await {
        Ok(Ok(Some(text))) => match serde_json::from_str::<Job>(&text) {
            Ok(j) => j,
            Err(e) => {
                let _ = write
                    .write_all(refuse(format!("bad job: {e}")).as_bytes())
                    .await;
                return;
            }
        },
        _ => return,
    };
    if token.is_some() && job.token.as_deref() != token {
        let _ = write
            .write_all(refuse("wrong or missing --agent-token".into()).as_bytes())
            .await;
        return;
    }
    let args = match <Cli as clap::Parser>::try_parse_from(
        std::iter::once("hearth-loadgen".to_owned()).chain(job.args),
    ) {
        Ok(cli) if cli.command.is_none() && cli.args.agents.is_empty() => {
            let mut args = cli.args;
            if let Some(net) = local_net {
                args.local_net = net;
            }
            args
        }
        Ok(_) => {
            let _ = write
                .write_all(refuse("an agent runs a plain scenario".into()).as_bytes())
                .await;
            return;
        }
        Err(e) => {
            let _ = write.write_all(refuse(e.to_string()).as_bytes()).await;
            return;
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let run = crate::run_main(args, Some(tx));
    tokio::pin!(run);
    let mut finished = false;
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(l) if write.write_all(l.as_bytes()).await.is_err() => {
                    eprintln!("agent: the controller went away; the run stops");
                    return;
                }
                Some(_) => {}
                None if finished => break,
                None => {}
            },
            code = &mut run, if !finished => {
                finished = true;
                if code != ExitCode::SUCCESS {
                    // A run that could not start reported nothing else.
                    let _ = write.write_all(refuse("the run could not start (see the agent's log)".into()).as_bytes()).await;
                }
            }
            more = lines.next_line(), if !finished => {
                if !matches!(more, Ok(Some(_))) {
                    eprintln!("agent: the controller went away; the run stops");
                    return;
                }
            }
        }
    }
    let _ = write.flush().await;
}

// ---- the controller ------------------------------------------------------------------------

/// The agent's command line for its share of the run (`client`: the controller's choice,
/// `auto` resolved on the whole run).
#[allow(clippy::too_many_arguments)]
fn agent_args(
    args: &Args,
    client: &str,
    first: usize,
    meetings: usize,
    scenario: &Scenario,
    tag: &str,
    start_at_ms: u64,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in std::env::args().skip(1) {
        if skip_value {
            skip_value = false;
            continue;
        }
        let flag = a.split('=').next().unwrap_or_default();
        if matches!(
            flag,
            "--agents" | "--agent-token" | "--json" | "--svg" | "--server-pid"
        ) {
            skip_value = !a.contains('=');
            continue;
        }
        out.push(a);
    }
    // Shares by participants (a mixed scenario's meetings differ in size).
    let share = (scenario.participants_before(first + meetings)
        - scenario.participants_before(first)) as f64
        / scenario.total_participants().max(1) as f64;
    let ramp = (args.ramp * share).max(0.01);
    if let Some(churn) = args.churn {
        // Each agent churns its share: together, the run's rate.
        out.push("--churn".to_owned());
        out.push(format!("{}", (churn * share).max(0.001)));
    }
    for (k, v) in [
        ("--client", client.to_owned()),
        // Each agent joins its share at its share of the rate: together, the run's rate.
        ("--ramp", format!("{ramp}")),
        ("--url", args.url.clone()),
        ("--api-key", args.api_key.clone()),
        ("--api-secret", args.api_secret.clone()),
        ("--meetings", meetings.to_string()),
        ("--meeting-offset", first.to_string()),
        ("--run-tag", tag.to_owned()),
        ("--start-at-ms", start_at_ms.to_string()),
    ] {
        out.push(k.to_owned());
        out.push(v);
    }
    out
}

/// How long a controller waits for an agent's next line.
const SILENT_AGENT: Duration = Duration::from_secs(30);

enum Event {
    Line(Box<Line>),
    Lost(String),
}

async fn talk(i: usize, addr: String, job: Job, tx: mpsc::UnboundedSender<(usize, Event)>) {
    let socket = match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&addr)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let _ = tx.send((i, Event::Lost(format!("unreachable: {e}"))));
            return;
        }
        Err(_) => {
            let _ = tx.send((i, Event::Lost("unreachable: connect timed out".into())));
            return;
        }
    };
    let (read, mut write) = socket.into_split();
    let text = serde_json::to_string(&job).unwrap_or_default() + "\n";
    if let Err(e) = write.write_all(text.as_bytes()).await {
        let _ = tx.send((i, Event::Lost(format!("the job could not be sent: {e}"))));
        return;
    }
    let mut lines = BufReader::new(read).lines();
    loop {
        // An agent sends a line every second while it runs; its leave phase lasts at most
        // 10 s. Silence beyond that is a dead agent or machine (no FIN ever came).
        let Ok(next) = tokio::time::timeout(SILENT_AGENT, lines.next_line()).await else {
            let _ = tx.send((
                i,
                Event::Lost(format!("no word from it for {}s", SILENT_AGENT.as_secs())),
            ));
            return;
        };
        match next {
            Ok(Some(text)) => match serde_json::from_str::<Line>(&text) {
                Ok(l) => {
                    let last = matches!(l, Line::Result(_) | Line::Error(_));
                    let _ = tx.send((i, Event::Line(Box::new(l))));
                    if last {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send((i, Event::Lost(format!("undecodable line: {e}"))));
                    return;
                }
            },
            Ok(None) => {
                let _ = tx.send((
                    i,
                    Event::Lost(
                        "the connection closed before its results (the agent died?)".into(),
                    ),
                ));
                return;
            }
            Err(e) => {
                let _ = tx.send((i, Event::Lost(format!("the connection failed: {e}"))));
                return;
            }
        }
    }
}

/// Merges one second of every agent's progress into `base` (the controller's own sample:
/// time and server usage).
fn merge(base: &mut Sample, latest: &[Option<Sample>]) {
    let got: Vec<&Sample> = latest.iter().flatten().collect();
    // Sums start at +0.0 (an empty `Sum` of floats is -0.0).
    let sum = |f: fn(&Sample) -> f64| got.iter().fold(0.0, |a, s| a + f(s));
    let pps_in = sum(|s| s.pps_in);
    base.joined = got.iter().map(|s| s.joined).sum();
    base.connected = got.iter().map(|s| s.connected).sum();
    base.pps_in = pps_in;
    base.pps_out = sum(|s| s.pps_out);
    base.mbps_in = sum(|s| s.mbps_in);
    base.mbps_out = sum(|s| s.mbps_out);
    base.loss_pct = if pps_in > 0.0 {
        sum(|s| s.loss_pct * s.pps_in) / pps_in
    } else {
        got.iter().map(|s| s.loss_pct).fold(0.0, f64::max)
    };
    let worst = |f: fn(&Sample) -> f64| got.iter().map(|s| f(s)).fold(0.0, f64::max);
    base.latency_p50_ms = worst(|s| s.latency_p50_ms);
    base.latency_p99_ms = worst(|s| s.latency_p99_ms);
    base.latency_p999_ms = worst(|s| s.latency_p999_ms);
    base.latency_max_ms = worst(|s| s.latency_max_ms);
    base.latency_samples = got.iter().map(|s| s.latency_samples).sum();
    let cpu: Vec<f64> = got.iter().filter_map(|s| s.loadgen_cpu_pct).collect();
    base.loadgen_cpu_pct = (!cpu.is_empty()).then(|| cpu.iter().fold(0.0, |a, c| a + c));
}

/// Runs the scenario on the agents; returns the merged parts and a row per agent.
pub async fn drive(
    run: &Run,
    s: &Scenario,
    samples: &mut Vec<Sample>,
    prev: &mut Cumulative,
) -> (Parts, Vec<AgentRow>) {
    let agents = &run.args.agents;
    let n = agents.len();
    let start_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        + 2000;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut rows = Vec::with_capacity(n);
    let mut first = 0;
    for (i, addr) in agents.iter().enumerate() {
        let meetings = s.meetings / n + usize::from(i < s.meetings % n);
        rows.push(AgentRow {
            agent: addr.clone(),
            first_meeting: first,
            meetings,
            participants_planned: s.participants_before(first + meetings)
                - s.participants_before(first),
            participants_connected: 0,
            loss_pct: 0.0,
            latency_p99_ms: 0.0,
            loadgen_cpu_pct_avg: None,
            errors: Default::default(),
            status: "running".into(),
        });
        let job = Job {
            args: agent_args(
                &run.args,
                run.ctx.link.client_name(),
                first,
                meetings,
                s,
                &run.run_tag,
                start_at_ms,
            ),
            token: run.args.agent_token.clone(),
        };
        tokio::spawn(talk(i, addr.clone(), job, tx.clone()));
        first += meetings;
    }
    drop(tx);
    let planned = s.total_participants();
    let ramp = Duration::from_secs_f64(planned as f64 / s.ramp);
    let deadline = tokio::time::Instant::now() + ramp + s.duration + Duration::from_secs(60);
    let mut latest: Vec<Option<Sample>> = vec![None; n];
    let mut results: Vec<Option<AgentResult>> = (0..n).map(|_| None).collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let started = Instant::now();
    let mut open = n;
    let mut fresh = false;
    while open > 0 {
        tokio::select! {
            ev = rx.recv() => {
                let Some((i, ev)) = ev else { break };
                let ev = match ev {
                    Event::Line(l) => *l,
                    Event::Lost(why) => Line::Error(why),
                };
                match ev {
                    Line::Sample(smp) => {
                        latest[i] = Some(smp);
                        fresh = true;
                    }
                    Line::Result(r) => {
                        rows[i].status = "done".into();
                        results[i] = Some(r);
                        open -= 1;
                    }
                    Line::Error(why) => {
                        latest[i] = None;
                        if rows[i].status == "running" {
                            rows[i].status = format!("lost: {why}");
                            eprintln!("\nagent {}: {}", rows[i].agent, rows[i].status);
                            open -= 1;
                        }
                    }
                }
            }
            _ = tick.tick() => {
                // A second is recorded when some agent reported since the last one (each
                // agent's latest sample stands in for one that is a little late); once the
                // agents' holds are over they stop sampling, and so does the controller.
                if std::mem::take(&mut fresh) {
                    let mut smp = report::sample(run, prev).await;
                    merge(&mut smp, &latest);
                    report::progress(&smp, planned);
                    samples.push(smp);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                for r in rows.iter_mut().filter(|r| r.status == "running") {
                    r.status = format!("lost: no results after {:?}", started.elapsed());
                }
                break;
            }
        }
    }
    let mut parts: Option<Parts> = None;
    for (row, result) in rows.iter_mut().zip(&results) {
        let Some(r) = result else {
            continue;
        };
        let p = &r.parts;
        row.participants_connected = p.connected;
        row.participants_planned += p.churned as usize;
        row.loss_pct = if p.expected == 0 {
            0.0
        } else {
            p.expected.saturating_sub(p.received) as f64 * 100.0 / p.expected as f64
        };
        row.latency_p99_ms = report::p99_ms(&p.latency_us);
        row.loadgen_cpu_pct_avg = r.loadgen_cpu_pct_avg;
        row.errors = p.errors.clone();
        match &mut parts {
            Some(all) => all.add(p),
            None => parts = Some(p.clone()),
        }
    }
    let mut parts = parts.unwrap_or_else(|| Parts::local(run));
    // Participants of lost agents were planned too, and every churn leave planned a
    // replacement.
    parts.planned = planned + parts.churned as usize;
    (parts, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pps_in: f64, loss: f64, p99: f64) -> Sample {
        Sample {
            t_s: 1.0,
            joined: 10,
            connected: 9,
            pps_in,
            pps_out: 1.0,
            mbps_in: 1.0,
            mbps_out: 1.0,
            loss_pct: loss,
            latency_p50_ms: p99 / 2.0,
            latency_p99_ms: p99,
            latency_p999_ms: p99,
            latency_max_ms: p99,
            latency_samples: 5,
            server_cpu_pct: None,
            server_rss_mb: None,
            loadgen_cpu_pct: Some(40.0),
            reconnecting: None,
        }
    }

    #[test]
    fn progress_merges_counts_exactly_and_latency_conservatively() {
        let mut base = sample(0.0, 0.0, 0.0);
        base.server_cpu_pct = Some(50.0);
        merge(
            &mut base,
            &[
                Some(sample(300.0, 1.0, 2.0)),
                None,
                Some(sample(100.0, 5.0, 7.0)),
            ],
        );
        assert_eq!((base.joined, base.connected), (20, 18));
        assert_eq!(base.pps_in, 400.0);
        assert!((base.loss_pct - 2.0).abs() < 1e-9, "{}", base.loss_pct);
        assert_eq!(base.latency_p99_ms, 7.0);
        assert_eq!(base.loadgen_cpu_pct, Some(80.0));
        assert_eq!(
            base.server_cpu_pct,
            Some(50.0),
            "the controller's own probe"
        );
    }
}
