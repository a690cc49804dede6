//! A cluster of `hearth` processes on one Redis (each test starts its own `redis-server` on
//! a unix socket and its own nodes): registration, placement, redirects, races, drain,
//! failover after `kill -9`, Redis restarted, paused and gone, a node back with its id, and
//! forged leases.
//!
//! Skipped without `redis-server` unless `HEARTH_TEST_REQUIRE_REDIS=1` (set by
//! `tests/run.sh`, which installs Debian's package).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use hearth_tests::cluster::{
    Answer, ClusterNode, Redis, first_answer, host_of, token, wait_for_nodes,
};
use hearth_tests::{ClientOptions, Kind, TestClient};

const T: Duration = Duration::from_secs(20);

async fn three_nodes(redis: &Redis) -> [ClusterNode; 3] {
    let nodes = [
        ClusterNode::start(redis, "n1", &[]).await,
        ClusterNode::start(redis, "n2", &[]).await,
        ClusterNode::start(redis, "n3", &[]).await,
    ];
    wait_for_nodes(&[&nodes[0], &nodes[1], &nodes[2]], 3, T).await;
    nodes
}

fn by_id<'a>(nodes: &'a [ClusterNode], id: &str) -> &'a ClusterNode {
    nodes
        .iter()
        .find(|n| n.id == id)
        .unwrap_or_else(|| panic!("no node {id}"))
}

async fn join_at(url: &str, meeting: &str, name: &str, opts: ClientOptions) -> TestClient {
    TestClient::join_with_token(url, &token(meeting, name), meeting, opts)
        .await
        .unwrap_or_else(|e| panic!("{name} joins {meeting} at {url}: {e:?}"))
}

/// The name of a new meeting that `node` hosts (names `{prefix}-0`, `-1`, ... are asked for
/// through it until one is placed there).
async fn meeting_hosted_by(node: &ClusterNode, prefix: &str) -> String {
    for i in 0..30 {
        let m = format!("{prefix}-{i}");
        if first_answer(&node.ws_url(), &m).await == Answer::Joined {
            return m;
        }
    }
    panic!(
        "{} hosted none of 30 new meetings asked for through it",
        node.id
    );
}

/// The node id in a client's signaling URL.
fn node_of(nodes: &[ClusterNode], client: &TestClient) -> String {
    nodes
        .iter()
        .find(|n| n.ws_url() == client.url())
        .map(|n| n.id.clone())
        .unwrap_or_else(|| panic!("{} is no node's URL", client.url()))
}

/// Two participants entering through different nodes meet on the host and receive each
/// other's media; `hearthctl nodes` lists the three nodes and their meetings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_through_any_node_meet_on_the_host() {
    let Some(redis) = Redis::start("meet").await else {
        return;
    };
    let nodes = three_nodes(&redis).await;
    let alice = join_at(&nodes[0].ws_url(), "standup", "alice", ClientOptions::av()).await;
    let bob = join_at(&nodes[1].ws_url(), "standup", "bob", ClientOptions::av()).await;
    assert_eq!(alice.url(), bob.url(), "both on one node");
    let host = node_of(&nodes, &alice);
    // Whoever entered elsewhere was redirected once, to the host.
    for (client, entry) in [(&alice, "n1"), (&bob, "n2")] {
        if entry == host {
            assert!(client.redirects().is_empty());
        } else {
            assert_eq!(client.redirects(), std::slice::from_ref(&host));
        }
    }
    let (a, b) = (
        alice.participant_id().to_owned(),
        bob.participant_id().to_owned(),
    );
    alice.wait_for_media_from(&[&b], 25, 15, T).await;
    bob.wait_for_media_from(&[&a], 25, 15, T).await;

    // The operator's view, from a node that does not host the meeting.
    let other = nodes.iter().find(|n| n.id != host).expect("a non-host");
    let deadline = Instant::now() + T;
    loop {
        let out = other
            .hearthctl()
            .arg("nodes")
            .output()
            .await
            .expect("hearthctl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "hearthctl nodes: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: BTreeMap<String, Vec<String>> = text
            .lines()
            .skip(1)
            .map(|l| {
                let cols: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
                (cols[0].clone(), cols)
            })
            .collect();
        assert!(
            ["n1", "n2", "n3"].iter().all(|id| rows.contains_key(*id)),
            "every node listed: {text}"
        );
        // Columns: NODE [*] STATE REGION CPU MEETINGS PARTICIPANTS ...
        let host_row = &rows[&host];
        let at = if host_row.get(1).is_some_and(|c| c == "*") {
            2
        } else {
            1
        };
        if host_row.get(at + 3).map(String::as_str) == Some("1")
            && host_row.get(at + 4).map(String::as_str) == Some("2")
        {
            assert_eq!(host_row[at], "active");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the host never showed 1 meeting, 2 participants: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // `tree --node` asks the host itself.
    let out = other
        .hearthctl()
        .args(["tree", "--node", &host])
        .output()
        .await
        .expect("hearthctl runs");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        tree.contains("standup"),
        "the host's tree has the meeting: {tree}"
    );
    assert!(tree.contains("cluster"), "and its cluster actor: {tree}");
}

/// New meetings spread over the nodes by load, wherever they are asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_meetings_spread_over_the_nodes() {
    let Some(redis) = Redis::start("spread").await else {
        return;
    };
    let nodes = three_nodes(&redis).await;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..30 {
        let entry = &nodes[i % 3];
        let answer = first_answer(&entry.ws_url(), &format!("spread-{i}")).await;
        let host = host_of(&entry.id, &answer).unwrap_or_else(|| panic!("placed: {answer:?}"));
        *per_node.entry(host).or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "every node got meetings: {per_node:?}");
    assert!(
        per_node.values().all(|&n| (6..=14).contains(&n)),
        "30 meetings spread evenly enough: {per_node:?}"
    );
}

