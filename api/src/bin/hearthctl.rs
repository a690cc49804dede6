//! `hearthctl`: the operator CLI. A client of the public gRPC API (`hearth.v1`) only: it
//! mints a short-lived, node-wide admin token from `--api-key`/`--api-secret` for every
//! call and talks to the node at `--url` (gRPC shares the node's HTTP port by default).
//!
//! Human output by default (aligned tables, the supervision tree); `--json` prints the
//! replies as proto3 JSON instead: one document per command, one object per line for
//! streams (`events`, `top`).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::future::Future;
use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use hearth_actors::Grants;
use hearth_api::token;
use hearth_proto::v1 as pb;
use pb::admin_service_client::AdminServiceClient;
use pb::event_service_client::EventServiceClient;
use pb::meeting_service_client::MeetingServiceClient;
use pb::participant_service_client::ParticipantServiceClient;
use pb::token_service_client::TokenServiceClient;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Lifetime of the admin token minted for each call.
const TOKEN_TTL: Duration = Duration::from_secs(300);
/// `events` without `--follow` stops once no event came for this long.
const EVENTS_IDLE: Duration = Duration::from_secs(1);
/// `drain --wait` polls the node this often.
const DRAIN_POLL: Duration = Duration::from_millis(500);
/// Actor trees of big nodes exceed tonic's default 4 MiB message limit.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// How long `drain --wait` allows past the drain deadline before giving up.
const DRAIN_SLACK: Duration = Duration::from_secs(60);
/// The node's drain deadline when none is given (see admin.proto).
const DEFAULT_DRAIN: Duration = Duration::from_secs(600);

const EXIT_STATUS: &str = "\
Exit status:
  0  success
  1  the node refused the request (NOT_FOUND, INVALID_ARGUMENT, FAILED_PRECONDITION, ...);
     `error: <CODE>: <message>` goes to stderr
  2  usage error (bad flags or arguments)
  3  the node cannot be reached (connection failed, or no answer within --timeout)
  4  authentication or permission failure, or no API key pair: check --api-key and
     --api-secret (HEARTH_API_KEY, HEARTH_API_SECRET)";

/// Operator CLI for a Hearth node, over its gRPC API.
#[derive(Debug, Parser)]
#[command(name = "hearthctl", version, after_help = EXIT_STATUS)]
struct Cli {
    /// The node's gRPC address (its HTTP port unless it runs with `--grpc`).
    #[arg(
        long,
        env = "HEARTH_URL",
        default_value = "http://127.0.0.1:7880",
        global = true
    )]
    url: String,
    /// API key the node trusts (signs the admin token of each call).
    #[arg(long, env = "HEARTH_API_KEY", global = true)]
    api_key: Option<String>,
    /// Secret of the API key.
    #[arg(long, env = "HEARTH_API_SECRET", hide_env_values = true, global = true)]
    api_secret: Option<String>,
    /// Machine output: the replies as proto3 JSON (streams: one object per line).
    #[arg(long, global = true)]
    json: bool,
    /// Deadline of each call (and of connecting), e.g. `5s`, `500ms`, `1m`.
    #[arg(long, default_value = "5s", value_parser = parse_timeout, global = true)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// What the node is, where it listens, and its counters.
    Status,
    /// Live meetings: list, show, create, end.
    #[command(subcommand)]
    Meetings(MeetingsCommand),
    /// Participants of a live meeting: list, kick, mute.
    #[command(subcommand)]
    Participants(ParticipantsCommand),
    /// The supervision tree: every actor, its restarts, load and last failure.
    Tree {
        /// Another node of the cluster (its id, as `nodes` shows it): asked directly at
        /// the gRPC URL it registered.
        #[arg(long)]
        node: Option<String>,
    },
    /// The nodes of the cluster: state, load, meetings and participants per node.
    Nodes,
    /// Makes an actor fail as a panic would (a drill); its supervisor's policy applies.
    Kill {
        /// The actor's id (`0.12`), as `tree` shows it.
        actor_id: String,
    },
    /// Stops new joins, ends the meetings (after the deadline at the latest), then the node
    /// exits.
    Drain(DrainArgs),
    /// Meeting events: replayed ones after --resume-after, then (with --follow) live ones.
    Events(EventsArgs),
    /// Mints a participant token, signed by the node with the caller's API key.
    Token(TokenArgs),
    /// A live view of the node, refreshed every second.
    Top(TopArgs),
    /// Usage of the API key from the node's ledger (the REST API's `GET /v1/usage`):
    /// participant, track and meeting time, bytes, TURN-relayed bytes, per hour or day.
    Usage(UsageArgs),
}

#[derive(Debug, Args)]
struct UsageArgs {
    /// Start: RFC 3339 time or date (default: today for hourly windows, 30 days back for
    /// daily ones).
    #[arg(long)]
    from: Option<String>,
    /// End (exclusive): RFC 3339 time or date (default: now).
    #[arg(long)]
    to: Option<String>,
    /// Meters, comma-separated (default: all).
    #[arg(long)]
    meter: Option<String>,
    /// Totals per `api_key`, `meeting`, `participant` or `identity`.
    #[arg(long)]
    group_by: Option<String>,
    /// `hour` or `day`.
    #[arg(long, default_value = "day")]
    window: String,
}

