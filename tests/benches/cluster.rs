//! The cluster's costs, measured on three release `hearth` processes and one `redis-server`
//! on this machine (unix socket):
//!
//! 1. join latency: a signaling `join` answered by the host, against one sent to another
//!    node (redirect, second connection, join): connect to join response, N joins each;
//! 2. placement under a ramp: 1,000 new meetings asked for through the three nodes in turn
//!    (16 at a time): the spread over the nodes, the time to an answer, and Redis commands
//!    per placement (`INFO stats` during the ramp, less the heartbeat traffic measured while
//!    idle just before);
//! 3. failover: two participants with audio and video on the host; the host killed with
//!    SIGKILL; both join again through the node they entered by (retrying every 100 ms, as
//!    a client with a short backoff would) until media flows again: five runs.
//!
//!   cargo build --release --bin hearth && cargo bench -p hearth-tests --bench cluster
//!
//! Needs `redis-server` and `redis-cli` (Debian's redis-server package).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use hearth_tests::cluster::{
    Answer, ClusterNode, Redis, first_answer, host_of, token, wait_for_nodes,
};
use hearth_tests::{ClientOptions, TestClient};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(20);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Connect, join, follow redirects; the time to the join response.
async fn timed_join(url: &str, meeting: &str) -> Duration {
    let token = token(
        meeting,
        &format!("lat-{}", hearth_actors::ids::random_string(6)),
    );
    let started = Instant::now();
    let mut url = url.to_owned();
    for _ in 0..3 {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connects");
        let join = serde_json::json!({ "join": { "token": token, "meeting": meeting } });
        ws.send(Message::Text(join.to_string().into()))
            .await
            .expect("sends");
        while let Some(Ok(frame)) = ws.next().await {
            let Message::Text(text) = frame else { continue };
            let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap_or_default();
            if v.get("join").is_some() {
                let took = started.elapsed();
                let _ = ws.close(None).await;
                return took;
            }
            if let Some(r) = v.get("redirect") {
                url = r["url"].as_str().unwrap_or_default().to_owned();
                break;
            }
            assert!(v.get("error").is_none(), "join refused: {v}");
        }
    }
    panic!("no join after 3 redirects");
}

