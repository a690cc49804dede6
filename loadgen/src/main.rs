//! `hearth-loadgen`: thousands of simulated meetings over Hearth's public protocols, and a
//! report that says what a node holds.
//!
//! Each simulated participant mints its token from the API key (as an app would), joins over
//! WebSocket signaling and runs real ICE, DTLS and SRTP with webrtc-rs `rtc`. Participants
//! share one UDP socket per core ([`shard`]). Every RTP payload carries its send time, so
//! receivers measure one-way added latency; RTP sequence numbers give loss.
//!
//! What it does not do: decode or render media (payloads have realistic sizes and valid
//! codec headers, not real audio or video), adapt bitrate to congestion (no REMB/TWCC-driven
//! encoder), or data channels. `--simulcast` sends three rid layers per camera (full client).
//!
//! `--reconnect` makes participants that lose their session join again as the web client
//! does, and reports disconnects and the time back ([`reconnect`]); `--chaos-every` kills
//! random participant and meeting actors of the run during the hold through the node's
//! admin API and reports who noticed ([`chaos`]).
//!
//! `--target janus` runs the same participants against Janus's VideoRoom ([`janus`]);
//! `--target floor` sends the same packets, without any protocol, through the floor
//! forwarder of `deploy/bench/` ([`floor`]), to measure the machine's floor for the traffic.

mod agent;
mod chaos;
mod floor;
mod janus;
mod jwt;
mod lean;
mod media;
mod peer;
mod reconnect;
mod report;
mod scenario;
mod server;
mod shard;
mod signal;
mod stats;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::sync::watch;

use crate::report::{Report, Sample};
use crate::scenario::Scenario;
use crate::shard::{Shard, ShardHandle};
use crate::signal::{Counters, Plan};

/// Simulates meetings against a Hearth node and reports what it held.
#[derive(Parser, Debug)]
#[command(name = "hearth-loadgen", version, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: Args,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Runs as an agent: a controller (`hearth-loadgen --agents ...`) places whole meetings
    /// on it and reads its progress and results over TCP (one run at a time).
    Agent {
        /// Address to listen on for controllers (loopback by default: pass e.g.
        /// 0.0.0.0:7999, with --token, for controllers on other machines).
        #[arg(long, default_value = "127.0.0.1:7999")]
        listen: SocketAddr,
        /// A secret controllers must send (`--agent-token`) for a job to run.
        #[arg(long, env = "HEARTH_LOADGEN_AGENT_TOKEN")]
        token: Option<String>,
        /// This machine's range of participant addresses (overrides the controller's
        /// `--local-net`; each machine routes its own range).
        #[arg(long)]
        local_net: Option<Ipv4Addr>,
    },
}