#[derive(Debug, Subcommand)]
enum MeetingsCommand {
    /// Live meetings.
    #[command(alias = "ls")]
    List,
    /// One meeting with its participants and their tracks.
    Show {
        /// The meeting's name.
        id: String,
    },
    /// Starts an empty meeting.
    Create {
        /// The meeting's name (1 to 128 of A-Z a-z 0-9 . _ ~ -).
        id: String,
        /// Most participants at once (default: the node's).
        #[arg(long)]
        max_participants: Option<u32>,
        /// How long it lives on with nobody in it, e.g. `30`, `90s`, `5m` (default: the
        /// node's).
        #[arg(long, value_parser = token::parse_duration)]
        empty_timeout: Option<Duration>,
    },
    /// Ends a meeting now; everyone in it is disconnected.
    End {
        /// The meeting's name.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ParticipantsCommand {
    /// Everyone in a meeting, with their tracks.
    #[command(alias = "ls")]
    List {
        /// The meeting's name.
        meeting: String,
    },
    /// Removes a participant (its client is told it was removed).
    #[command(alias = "remove")]
    Kick {
        /// The meeting's name.
        meeting: String,
        /// The participant's id (`PA_...`).
        participant: String,
    },
    /// Mutes one of a participant's tracks for everyone (the server forwards none of it).
    Mute {
        /// The meeting's name.
        meeting: String,
        /// The publisher's id (`PA_...`).
        participant: String,
        /// The track's id (`TR_...`).
        track: String,
        /// Unmute instead.
        #[arg(long)]
        unmute: bool,
    },
}

#[derive(Debug, Args)]
struct DrainArgs {
    /// How long meetings may go on before the node ends them, e.g. `300`, `5m` (default:
    /// the node's, 10 minutes).
    #[arg(long, value_parser = token::parse_duration)]
    deadline: Option<Duration>,
    /// Wait until the node has exited, printing progress.
    #[arg(long)]
    wait: bool,
}

#[derive(Debug, Args)]
struct EventsArgs {
    /// Only this meeting's events.
    #[arg(long)]
    meeting: Option<String>,
    /// Keep printing live events until the stream ends or Ctrl-C (default: stop once no
    /// event came for a second).
    #[arg(long, short = 'f')]
    follow: bool,
    /// Replay the retained events with a sequence number above this one first (0: only new
    /// events).
    #[arg(long, default_value_t = 0, conflicts_with = "all")]
    resume_after: u64,
    /// Replay every event the node still keeps first (the last 4096).
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The meeting the token is for (empty only for admin tokens over the whole node).
    #[arg(long, default_value = "")]
    meeting: String,
    /// The user's id in the application.
    #[arg(long)]
    identity: String,
    /// Display name (default: the identity).
    #[arg(long)]
    name: Option<String>,
    /// Lifetime, e.g. `3600`, `90m`, `1h` (default: one hour; at most 30 days).
    #[arg(long, value_parser = token::parse_duration)]
    ttl: Option<Duration>,
    /// Grant `admin` (manage meetings over the API).
    #[arg(long)]
    admin: bool,
    /// Grant `captions` (turn the meeting's live captions on and off).
    #[arg(long)]
    captions: bool,
    /// Do not grant `publish`.
    #[arg(long)]
    no_publish: bool,
    /// Do not grant `subscribe`.
    #[arg(long)]
    no_subscribe: bool,
    /// Do not grant `create` (the meeting must be live already).
    #[arg(long)]
    no_create: bool,
}

#[derive(Debug, Args)]
struct TopArgs {
    /// Stop after this many refreshes (default: run until Ctrl-C).
    #[arg(long)]
    iterations: Option<u64>,
    /// Time between refreshes.
    #[arg(long, default_value = "1s", value_parser = parse_timeout)]
    interval: Duration,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = token::parse_duration(s)?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

// ----- Failures and exit codes -------------------------------------------------------------

/// Why a command failed; each maps to an exit code (see [`EXIT_STATUS`]).
#[derive(Debug)]
enum Failure {
    /// The node answered with an error status (exit 1).
    Refused(Status),
    /// Something else went wrong after the node was reached (exit 1).
    Other(String),
    /// Bad arguments found after parsing (exit 2).
    Usage(String),
    /// The node could not be reached (exit 3).
    Unreachable(String),
    /// UNAUTHENTICATED or PERMISSION_DENIED (exit 4).
    Auth(Status),
    /// No API key pair to sign with (exit 4).
    NoCredentials(String),
    /// Stdout was closed (a pipe reader went away): stop quietly.
    Closed,
}

impl Failure {
    fn from_status(status: Status) -> Failure {
        // Statuses made by the client's transport (connect errors, a connection that
        // broke) carry their cause; statuses sent by the node do not.
        if let Some(cause) = std::error::Error::source(&status) {
            let mut text = status.message().to_owned();
            push_chain(&mut text, cause);
            return Failure::Unreachable(text);
        }
        match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => Failure::Auth(status),
            _ => Failure::Refused(status),
        }
    }

    fn report(&self, url: &str) -> ExitCode {
        match self {
            Failure::Refused(s) => {
                eprintln!("error: {}: {}", code_name(s.code()), s.message());
                ExitCode::from(1)
            }
            Failure::Other(why) => {
                eprintln!("error: {why}");
                ExitCode::from(1)
            }
            Failure::Usage(why) => {
                eprintln!("error: {why}");
                ExitCode::from(2)
            }
            Failure::Unreachable(why) => {
                eprintln!("error: cannot reach {url}: {why}");
                ExitCode::from(3)
            }
            Failure::Auth(s) => {
                eprintln!("error: {}: {}", code_name(s.code()), s.message());
                if s.code() == Code::Unauthenticated {
                    eprintln!(
                        "hint: the node did not accept the token signed with --api-key/\
                         --api-secret (HEARTH_API_KEY/HEARTH_API_SECRET); use a key pair \
                         from the node's configuration"
                    );
                } else {
                    eprintln!(
                        "hint: the node refused this call for the token signed with --api-key/\
                         --api-secret (HEARTH_API_KEY/HEARTH_API_SECRET)"
                    );
                }
                ExitCode::from(4)
            }
            Failure::NoCredentials(why) => {
                eprintln!("error: {why}");
                eprintln!(
                    "hint: pass --api-key and --api-secret (or set HEARTH_API_KEY and \
                     HEARTH_API_SECRET) to a key pair the node trusts"
                );
                ExitCode::from(4)
            }
            Failure::Closed => ExitCode::SUCCESS,
        }
    }
}

type Outcome<T = ()> = Result<T, Failure>;

fn push_chain(text: &mut String, err: &(dyn std::error::Error + 'static)) {
    let mut next = Some(err);
    while let Some(e) = next {
        let s = e.to_string();
        if !s.is_empty() && !text.contains(&s) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&s);
        }
        next = e.source();
    }
}

/// The canonical name of a status code (`NOT_FOUND`).
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

// ----- Output ------------------------------------------------------------------------------

/// Writes to stdout; a closed pipe ends the command quietly instead of panicking.
fn emit(text: &str) -> Outcome {
    let mut out = std::io::stdout().lock();
    let result = out
        .write_all(text.as_bytes())
        .and_then(|()| {
            if text.ends_with('\n') {
                Ok(())
            } else {
                out.write_all(b"\n")
            }
        })
        .and_then(|()| out.flush());
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::Closed),
        Err(e) => Err(Failure::Other(format!("writing to stdout: {e}"))),
    }
}

fn emit_lines(lines: &[String]) -> Outcome {
    let mut text = String::new();
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    if text.is_empty() {
        return Ok(());
    }
    emit(&text)
}

/// One proto3 JSON document, pretty-printed.
fn emit_json<T: serde::Serialize>(value: &T) -> Outcome {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::Other(format!("encoding JSON: {e}")))?;
    emit(&text)
}

/// One proto3 JSON object on one line (streams).
fn emit_json_line<T: serde::Serialize>(value: &T) -> Outcome {
    let text =
        serde_json::to_string(value).map_err(|e| Failure::Other(format!("encoding JSON: {e}")))?;
    emit(&text)
}

fn to_value<T: serde::Serialize>(value: &T) -> Outcome<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| Failure::Other(format!("encoding JSON: {e}")))
}