async fn redis_commands(redis: &Redis) -> u64 {
    redis
        .cli(&["INFO", "stats"])
        .await
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn join_latency(redis: &Redis, nodes: &[ClusterNode]) {
    const N: usize = 200;
    // A meeting kept alive by one participant, hosted somewhere.
    let keeper = TestClient::join_with_token(
        &nodes[0].ws_url(),
        &token("latency", "keeper"),
        "latency",
        ClientOptions::default(),
    )
    .await
    .expect("keeper joins");
    let host = nodes
        .iter()
        .find(|n| n.ws_url() == keeper.url())
        .expect("host");
    let other = nodes.iter().find(|n| n.id != host.id).expect("other");
    let _ = redis;
    let mut direct = Vec::with_capacity(N);
    let mut redirected = Vec::with_capacity(N);
    for _ in 0..N {
        direct.push(timed_join(&host.ws_url(), "latency").await);
        redirected.push(timed_join(&other.ws_url(), "latency").await);
    }
    direct.sort();
    redirected.sort();
    println!(
        "join latency (connect to join response, {N} joins each, alternating): at the host p50 {} p99 {}; through another node (redirect) p50 {} p99 {}",
        ms(percentile(&direct, 0.5)),
        ms(percentile(&direct, 0.99)),
        ms(percentile(&redirected, 0.5)),
        ms(percentile(&redirected, 0.99)),
    );
}

async fn ramp(redis: &Redis, nodes: &[ClusterNode]) {
    const MEETINGS: usize = 1000;
    const PARALLEL: usize = 16;
    // Heartbeat traffic while idle, for the same length of time as the ramp will take
    // (measured over 3 s, scaled).
    let idle_from = redis_commands(redis).await;
    let idle_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rate =
        (redis_commands(redis).await - idle_from) as f64 / idle_start.elapsed().as_secs_f64();
    let before = redis_commands(redis).await;
    let started = Instant::now();
    let urls: Vec<(String, String)> = nodes.iter().map(|n| (n.id.clone(), n.ws_url())).collect();
    let mut answers = Vec::with_capacity(MEETINGS);
    let mut pending = futures::stream::iter((0..MEETINGS).map(|i| {
        let (id, url) = urls[i % urls.len()].clone();
        async move {
            let t = Instant::now();
            let answer = first_answer(&url, &format!("ramp-{i}")).await;
            (id, answer, t.elapsed())
        }
    }))
    .buffer_unordered(PARALLEL);
    while let Some(a) = pending.next().await {
        answers.push(a);
    }
    let took = started.elapsed();
    let commands = redis_commands(redis).await - before;
    let heartbeat = idle_rate * took.as_secs_f64();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    let mut latencies = Vec::with_capacity(MEETINGS);
    let mut failed = 0;
    for (entry, answer, t) in &answers {
        match host_of(entry, answer) {
            Some(h) => *per_node.entry(h).or_default() += 1,
            None => failed += 1,
        }
        if !matches!(answer, Answer::Error(_)) {
            latencies.push(*t);
        }
    }
    latencies.sort();
    println!(
        "placement ramp: {MEETINGS} new meetings through 3 nodes, {PARALLEL} at a time, in {:.2} s ({:.0}/s); per node {per_node:?}; refused {failed}; answer p50 {} p99 {}; Redis commands {commands} in all, {:.0} of them heartbeats (idle rate {idle_rate:.0}/s), {:.2} per placement",
        took.as_secs_f64(),
        MEETINGS as f64 / took.as_secs_f64(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        heartbeat,
        (commands as f64 - heartbeat) / MEETINGS as f64,
    );
}

async fn failover(redis: &Redis, nodes: &mut [ClusterNode], run: usize) -> Duration {
    let meeting = format!("failover-{run}");
    let a = TestClient::join_with_token(
        &nodes[0].ws_url(),
        &token(&meeting, "a"),
        &meeting,
        ClientOptions::av(),
    )
    .await
    .expect("a joins");
    let b = TestClient::join_with_token(
        &nodes[1].ws_url(),
        &token(&meeting, "b"),
        &meeting,
        ClientOptions::av(),
    )
    .await
    .expect("b joins");
    a.wait_for_media_from(&[b.participant_id()], 10, 5, T).await;
    let host = nodes
        .iter()
        .position(|n| n.ws_url() == a.url())
        .expect("host");
    let entries: Vec<String> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != host)
        .map(|(_, n)| n.ws_url())
        .collect();
    let killed = Instant::now();
    nodes[host].kill().await;
    drop((a, b));
    let rejoin = |name: &'static str, entry: String, meeting: String| async move {
        loop {
            match TestClient::join_with_token(
                &entry,
                &token(&meeting, name),
                &meeting,
                ClientOptions::av(),
            )
            .await
            {
                Ok(c) => return c,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    };
    let (a, b) = tokio::join!(
        rejoin("a", entries[0].clone(), meeting.clone()),
        rejoin("b", entries[1].clone(), meeting.clone())
    );
    let (ia, ib) = (a.participant_id().to_owned(), b.participant_id().to_owned());
    a.wait_for_media_from(&[&ib], 3, 1, T).await;
    b.wait_for_media_from(&[&ia], 3, 1, T).await;
    let took = killed.elapsed();
    drop((a, b));
    // The killed node comes back (a new life) for the next run.
    nodes[host].restart().await;
    let refs: Vec<&ClusterNode> = nodes.iter().collect();
    wait_for_nodes(&refs, 3, Duration::from_secs(30)).await;
    let _ = redis;
    took
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(redis) = Redis::start("bench").await else {
        eprintln!("no redis-server: nothing measured");
        return;
    };
    let mut nodes = vec![
        ClusterNode::start(&redis, "n1", &["--empty-timeout", "120s"]).await,
        ClusterNode::start(&redis, "n2", &["--empty-timeout", "120s"]).await,
        ClusterNode::start(&redis, "n3", &["--empty-timeout", "120s"]).await,
    ];
    wait_for_nodes(&[&nodes[0], &nodes[1], &nodes[2]], 3, T).await;
    println!(
        "machine: {} cores; nodes: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        hearth_tests::workspace_bin("hearth").display()
    );
    join_latency(&redis, &nodes).await;
    ramp(&redis, &nodes).await;
    let mut runs = Vec::new();
    for run in 0..5 {
        let took = failover(&redis, &mut nodes, run).await;
        println!(
            "failover run {}: media flowing again {} after the host was killed",
            run + 1,
            ms(took)
        );
        runs.push(took);
    }
    runs.sort();
    println!(
        "failover, 5 runs: min {} median {} max {}",
        ms(runs[0]),
        ms(runs[2]),
        ms(runs[4])
    );
}