#[derive(clap::Args, Debug, Clone)]
struct Args {
    /// The node's HTTP URL.
    #[arg(long, env = "HEARTH_URL", default_value = "http://127.0.0.1:7880")]
    url: String,
    /// API key and secret the node trusts (tokens are minted from them).
    #[arg(long, env = "HEARTH_API_KEY", default_value = "")]
    api_key: String,
    #[arg(
        long,
        env = "HEARTH_API_SECRET",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true
    )]
    api_secret: String,
    /// A named scenario: audio-rooms, big-audio-room, video-meeting, livestream, or mixed
    /// (kinds of meeting in the proportions of --mix).
    #[arg(long)]
    preset: Option<String>,
    /// With `--preset mixed`: the kinds of meeting and their shares in percent, each at its
    /// preset's default size (audio-rooms 4, video-meeting 8, livestream 100, big-audio-room
    /// 100).
    /// [default: audio-rooms:70,video-meeting:25,livestream:5]
    #[arg(long)]
    mix: Option<String>,
    /// Meetings to simulate (with --find-max: the first stage).
    #[arg(long, default_value_t = 10)]
    meetings: usize,
    /// Participants per meeting [default: 4, or the preset's].
    #[arg(long)]
    participants: Option<usize>,
    /// Audio publishers per meeting (the others only listen) [default: all].
    #[arg(long)]
    audio_publishers: Option<usize>,
    /// Active speakers per meeting; other audio publishers send a muted microphone's silence.
    #[arg(long)]
    speakers: Option<usize>,
    /// Video publishers per meeting.
    #[arg(long)]
    video_publishers: Option<usize>,
    /// Video bitrate in kbit/s (30 fps VP8; keyframes on PLI).
    #[arg(long)]
    video_kbps: Option<u32>,
    /// Video publishers send three simulcast layers (rids q, h, f: a quarter, half and full
    /// size at 1/8, 1/3 and all of --video-kbps) and pause those the node says nobody
    /// receives, as browsers do; the full client against Hearth only.
    #[arg(long)]
    simulcast: bool,
    /// Participants per meeting that only receive.
    #[arg(long)]
    subscribers_only: Option<usize>,
    /// Joins per second.
    #[arg(long, default_value_t = 100.0)]
    ramp: f64,
    /// How long to hold the full load (e.g. 60s, 2m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Seed of the run, part of its meeting names (media sizes vary deterministically per
    /// frame; SSRCs and ICE credentials are random, as a browser's are).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// UDP sockets (one task each) [default: one per core].
    #[arg(long)]
    shards: Option<usize>,
    /// Start of the address range of simulated participants (one address each), routed to
    /// this machine; 127.64.0.0 lies in loopback's 127.0.0.0/8, for a node on this machine.
    #[arg(long, default_value = "127.64.0.0")]
    local_net: Ipv4Addr,
    /// The node's process id, to read its CPU and memory from /proc (else from its gRPC
    /// AdminService.Stats).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Write a chart of latency percentiles and throughput over time (SVG).
    #[arg(long)]
    svg: Option<std::path::PathBuf>,
    /// Ramp up stage by stage until the SLO breaks; report the largest load that held.
    #[arg(long)]
    find_max: bool,
    /// With --find-max: meetings added per stage [default: the starting --meetings].
    #[arg(long)]
    step: Option<usize>,
    /// The SFU under load: hearth, janus (its VideoRoom plugin, for comparison), or floor
    /// (deploy/bench/floor_forwarder.c: the same packets with no protocol work).
    #[arg(long, default_value = "hearth", value_parser = ["hearth", "janus", "floor"])]
    target: String,
    /// Janus's HTTP API (with --target janus).
    #[arg(long, default_value = "http://10.77.0.2:8088/janus")]
    janus_url: String,
    /// The floor forwarder's UDP address (with --target floor).
    #[arg(long, default_value = "127.0.0.1:37990")]
    floor_addr: SocketAddr,
    /// Participants that lose their session (told to reconnect, socket closed, peer
    /// connection failed) join again as the web client does, until the run ends; the report
    /// counts disconnects and the time until media flowed again.
    #[arg(long)]
    reconnect: bool,
    /// During the hold, kill a random participant or meeting actor of the run this often
    /// (gRPC AdminService.KillActor) and report who noticed (needs --reconnect).
    #[arg(long, value_parser = parse_duration, requires = "reconnect")]
    chaos_every: Option<Duration>,
    /// During the hold, this many participants per second leave and as many new ones join
    /// in their place (same meeting, same role), as in real meetings; the report gives their
    /// join times apart.
    #[arg(long, conflicts_with_all = ["find_max", "reconnect"])]
    churn: Option<f64>,
    /// A soak: hold the load this long (instead of --duration), print a row per minute
    /// (server RSS and CPU, loss, p99, joins, errors) and flag the server's RSS growing over
    /// the hold (a leak).
    #[arg(long, value_parser = parse_duration, conflicts_with_all = ["find_max", "agents"])]
    soak: Option<Duration>,
    /// The WebRTC client of simulated participants towards Hearth: `full` (webrtc-rs's
    /// `rtc` peer connection, a conformance client: trickle ICE, NACK, TWCC feedback, ...),
    /// `lean` (the generator's own lean client: ICE-lite servers only, a fraction of the CPU
    /// per packet; see `lean.rs` for what it leaves out), or `auto`: lean for runs of 500
    /// participants or more and for --find-max, full otherwise. Janus always gets `full`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "full", "lean"])]
    client: String,
    /// With the lean client: authenticate and decrypt one received packet in this many per
    /// participant (1: every packet). Loss and jitter come from every packet's clear RTP
    /// header; latency only from the decrypted ones.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    decrypt_every: u32,
    /// Run the scenario across these agents (`hearth-loadgen agent` on each, comma-separated
    /// host:port): whole meetings are placed on one agent each, the start is synchronised,
    /// progress is merged live and the report covers all agents, with a row per agent.
    #[arg(long, value_delimiter = ',')]
    agents: Vec<String>,
    /// The agents' `--token`.
    #[arg(long, env = "HEARTH_LOADGEN_AGENT_TOKEN")]
    agent_token: Option<String>,
    /// (Set by a controller for its agents.) Index of this agent's first meeting.
    #[arg(long, hide = true, default_value_t = 0)]
    meeting_offset: usize,
    /// (Set by a controller.) The run's tag, part of every meeting name.
    #[arg(long, hide = true)]
    run_tag: Option<String>,
    /// (Set by a controller.) Start launching participants at this Unix time (ms).
    #[arg(long, hide = true)]
    start_at_ms: Option<u64>,
    /// What --chaos-every kills: participant, meeting (comma-separated).
    #[arg(long, default_value = "participant,meeting")]
    chaos_kinds: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {s}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit in {s} (ms, s, m, h)")),
    };
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("out of range: {s}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Checks the chaos and reconnect flags fit the run; the kinds chaos kills.
fn chaos_kinds(args: &Args) -> Result<Vec<chaos::Kind>, String> {
    if args.reconnect && args.target != "hearth" {
        return Err("--reconnect works with --target hearth only".into());
    }
    if args.chaos_every.is_some() && args.find_max {
        return Err("--chaos-every runs one hold, not --find-max stages".into());
    }
    if args
        .chaos_every
        .is_some_and(|d| d < Duration::from_millis(100))
    {
        return Err("--chaos-every: at least 100ms".into());
    }
    chaos::parse_kinds(&args.chaos_kinds).map_err(|e| format!("--chaos-kinds: {e}"))
}

fn scenario(args: &Args) -> Result<Scenario, String> {
    let mut s = match &args.preset {
        Some(p) => scenario::preset(p, args.participants)?,
        None => Scenario::custom(args.participants.unwrap_or(4)),
    };
    s.meetings = args.meetings;
    s.ramp = args.ramp;
    s.duration = args.soak.unwrap_or(args.duration);
    s.seed = args.seed;
    if let Some(v) = args.audio_publishers {
        s.audio_publishers = v;
    }
    if let Some(v) = args.speakers {
        s.speakers = v;
    }
    if let Some(v) = args.video_publishers {
        s.video_publishers = v;
    }
    if let Some(v) = args.video_kbps {
        s.video.bitrate_bps = v.saturating_mul(1000);
    }
    s.video.simulcast = args.simulcast;
    if let Some(v) = args.subscribers_only {
        s.subscribers_only = v;
    }
    if !s.mix.is_empty() {
        let shaped = args.participants.is_some()
            || args.audio_publishers.is_some()
            || args.speakers.is_some()
            || args.video_publishers.is_some()
            || args.video_kbps.is_some()
            || args.simulcast
            || args.subscribers_only.is_some();
        if shaped {
            return Err("--preset mixed takes its meetings' shapes from --mix".into());
        }
        s.mix = scenario::parse_mix(args.mix.as_deref().unwrap_or(scenario::DEFAULT_MIX))?;
        s.place();
    } else if args.mix.is_some() {
        return Err("--mix goes with --preset mixed".into());
    }
    s.check()?;
    Ok(s)
}

/// The address of participant `n` in the range starting at `base` (never .0 or .255).
fn participant_ip(base: Ipv4Addr, n: u32) -> IpAddr {
    let b = u32::from(base);
    let host = (n / 254) * 256 + (n % 254) + 1;
    IpAddr::V4(Ipv4Addr::from(b.wrapping_add(host)))
}

/// A live participant `--churn` may pick.
struct Live {
    meeting: usize,
    role: usize,
    started: Instant,
    leave: watch::Sender<bool>,
    /// `signal::STATE_*`, kept by its session.
    state: Arc<std::sync::atomic::AtomicU8>,
    /// Fires when its task has ended.
    done: tokio::sync::oneshot::Receiver<()>,
}

/// `--churn` picks participants that have been in their meeting at least this long (joined
/// and connected: a leave then is a real meeting's leave, not a failed join).
const CHURN_MIN_AGE: Duration = Duration::from_secs(10);

pub struct Run {
    args: Args,
    shards: Vec<ShardHandle>,
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    epoch: Instant,
    next_id: AtomicU32,
    planned: AtomicUsize,
    server: tokio::sync::Mutex<server::ServerProbe>,
    ctx: Arc<signal::Ctx>,
    run_tag: String,
    janus_http: Option<janus::Http>,
    /// As an agent: progress and results go to the controller, as JSON lines.
    stream: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// With --soak: one row per minute of the run.
    soak_rows: std::sync::Mutex<Vec<report::SoakRow>>,
    /// Hearth participants running, for --churn.
    live: std::sync::Mutex<Vec<Live>>,
    /// Participants --churn made leave.
    churned: std::sync::atomic::AtomicU64,
}

impl Run {
    /// The participants' client, for reports.
    fn client_name(&self) -> &'static str {
        if self.args.target == "floor" {
            "floor"
        } else {
            self.ctx.link.client_name()
        }
    }

    /// Starts one participant against Hearth: role `i` of meeting `m`, as participant `id`
    /// (`churn`: a replacement joining during the hold). It leaves when the run ends, or
    /// earlier when `--churn` picks it.
    fn launch_hearth(&self, s: &Scenario, m: usize, i: usize, id: u32, churn: bool) {
        let meeting = format!("lg-{}-{m}", self.run_tag);
        let shape = s.meeting(m);
        let sending = shape.sending(i);
        let shard = self.shards[id as usize % self.shards.len()].clone();
        let plan = Plan {
            id,
            meeting: meeting.clone(),
            identity: format!("lg{id}"),
            grants: jwt::Grants {
                publish: sending.audio || sending.video.is_some(),
                subscribe: true,
                admin: false,
            },
            sending,
            ip: participant_ip(self.args.local_net, id),
            expects_media: shape.others_send(i),
            churn,
            state: None,
        };
        if let Some(t) = &self.ctx.tracker {
            t.planned(id, &meeting);
        }
        self.planned.fetch_add(1, Ordering::Relaxed);
        let ctx = Arc::clone(&self.ctx);
        let counters = Arc::clone(&self.counters);
        if self.args.churn.is_none() {
            tokio::spawn(signal::run(
                plan,
                ctx,
                shard,
                counters,
                self.stop.subscribe(),
            ));
            return;
        }
        // With --churn, its own stop (the run's end, or being picked), its state for the
        // picking (connected, ended) and a signal when its task is over.
        let (leave, stop) = watch::channel(false);
        let mut run_end = self.stop.subscribe();
        let forward = leave.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = run_end.wait_for(|s| *s) => { let _ = forward.send(true); }
                _ = forward.closed() => {}
            }
        });
        let state = Arc::new(std::sync::atomic::AtomicU8::new(signal::STATE_JOINING));
        let (done_tx, done) = tokio::sync::oneshot::channel();
        if let Ok(mut live) = self.live.lock() {
            live.retain(|l| l.state.load(Ordering::Relaxed) != signal::STATE_ENDED);
            live.push(Live {
                meeting: m,
                role: i,
                started: Instant::now(),
                leave,
                state: Arc::clone(&state),
                done,
            });
        }
        let plan = Plan {
            state: Some(state),
            ..plan
        };
        tokio::spawn(async move {
            signal::run(plan, ctx, shard, counters, stop).await;
            let _ = done_tx.send(());
        });
    }

    /// `--churn`: until `until`, `rate` times a second one participant that has been in
    /// its meeting for at least [`CHURN_MIN_AGE`] leaves and a new one takes its role.
    async fn churn(&self, s: &Scenario, rate: f64, until: tokio::time::Instant) {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = tokio::time::sleep_until(until) => return,
            }
            let picked = self.live.lock().ok().and_then(|mut live| {
                let now = Instant::now();
                live.retain(|l| l.state.load(Ordering::Relaxed) != signal::STATE_ENDED);
                // Connected, in its meeting long enough: a leave, not a failed join.
                let eligible: Vec<usize> = (0..live.len())
                    .filter(|&k| {
                        live[k].state.load(Ordering::Relaxed) == signal::STATE_CONNECTED
                            && now.duration_since(live[k].started) >= CHURN_MIN_AGE
                    })
                    .collect();
                if eligible.is_empty() {
                    return None;
                }
                let k = eligible[rand::random::<u32>() as usize % eligible.len()];
                Some(live.swap_remove(k))
            });
            let Some(gone) = picked else { continue };
            let _ = gone.leave.send(true);
            self.churned.fetch_add(1, Ordering::Relaxed);
            // Its seat is free once it has left (a full meeting would refuse the newcomer).
            let _ = tokio::time::timeout(Duration::from_secs(5), gone.done).await;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            self.launch_hearth(s, gone.meeting, gone.role, id, true);
        }
    }

    /// Starts the participants of meetings `from..to` at the ramp rate.
    async fn launch(&self, s: &Scenario, from: usize, to: usize) {
        let every = Duration::from_secs_f64(1.0 / s.ramp);
        let mut next = tokio::time::Instant::now();
        for m in from..to {
            let shape = s.meeting(m);
            for i in 0..shape.participants {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let sending = shape.sending(i);
                if self.args.target == "floor" {
                    let shard = self.shards[id as usize % self.shards.len()].clone();
                    let plan = floor::FloorPlan {
                        id,
                        ip: participant_ip(self.args.local_net, id),
                        meeting: m as u32,
                        sending,
                    };
                    tokio::spawn(floor::run(
                        plan,
                        self.args.floor_addr,
                        shard,
                        Arc::clone(&self.counters),
                        self.stop.subscribe(),
                    ));
                    self.planned.fetch_add(1, Ordering::Relaxed);
                    next += every;
                    tokio::time::sleep_until(next).await;
                    continue;
                }
                if let Some(http) = &self.janus_http {
                    let n = self.shards.len();
                    let (p, q) = (2 * id, 2 * id + 1);
                    let plan = janus::JanusPlan {
                        pub_peer: (p, participant_ip(self.args.local_net, p)),
                        sub_peer: (q, participant_ip(self.args.local_net, q)),
                        room: 1000 + m as u64,
                        room_size: shape.participants,
                        display: format!("lg{id}"),
                        sending,
                    };
                    tokio::spawn(janus::run(
                        plan,
                        self.args.janus_url.trim_end_matches('/').to_owned(),
                        http.clone(),
                        (
                            self.shards[p as usize % n].clone(),
                            self.shards[q as usize % n].clone(),
                        ),
                        Arc::clone(&self.counters),
                        self.stop.subscribe(),
                    ));
                    self.planned.fetch_add(1, Ordering::Relaxed);
                    next += every;
                    tokio::time::sleep_until(next).await;
                    continue;
                }
                self.launch_hearth(s, m, i, id, false);
                next += every;
                tokio::time::sleep_until(next).await;
            }
        }
    }

    /// Moves the gaps the shards saw into the tracker (with `--reconnect`).
    fn collect_gaps(&self) {
        let Some(tracker) = &self.ctx.tracker else {
            return;
        };
        for shard in &self.shards {
            let gaps = match shard.totals.lock() {
                Ok(mut t) => std::mem::take(&mut t.gaps),
                Err(_) => continue,
            };
            tracker.gaps(gaps);
        }
    }

    /// Samples every second until `until`, printing progress.
    async fn observe(
        &self,
        until: tokio::time::Instant,
        samples: &mut Vec<Sample>,
        prev: &mut report::Cumulative,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            self.collect_gaps();
            let sample = report::sample(self, prev).await;
            report::progress(&sample, self.planned.load(Ordering::Relaxed));
            if let Some(tx) = &self.stream {
                let _ = tx.send(agent::sample_line(&sample));
            }
            samples.push(sample);
            if self.args.soak.is_some() && samples.len().is_multiple_of(60) {
                let errors = self.counters.errors.lock().map_or(0, |e| e.values().sum());
                let row = report::SoakRow::of(&samples[samples.len() - 60..], errors);
                eprintln!("\n{}", row.line());
                if let Ok(mut rows) = self.soak_rows.lock() {
                    rows.push(row);
                }
            }
            if tokio::time::Instant::now() >= until {
                break;
            }
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Agent {
            listen,
            local_net,
            token,
        }) => agent::serve(listen, local_net, token).await,
        None => run_main(cli.args, None).await,
    }
}