/// Three nodes asked at once for the same new meeting agree on one host, 100 times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_nodes_end_with_one_host() {
    let Some(redis) = Redis::start("race").await else {
        return;
    };
    let nodes = three_nodes(&redis).await;
    let urls: Vec<String> = nodes.iter().map(ClusterNode::ws_url).collect();
    for i in 0..100 {
        let meeting = format!("race-{i}");
        let (a, b, c) = tokio::join!(
            first_answer(&urls[0], &meeting),
            first_answer(&urls[1], &meeting),
            first_answer(&urls[2], &meeting),
        );
        let hosts: HashSet<Option<String>> = [("n1", &a), ("n2", &b), ("n3", &c)]
            .iter()
            .map(|(entry, answer)| host_of(entry, answer))
            .collect();
        assert_eq!(hosts.len(), 1, "round {i}: one host, got {a:?} {b:?} {c:?}");
        assert!(!hosts.contains(&None), "round {i}: {a:?} {b:?} {c:?}");
        let owner = redis
            .cli(&["GET", &format!("hearth:meeting:{meeting}")])
            .await;
        let host = hosts.into_iter().next().flatten().unwrap_or_default();
        assert!(
            owner.starts_with(&format!("{host}|")),
            "round {i}: the lease names {host}: {owner}"
        );
    }
}

