//! A cluster on one machine for tests and benchmarks: a throwaway `redis-server` on a unix
//! socket (Debian's package; `tests/run.sh` installs it) and `hearth` node processes that
//! point at it, each with its own ports, data directory and node id.
//!
//! Everything here is what an operator or a client can do: start and kill processes, read
//! `/metrics`, send a signaling `join` and read the answer, run `redis-cli`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use futures::{SinkExt, StreamExt};
use hearth_actors::Grants;
use hearth_api::token;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

pub const KEY: &str = "APIcluster";
pub const SECRET: &str = "cluster-secret-0123456789abcdef";

/// A `redis-server` of the test's own, on a unix socket in a fresh directory.
pub struct Redis {
    child: Option<Child>,
    pub dir: PathBuf,
}

impl Redis {
    /// None when Redis is not installed and `HEARTH_TEST_REQUIRE_REDIS` is unset (the
    /// caller skips); panics if it is set and Redis cannot start.
    pub async fn start(tag: &str) -> Option<Redis> {
        let have = std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !have {
            assert!(
                std::env::var("HEARTH_TEST_REQUIRE_REDIS").is_err(),
                "HEARTH_TEST_REQUIRE_REDIS is set but redis-server is not installed"
            );
            eprintln!("skipped: no redis-server (tests/run.sh installs Debian's redis-server)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "hearth-cluster-{tag}-{}",
            hearth_actors::ids::random_string(8)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut redis = Redis { child: None, dir };
        redis.spawn().await;
        Some(redis)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// The URL nodes are given.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    async fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "yes", "--loglevel", "warning"])
            .arg("--unixsocket")
            .arg(self.socket())
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).await.trim() != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills Redis at once (SIGKILL: nothing saved, the data is gone).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts an empty Redis on the same socket (a restart that lost its data).
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    /// `redis-cli` with `args`; its stdout (empty if it failed).
    pub async fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .output()
            .await
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One `hearth` process of the cluster.
pub struct ClusterNode {
    child: Option<Child>,
    pub id: String,
    pub port: u16,
    pub dir: PathBuf,
    redis_url: String,
    extra: Vec<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl ClusterNode {
    /// Starts node `id` against `redis`, with `extra` flags; ready when `/readyz` answers.
    pub async fn start(redis: &Redis, id: &str, extra: &[&str]) -> ClusterNode {
        let mut node = ClusterNode {
            child: None,
            id: id.to_owned(),
            port: free_port(),
            dir: redis.dir.join(id),
            redis_url: redis.url(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        node.spawn_fresh().await;
        node
    }

    async fn spawn_once(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).expect("node dir");
        let log = std::fs::File::create(self.dir.join("stderr.log")).expect("log file");
        // `--clock-offset +30m` (a test flag of this helper, not of hearth): the node's wall
        // clock runs off by that much (libfaketime; its monotonic clock is left alone).
        let offset = self
            .extra
            .iter()
            .position(|a| a == "--clock-offset")
            .and_then(|i| self.extra.get(i + 1).cloned());
        let extra: Vec<String> = match self.extra.iter().position(|a| a == "--clock-offset") {
            Some(i) => self
                .extra
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i && *j != i + 1)
                .map(|(_, a)| a.clone())
                .collect(),
            None => self.extra.clone(),
        };
        // libfaketime preloaded into the node itself, not through the `faketime` program:
        // that one runs the node as its child, so killing it left the node running.
        let mut cmd = Command::new(crate::workspace_bin("hearth"));
        if let Some(offset) = &offset {
            let lib = libfaketime().expect("libfaketime is installed (tests/run.sh installs it)");
            cmd.env("LD_PRELOAD", lib)
                .env("FAKETIME", offset)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        crate::node_args(&mut cmd, self.port, (KEY, SECRET), &self.dir.join("data"));
        // No usage metering unless the test gives a ledger.
        if !extra.iter().any(|a| a == "--database-url") {
            cmd.arg("--no-ledger");
        }
        cmd.args(["--node-id", &self.id, "--redis-url", &self.redis_url])
            .args(&extra)
            .env("RUST_LOG", "info,hearth_actors::cluster=debug")
            .stderr(log);
        self.child = Some(cmd.spawn().expect("hearth starts"));
        let addr = self.addr();
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if !self.is_running() {
                return Err(self.log());
            }
            assert!(
                Instant::now() < deadline,
                "node {} never listened: {}",
                self.id,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Spawns the node; a first start whose port was taken in the meantime (`free_port`
    /// only reserves it until it returns, and the tests of other binaries run beside this
    /// one) starts again on another port. Any other early exit fails the test with the log.
    async fn spawn_fresh(&mut self) {
        for _ in 0..4 {
            match self.spawn_once().await {
                Ok(()) => return,
                Err(log) if log.contains("Address already in use") => self.port = free_port(),
                Err(log) => panic!("node {} exited at start: {log}", self.id),
            }
        }
        panic!("node {} found no free port in four tries", self.id);
    }

    /// Spawns the node again on its own port (clients and the registry know it).
    async fn spawn(&mut self) {
        for _ in 0..4 {
            match self.spawn_once().await {
                Ok(()) => return,
                // The port of a killed node can be briefly taken by a connection of another
                // test; the same port is retried.
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("node {} exited at start: {log}", self.id),
            }
        }
        panic!("node {}: port {} stayed in use", self.id, self.port);
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/signal", self.addr())
    }

    /// `kill -9`.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts the process again with the same id, ports and data directory.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = crate::http_get(self.addr(), "/metrics").await;
        crate::parse_metric(&text, name).unwrap_or(0.0)
    }

    /// The node's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// `hearthctl` against this node with the cluster's key pair.
    pub fn hearthctl(&self) -> Command {
        let mut cmd = Command::new(crate::workspace_bin("hearthctl"));
        cmd.args(["--url", &self.http_url()])
            .args(["--api-key", KEY, "--api-secret", SECRET]);
        cmd
    }
}

/// Waits until every node of `nodes` sees `count` live nodes.
pub async fn wait_for_nodes(nodes: &[&ClusterNode], count: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut seen = Vec::new();
        for n in nodes {
            seen.push(n.metric("hearth_cluster_nodes").await as usize);
        }
        if seen.iter().all(|&s| s == count) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes never all saw {count} nodes (saw {seen:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A participant token for `meeting` signed with the cluster's key.
pub fn token(meeting: &str, identity: &str) -> String {
    token_with(meeting, identity, Grants::default())
}

/// A token for `identity` in `meeting` (empty: node-wide) with `grants`, valid an hour.
fn token_with(meeting: &str, identity: &str, grants: Grants) -> String {
    let claims = token::claims_for(
        KEY,
        meeting,
        identity,
        identity,
        grants,
        SystemTime::now(),
        Duration::from_secs(3600),
    );
    token::mint(&claims, SECRET)
}

/// What a node answered first to a `join`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Joined here (the socket is closed at once after: the participant leaves).
    Joined,
    /// Sent elsewhere: (node id, signaling URL).
    Redirect(String, String),
    /// An error code (`NODE_UNAVAILABLE`, ...).
    Error(String),
}

/// Sends one `join` for `meeting` to the node at `ws_url` and reads its first answer.
pub async fn first_answer(ws_url: &str, meeting: &str) -> Answer {
    let token = token(
        meeting,
        &format!("probe-{}", hearth_actors::ids::random_string(6)),
    );
    let (mut ws, _) = match tokio_tungstenite::connect_async(ws_url).await {
        Ok(ws) => ws,
        Err(e) => return Answer::Error(format!("TRANSPORT {e}")),
    };
    let join = serde_json::json!({ "join": { "token": token, "meeting": meeting } });
    if ws
        .send(Message::Text(join.to_string().into()))
        .await
        .is_err()
    {
        return Answer::Error("TRANSPORT send".into());
    }
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(frame)) = ws.next().await {
            let Message::Text(text) = frame else { continue };
            let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap_or_default();
            if v.get("join").is_some() {
                return Answer::Joined;
            }
            if let Some(r) = v.get("redirect") {
                let s = |k: &str| r.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
                return Answer::Redirect(s("nodeId"), s("url"));
            }
            if let Some(e) = v.get("error") {
                return Answer::Error(
                    e.get("code")
                        .and_then(|c| c.as_str())
                        .unwrap_or("?")
                        .to_owned(),
                );
            }
        }
        Answer::Error("TRANSPORT closed".into())
    })
    .await
    .unwrap_or_else(|_| Answer::Error("CLIENT_TIMEOUT".into()));
    let _ = ws.close(None).await;
    answer
}

/// The node that hosts `meeting` according to the answer of node `entry`.
pub fn host_of(entry: &str, answer: &Answer) -> Option<String> {
    match answer {
        Answer::Joined => Some(entry.to_owned()),
        Answer::Redirect(id, _) => Some(id.clone()),
        Answer::Error(_) => None,
    }
}

/// Removes a directory tree, ignoring errors (test cleanup).
pub fn remove(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// A node-wide admin token (the app's backend) signed with the cluster's key.
pub fn admin_token() -> String {
    let grants = Grants {
        admin: true,
        ..Grants::default()
    };
    token_with("", "backend", grants)
}

/// A participant token that may join `meeting` but not create it.
pub fn token_without_create(meeting: &str, identity: &str) -> String {
    let grants = Grants {
        create: false,
        ..Grants::default()
    };
    token_with(meeting, identity, grants)
}

/// Debian's libfaketime (package `faketime`), under `/usr/lib/<arch>/faketime/`.
fn libfaketime() -> Option<std::path::PathBuf> {
    std::fs::read_dir("/usr/lib")
        .ok()?
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .chain([std::path::PathBuf::from(
            "/usr/lib/faketime/libfaketime.so.1",
        )])
        .find(|p| p.exists())
}