/// Column-aligned text: left-aligned cells, chosen columns right-aligned, the last column
/// never padded.
struct Table {
    rows: Vec<Vec<String>>,
    right: Vec<usize>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
            right: Vec::new(),
        }
    }

    fn right(mut self, columns: &[usize]) -> Self {
        self.right = columns.to_vec();
        self
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn is_empty(&self) -> bool {
        self.rows.len() <= 1
    }

    fn render(&self) -> Vec<String> {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        self.rows
            .iter()
            .map(|row| {
                let mut line = String::new();
                for (i, cell) in row.iter().enumerate() {
                    if i > 0 {
                        line.push_str("  ");
                    }
                    let pad = widths[i].saturating_sub(cell.chars().count());
                    if self.right.contains(&i) {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    } else {
                        line.push_str(cell);
                        if i + 1 < row.len() {
                            line.extend(std::iter::repeat_n(' ', pad));
                        }
                    }
                }
                line.trim_end().to_owned()
            })
            .collect()
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's method).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `2025-11-26T13:47:05Z` (with milliseconds if asked), `-` for none.
fn fmt_ts(ts: Option<&pbjson_types::Timestamp>, millis: bool) -> String {
    let Some(ts) = ts else {
        return "-".into();
    };
    if ts.seconds == 0 && ts.nanos == 0 {
        return "-".into();
    }
    let days = ts.seconds.div_euclid(86_400);
    let secs = ts.seconds.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if millis {
        let ms = ts.nanos.clamp(0, 999_999_999) / 1_000_000;
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    }
}

/// How long ago `ts` was, `-` for none.
fn fmt_age(ts: Option<&pbjson_types::Timestamp>) -> String {
    let Some(ts) = ts else {
        return "-".into();
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let then = ts.seconds as f64 + f64::from(ts.nanos) / 1e9;
    fmt_span((now - then).max(0.0))
}

/// `3d4h`, `1h2m`, `5m3s`, `12s`.
fn fmt_span(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    let (d, h, m, s) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn track_kind(kind: i32) -> &'static str {
    match pb::TrackKind::try_from(kind) {
        Ok(pb::TrackKind::Audio) => "audio",
        Ok(pb::TrackKind::Video) => "video",
        _ => "unknown",
    }
}

fn fmt_track(t: &pb::Track) -> String {
    let codec = if t.mime_type.is_empty() {
        track_kind(t.kind)
    } else {
        t.mime_type.as_str()
    };
    let mut s = format!("{} {}", t.id, one_line(codec));
    if t.muted {
        s.push_str(" (muted)");
    }
    s
}

/// Replaces control characters (a failure text may hold newlines or escapes) with spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn participants_table(participants: &[pb::Participant]) -> Vec<String> {
    let mut t = Table::new(&[
        "ID",
        "IDENTITY",
        "NAME",
        "JOINED",
        "PERMISSIONS",
        "ACTOR",
        "TRACKS",
    ]);
    for p in participants {
        let perms = match &p.permissions {
            Some(perm) => match (perm.publish, perm.subscribe) {
                (true, true) => "publish,subscribe",
                (true, false) => "publish",
                (false, true) => "subscribe",
                (false, false) => "-",
            },
            None => "-",
        };
        let mut name = one_line(&p.name);
        if p.r#virtual {
            name.push_str(" (virtual)");
        }
        let mut tracks = p.tracks.iter();
        t.row(vec![
            p.id.clone(),
            one_line(&p.identity),
            name,
            fmt_ts(p.joined_at.as_ref(), false),
            perms.to_owned(),
            or_dash(&p.actor_id),
            tracks.next().map_or_else(|| "-".to_owned(), fmt_track),
        ]);
        for track in tracks {
            let mut row = vec![String::new(); 6];
            row.push(fmt_track(track));
            t.row(row);
        }
    }
    if t.is_empty() {
        return vec!["(no participants)".into()];
    }
    t.render()
}

// ----- The connection ----------------------------------------------------------------------

/// Mints a fresh node-wide admin token for every call.
#[derive(Clone)]
struct Auth {
    key: Arc<str>,
    secret: Arc<str>,
}

impl Auth {
    /// A fresh node-wide admin token.
    fn bearer(&self) -> String {
        let grants = Grants {
            join: false,
            publish: false,
            subscribe: false,
            create: false,
            admin: true,
            captions: false,
        };
        let claims = token::claims_for(
            &self.key,
            "",
            "hearthctl",
            "hearthctl",
            grants,
            SystemTime::now(),
            TOKEN_TTL,
        );
        token::mint(&claims, &self.secret)
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let value = MetadataValue::try_from(format!("Bearer {}", self.bearer()))
            .map_err(|_| Status::invalid_argument("the API key cannot be sent in metadata"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

type Svc = InterceptedService<Channel, Auth>;

struct Ctl {
    channel: Channel,
    auth: Auth,
    json: bool,
    timeout: Duration,
    url: String,
}

impl Ctl {
    async fn connect(cli: &Cli) -> Outcome<Ctl> {
        let key = cli
            .api_key
            .as_deref()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| Failure::NoCredentials("no API key (--api-key)".into()))?;
        let secret = cli
            .api_secret
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Failure::NoCredentials("no API secret (--api-secret)".into()))?;
        let url = normalize_url(&cli.url)?;
        let channel = open_channel(&url, cli.timeout).await?;
        Ok(Ctl {
            channel,
            auth: Auth {
                key: key.into(),
                secret: secret.into(),
            },
            json: cli.json,
            timeout: cli.timeout,
            url,
        })
    }

    /// The same credentials and settings, against another node.
    async fn at(&self, url: &str) -> Outcome<Ctl> {
        let url = normalize_url(url)?;
        Ok(Ctl {
            channel: open_channel(&url, self.timeout).await?,
            auth: self.auth.clone(),
            json: self.json,
            timeout: self.timeout,
            url,
        })
    }

    fn admin(&self) -> AdminServiceClient<Svc> {
        AdminServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    fn meetings(&self) -> MeetingServiceClient<Svc> {
        MeetingServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    fn participants(&self) -> ParticipantServiceClient<Svc> {
        ParticipantServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    fn tokens(&self) -> TokenServiceClient<Svc> {
        TokenServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    fn events(&self) -> EventServiceClient<Svc> {
        EventServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// One unary call, bounded by `--timeout`.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Outcome<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(Failure::from_status(status)),
            Err(_) => Err(Failure::Unreachable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }

    async fn node_info(&self) -> Outcome<pb::NodeInfoResponse> {
        self.call(self.admin().node_info(pb::NodeInfoRequest {}))
            .await
    }

    async fn stats(&self) -> Outcome<pb::StatsResponse> {
        self.call(self.admin().stats(pb::StatsRequest {})).await
    }

    async fn actor_tree(&self) -> Outcome<pb::ActorTreeResponse> {
        self.call(self.admin().actor_tree(pb::ActorTreeRequest {}))
            .await
    }

    async fn list_meetings(&self) -> Outcome<pb::ListMeetingsResponse> {
        self.call(self.meetings().list(pb::ListMeetingsRequest {}))
            .await
    }
}

/// A gRPC channel to `url` (already normalized), bounded by `timeout`.
async fn open_channel(url: &str, timeout: Duration) -> Outcome<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| Failure::Usage(format!("--url {url:?}: {e}")))?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => {
            let mut text = String::new();
            push_chain(&mut text, &e);
            Err(Failure::Unreachable(text))
        }
        Err(_) => Err(Failure::Unreachable(format!(
            "no connection within {timeout:?}"
        ))),
    }
}

/// Accepts `host:port` as `http://host:port`; refuses TLS, which this build does not speak.
fn normalize_url(url: &str) -> Outcome<String> {
    let url = url.trim();
    if url.starts_with("https://") {
        return Err(Failure::Usage(format!(
            "--url {url}: hearthctl speaks plain HTTP/2 (h2c) only; use http:// (through a \
             tunnel for remote nodes)"
        )));
    }
    if url.contains("://") {
        Ok(url.to_owned())
    } else {
        Ok(format!("http://{url}"))
    }
}

// ----- Commands ----------------------------------------------------------------------------

async fn run(cli: &Cli) -> Outcome {
    let ctl = Ctl::connect(cli).await?;
    match &cli.command {
        Command::Status => status(&ctl).await,
        Command::Meetings(cmd) => meetings(&ctl, cmd).await,
        Command::Participants(cmd) => participants(&ctl, cmd).await,
        Command::Tree { node: None } => tree(&ctl).await,
        Command::Tree { node: Some(id) } => {
            tree(&ctl.at(&node_grpc_url(&ctl, id).await?).await?).await
        }
        Command::Nodes => nodes(&ctl).await,
        Command::Kill { actor_id } => kill(&ctl, actor_id).await,
        Command::Drain(args) => drain(&ctl, args).await,
        Command::Events(args) => events(&ctl, args).await,
        Command::Token(args) => mint(&ctl, args).await,
        Command::Top(args) => top(&ctl, args).await,
        Command::Usage(args) => usage(&ctl, args).await,
    }
}

/// `usage`: the REST API's totals, over the node's HTTP port (`--url`).
async fn usage(ctl: &Ctl, args: &UsageArgs) -> Outcome {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(ctl.timeout)
        .build()
        .map_err(|e| Failure::Other(format!("HTTP client: {e}")))?;
    let mut query: Vec<(&str, &str)> = vec![("window", args.window.as_str())];
    for (k, v) in [
        ("from", &args.from),
        ("to", &args.to),
        ("meter", &args.meter),
        ("group_by", &args.group_by),
    ] {
        if let Some(v) = v {
            query.push((k, v.as_str()));
        }
    }
    let url = format!("{}/v1/usage", ctl.url.trim_end_matches('/'));
    let response = client
        .get(&url)
        .query(&query)
        .bearer_auth(ctl.auth.bearer())
        .send()
        .await
        .map_err(|e| {
            let mut text = String::new();
            push_chain(&mut text, &e);
            Failure::Unreachable(text)
        })?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| Failure::Other(format!("the node's answer is not JSON: {e}")))?;
    if !status.is_success() {
        let detail = body["detail"].as_str().unwrap_or("").to_owned();
        let code = match status.as_u16() {
            401 => tonic::Code::Unauthenticated,
            403 => tonic::Code::PermissionDenied,
            400 => tonic::Code::InvalidArgument,
            503 => tonic::Code::Unavailable,
            _ => tonic::Code::Unknown,
        };
        return Err(Failure::from_status(Status::new(code, detail)));
    }
    if ctl.json {
        return emit_json(&body);
    }
    let grouped = body["groupBy"].is_string();
    let mut header = vec!["window"];
    if grouped {
        header.push(body["groupBy"].as_str().unwrap_or("group"));
    }
    header.extend(["meter", "quantity", "as"]);
    let right = if grouped { vec![3, 4] } else { vec![2, 3] };
    let mut t = Table::new(&header).right(&right);
    for row in body["totals"].as_array().into_iter().flatten() {
        let meter = row["meter"].as_str().unwrap_or("");
        let q = row["quantity"].as_i64().unwrap_or(0);
        let mut cells = vec![row["windowStart"].as_str().unwrap_or("").to_owned()];
        if grouped {
            cells.push(row["group"].as_str().unwrap_or("").to_owned());
        }
        cells.push(meter.to_owned());
        cells.push(q.to_string());
        cells.push(human_quantity(meter, q));
        t.row(cells);
    }
    if t.is_empty() {
        return emit(&format!(
            "no usage from {} to {}",
            body["from"].as_str().unwrap_or("?"),
            body["to"].as_str().unwrap_or("?")
        ));
    }
    emit_lines(&t.render())
}

/// `61000` ms as `1.02 min`, bytes as `MB`/`GB`.
fn human_quantity(meter: &str, q: i64) -> String {
    if meter.ends_with("_ms") {
        format!("{:.2} min", q as f64 / 60_000.0)
    } else if q >= 1_000_000_000 {
        format!("{:.3} GB", q as f64 / 1e9)
    } else {
        format!("{:.3} MB", q as f64 / 1e6)
    }
}

async fn status(ctl: &Ctl) -> Outcome {
    let info = ctl.node_info().await?;
    let stats = ctl.stats().await?;
    if ctl.json {
        let doc = serde_json::json!({ "node": to_value(&info)?, "stats": to_value(&stats)? });
        return emit_json(&doc);
    }
    let mut t = Table::new(&["version", &info.version]);
    let mut kv = |k: &str, v: String| t.row(vec![k.to_owned(), v]);
    kv("pid", info.pid.to_string());
    kv(
        "uptime",
        format!(
            "{} (since {})",
            fmt_span(stats.uptime_seconds),
            fmt_ts(info.started_at.as_ref(), false)
        ),
    );
    kv("http", or_dash(&info.http_addr));
    kv(
        "grpc",
        if info.grpc_addr.is_empty() || info.grpc_addr == info.http_addr {
            format!("{} (the HTTP port)", or_dash(&info.http_addr))
        } else {
            info.grpc_addr.clone()
        },
    );
    kv(
        "media",
        if info.media_addr.is_empty() {
            "- (TURN only)".into()
        } else {
            info.media_addr.clone()
        },
    );
    kv(
        "turn",
        if info.turn_addr.is_empty() {
            "- (off)".into()
        } else {
            info.turn_addr.clone()
        },
    );
    kv("draining", yes_no(info.draining).to_owned());
    kv("meetings", stats.meetings.to_string());
    kv("participants", stats.participants.to_string());
    kv("allocations", stats.turn_allocations.to_string());
    kv(
        "packets",
        format!(
            "in {}  out {}  dropped {}",
            stats.packets_in, stats.packets_out, stats.packets_dropped
        ),
    );
    kv(
        "bytes",
        format!(
            "in {}  out {}",
            fmt_bytes(stats.bytes_in),
            fmt_bytes(stats.bytes_out)
        ),
    );
    kv(
        "actors",
        format!(
            "restarts {}  failures {}",
            stats.actor_restarts, stats.actor_failures
        ),
    );
    kv("cpu", format!("{:.2} s", stats.cpu_seconds));
    kv(
        "rss",
        format!("{:.1} MB", stats.rss_bytes as f64 / 1_000_000.0),
    );
    emit_lines(&t.render())
}

async fn meetings(ctl: &Ctl, cmd: &MeetingsCommand) -> Outcome {
    match cmd {
        MeetingsCommand::List => {
            let list = ctl.list_meetings().await?;
            if ctl.json {
                return emit_json(&list);
            }
            if list.meetings.is_empty() {
                return emit("(no live meetings)");
            }
            let mut t = Table::new(&["ID", "PARTICIPANTS", "STARTED", "AGE", "MAX", "ACTOR"])
                .right(&[1, 4]);
            for m in &list.meetings {
                t.row(vec![
                    m.id.clone(),
                    m.participant_count.to_string(),
                    fmt_ts(m.started_at.as_ref(), false),
                    fmt_age(m.started_at.as_ref()),
                    m.settings
                        .as_ref()
                        .map_or_else(|| "-".into(), |s| s.max_participants.to_string()),
                    or_dash(&m.actor_id),
                ]);
            }
            emit_lines(&t.render())
        }
        MeetingsCommand::Show { id } => {
            let m = ctl
                .call(ctl.meetings().get(pb::GetMeetingRequest { id: id.clone() }))
                .await?;
            if ctl.json {
                return emit_json(&m);
            }
            let mut lines = meeting_summary(&m);
            lines.push(String::new());
            lines.extend(participants_table(&m.participants));
            emit_lines(&lines)
        }
        MeetingsCommand::Create {
            id,
            max_participants,
            empty_timeout,
        } => {
            let empty_timeout_seconds = match empty_timeout {
                None => 0,
                Some(d) => u32::try_from(d.as_secs())
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| {
                        Failure::Usage("--empty-timeout: 1 second to 136 years".into())
                    })?,
            };
            let m = ctl
                .call(ctl.meetings().create(pb::CreateMeetingRequest {
                    id: id.clone(),
                    settings: Some(pb::MeetingSettings {
                        max_participants: max_participants.unwrap_or(0),
                        empty_timeout_seconds,
                        transcription: None,
                    }),
                    metadata: String::new(),
                }))
                .await?;
            if ctl.json {
                return emit_json(&m);
            }
            let mut lines = vec![format!("created meeting {}", m.id)];
            lines.extend(meeting_summary(&m));
            emit_lines(&lines)
        }
        MeetingsCommand::End { id } => {
            let r = ctl
                .call(ctl.meetings().end(pb::EndMeetingRequest { id: id.clone() }))
                .await?;
            if ctl.json {
                return emit_json(&r);
            }
            emit(&format!(
                "ended meeting {id} ({} participant{} disconnected)",
                r.participants,
                if r.participants == 1 { "" } else { "s" }
            ))
        }
    }
}

fn meeting_summary(m: &pb::Meeting) -> Vec<String> {
    let mut t = Table::new(&["meeting", &m.id]);
    t.row(vec![
        "started".into(),
        format!(
            "{} ({} ago)",
            fmt_ts(m.started_at.as_ref(), false),
            fmt_age(m.started_at.as_ref())
        ),
    ]);
    t.row(vec!["participants".into(), m.participant_count.to_string()]);
    if let Some(s) = &m.settings {
        t.row(vec![
            "settings".into(),
            format!(
                "max {} participants, empty timeout {}s",
                s.max_participants, s.empty_timeout_seconds
            ),
        ]);
    }
    t.row(vec!["actor".into(), or_dash(&m.actor_id)]);
    t.render()
}

async fn participants(ctl: &Ctl, cmd: &ParticipantsCommand) -> Outcome {
    match cmd {
        ParticipantsCommand::List { meeting } => {
            let r = ctl
                .call(ctl.participants().list(pb::ListParticipantsRequest {
                    meeting: meeting.clone(),
                }))
                .await?;
            if ctl.json {
                return emit_json(&r);
            }
            emit_lines(&participants_table(&r.participants))
        }
        ParticipantsCommand::Kick {
            meeting,
            participant,
        } => {
            let r = ctl
                .call(ctl.participants().remove(pb::ParticipantRequest {
                    meeting: meeting.clone(),
                    participant_id: participant.clone(),
                }))
                .await?;
            if ctl.json {
                return emit_json(&r);
            }
            emit(&format!("removed {participant} from meeting {meeting}"))
        }
        ParticipantsCommand::Mute {
            meeting,
            participant,
            track,
            unmute,
        } => {
            let t = ctl
                .call(ctl.participants().mute_track(pb::MuteTrackRequest {
                    meeting: meeting.clone(),
                    participant_id: participant.clone(),
                    track_id: track.clone(),
                    muted: !unmute,
                }))
                .await?;
            if ctl.json {
                return emit_json(&t);
            }
            emit(&format!(
                "{} {} track {} ({}) of {participant} in {meeting}",
                if t.muted { "muted" } else { "unmuted" },
                track_kind(t.kind),
                t.id,
                or_dash(&t.mime_type)
            ))
        }
    }
}

/// True when an actor has something to look at: restarts or a failure.
fn troubled(a: &pb::ActorInfo) -> bool {
    a.restarts > 0 || !a.last_failure.is_empty()
}

/// The actors as an indented tree, parents before children in start order. Lines of
/// troubled actors start with `!` (and are red when `color`).
fn render_tree(actors: &[pb::ActorInfo], color: bool) -> Vec<String> {
    let ids: HashSet<&str> = actors.iter().map(|a| a.id.as_str()).collect();
    let mut children: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, a) in actors.iter().enumerate() {
        if a.parent_id.is_empty() || a.parent_id == a.id || !ids.contains(a.parent_id.as_str()) {
            roots.push(i);
        } else {
            children.entry(a.parent_id.as_str()).or_default().push(i);
        }
    }
    let mut table = Table::new(&[
        " ",
        "ACTOR",
        "NAME",
        "ID",
        "RESTARTS",
        "MSGS",
        "INBOX",
        "MEDIA Q",
        "LAST FAILURE",
    ])
    .right(&[4, 5, 6, 7]);
    let mut flagged = vec![false];
    let mut seen = vec![false; actors.len()];
    // Depth-first, iterative (the tree comes from the network: no recursion limit, no
    // cycles followed). Each entry: actor index, prefix for its own line, prefix for its
    // children.
    let mut stack: Vec<(usize, String, String)> = Vec::new();
    let mut roots = roots.into_iter();
    let mut next_unseen = 0;
    loop {
        let Some((i, own, below)) = stack.pop() else {
            let root = match roots.next() {
                Some(root) => root,
                None => {
                    // Actors caught in a parent cycle: show them at the top level.
                    while next_unseen < actors.len() && seen[next_unseen] {
                        next_unseen += 1;
                    }
                    if next_unseen == actors.len() {
                        break;
                    }
                    next_unseen
                }
            };
            if !seen[root] {
                stack.push((root, String::new(), String::new()));
            }
            continue;
        };
        if seen[i] {
            continue;
        }
        seen[i] = true;
        let a = &actors[i];
        let bad = troubled(a);
        flagged.push(bad);
        table.row(vec![
            if bad { "!".into() } else { " ".into() },
            format!("{own}{}", one_line(&a.kind)),
            one_line(&a.name),
            a.id.clone(),
            a.restarts.to_string(),
            a.messages.to_string(),
            a.mailbox_depth.to_string(),
            a.media_queue_depth.to_string(),
            if a.last_failure.is_empty() {
                "-".into()
            } else {
                one_line(&a.last_failure)
            },
        ]);
        let kids: Vec<usize> = children
            .get(a.id.as_str())
            .map(|k| k.iter().copied().filter(|&c| !seen[c]).collect())
            .unwrap_or_default();
        // Pushed in reverse so the first child is printed first.
        for (n, &c) in kids.iter().enumerate().rev() {
            let last = n + 1 == kids.len();
            let own = format!("{below}{}", if last { "└─ " } else { "├─ " });
            let deeper = format!("{below}{}", if last { "   " } else { "│  " });
            stack.push((c, own, deeper));
        }
    }
    let mut lines: Vec<String> = table
        .render()
        .into_iter()
        .zip(flagged)
        .map(|(line, bad)| {
            if bad && color {
                format!("\x1b[31m{line}\x1b[0m")
            } else {
                line
            }
        })
        .collect();
    let mut policies = Table::new(&["KIND", "POLICY (when it fails)"]);
    let mut kinds = HashSet::new();
    for a in actors {
        if kinds.insert(a.kind.as_str()) {
            policies.row(vec![one_line(&a.kind), or_dash(&one_line(&a.policy))]);
        }
    }
    let troubled_count = actors.iter().filter(|a| troubled(a)).count();
    lines.push(String::new());
    lines.push(format!(
        "{} actor{}, {troubled_count} with restarts or failures (marked !)",
        actors.len(),
        if actors.len() == 1 { "" } else { "s" }
    ));
    lines.push(String::new());
    lines.extend(policies.render());
    lines
}

fn use_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Where node `id` of the cluster serves gRPC.
async fn node_grpc_url(ctl: &Ctl, id: &str) -> Outcome<String> {
    let list = ctl
        .call(ctl.admin().list_nodes(pb::ListNodesRequest {}))
        .await?;
    list.nodes
        .iter()
        .find(|n| n.id == id)
        .map(|n| n.grpc_url.clone())
        .ok_or_else(|| {
            Failure::Refused(Status::not_found(format!(
                "no live node `{id}` in the cluster (nodes: {})",
                list.nodes
                    .iter()
                    .map(|n| n.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        })
}

async fn nodes(ctl: &Ctl) -> Outcome {
    let list = ctl
        .call(ctl.admin().list_nodes(pb::ListNodesRequest {}))
        .await?;
    if ctl.json {
        return emit_json(&list);
    }
    let mut table = Table::new(&[
        "NODE",
        "STATE",
        "REGION",
        "CPU",
        "MEETINGS",
        "PARTICIPANTS",
        "PKT/S",
        "UP",
        "URL",
    ])
    .right(&[3, 4, 5, 6]);
    for n in &list.nodes {
        let me = if n.id == list.self_id { " *" } else { "" };
        table.row(vec![
            format!("{}{me}", n.id),
            n.state.clone(),
            or_dash(&n.region),
            format!("{:.0}%", n.cpu * 100.0),
            n.meetings.to_string(),
            n.participants.to_string(),
            n.packets_per_second.to_string(),
            fmt_age(n.started_at.as_ref()),
            n.http_url.clone(),
        ]);
    }
    let mut lines = table.render();
    if list.nodes.is_empty() {
        lines.push("no live nodes".into());
    }
    if !list.problem.is_empty() {
        lines.push(format!("this node ({}): {}", list.self_id, list.problem));
    }
    emit_lines(&lines)
}

async fn tree(ctl: &Ctl) -> Outcome {
    let tree = ctl.actor_tree().await?;
    if ctl.json {
        return emit_json(&tree);
    }
    emit_lines(&render_tree(&tree.actors, use_color()))
}

async fn kill(ctl: &Ctl, actor_id: &str) -> Outcome {
    // The reply names the actor; its policy comes from the tree (it is per kind).
    let before = ctl.actor_tree().await?;
    let killed = ctl
        .call(ctl.admin().kill_actor(pb::KillActorRequest {
            actor_id: actor_id.to_owned(),
        }))
        .await?;
    if ctl.json {
        return emit_json(&killed);
    }
    let policy = before
        .actors
        .iter()
        .find(|a| a.id == actor_id)
        .or_else(|| before.actors.iter().find(|a| a.kind == killed.kind))
        .map(|a| one_line(&a.policy))
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "unknown".into());
    emit_lines(&[
        format!(
            "killed {} {} (actor {actor_id})",
            one_line(&killed.kind),
            one_line(&killed.name)
        ),
        format!("policy: {policy}"),
    ])
}

async fn drain(ctl: &Ctl, args: &DrainArgs) -> Outcome {
    let deadline_seconds = match args.deadline {
        None => 0,
        Some(d) => u32::try_from(d.as_secs())
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| Failure::Usage("--deadline: 1 second to 136 years".into()))?,
    };
    let r = ctl
        .call(ctl.admin().drain(pb::DrainRequest { deadline_seconds }))
        .await?;
    let deadline = match deadline_seconds {
        0 => DEFAULT_DRAIN,
        s => Duration::from_secs(u64::from(s)),
    };
    if ctl.json {
        emit_json(&r)?;
    } else {
        emit(&format!(
            "draining: {} meeting{} and {} participant{} live; they are ended in {} at the latest, \
             then the node exits",
            r.meetings,
            if r.meetings == 1 { "" } else { "s" },
            r.participants,
            if r.participants == 1 { "" } else { "s" },
            fmt_span(deadline.as_secs_f64())
        ))?;
    }
    if !args.wait {
        return Ok(());
    }
    // Progress goes to stderr in JSON mode (stdout holds the one JSON document).
    let progress = |text: String| -> Outcome {
        if ctl.json {
            eprintln!("{text}");
            Ok(())
        } else {
            emit(&text)
        }
    };
    let give_up = tokio::time::Instant::now() + deadline + DRAIN_SLACK;
    let mut tick = tokio::time::interval(DRAIN_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut last = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut ctrl_c => {
                return progress("stopped waiting; the node goes on draining".into());
            }
        }
        match ctl.node_info().await {
            Ok(info) => {
                let now = (info.meetings, info.participants);
                if last != Some(now) {
                    last = Some(now);
                    progress(format!(
                        "waiting: {} meeting{}, {} participant{}",
                        now.0,
                        if now.0 == 1 { "" } else { "s" },
                        now.1,
                        if now.1 == 1 { "" } else { "s" }
                    ))?;
                }
                if tokio::time::Instant::now() > give_up {
                    return Err(Failure::Other(format!(
                        "the node still answers {} after the drain deadline",
                        fmt_span(DRAIN_SLACK.as_secs_f64())
                    )));
                }
            }
            Err(Failure::Unreachable(_)) => {
                return progress("the node has exited".into());
            }
            Err(other) => return Err(other),
        }
    }
}

fn event_line(e: &pb::Event) -> String {
    use pb::event::Kind;
    let (name, details) = match &e.kind {
        None => ("unknown", String::new()),
        Some(Kind::MeetingStarted(_)) => ("meeting_started", String::new()),
        Some(Kind::MeetingEnded(m)) => ("meeting_ended", format!("reason={}", m.reason)),
        Some(Kind::ParticipantJoined(j)) => (
            "participant_joined",
            j.participant.as_ref().map_or_else(String::new, |p| {
                let mut s = format!(
                    "{} identity={} name={:?}",
                    p.id,
                    one_line(&p.identity),
                    p.name
                );
                for t in &p.tracks {
                    let _ = write!(s, " track={}", fmt_track(t));
                }
                s
            }),
        ),
        Some(Kind::ParticipantLeft(l)) => (
            "participant_left",
            format!("{} reason={}", l.participant_id, l.reason),
        ),
        Some(Kind::TrackPublished(p)) => (
            "track_published",
            p.track.as_ref().map_or_else(String::new, |t| {
                format!(
                    "{} {} {} by {}",
                    t.id,
                    track_kind(t.kind),
                    or_dash(&t.mime_type),
                    t.participant_id
                )
            }),
        ),
        Some(Kind::TrackUnpublished(u)) => (
            "track_unpublished",
            format!("{} by {}", u.track_id, u.participant_id),
        ),
        Some(Kind::TrackMuted(m)) => (
            "track_muted",
            format!("{} by {} muted={}", m.track_id, m.participant_id, m.muted),
        ),
        Some(Kind::Transcript(t)) => (
            "transcript",
            format!(
                "{} by {} [{}-{} ms] {:?}",
                t.segment_id, t.participant_id, t.start_ms, t.end_ms, t.text
            ),
        ),
        Some(Kind::CaptionsChanged(c)) => (
            "captions_changed",
            format!(
                "enabled={} language={} engine={} by={}",
                c.enabled,
                c.language,
                c.engine,
                or_dash(&c.changed_by)
            ),
        ),
        Some(Kind::TranscriptionDropped(d)) => (
            "transcription_dropped",
            format!(
                "{} of {} track {} reason={}",
                d.segment_id, d.participant_id, d.track_id, d.reason
            ),
        ),
        Some(Kind::ActiveSpeakers(a)) => (
            "active_speakers",
            if a.speakers.is_empty() {
                "(none)".into()
            } else {
                a.speakers
                    .iter()
                    .map(|s| format!("{}:{:.2}", s.participant_id, s.level))
                    .collect::<Vec<_>>()
                    .join(" ")
            },
        ),
    };
    let line = format!(
        "#{} {} {} {name} {}",
        e.sequence,
        fmt_ts(e.at.as_ref(), true),
        or_dash(&e.meeting),
        one_line(&details)
    );
    line.trim_end().to_owned()
}

async fn events(ctl: &Ctl, args: &EventsArgs) -> Outcome {
    let request = pb::SubscribeEventsRequest {
        meeting: args.meeting.clone().unwrap_or_default(),
        resume_after: args.resume_after,
        from_oldest: args.all,
    };
    let mut stream = ctl.call(ctl.events().subscribe(request)).await?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let next = if args.follow {
            tokio::select! {
                next = stream.message() => next,
                _ = &mut ctrl_c => return Ok(()),
            }
        } else {
            match tokio::time::timeout(EVENTS_IDLE, stream.message()).await {
                Ok(next) => next,
                Err(_) => return Ok(()),
            }
        };
        match next {
            Ok(Some(event)) => {
                if ctl.json {
                    emit_json_line(&event)?;
                } else {
                    emit(&event_line(&event))?;
                }
            }
            Ok(None) => return Ok(()),
            Err(status) => return Err(Failure::from_status(status)),
        }
    }
}

async fn mint(ctl: &Ctl, args: &TokenArgs) -> Outcome {
    let ttl_seconds = match args.ttl {
        None => 0,
        Some(d) => u32::try_from(d.as_secs())
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| Failure::Usage("--ttl: 1 second to 30 days".into()))?,
    };
    let r = ctl
        .call(ctl.tokens().mint(pb::MintTokenRequest {
            meeting: args.meeting.clone(),
            identity: args.identity.clone(),
            name: args.name.clone().unwrap_or_default(),
            grants: Some(pb::Grants {
                join: true,
                publish: !args.no_publish,
                subscribe: !args.no_subscribe,
                create: !args.no_create,
                admin: args.admin,
                captions: args.captions,
            }),
            ttl_seconds,
        }))
        .await?;
    if ctl.json {
        return emit_json(&r);
    }
    emit(&r.token)
}

/// Rates between two samples of the node's counters.
struct Rates {
    packets_in: f64,
    packets_out: f64,
    cpu_percent: f64,
}

fn rates(prev: &pb::StatsResponse, now: &pb::StatsResponse, wall: Duration) -> Option<Rates> {
    // The node's own uptime is the best clock for its counters; our wall clock otherwise.
    let mut secs = now.uptime_seconds - prev.uptime_seconds;
    if secs.is_nan() || secs <= 0.0 {
        secs = wall.as_secs_f64();
    }
    if secs <= 0.0 {
        return None;
    }
    Some(Rates {
        packets_in: now.packets_in.saturating_sub(prev.packets_in) as f64 / secs,
        packets_out: now.packets_out.saturating_sub(prev.packets_out) as f64 / secs,
        cpu_percent: ((now.cpu_seconds - prev.cpu_seconds) / secs * 100.0).max(0.0),
    })
}

async fn top(ctl: &Ctl, args: &TopArgs) -> Outcome {
    let tty = std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut prev: Option<(pb::StatsResponse, tokio::time::Instant)> = None;
    let mut frames = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut ctrl_c => return Ok(()),
        }
        let stats = ctl.stats().await?;
        let list = ctl.list_meetings().await?;
        let at = tokio::time::Instant::now();
        let r = prev
            .as_ref()
            .and_then(|(p, t)| rates(p, &stats, at.duration_since(*t)));
        if ctl.json {
            let rates = r.as_ref().map_or(serde_json::Value::Null, |r| {
                serde_json::json!({
                    "packetsInPerSecond": r.packets_in,
                    "packetsOutPerSecond": r.packets_out,
                    "cpuPercent": r.cpu_percent,
                })
            });
            emit_json_line(&serde_json::json!({
                "stats": to_value(&stats)?,
                "meetings": to_value(&list)?.get("meetings").cloned().unwrap_or_default(),
                "rates": rates,
            }))?;
        } else {
            let mut text = String::new();
            if tty {
                text.push_str("\x1b[2J\x1b[H");
            } else if frames > 0 {
                text.push('\n');
            }
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let now = pbjson_types::Timestamp {
                seconds: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
                nanos: 0,
            };
            let _ = writeln!(
                text,
                "hearth top  {}  {}  up {}",
                ctl.url,
                fmt_ts(Some(&now), false),
                fmt_span(stats.uptime_seconds)
            );
            let rate = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
            let mut t = Table::new(&[
                "MEETINGS",
                "PARTICIPANTS",
                "PKTS/S IN",
                "PKTS/S OUT",
                "CPU %",
                "RSS",
                "RESTARTS",
                "FAILURES",
            ])
            .right(&[0, 1, 2, 3, 4, 5, 6, 7]);
            t.row(vec![
                stats.meetings.to_string(),
                stats.participants.to_string(),
                rate(r.as_ref().map(|r| r.packets_in)),
                rate(r.as_ref().map(|r| r.packets_out)),
                r.as_ref()
                    .map_or_else(|| "-".to_owned(), |r| format!("{:.1}", r.cpu_percent)),
                fmt_bytes(stats.rss_bytes),
                stats.actor_restarts.to_string(),
                stats.actor_failures.to_string(),
            ]);
            for line in t.render() {
                let _ = writeln!(text, "{line}");
            }
            text.push('\n');
            if list.meetings.is_empty() {
                text.push_str("(no live meetings)\n");
            } else {
                let mut m = Table::new(&["MEETING", "PARTICIPANTS"]).right(&[1]);
                for meeting in &list.meetings {
                    m.row(vec![
                        meeting.id.clone(),
                        meeting.participant_count.to_string(),
                    ]);
                }
                for line in m.render() {
                    let _ = writeln!(text, "{line}");
                }
            }
            emit(&text)?;
        }
        prev = Some((stats, at));
        frames += 1;
        if args.iterations.is_some_and(|n| frames >= n) {
            return Ok(());
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let url = normalize_url(&cli.url).unwrap_or_else(|_| cli.url.clone());
    match runtime.block_on(Box::pin(run(&cli))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(&url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64, nanos: i32) -> pbjson_types::Timestamp {
        pbjson_types::Timestamp { seconds, nanos }
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(fmt_ts(Some(&ts(0, 1)), false), "1970-01-01T00:00:00Z");
        assert_eq!(
            fmt_ts(Some(&ts(1_700_000_000, 123_456_789)), true),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            fmt_ts(Some(&ts(951_782_400, 0)), false),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(fmt_ts(None, false), "-");
    }

    #[test]
    fn aligns_columns_by_characters() {
        let mut t = Table::new(&["A", "BB", "C"]).right(&[1]);
        t.row(vec!["├─ x".into(), "7".into(), "last".into()]);
        t.row(vec!["y".into(), "123".into(), String::new()]);
        assert_eq!(
            t.render(),
            vec!["A      BB  C", "├─ x    7  last", "y     123"]
        );
    }

    fn actor(id: &str, kind: &str, parent: &str) -> pb::ActorInfo {
        pb::ActorInfo {
            id: id.into(),
            kind: kind.into(),
            name: format!("{kind}-name"),
            parent_id: parent.into(),
            policy: format!("{kind} policy"),
            ..Default::default()
        }
    }

    #[test]
    fn draws_the_tree_and_flags_failures() {
        let mut meeting = actor("0.3", "meeting", "0.2");
        meeting.restarts = 1;
        meeting.last_failure = "participant PA_1 failed:\nboom".into();
        let actors = vec![
            actor("0.1", "node", ""),
            actor("0.2", "meeting_supervisor", "0.1"),
            meeting,
            actor("0.4", "participant", "0.3"),
            actor("0.5", "participant", "0.3"),
            actor("0.6", "turn_supervisor", "0.1"),
            // A cycle and an orphan are still shown.
            actor("0.8", "allocation", "0.9"),
            actor("0.9", "allocation", "0.8"),
            actor("0.7", "allocation", "9.9"),
        ];
        let lines = render_tree(&actors, false);
        let text = lines.join("\n");
        for id in [
            "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9",
        ] {
            assert!(text.contains(id), "{id} missing in\n{text}");
        }
        let meeting_line = lines.iter().find(|l| l.contains("0.3")).unwrap();
        assert!(meeting_line.starts_with('!'), "{meeting_line}");
        assert!(meeting_line.contains("participant PA_1 failed: boom"));
        assert!(text.contains("├─ meeting_supervisor"), "{text}");
        assert!(text.contains("└─ turn_supervisor"), "{text}");
        assert!(text.contains("│  └─ meeting"), "{text}");
        assert!(text.contains("│     ├─ participant"), "{text}");
        assert_eq!(text.matches("participant policy").count(), 1);
        let colored = render_tree(&actors, true).join("\n");
        assert!(colored.contains("\x1b[31m!"));
    }

    #[test]
    fn rates_use_the_node_clock() {
        let a = pb::StatsResponse {
            packets_in: 100,
            packets_out: 200,
            cpu_seconds: 1.0,
            uptime_seconds: 10.0,
            ..Default::default()
        };
        let b = pb::StatsResponse {
            packets_in: 300,
            packets_out: 600,
            cpu_seconds: 1.5,
            uptime_seconds: 12.0,
            ..Default::default()
        };
        let r = rates(&a, &b, Duration::from_secs(5)).unwrap();
        assert_eq!(r.packets_in, 100.0);
        assert_eq!(r.packets_out, 200.0);
        assert_eq!(r.cpu_percent, 25.0);
    }

    #[test]
    fn urls_get_a_scheme_and_tls_is_refused() {
        assert_eq!(
            normalize_url("127.0.0.1:7880").unwrap(),
            "http://127.0.0.1:7880"
        );
        assert!(normalize_url("https://x").is_err());
    }
}
