//! How fast the usage ledger writes, on SQLite (a file in a temporary directory, WAL) and on
//! PostgreSQL (`HEARTH_TEST_PG_URL`, a fresh database; skipped without it), through the
//! billing actor's own path (`Billing::tick_once`: one transaction per tick).
//!
//!     cargo bench -p hearth-tests --bench ledger                 # prints a Markdown table
//!     INTERVALS=20000 cargo bench -p hearth-tests --bench ledger
//!
//! Per backend, with N open participant intervals (N = `INTERVALS`, default 10,000):
//! 1. first tick: N intervals inserted as checkpoints (and N `participant.joined` events into
//!    the webhook outbox);
//! 2. a steady tick: N checkpoints updated (what every second costs a node with N open
//!    intervals);
//! 3. all N end: 3N usage rows (participant_ms, bytes_in, bytes_out), N checkpoints deleted,
//!    N `participant.left` events.

use std::time::{Duration, Instant};

use hearth_actors::billing::store::Ledger;
use hearth_actors::billing::{Attribution, Billing, IntervalKind};

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n: usize = std::env::var("INTERVALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        println!("| backend | step | rows | ms | rows/s |");
        println!("|---|---|---:|---:|---:|");
        let dir = std::env::temp_dir().join(format!("hearth-ledger-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let sqlite = format!("sqlite://{}/ledger.db", dir.display());
        run("sqlite", &sqlite, n).await;
        let _ = std::fs::remove_dir_all(&dir);
        match std::env::var("HEARTH_TEST_PG_URL") {
            Ok(base) => {
                use sqlx::Connection;
                let db = format!("bench_{}", std::process::id());
                let mut conn = sqlx::PgConnection::connect(&base)
                    .await
                    .expect("PostgreSQL");
                sqlx::raw_sql(&format!("CREATE DATABASE {db}"))
                    .execute(&mut conn)
                    .await
                    .expect("CREATE DATABASE");
                let (prefix, _) = base.rsplit_once('/').expect("a URL with a database");
                run("postgres", &format!("{prefix}/{db}"), n).await;
                let _ = sqlx::raw_sql(&format!("DROP DATABASE {db} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            }
            Err(_) => println!("| postgres | skipped: no HEARTH_TEST_PG_URL | | | |"),
        }
    });
}

async fn run(backend: &str, url: &str, n: usize) {
    let ledger = Ledger::connect(url).await.expect("the ledger opens");
    let (meter, billing) = Billing::new(
        "bench-node".into(),
        ledger,
        Duration::from_secs(1),
        hearth_api::rest::usage::webhook_body,
    );
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let h = meter.open(
                IntervalKind::Participant,
                Attribution {
                    api_key: "APIbench".into(),
                    meeting: format!("m{}", i / 4),
                    participant: format!("PA_{i:08}"),
                    identity: format!("user-{i}"),
                },
                &format!("PA_{i:08}"),
            );
            h.interval().add_in(1_000 + i as u64);
            h.interval().add_out(2_000 + i as u64);
            h
        })
        .collect();
    let step = |name: &str, rows: usize, took: Duration| {
        println!(
            "| {backend} | {name} | {rows} | {:.1} | {:.0} |",
            took.as_secs_f64() * 1000.0,
            rows as f64 / took.as_secs_f64()
        );
    };
    let t = Instant::now();
    billing.tick_once().await.expect("first tick");
    step("open: insert checkpoints + outbox", n, t.elapsed());
    for h in &handles {
        h.interval().add_in(500);
    }
    let t = Instant::now();
    billing.tick_once().await.expect("steady tick");
    step("steady: update checkpoints", n, t.elapsed());
    drop(handles);
    let t = Instant::now();
    let rows = billing.tick_once().await.expect("closing tick");
    step("end: usage rows (+ deletes, outbox)", rows, t.elapsed());
    assert_eq!(
        rows,
        3 * n,
        "participant_ms, bytes_in and bytes_out per interval"
    );
}
