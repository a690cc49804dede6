//! `hearth`: the server (`hearth serve`, the default) and `hearth token`.

use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use clap::Parser;
use hearth_actors::Grants;
use hearth_api::config::{self, Cli, Command, LogFormat, ServeArgs, TokenArgs};
use hearth_api::{server, token};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The allocator this binary was built with (logged at start).
const ALLOCATOR_NAME: &str = if cfg!(feature = "jemalloc") {
    "jemalloc"
} else if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "system"
};

fn main() -> ExitCode {
    let started = Instant::now();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(args)) => mint(&args),
        Some(Command::Serve(args)) => serve(&args, started),
        None => serve(&cli.serve, started),
    }
}

fn mint(args: &TokenArgs) -> ExitCode {
    let (key, secret) = match config::token_keys(args) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // No meeting (or an empty one) is an admin token for the whole node.
    let meeting = args.meeting.as_deref().unwrap_or_default();
    if meeting.is_empty() {
        if !args.admin {
            eprintln!("error: --meeting is required unless the token is an --admin token");
            return ExitCode::from(2);
        }
    } else if hearth_actors::MeetingId::parse(meeting).is_none() {
        eprintln!("error: --meeting: 1 to 128 characters of A-Z a-z 0-9 . _ ~ -");
        return ExitCode::from(2);
    }
    let grants = Grants {
        join: true,
        publish: !args.no_publish,
        subscribe: !args.no_subscribe,
        create: !args.no_create,
        admin: args.admin,
        captions: args.captions,
    };
    let name = args.name.clone().unwrap_or_else(|| args.identity.clone());
    let claims = token::claims_for(
        &key,
        meeting,
        &args.identity,
        &name,
        grants,
        SystemTime::now(),
        args.ttl,
    );
    println!("{}", token::mint(&claims, &secret));
    ExitCode::SUCCESS
}

fn serve(args: &ServeArgs, started: Instant) -> ExitCode {
    let config = match config::resolve(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    install_panic_hook();
    if let Err(e) = std::fs::create_dir_all(&config.data_dir) {
        eprintln!(
            "error: cannot create data dir {}: {e}",
            config.data_dir.display()
        );
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let server = match server::start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                // A ledger that cannot be opened has an exit code of its own.
                if e.downcast_ref::<server::LedgerStartError>().is_some() {
                    return ExitCode::from(3);
                }
                return ExitCode::FAILURE;
            }
        };
        let c = &server.state.config;
        println!("Hearth is ready in {:.1} ms", started.elapsed().as_secs_f64() * 1000.0);
        println!("  open        {}", server.url());
        match server.media_addr {
            Some(media) => println!(
                "  media       udp {media} (advertised as {})",
                server.state.node.advertised_media_addr()
            ),
            None => println!("  media       off (--turn-only)"),
        }
        if let Some(turn) = server.state.node.turn_addrs() {
            let tls = turn.tls.map(|t| format!(", tls {t}")).unwrap_or_default();
            println!("  turn        udp {}, tcp {}{tls}", turn.udp, turn.tcp);
        }
        println!("  metrics     http://{}/metrics", server.http_addr);
        if let Some(probe) = server.probe_addr {
            println!("  probes      http://{probe}/readyz, /healthz, /metrics (own thread)");
        }
        if let Some(grpc) = server.grpc_addr {
            println!("  grpc        {grpc}");
        } else {
            println!("  grpc        {} (shared with HTTP)", server.http_addr);
        }
        println!(
            "  limits      {} open files, {} connections ({} per address), allocator {ALLOCATOR_NAME}",
            hearth_actors::limits::nofile_limit(),
            hearth_actors::limits::FdBudget::global().capacity(),
            c.http_limits.max_per_source,
        );
        match &c.ledger {
            Some(l) => println!(
                "  ledger      {} (usage metering and webhooks)",
                hearth_actors::billing::store::redact(&l.url)
            ),
            None => println!("  ledger      off (--no-ledger): usage is not metered"),
        }
        if c.dev {
            println!("  dev mode    GET /v1/dev/token is enabled; do not expose this node");
        }
        if c.generated_key
            && let Some((key, secret)) = c.keys.first()
        {
            println!("  API key     {key}");
            println!("  API secret  {secret}");
            println!(
                "  mint a token: hearth token --api-key {key} --api-secret {secret} --meeting M --identity I"
            );
        }
        if c.keys.is_empty() {
            println!(
                "  no API key configured: pass --api-key/--api-secret (or --dev) so clients can join"
            );
        }
        tokio::select! {
            _ = wait_for_shutdown() => {}
            _ = server.drained() => tracing::info!("drained: every meeting has ended"),
        }
        tracing::info!("shutting down");
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // The WebRTC stack logs every DTLS and ICE step at info and every bad datagram at warn
    // (a flood of garbage would become a flood of log lines): errors only by default.
    let filter = EnvFilter::try_from_env("HEARTH_LOG").unwrap_or_else(|_| {
        EnvFilter::new("info,rtc=error,rtc_ice=error,rtc_dtls=error,rtc_sctp=error,rtc_srtp=error")
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// A panic is one actor's bug, which its supervisor handles: log it as one line, without the
/// default hook's backtrace. With `RUST_BACKTRACE=1` (set in many shells and CI), the default
/// hook symbolizes a backtrace on the Tokio worker that panicked: measured, that stalled the
/// worker's other actors for about 400 ms and mapped 130 MB of debug info for good.
/// `HEARTH_PANIC_BACKTRACE=1` brings the backtrace back for debugging.
fn install_panic_hook() {
    let with_backtrace = std::env::var_os("HEARTH_PANIC_BACKTRACE").is_some_and(|v| v == "1");
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        if with_backtrace {
            let backtrace = std::backtrace::Backtrace::force_capture();
            tracing::error!(%message, %location, thread, %backtrace, "panic");
        } else {
            tracing::error!(%message, %location, thread, "panic");
        }
    }));
}