/// A draining node takes no new meetings (they go elsewhere, also when asked through it)
/// while its own meeting goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_gets_no_new_meetings() {
    let Some(redis) = Redis::start("drain").await else {
        return;
    };
    let nodes = three_nodes(&redis).await;
    // A meeting on n2, so that n2 stays up while it drains.
    let meeting = meeting_hosted_by(&nodes[1], "keep").await;
    let held = join_at(
        &nodes[1].ws_url(),
        &meeting,
        "holder",
        ClientOptions::default(),
    )
    .await;
    assert!(held.redirects().is_empty());
    let out = nodes[1]
        .hearthctl()
        .args(["drain", "--deadline", "120s"])
        .output()
        .await
        .expect("hearthctl runs");
    assert!(
        out.status.success(),
        "drain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every node sees n2 draining within a heartbeat or two.
    let deadline = Instant::now() + T;
    loop {
        let out = nodes[0]
            .hearthctl()
            .args(["nodes", "--json"])
            .output()
            .await
            .expect("runs");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let draining = v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["id"] == "n2" && n["state"] == "draining");
        if draining {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n2 never showed as draining: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..20 {
        let entry = &nodes[i % 3];
        let answer = first_answer(&entry.ws_url(), &format!("after-drain-{i}")).await;
        let host = host_of(&entry.id, &answer).unwrap_or_else(|| panic!("placed: {answer:?}"));
        assert_ne!(
            host, "n2",
            "a new meeting placed on the draining node ({answer:?})"
        );
    }
    held.wait_until("still in the meeting, told of the drain", T, |s| {
        s.draining.is_some() && !s.closed
    })
    .await;
}

/// The host is killed (`kill -9`) in the middle of a meeting: its participants join again
/// through the node they entered by, and meet on another node, media flowing, within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_host_fails_over_within_seconds() {
    let Some(redis) = Redis::start("failover").await else {
        return;
    };
    let mut nodes = three_nodes(&redis).await;
    let alice = join_at(&nodes[0].ws_url(), "failover", "alice", ClientOptions::av()).await;
    let bob = join_at(&nodes[1].ws_url(), "failover", "bob", ClientOptions::av()).await;
    let (a, b) = (
        alice.participant_id().to_owned(),
        bob.participant_id().to_owned(),
    );
    alice.wait_for_media_from(&[&b], 10, 5, T).await;
    let host = node_of(&nodes, &alice);
    let killed_at = Instant::now();
    let host_index = nodes.iter().position(|n| n.id == host).expect("host");
    nodes[host_index].kill().await;
    alice.wait_until("the socket closed", T, |s| s.closed).await;
    drop((alice, bob));
    // Each client retries through a live entry node (a load balancer would pick one).
    let entries: Vec<String> = nodes
        .iter()
        .filter(|n| n.id != host)
        .map(ClusterNode::ws_url)
        .collect();
    let rejoin = |name: &'static str, entry: String| async move {
        loop {
            match TestClient::join_with_token(
                &entry,
                &token("failover", name),
                "failover",
                ClientOptions::av(),
            )
            .await
            {
                Ok(client) => return client,
                Err(e) => {
                    assert!(
                        killed_at.elapsed() < Duration::from_secs(10),
                        "{name} could not rejoin within 10 s: {e:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    };
    let (alice, bob) = tokio::join!(
        rejoin("alice", entries[0].clone()),
        rejoin("bob", entries[1].clone())
    );
    assert_eq!(alice.url(), bob.url(), "both on one node again");
    let new_host = node_of(&nodes, &alice);
    assert_ne!(new_host, host);
    let (a2, b2) = (
        alice.participant_id().to_owned(),
        bob.participant_id().to_owned(),
    );
    let left = Duration::from_secs(10).saturating_sub(killed_at.elapsed());
    alice.wait_for_media_from(&[&b2], 5, 2, left).await;
    bob.wait_for_media_from(&[&a2], 5, 2, left).await;
    let took = killed_at.elapsed();
    eprintln!(
        "failover: host {host} killed, media again on {new_host} after {took:?} (ids {a} {b} -> {a2} {b2})"
    );
    assert!(
        took < Duration::from_secs(10),
        "media flowing again after {took:?}"
    );
    let moved: f64 = {
        let mut sum = 0.0;
        for n in nodes.iter().filter(|n| n.id != host) {
            sum += n
                .metric("hearth_cluster_placements_total{kind=\"moved\"}")
                .await;
        }
        sum
    };
    assert!(
        moved >= 1.0,
        "the meeting was moved off the dead host (counted)"
    );
    let _ = by_id(&nodes, &new_host);
    let owner = redis.cli(&["GET", "hearth:meeting:failover"]).await;
    assert!(
        owner.starts_with(&format!("{new_host}|")),
        "the lease names {new_host}: {owner}"
    );
}

/// Redis killed: the node keeps its meeting (joins to it go on) and refuses to place new
/// ones with a clear code; Redis back empty: the node registers again, re-claims the
/// lease of its meeting, and places new meetings. Redis paused (`DEBUG SLEEP`): a join of
/// a new meeting fails fast instead of hanging, and works once Redis answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gone_paused_and_restarted() {
    let Some(mut redis) = Redis::start("outage").await else {
        return;
    };
    let n1 = ClusterNode::start(&redis, "n1", &[]).await;
    wait_for_nodes(&[&n1], 1, T).await;
    let alice = join_at(&n1.ws_url(), "steady", "alice", ClientOptions::av()).await;
    redis.kill().await;
    // The node notices within a heartbeat (its next command fails).
    let deadline = Instant::now() + T;
    while n1.metric("hearth_cluster_redis_errors_total").await < 1.0 {
        assert!(Instant::now() < deadline, "no Redis error counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bob = join_at(&n1.ws_url(), "steady", "bob", ClientOptions::av()).await;
    let a = alice.participant_id().to_owned();
    bob.wait_for_media_from(&[&a], 10, 5, T).await;
    assert_eq!(
        first_answer(&n1.ws_url(), "brand-new").await,
        Answer::Error("NODE_UNAVAILABLE".into())
    );

    redis.restart().await;
    let deadline = Instant::now() + T;
    loop {
        let owner = redis.cli(&["GET", "hearth:meeting:steady"]).await;
        if owner.starts_with("n1|") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lease was never re-claimed: {owner:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        first_answer(&n1.ws_url(), "brand-new").await,
        Answer::Joined
    );
    assert!(n1.metric("hearth_cluster_redis_connects_total").await >= 2.0);

    // Paused for 3 s: a placement gives up after its 1 s command timeout.
    let sleeper = {
        let socket = redis.socket();
        tokio::spawn(async move {
            let _ = tokio::process::Command::new("redis-cli")
                .arg("-s")
                .arg(socket)
                .args(["DEBUG", "SLEEP", "3"])
                .output()
                .await;
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    let answer = first_answer(&n1.ws_url(), "during-pause").await;
    assert_eq!(answer, Answer::Error("NODE_UNAVAILABLE".into()));
    assert!(
        asked.elapsed() < Duration::from_millis(2500),
        "answered in {:?}",
        asked.elapsed()
    );
    let _ = sleeper.await;
    let deadline = Instant::now() + T;
    while first_answer(&n1.ws_url(), "after-pause").await != Answer::Joined {
        assert!(
            Instant::now() < deadline,
            "never placed again after the pause"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The meeting lived through all of it.
    let b = bob.participant_id().to_owned();
    let before = alice.stats().packets_from(&b, Kind::Audio);
    alice
        .wait_until("media still flowing", T, |s| {
            s.packets_from(&b, Kind::Audio) > before + 10
        })
        .await;
}

/// A host killed and started again at once with the same id: its old entry blocks the new
/// process until it expires, then the new one registers; the old life's meeting is placed
/// again (its lease names a boot that is gone), never hosted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_with_the_same_id() {
    let Some(redis) = Redis::start("sameid").await else {
        return;
    };
    let mut n1 = ClusterNode::start(&redis, "n1", &[]).await;
    let n2 = ClusterNode::start(&redis, "n2", &[]).await;
    wait_for_nodes(&[&n1, &n2], 2, T).await;
    let meeting = meeting_hosted_by(&n1, "lives").await;
    let old = redis
        .cli(&["GET", &format!("hearth:meeting:{meeting}")])
        .await;
    assert!(old.starts_with("n1|"));
    n1.restart().await;
    // Registered again (a new boot id) once the old entry expired.
    let deadline = Instant::now() + T;
    loop {
        let boot = redis.cli(&["HGET", "hearth:node:n1", "boot"]).await;
        if !boot.trim().is_empty() && !old.trim().ends_with(boot.trim()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n1 never registered again: {}",
            n1.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The meeting is placed again, on one node.
    let (u1, u2) = (n1.ws_url(), n2.ws_url());
    let (a, b) = tokio::join!(first_answer(&u1, &meeting), first_answer(&u2, &meeting));
    let host_a = host_of("n1", &a).expect("placed");
    let host_b = host_of("n2", &b).expect("placed");
    assert_eq!(host_a, host_b, "{a:?} {b:?}");
    let new = redis
        .cli(&["GET", &format!("hearth:meeting:{meeting}")])
        .await;
    assert_ne!(new.trim(), old.trim(), "the old life's lease was replaced");
}

/// Leases nobody can honour (a node that never existed, a live node's id with a wrong
/// boot, a value without a boot) are stale: the meeting is placed on a live node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_stale_leases_are_replaced() {
    let Some(redis) = Redis::start("forged").await else {
        return;
    };
    let n1 = ClusterNode::start(&redis, "n1", &[]).await;
    let n2 = ClusterNode::start(&redis, "n2", &[]).await;
    wait_for_nodes(&[&n1, &n2], 2, T).await;
    for (meeting, forged) in [
        ("ghost", "ghost-node|0123"),
        ("wrong-boot", "n2|not-its-boot"),
        ("garbage", "no-separator-at-all"),
    ] {
        let key = format!("hearth:meeting:{meeting}");
        assert_eq!(
            redis
                .cli(&["SET", &key, forged, "PX", "60000"])
                .await
                .trim(),
            "OK"
        );
        let answer = first_answer(&n1.ws_url(), meeting).await;
        let host = host_of("n1", &answer).unwrap_or_else(|| panic!("{meeting}: {answer:?}"));
        let lease = redis.cli(&["GET", &key]).await;
        assert!(lease.starts_with(&format!("{host}|")), "{meeting}: {lease}");
        let boot = redis
            .cli(&["HGET", &format!("hearth:node:{host}"), "boot"])
            .await;
        assert_eq!(lease.trim(), format!("{host}|{}", boot.trim()), "{meeting}");
    }
    // A redirect names only live nodes: a client that follows it lands on the host.
    let c = join_at(&n2.ws_url(), "ghost", "carol", ClientOptions::default()).await;
    let lease = redis.cli(&["GET", "hearth:meeting:ghost"]).await;
    assert!(lease.starts_with(&format!(
        "{}|",
        if c.url() == n1.ws_url() { "n1" } else { "n2" }
    )));
    // A token for another meeting cannot be used to probe placement.
    let bad = hearth_tests::cluster::token("other", "mallory");
    let err = TestClient::join_with_token(&n1.ws_url(), &bad, "ghost", ClientOptions::default())
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code, "WRONG_MEETING");
}

/// REST and gRPC calls about a meeting reach its host from any node: get, participants,
/// messages, removal; a meeting created through one node is placed by load and found from
/// every node; the meeting list is the cluster's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_calls_reach_the_host_from_any_node() {
    let Some(redis) = Redis::start("api").await else {
        return;
    };
    let nodes = three_nodes(&redis).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let bearer = format!("Bearer {}", hearth_tests::cluster::admin_token());
    // Participants in "weekly", hosted somewhere.
    let ada = join_at(
        &nodes[0].ws_url(),
        "weekly",
        "ada",
        ClientOptions::default(),
    )
    .await;
    let bob = join_at(
        &nodes[0].ws_url(),
        "weekly",
        "bob",
        ClientOptions::default(),
    )
    .await;
    let host = node_of(&nodes, &ada);
    for n in nodes.iter().filter(|n| n.id != host) {
        let url = format!("{}/v1/meetings/weekly", n.http_url());
        let r = http
            .get(&url)
            .header("authorization", &bearer)
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), 200, "GET through {}", n.id);
        let m: serde_json::Value = r.json().await.expect("json");
        assert_eq!(m["participants"].as_array().map(Vec::len), Some(2), "{m}");
        let r = http
            .post(format!("{url}/messages"))
            .header("authorization", &bearer)
            .json(&serde_json::json!({ "text": format!("hello from {}", n.id) }))
            .send()
            .await
            .expect("POST message");
        assert_eq!(r.status(), 202, "message through {}", n.id);
    }
    ada.wait_until("both messages", T, |s| s.app_messages.len() == 2)
        .await;
    // Removal through a non-host node.
    let other = nodes.iter().find(|n| n.id != host).expect("non-host");
    let r = http
        .delete(format!(
            "{}/v1/meetings/weekly/participants/{}",
            other.http_url(),
            bob.participant_id()
        ))
        .header("authorization", &bearer)
        .send()
        .await
        .expect("DELETE");
    assert!(
        r.status().is_success(),
        "removal through {}: {}",
        other.id,
        r.status()
    );
    bob.wait_until("removed", T, |s| s.closed).await;
    // A meeting that runs nowhere is 404 from everywhere.
    let r = http
        .get(format!("{}/v1/meetings/nowhere", other.http_url()))
        .header("authorization", &bearer)
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 404);

    // Creation through one node: placed by load, found from the others.
    let mut hosts = HashSet::new();
    for i in 0..6 {
        let r = http
            .post(format!("{}/v1/meetings", nodes[1].http_url()))
            .header("authorization", &bearer)
            .json(&serde_json::json!({ "id": format!("made-{i}") }))
            .send()
            .await
            .expect("POST meeting");
        assert_eq!(
            r.status(),
            201,
            "create made-{i}: {}",
            r.text().await.unwrap_or_default()
        );
        let lease = redis
            .cli(&["GET", &format!("hearth:meeting:made-{i}")])
            .await;
        hosts.insert(lease.split('|').next().unwrap_or_default().to_owned());
        for n in &nodes {
            let r = http
                .get(format!("{}/v1/meetings/made-{i}", n.http_url()))
                .header("authorization", &bearer)
                .send()
                .await
                .expect("GET");
            assert_eq!(r.status(), 200, "made-{i} through {}", n.id);
        }
    }
    assert!(hosts.len() >= 2, "created meetings were spread: {hosts:?}");
    // A second create of the same name is refused by its host, from any node.
    let r = http
        .post(format!("{}/v1/meetings", nodes[2].http_url()))
        .header("authorization", &bearer)
        .json(&serde_json::json!({ "id": "made-0" }))
        .send()
        .await
        .expect("POST meeting");
    assert_eq!(r.status(), 409);
    // The list is the cluster's, from any node, page by page.
    for n in &nodes {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{}/v1/meetings?limit=3", n.http_url());
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page: serde_json::Value = http
                .get(&url)
                .header("authorization", &bearer)
                .send()
                .await
                .expect("list")
                .json()
                .await
                .expect("json");
            for m in page["meetings"].as_array().into_iter().flatten() {
                seen.push(m["id"].as_str().unwrap_or_default().to_owned());
            }
            match page["nextCursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        let mut want: Vec<String> = (0..6).map(|i| format!("made-{i}")).collect();
        want.push("weekly".into());
        assert_eq!(seen, want, "the list through {}", n.id);
    }
    // gRPC too: a non-host answers for the host.
    let channel = tonic::transport::Endpoint::from_shared(other.http_url())
        .expect("url")
        .connect()
        .await
        .expect("gRPC connects");
    let mut client = hearth_proto::v1::meeting_service_client::MeetingServiceClient::new(channel);
    let mut request = tonic::Request::new(hearth_proto::v1::GetMeetingRequest {
        id: "weekly".into(),
    });
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().expect("ascii"));
    let m = client
        .get(request)
        .await
        .expect("gRPC Get through a non-host")
        .into_inner();
    assert_eq!(m.participants.len(), 1, "bob was removed");
}

/// A drain's deadline moves the meetings still on the node: their participants are told to
/// reconnect (not that the meeting ended), the node exits, and they meet again elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_deadline_moves_the_meetings() {
    let Some(redis) = Redis::start("drainmove").await else {
        return;
    };
    let mut n1 = ClusterNode::start(&redis, "n1", &[]).await;
    let n2 = ClusterNode::start(&redis, "n2", &[]).await;
    wait_for_nodes(&[&n1, &n2], 2, T).await;
    let meeting = meeting_hosted_by(&n1, "moving").await;
    let ada = join_at(&n1.ws_url(), &meeting, "ada", ClientOptions::default()).await;
    // The app set its metadata and a limit: they move with it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let bearer = format!("Bearer {}", hearth_tests::cluster::admin_token());
    let r = http
        .patch(format!("{}/v1/meetings/{meeting}", n2.http_url()))
        .header("authorization", &bearer)
        .json(&serde_json::json!({
            "metadata": "quarterly review",
            "settings": { "maxParticipants": 7, "emptyTimeoutSeconds": 45 }
        }))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    // Written to the cluster store within a heartbeat.
    let deadline = Instant::now() + T;
    while !redis
        .cli(&[
            "HGET",
            &format!("hearth:meeting:{meeting}:info"),
            "metadata",
        ])
        .await
        .contains("quarterly review")
    {
        assert!(
            Instant::now() < deadline,
            "the meeting's info was never written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = n1
        .hearthctl()
        .args(["drain", "--deadline", "2s"])
        .output()
        .await
        .expect("hearthctl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = ada
        .wait_until("told to reconnect", T, |s| {
            s.reconnect.is_some() || s.meeting_ended.is_some()
        })
        .await;
    assert!(
        seen.meeting_ended.is_none(),
        "the meeting moved, it did not end: {:?}",
        seen.events
    );
    let deadline = Instant::now() + T;
    while n1.is_running() {
        assert!(Instant::now() < deadline, "the drained node never exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ada's token may not create meetings: the moved meeting is still hers to join (its
    // lease names the node that left, so it is placed again, not unknown).
    let token = hearth_tests::cluster::token_without_create(&meeting, "ada");
    let again =
        TestClient::join_with_token(&n2.ws_url(), &token, &meeting, ClientOptions::default())
            .await
            .expect("ada joins the moved meeting without the create grant");
    assert_eq!(again.url(), n2.ws_url(), "placed on the node that is left");
    let m: serde_json::Value = http
        .get(format!("{}/v1/meetings/{meeting}", n2.http_url()))
        .header("authorization", &bearer)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(m["metadata"], "quarterly review", "{m}");
    assert_eq!(m["settings"]["maxParticipants"], 7, "{m}");
    assert_eq!(m["settings"]["emptyTimeoutSeconds"], 45, "{m}");
}

/// A node killed for good leaves open usage intervals in the shared ledger; once it is gone
/// from the registry and its checkpoints stop, another node closes them at their last
/// checkpoint, so the meeting and its participant are billed without waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_usage_is_closed_by_another() {
    let Some(redis) = Redis::start("deadusage").await else {
        return;
    };
    let ledger = format!("sqlite://{}", redis.dir.join("ledger.db").display());
    let mut n1 = ClusterNode::start(&redis, "n1", &["--database-url", &ledger]).await;
    let n2 = ClusterNode::start(&redis, "n2", &["--database-url", &ledger]).await;
    wait_for_nodes(&[&n1, &n2], 2, T).await;
    let meeting = meeting_hosted_by(&n1, "billed").await;
    let ada = join_at(&n1.ws_url(), &meeting, "ada", ClientOptions::default()).await;
    // A few checkpoints of n1's intervals.
    tokio::time::sleep(Duration::from_secs(2)).await;
    n1.kill().await;
    drop(ada);
    let deadline = Instant::now() + Duration::from_secs(60);
    while n2.metric("hearth_cluster_recovered_intervals_total").await < 2.0 {
        assert!(
            Instant::now() < deadline,
            "n2 never closed n1's usage: {}",
            n2.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let body = reqwest::Client::new()
        .get(format!(
            "{}/v1/usage/events?after=0&limit=500",
            n2.http_url()
        ))
        .header(
            "authorization",
            format!("Bearer {}", hearth_tests::cluster::admin_token()),
        )
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .expect("usage events")
        .text()
        .await
        .expect("text");
    let rows: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect();
    let billed = |meter: &str| -> i64 {
        rows.iter()
            .filter(|r| {
                r["meter"] == meter && r["meeting"] == meeting.as_str() && r["node"] == "n1"
            })
            .map(|r| r["quantity"].as_i64().unwrap_or(0))
            .sum()
    };
    assert!(
        billed("participant_ms") >= 1000,
        "ada's time on n1 billed: {body}"
    );
    assert!(
        billed("meeting_ms") >= 1000,
        "the meeting's time on n1 billed: {body}"
    );
}

/// Nodes whose wall clocks disagree (one 30 minutes ahead, one 8 s behind: within the
/// tokens' leeway) place, race and forward exactly as before: every expiry is Redis's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_clocks_change_nothing() {
    let Some(redis) = Redis::start("skew").await else {
        return;
    };
    let have_faketime = std::process::Command::new("faketime")
        .arg("--version")
        .output()
        .is_ok();
    if !have_faketime {
        assert!(
            std::env::var("HEARTH_TEST_REQUIRE_REDIS").is_err(),
            "faketime is not installed (tests/run.sh installs it)"
        );
        eprintln!("skipped: no faketime");
        return;
    }
    let nodes = [
        ClusterNode::start(&redis, "n1", &[]).await,
        ClusterNode::start(&redis, "n2", &["--clock-offset", "+30m"]).await,
        ClusterNode::start(&redis, "n3", &["--clock-offset", "-8s"]).await,
    ];
    wait_for_nodes(&[&nodes[0], &nodes[1], &nodes[2]], 3, T).await;
    let urls: Vec<String> = nodes.iter().map(ClusterNode::ws_url).collect();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..30 {
        let meeting = format!("skew-{i}");
        let (a, b, c) = tokio::join!(
            first_answer(&urls[0], &meeting),
            first_answer(&urls[1], &meeting),
            first_answer(&urls[2], &meeting),
        );
        let hosts: HashSet<Option<String>> = [("n1", &a), ("n2", &b), ("n3", &c)]
            .iter()
            .map(|(entry, answer)| host_of(entry, answer))
            .collect();
        assert_eq!(hosts.len(), 1, "round {i}: {a:?} {b:?} {c:?}");
        let host = hosts.into_iter().next().flatten().expect("a host");
        *per_node.entry(host).or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "every node hosts some: {per_node:?}");
    // Calls forwarded by a skewed node (its token is minted on its clock) are accepted.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let bearer = format!("Bearer {}", hearth_tests::cluster::admin_token());
    for n in &nodes {
        for i in 0..6 {
            let r = http
                .get(format!("{}/v1/meetings/skew-{i}", n.http_url()))
                .header("authorization", &bearer)
                .send()
                .await
                .expect("GET");
            assert_eq!(r.status(), 200, "skew-{i} through {}", n.id);
        }
    }
}

/// The gRPC streams reach the host from any node: a track's packets (`SubscribeTrack`), a
/// track pushed in (`PublishTrack`), a meeting's events (`EventService.Subscribe`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_streams_reach_the_host_from_any_node() {
    use hearth_proto::v1 as pb;
    let Some(redis) = Redis::start("streams").await else {
        return;
    };
    let nodes = three_nodes(&redis).await;
    let alice = join_at(
        &nodes[0].ws_url(),
        "broadcast",
        "alice",
        ClientOptions {
            publish_audio: true,
            ..ClientOptions::default()
        },
    )
    .await;
    let host = node_of(&nodes, &alice);
    let other = nodes.iter().find(|n| n.id != host).expect("a non-host");
    let track = alice
        .wait_until("alice's audio track", T, |s| {
            s.own_tracks.contains_key(&Kind::Audio)
        })
        .await
        .own_tracks[&Kind::Audio]
        .clone();
    let channel = tonic::transport::Endpoint::from_shared(other.http_url())
        .expect("url")
        .connect()
        .await
        .expect("gRPC connects");
    fn authed<T>(msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        let bearer = format!("Bearer {}", hearth_tests::cluster::admin_token());
        r.metadata_mut()
            .insert("authorization", bearer.parse().expect("ascii"));
        r
    }

    // SubscribeTrack through a non-host: `started`, then alice's packets.
    let mut media = pb::media_service_client::MediaServiceClient::new(channel.clone());
    let mut packets = media
        .subscribe_track(authed(pb::SubscribeTrackRequest {
            meeting: "broadcast".into(),
            track_id: track.clone(),
        }))
        .await
        .expect("SubscribeTrack through a non-host")
        .into_inner();
    let first = tokio::time::timeout(T, packets.message())
        .await
        .expect("in time");
    assert!(
        matches!(
            first,
            Ok(Some(pb::TrackPacket {
                kind: Some(pb::track_packet::Kind::Started(_))
            }))
        ),
        "{first:?}"
    );
    let mut rtp = 0;
    while rtp < 10 {
        match tokio::time::timeout(T, packets.message())
            .await
            .expect("in time")
        {
            Ok(Some(pb::TrackPacket {
                kind: Some(pb::track_packet::Kind::Rtp(_)),
            })) => rtp += 1,
            other => panic!("expected RTP, got {other:?}"),
        }
    }
    drop(packets);

    // PublishTrack through a non-host: the virtual participant appears on the host.
    let start = hearth_tests::opus_start("broadcast", "radio");
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tx.send(start).await.expect("queued");
    let mut replies = media
        .publish_track(authed(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .expect("PublishTrack through a non-host")
        .into_inner();
    let started = tokio::time::timeout(T, replies.message())
        .await
        .expect("in time");
    let Ok(Some(pb::PublishTrackResponse {
        kind: Some(pb::publish_track_response::Kind::Started(started)),
    })) = started
    else {
        panic!("expected started, got {started:?}");
    };
    // A live source, one packet per 20 ms (a burst sent at once could all arrive before
    // alice's subscription to radio is negotiated, on a busy machine).
    let source = tokio::spawn({
        let tx = tx.clone();
        async move {
            let mut clock = tokio::time::interval(Duration::from_millis(20));
            let mut seq = 0u16;
            loop {
                clock.tick().await;
                let packet = hearth_tests::opus_rtp(seq, &[0xf8, 0xff, 0xfe]);
                if tx.send(packet).await.is_err() {
                    break;
                }
                seq = seq.wrapping_add(1);
            }
        }
    });
    let radio = started.participant_id.clone();
    alice
        .wait_until("radio's packets reach alice on the host", T, |s| {
            s.packets_from(&radio, Kind::Audio) >= 10
        })
        .await;
    source.abort();

    // The meeting's events through a non-host: from the host's log.
    let mut events = pb::event_service_client::EventServiceClient::new(channel);
    let mut stream = events
        .subscribe(authed(pb::SubscribeEventsRequest {
            meeting: "broadcast".into(),
            resume_after: 0,
            from_oldest: true,
        }))
        .await
        .expect("Subscribe through a non-host")
        .into_inner();
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &String| e.contains(&radio)) {
        let event = tokio::time::timeout(T, stream.message())
            .await
            .expect("in time")
            .expect("an event")
            .expect("the stream goes on");
        seen.push(format!("{event:?}"));
    }
    drop(tx);
}

/// An ended meeting stays ended: its lease goes as it ends, so a joiner who may not create
/// meetings gets MEETING_NOT_FOUND at once, from any node (the lease is not adopted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_meeting_is_not_started_again_by_a_joiner_without_create() {
    let Some(redis) = Redis::start("ended").await else {
        return;
    };
    let nodes = three_nodes(&redis).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let bearer = format!("Bearer {}", hearth_tests::cluster::admin_token());
    for i in 0..5 {
        let meeting = format!("finished-{i}");
        let r = http
            .post(format!("{}/v1/meetings", nodes[i % 3].http_url()))
            .header("authorization", &bearer)
            .json(&serde_json::json!({ "id": meeting }))
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status(), 201);
        let r = http
            .delete(format!(
                "{}/v1/meetings/{meeting}",
                nodes[(i + 1) % 3].http_url()
            ))
            .header("authorization", &bearer)
            .send()
            .await
            .expect("DELETE");
        assert!(r.status().is_success(), "end {meeting}: {}", r.status());
        // The lease is gone within moments of the end (not the lease's 10 s).
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let lease = redis
                .cli(&["GET", &format!("hearth:meeting:{meeting}")])
                .await;
            if lease.trim().is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{meeting}'s lease outlived it: {lease}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for n in &nodes {
            let token = hearth_tests::cluster::token_without_create(&meeting, "late");
            let err = TestClient::join_with_token(
                &n.ws_url(),
                &token,
                &meeting,
                ClientOptions::default(),
            )
            .await
            .err()
            .unwrap_or_else(|| panic!("{meeting} was started again through {}", n.id));
            assert_eq!(err.code, "MEETING_NOT_FOUND", "through {}", n.id);
        }
    }
}

/// A WHIP POST that reaches a node not hosting the meeting is sent to the host with
/// `307 Temporary Redirect` (RFC 9725 §4.5), the same POST repeated at `Location`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_post_to_another_node_is_redirected_to_the_host() {
    let Some(redis) = Redis::start("whip").await else {
        return;
    };
    let n1 = ClusterNode::start(&redis, "n1", &[]).await;
    let n2 = ClusterNode::start(&redis, "n2", &[]).await;
    wait_for_nodes(&[&n1, &n2], 2, T).await;
    let meeting = meeting_hosted_by(&n1, "ingest").await;
    let _keeper = join_at(&n1.ws_url(), &meeting, "keeper", ClientOptions::default()).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = http
        .post(format!("{}/whip/{meeting}", n2.http_url()))
        .header(
            "authorization",
            format!("Bearer {}", token(&meeting, "obs")),
        )
        .header("content-type", "application/sdp")
        .body("v=0\r\n")
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 307);
    assert_eq!(
        r.headers()["location"].to_str().expect("ascii"),
        format!("{}/whip/{meeting}", n1.http_url())
    );
}