/// One run: standalone (prints the report), as a controller of agents (`--agents`), or as
/// an agent (`stream`: progress and results go to the controller).
async fn run_main(
    args: Args,
    stream: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) -> ExitCode {
    let s = match scenario(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let ws_url = match args.url.strip_prefix("http://") {
        Some(rest) => format!("ws://{}/v1/signal", rest.trim_end_matches('/')),
        None => match args.url.strip_prefix("https://") {
            Some(rest) => format!("wss://{}/v1/signal", rest.trim_end_matches('/')),
            None => {
                eprintln!("error: --url must start with http:// or https://");
                return ExitCode::from(2);
            }
        },
    };
    let epoch = Instant::now();
    let controller = !args.agents.is_empty();
    if controller && (args.find_max || args.reconnect || args.chaos_every.is_some()) {
        eprintln!("error: --agents runs one hold (no --find-max, --reconnect or --chaos-every)");
        return ExitCode::from(2);
    }
    if controller
        && args
            .agents
            .iter()
            .enumerate()
            .any(|(i, a)| args.agents[..i].contains(a))
    {
        eprintln!("error: --agents: an agent is named twice (it runs one job at a time)");
        return ExitCode::from(2);
    }
    if let Some(rate) = args.churn
        && (args.target != "hearth" || !(rate > 0.0 && rate <= 1000.0))
    {
        eprintln!("error: --churn: a rate above 0 and up to 1000 per second, against Hearth");
        return ExitCode::from(2);
    }
    if args.reconnect && args.decrypt_every > 1 {
        // Senders are recognised from decrypted payloads: sampling would invent gaps.
        eprintln!("error: --reconnect needs every packet decrypted (--decrypt-every 1)");
        return ExitCode::from(2);
    }
    if controller && args.agents.len() > s.meetings.max(1) {
        eprintln!("error: --agents: more agents than meetings (meetings are placed whole)");
        return ExitCode::from(2);
    }
    // A controller runs no participants itself.
    let n_shards = if controller {
        0
    } else {
        args.shards
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    };
    let mut shards = Vec::new();
    for _ in 0..n_shards {
        match Shard::spawn(SocketAddr::from(([0, 0, 0, 0], 0)), epoch) {
            Ok(h) => shards.push(h),
            Err(e) => {
                eprintln!("error: cannot open a UDP socket: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let janus = args.target == "janus";
    let hearth = args.target == "hearth";
    let lean = hearth
        && match args.client.as_str() {
            "lean" => true,
            "full" => false,
            // Simulcast is the full client's.
            _ => !args.simulcast && (args.find_max || s.total_participants() >= 500),
        };
    if args.simulcast && (lean || !hearth) {
        eprintln!(
            "error: --simulcast needs the full client against Hearth (--client full --target hearth)"
        );
        return ExitCode::FAILURE;
    }
    let link = if lean {
        shard::Link::Lean {
            decrypt_every: args.decrypt_every,
        }
    } else {
        shard::Link::WebRtc
    };
    if hearth && (args.api_key.is_empty() || args.api_secret.is_empty()) {
        eprintln!(
            "error: --api-key and --api-secret (or HEARTH_API_KEY/HEARTH_API_SECRET) are required"
        );
        return ExitCode::from(2);
    }
    let kinds = match chaos_kinds(&args) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let server = if !hearth {
        server::ServerProbe::pid_only(args.server_pid)
    } else {
        server::ServerProbe::new(&args.url, &args.api_key, &args.api_secret, args.server_pid).await
    };
    let (stop, _) = watch::channel(false);
    let tracker = (hearth && args.reconnect).then(|| Arc::new(reconnect::Tracker::default()));
    let run_tag = args
        .run_tag
        .clone()
        .unwrap_or_else(|| format!("{:x}", s.seed ^ u64::from(std::process::id())));
    let chaos = match (args.chaos_every, &tracker) {
        (Some(_), Some(tracker)) => match chaos::Chaos::connect(
            &args.url,
            &args.api_key,
            &args.api_secret,
            kinds.clone(),
            s.seed,
            format!("lg-{run_tag}-"),
            Arc::clone(tracker),
        )
        .await
        {
            Ok(mut c) => match c.check().await {
                Ok(_) => Some(c),
                Err(e) => {
                    eprintln!("error: --chaos-every needs the node's admin API: {e}");
                    return ExitCode::from(2);
                }
            },
            Err(e) => {
                eprintln!("error: --chaos-every: {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let run = Run {
        shards,
        counters: Arc::new(Counters::default()),
        stop,
        epoch,
        // Agents number their participants from their first meeting (distinct addresses).
        next_id: AtomicU32::new(s.participants_before(args.meeting_offset) as u32),
        planned: AtomicUsize::new(0),
        server: tokio::sync::Mutex::new(server),
        ctx: Arc::new(signal::Ctx {
            link,
            ws_url,
            api_key: args.api_key.clone(),
            api_secret: args.api_secret.clone(),
            tracker,
        }),
        run_tag,
        janus_http: janus.then(janus::http),
        stream,
        soak_rows: std::sync::Mutex::new(Vec::new()),
        live: std::sync::Mutex::new(Vec::new()),
        churned: std::sync::atomic::AtomicU64::new(0),
        args,
    };
    eprintln!(
        "hearth-loadgen: {}, ramp {}/s, hold {:?}, {}, {} client",
        if s.mix.is_empty() {
            format!(
                "{} meetings x {} participants ({} audio, {} speaking, {} video at {} kbit/s, {} receive-only)",
                s.meetings,
                s.participants,
                s.audio_publishers,
                s.speakers,
                s.video_publishers,
                s.video.bitrate_bps / 1000,
                s.subscribers_only,
            )
        } else {
            format!(
                "{} meetings mixed as {} ({} participants)",
                s.meetings,
                run.args.mix.as_deref().unwrap_or(scenario::DEFAULT_MIX),
                s.total_participants()
            )
        },
        s.ramp,
        s.duration,
        if controller {
            format!("{} agents", run.args.agents.len())
        } else {
            format!("{} shards", run.shards.len())
        },
        run.client_name()
    );
    let mut samples = Vec::new();
    let mut prev = report::Cumulative::default();
    let mut stages = Vec::new();
    let mut kills = Vec::new();
    let started = Instant::now();
    if let Some(at) = run.args.start_at_ms {
        // A controller's synchronised start (agents' clocks agree, e.g. by NTP).
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms).min(60_000))).await;
    }
    let mut agent_results = None;
    if controller {
        agent_results = Some(agent::drive(&run, &s, &mut samples, &mut prev).await);
    } else if run.args.find_max {
        let step = run.args.step.unwrap_or(s.meetings).max(1);
        let mut meetings = 0;
        let mut target = s.meetings;
        loop {
            run.launch(&s, meetings, target).await;
            meetings = target;
            let stage_start = samples.len();
            let until = tokio::time::Instant::now() + s.duration;
            run.observe(until, &mut samples, &mut prev).await;
            let stage = report::stage(
                &samples[stage_start..],
                meetings,
                s.participants_before(meetings),
                &run,
            );
            let held = stage.slo.held;
            eprintln!(
                "\nstage: {meetings} meetings, {} participants joined: loss {:.3}%, p99 {:.2} ms, join p95 {} ms -> {}{}",
                stage.participants_joined,
                stage.loss_pct,
                stage.latency_p99_ms,
                stage.join_p95_ms,
                if held { "held" } else { "SLO broken" },
                if stage.errors.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (errors so far: {})",
                        stage
                            .errors
                            .iter()
                            .map(|(k, v)| format!("{k} x{v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            );
            stages.push(stage);
            if !held || s.participants_before(meetings) >= 2_000_000 {
                break;
            }
            target = meetings + step;
        }
    } else {
        // Joins ramp up while progress shows; then the full load holds for the duration.
        let first = run.args.meeting_offset;
        let ramp_time = Duration::from_secs_f64(
            (s.participants_before(first + s.meetings) - s.participants_before(first)) as f64
                / s.ramp,
        );
        let t0 = tokio::time::Instant::now();
        let until = t0 + ramp_time + s.duration;
        let drill = async {
            match (chaos, run.args.chaos_every) {
                (Some(c), Some(every)) => c.run(t0 + ramp_time + every, until, every).await,
                _ => Vec::new(),
            }
        };
        let churn = async {
            if let Some(rate) = run.args.churn.filter(|r| *r > 0.0) {
                tokio::time::sleep_until(t0 + ramp_time).await;
                // Up to 3 s before the end: the last replacements' joins are measured too.
                run.churn(&s, rate, until - Duration::from_secs(3)).await;
            }
        };
        let ((), (), k, ()) = tokio::join!(
            run.launch(&s, first, first + s.meetings),
            run.observe(until, &mut samples, &mut prev),
            drill,
            churn
        );
        kills = k;
    }
    let _ = run.stop.send(true);
    if let Some(t) = &run.ctx.tracker {
        t.stop(Instant::now());
    }
    // Let participants leave.
    let deadline = Instant::now() + Duration::from_secs(10);
    while run.counters.left.load(Ordering::Relaxed) < run.counters.joined.load(Ordering::Relaxed)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Gaps still open when participants left (clipped to the end of the run).
    tokio::task::yield_now().await;
    run.collect_gaps();
    let chaos = run
        .args
        .chaos_every
        .zip(run.ctx.tracker.as_deref())
        .map(|(every, t)| chaos::ChaosReport::build(&kills, every, &kinds, t, run.epoch));
    let (parts, agent_rows) = match agent_results {
        Some((parts, rows)) => (parts, rows),
        None => (report::Parts::local(&run), Vec::new()),
    };
    if let Some(tx) = &run.stream {
        let _ = tx.send(agent::result_line(&parts, &samples, s.duration));
        return ExitCode::SUCCESS;
    }
    let report = Report::build(
        &s,
        &run,
        &parts,
        &samples,
        stages,
        started.elapsed(),
        chaos,
        agent_rows,
    )
    .await;
    eprintln!();
    println!("{}", report.table());
    if let Some(c) = &report.chaos {
        println!("\n{}", c.table());
    }
    if let Some(path) = &run.args.json
        && let Err(e) = std::fs::write(path, report.json())
    {
        eprintln!("error: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    if let Some(path) = &run.args.svg
        && let Err(e) = std::fs::write(path, report::svg(&samples))
    {
        eprintln!("error: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    if report.slo.held {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
