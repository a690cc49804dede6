//! gRPC API benchmark against a separate release `hearth` process.
//!
//! ```text
//! cargo build --release --bin hearth
//! cargo bench -p hearth-tests --bench grpc [-- path/to/hearth]
//! ```
//!
//! Measures, on loopback:
//! * unary RPC latency (`MeetingService.Get` of a meeting with one participant, one call at a
//!   time: p50/p99/max) and rate (32 calls in flight);
//! * `SubscribeTrack` throughput: an app pushes RTP into a meeting over `PublishTrack` as
//!   fast as flow control allows, 1 and then 4 apps pull it back out over `SubscribeTrack`;
//!   packets/s per stream, packets the taps dropped, and the server's CPU per delivered
//!   packet (from /proc/PID/stat of the server process).
//!
//! The server is pinned to CPU 0 and this client to CPU 1 when the machine has two CPUs
//! (`taskset`), so the client's work does not count as the server's.

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use hearth_actors::Grants;
use hearth_api::token;
use hearth_proto::v1 as pb;
use pb::media_service_client::MediaServiceClient;
use pb::meeting_service_client::MeetingServiceClient;
use tokio_stream::StreamExt;
use tonic::Request;
use tonic::transport::Channel;

const KEY: &str = "APIbench";
const SECRET: &str = "bench-secret-0123456789abcdef0123";

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rfind(')').map(|i| &stat[i + 2..]).unwrap_or("");
    let f: Vec<&str> = rest.split(' ').collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn authed<M>(token: &str, m: M) -> Request<M> {
    let mut r = Request::new(m);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    r
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn start_packet(meeting: &str) -> pb::PublishTrackRequest {
    pb::PublishTrackRequest {
        kind: Some(pb::publish_track_request::Kind::Start(
            pb::PublishTrackStart {
                meeting: meeting.into(),
                identity: "pusher".into(),
                name: "pusher".into(),
                kind: pb::TrackKind::Audio as i32,
                codec: Some(pb::Codec {
                    mime_type: "audio/opus".into(),
                    clock_rate: 48_000,
                    channels: 2,
                    payload_type: 111,
                    fmtp: String::new(),
                }),
                create: true,
            },
        )),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bin = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "target/release/hearth".into());
    let bin = std::path::Path::new(&bin);
    let bin = if bin.exists() {
        bin.to_path_buf()
    } else {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(bin)
    };
    assert!(
        bin.exists(),
        "build it first: cargo build --release --bin hearth"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let data = std::env::temp_dir().join(format!("hearth-grpc-bench-{port}"));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let two_cpus = cpus >= 2;
    let mut cmd = if two_cpus {
        let mut c = tokio::process::Command::new("taskset");
        c.arg("-c").arg("0").arg(&bin);
        c
    } else {
        tokio::process::Command::new(&bin)
    };
    let mut server = hearth_tests::node_args(&mut cmd, port, (KEY, SECRET), &data)
        .env("HEARTH_LOG", "warn")
        .spawn()
        .expect("server starts");
    let pid = server.id().expect("pid");
    if two_cpus {
        // Keep this client off the server's CPU.
        let _ = std::process::Command::new("taskset")
            .args(["-pc", "1", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status();
    }
    let url = format!("http://127.0.0.1:{port}");
    let channel = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Channel::from_shared(url.clone())
                .expect("url")
                .connect()
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => panic!("server did not come up: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    };
    let claims = token::claims_for(
        KEY,
        "",
        "bench",
        "bench",
        Grants {
            admin: true,
            ..Grants::default()
        },
        SystemTime::now(),
        Duration::from_secs(3600),
    );
    let tok = token::mint(&claims, SECRET);
    println!("machine: {cpus} CPU, server pinned to CPU 0, client to CPU 1: {two_cpus}");

    // A meeting with one (virtual) participant publishing a track.
    let (push_tx, push_rx) = tokio::sync::mpsc::channel::<pb::PublishTrackRequest>(1024);
    push_tx.send(start_packet("bench")).await.expect("queue");
    let mut media = MediaServiceClient::new(channel.clone());
    let mut pushed = media
        .publish_track(authed(
            &tok,
            tokio_stream::wrappers::ReceiverStream::new(push_rx),
        ))
        .await
        .expect("PublishTrack")
        .into_inner();
    let started = match pushed.next().await {
        Some(Ok(pb::PublishTrackResponse {
            kind: Some(pb::publish_track_response::Kind::Started(s)),
        })) => s,
        other => panic!("expected started, got {other:?}"),
    };

    // ---- unary latency and rate ----
    let mut meetings = MeetingServiceClient::new(channel.clone());
    let get = || pb::GetMeetingRequest { id: "bench".into() };
    for _ in 0..500 {
        meetings.get(authed(&tok, get())).await.expect("Get");
    }
    let mut lat = Vec::with_capacity(5000);
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    for _ in 0..5000 {
        let t = Instant::now();
        meetings.get(authed(&tok, get())).await.expect("Get");
        lat.push(t.elapsed());
    }
    let serial_wall = t0.elapsed();
    let serial_cpu = cpu_seconds(pid) - cpu0;
    lat.sort();
    println!(
        "unary MeetingService.Get, 1 in flight: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms, {:.0} calls/s, server CPU {:.1} µs/call",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        5000.0 / serial_wall.as_secs_f64(),
        serial_cpu / 5000.0 * 1e6
    );
    let window = Duration::from_secs(3);
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let mut client = meetings.clone();
        let tok = tok.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut lat = Vec::new();
            while t0.elapsed() < window {
                let t = Instant::now();
                client
                    .get(authed(&tok, pb::GetMeetingRequest { id: "bench".into() }))
                    .await
                    .expect("Get");
                lat.push(t.elapsed());
                n += 1;
            }
            (n, lat)
        }));
    }
    let mut calls = 0;
    let mut all = Vec::new();
    for t in tasks {
        let (n, lat) = t.await.expect("task");
        calls += n;
        all.extend(lat);
    }
    let wall = t0.elapsed();
    let cpu = cpu_seconds(pid) - cpu0;
    all.sort();
    println!(
        "unary MeetingService.Get, 32 in flight: {:.0} calls/s, p50 {:.3} ms, p99 {:.3} ms, server CPU {:.1} µs/call ({:.0}% of a core)",
        calls as f64 / wall.as_secs_f64(),
        percentile(&all, 0.5).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
        cpu / calls as f64 * 1e6,
        cpu / wall.as_secs_f64() * 100.0
    );

    // ---- SubscribeTrack throughput ----
    let pusher = tokio::spawn(async move {
        let payload = vec![0xFCu8; 160];
        let mut seq: u16 = 0;
        loop {
            let data = hearth_engine::rtp::write(
                false,
                111,
                seq,
                u32::from(seq).wrapping_mul(960),
                hearth_engine::media::Ssrc(7),
                &payload,
            );
            seq = seq.wrapping_add(1);
            let msg = pb::PublishTrackRequest {
                kind: Some(pb::publish_track_request::Kind::Rtp(data)),
            };
            if push_tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    for readers in [1usize, 4] {
        let mut taps = Vec::new();
        for _ in 0..readers {
            let mut client = MediaServiceClient::new(channel.clone());
            let stream = client
                .subscribe_track(authed(
                    &tok,
                    pb::SubscribeTrackRequest {
                        meeting: "bench".into(),
                        track_id: started.track_id.clone(),
                    },
                ))
                .await
                .expect("SubscribeTrack")
                .into_inner();
            taps.push(stream);
        }
        // Warm up, then measure a window.
        let warm = Instant::now() + Duration::from_millis(500);
        let window = Duration::from_secs(5);
        let mut handles = Vec::new();
        for mut tap in taps {
            handles.push(tokio::spawn(async move {
                let mut n = 0u64;
                let mut dropped = 0;
                let mut started: Option<Instant> = None;
                while let Some(Ok(msg)) = tap.next().await {
                    if let Some(pb::track_packet::Kind::Rtp(p)) = msg.kind {
                        let now = Instant::now();
                        if now < warm {
                            continue;
                        }
                        let s = *started.get_or_insert(now);
                        if now - s >= window {
                            dropped = p.dropped;
                            break;
                        }
                        n += 1;
                    }
                }
                (n, dropped)
            }));
        }
        tokio::time::sleep_until(warm.into()).await;
        let cpu0 = cpu_seconds(pid);
        let mut total = 0;
        let mut per = Vec::new();
        let mut dropped = 0;
        for h in handles {
            let (n, d) = h.await.expect("tap");
            total += n;
            dropped += d;
            per.push(n as f64 / window.as_secs_f64());
        }
        let cpu = cpu_seconds(pid) - cpu0;
        println!(
            "SubscribeTrack, {readers} reader(s) of one pushed track (160-byte payloads): {:.0} packets/s per stream, {:.0} delivered/s in all, {dropped} dropped for slow readers, server CPU {:.2} µs per delivered packet (incl. the PublishTrack side)",
            per.iter().sum::<f64>() / per.len() as f64,
            total as f64 / window.as_secs_f64(),
            cpu / total.max(1) as f64 * 1e6
        );
    }
    pusher.abort();
    let _ = server.kill().await;
    let _ = std::fs::remove_dir_all(&data);
}
