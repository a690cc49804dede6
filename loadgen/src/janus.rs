//! The same participants against the Janus VideoRoom plugin (`--target janus`), over its
//! HTTP API (long-poll), for a side-by-side comparison on one machine.
//!
//! A Janus participant needs two peer connections (VideoRoom never mixes sending and
//! receiving): a publisher (the client offers) and one multistream subscriber (Janus
//! offers, and renegotiates as publishers come and go). Each gets its own address, so the
//! shard treats them as two peers. Candidates travel in the SDP and by trickle.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};

use crate::peer::{PeerOut, Sending};
use crate::shard::{Link, ShardCmd, ShardHandle};
use crate::signal::Counters;

pub type Http = Client<HttpConnector, Full<Bytes>>;

pub fn http() -> Http {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build(connector)
}

/// One simulated participant against Janus.
pub struct JanusPlan {
    /// Shard peer ids and addresses of the publisher and subscriber connections.
    pub pub_peer: (u32, std::net::IpAddr),
    pub sub_peer: (u32, std::net::IpAddr),
    pub room: u64,
    pub room_size: usize,
    pub display: String,
    pub sending: Sending,
}

struct Api {
    http: Http,
    base: String,
    session: u64,
    next: u64,
}

impl Api {
    async fn post(&mut self, path: &str, mut body: Value) -> Result<Value, String> {
        self.next += 1;
        body["transaction"] = json!(format!("t{}", self.next));
        let req = hyper::Request::post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.http.request(req))
            .await
            .map_err(|_| "janus did not answer in 10 s".to_owned())?
            .map_err(|e| format!("janus: {e}"))?;
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if v["janus"] == "error" {
            return Err(format!("janus error: {}", v["error"]));
        }
        Ok(v)
    }

    async fn handle(&mut self) -> Result<u64, String> {
        let sid = self.session;
        let v = self
            .post(
                &format!("/{sid}"),
                json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
            )
            .await?;
        v["data"]["id"]
            .as_u64()
            .ok_or_else(|| format!("attach: {v}"))
    }

    async fn message(
        &mut self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> Result<Value, String> {
        let sid = self.session;
        let mut m = json!({"janus": "message", "body": body});
        if let Some(j) = jsep {
            m["jsep"] = j;
        }
        self.post(&format!("/{sid}/{handle}"), m).await
    }
}

/// Long-polls the session's events into `tx` until the session or the receiver is gone.
async fn poll_events(http: Http, base: String, session: u64, tx: mpsc::UnboundedSender<Value>) {
    loop {
        let Ok(req) =
            hyper::Request::get(format!("{base}/{session}?maxev=20")).body(Full::new(Bytes::new()))
        else {
            return;
        };
        let resp = match tokio::time::timeout(Duration::from_secs(45), http.request(req)).await {
            Ok(Ok(r)) => r,
            _ => return,
        };
        let Ok(body) = resp.into_body().collect().await else {
            return;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
            return;
        };
        let events = match v {
            Value::Array(list) => list,
            other => vec![other],
        };
        for e in events {
            if e["janus"] == "error" {
                return;
            }
            if tx.send(e).is_err() {
                return;
            }
        }
    }
}

fn feeds(data: &Value) -> Vec<u64> {
    data["publishers"]
        .as_array()
        .map(|list| list.iter().filter_map(|p| p["id"].as_u64()).collect())
        .unwrap_or_default()
}

async fn add_peer(
    shard: &ShardHandle,
    (id, ip): (u32, std::net::IpAddr),
    sending: Sending,
    started: Instant,
    counts: bool,
) -> Result<mpsc::UnboundedReceiver<PeerOut>, String> {
    let (out, rx) = mpsc::unbounded_channel();
    let (reply, done) = oneshot::channel();
    let _ = shard.cmds.send(ShardCmd::Add {
        id,
        ip,
        sending,
        started,
        out,
        counts,
        watch: false,
        churn: false,
        link: Link::WebRtc,
        reply,
    });
    done.await.map_err(|_| "shard gone".to_owned())??;
    Ok(rx)
}

fn trickle(c: &rtc::peer_connection::transport::RTCIceCandidateInit) -> Value {
    // Janus takes candidates for the first m-line only (everything is bundled).
    json!({"candidate": c.candidate, "sdpMid": "0", "sdpMLineIndex": 0})
}

/// Runs one participant until `stop` flips.
pub async fn run(
    plan: JanusPlan,
    base: String,
    http: Http,
    shards: (ShardHandle, ShardHandle),
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let mut api = Api {
        http: http.clone(),
        base: base.clone(),
        session: 0,
        next: 0,
    };
    let setup = async {
        let v = api.post("", json!({"janus": "create"})).await?;
        api.session = v["data"]["id"].as_u64().ok_or("create: no session id")?;
        let hp = api.handle().await?;
        let hs = api.handle().await?;
        // The first to ask creates the room; the others get 427 (already exists).
        let _ = api
            .message(
                hp,
                json!({"request": "create", "room": plan.room, "publishers": plan.room_size.max(1),
                       "audiocodec": "opus", "videocodec": "vp8", "bitrate": 2_000_000, "fir_freq": 0}),
                None,
            )
            .await;
        Ok::<(u64, u64), String>((hp, hs))
    };
    let (hp, hs) = match setup.await {
        Ok(h) => h,
        Err(e) => {
            counters.error("JANUS_SETUP");
            counters.example(e);
            return;
        }
    };
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let poller = tokio::spawn(poll_events(http, base, api.session, ev_tx));
    let result = async {
        api.message(
            hp,
            json!({"request": "join", "ptype": "publisher", "room": plan.room, "display": plan.display}),
            None,
        )
        .await?;
        // Wait for `joined` (events for other handles may come first: keep them).
        let mut early = Vec::new();
        let joined = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(e) = events.recv().await {
                if e["sender"].as_u64() == Some(hp)
                    && e["plugindata"]["data"]["videoroom"] == "joined"
                {
                    return Some(e);
                }
                early.push(e);
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or("no `joined` event in 10 s")?;
        Ok::<(Value, Vec<Value>), String>((joined, early))
    }
    .await;
    let (joined, early) = match result {
        Ok(j) => j,
        Err(e) => {
            counters.error("JANUS_JOIN");
            counters.example(e);
            poller.abort();
            return;
        }
    };
    counters.joined.fetch_add(1, Ordering::Relaxed);
    let me = joined["plugindata"]["data"]["id"].as_u64().unwrap_or(0);
    let publishing = plan.sending.audio || plan.sending.video.is_some();
    let mut pub_out = if publishing {
        match add_peer(&shards.0, plan.pub_peer, plan.sending, started, false).await {
            Ok(rx) => Some(rx),
            Err(e) => {
                counters.error("PEER_SETUP");
                counters.example(e);
                poller.abort();
                return;
            }
        }
    } else {
        None
    };
    let nothing = Sending {
        audio: false,
        speaking: false,
        video: None,
    };
    let mut sub_out = match add_peer(&shards.1, plan.sub_peer, nothing, started, true).await {
        Ok(rx) => rx,
        Err(e) => {
            counters.error("PEER_SETUP");
            counters.example(e);
            poller.abort();
            return;
        }
    };
    let (pub_id, sub_id) = (plan.pub_peer.0, plan.sub_peer.0);
    let mut known: HashSet<u64> = HashSet::new();
    let mut subscribed = false;
    let mut pending: Vec<u64> = feeds(&joined["plugindata"]["data"]);
    for e in early {
        pending.extend(feeds(&e["plugindata"]["data"]));
    }
    loop {
        // Subscribe to publishers we have not seen yet.
        let new: Vec<u64> = pending
            .drain(..)
            .filter(|f| *f != me && known.insert(*f))
            .collect();
        if !new.is_empty() {
            let streams: Vec<Value> = new.iter().map(|f| json!({"feed": f})).collect();
            let body = if subscribed {
                json!({"request": "subscribe", "streams": streams})
            } else {
                subscribed = true;
                json!({"request": "join", "ptype": "subscriber", "room": plan.room, "streams": streams})
            };
            if let Err(e) = api.message(hs, body, None).await {
                counters.error("JANUS_SUBSCRIBE");
                counters.example(e);
            }
        }
        tokio::select! {
            e = events.recv() => {
                let Some(e) = e else { counters.error("JANUS_SESSION_LOST"); break };
                let data = &e["plugindata"]["data"];
                pending.extend(feeds(data));
                let jsep = &e["jsep"];
                match (e["sender"].as_u64(), jsep["type"].as_str()) {
                    (Some(h), Some("answer")) if h == hp => {
                        let sdp = jsep["sdp"].as_str().unwrap_or_default().to_owned();
                        let _ = shards.0.cmds.send(ShardCmd::Answer { id: pub_id, sdp });
                    }
                    (Some(h), Some("offer")) if h == hs => {
                        let sdp = jsep["sdp"].as_str().unwrap_or_default().to_owned();
                        let _ = shards.1.cmds.send(ShardCmd::Offer { id: sub_id, sdp });
                    }
                    _ => {}
                }
                if data["error_code"].is_number() && data["error_code"] != 427 {
                    counters.error(&format!("JANUS_{}", data["error_code"]));
                    counters.example(data["error"].to_string());
                }
            }
            out = async { match pub_out.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                match out {
                    Some(PeerOut::Offer(sdp)) => {
                        let jsep = json!({"type": "offer", "sdp": sdp, "trickle": true});
                        if let Err(e) = api.message(hp, json!({"request": "publish"}), Some(jsep)).await {
                            counters.error("JANUS_PUBLISH");
                            counters.example(e);
                        }
                    }
                    Some(PeerOut::Candidate(c)) => {
                        let _ = api.post(&format!("/{}/{hp}", api.session), json!({"janus": "trickle", "candidate": trickle(&c)})).await;
                    }
                    Some(PeerOut::Failed(why)) => { counters.error("PEER_FAILED"); counters.failed_in(crate::signal::phase_of(&why)); counters.example(why); }
                    Some(_) => {}
                    None => pub_out = None,
                }
            }
            out = sub_out.recv() => {
                match out {
                    Some(PeerOut::Answer(sdp)) => {
                        let jsep = json!({"type": "answer", "sdp": sdp, "trickle": true});
                        if let Err(e) = api.message(hs, json!({"request": "start"}), Some(jsep)).await {
                            counters.error("JANUS_START");
                            counters.example(e);
                        }
                    }
                    Some(PeerOut::Candidate(c)) => {
                        let _ = api.post(&format!("/{}/{hs}", api.session), json!({"janus": "trickle", "candidate": trickle(&c)})).await;
                    }
                    Some(PeerOut::Failed(why)) => { counters.error("PEER_FAILED"); counters.failed_in(crate::signal::phase_of(&why)); counters.example(why); }
                    Some(_) => {}
                    None => break,
                }
            }
            _ = stop.changed() => {
                let _ = api.message(hp, json!({"request": "leave"}), None).await;
                let sid = api.session;
                let _ = api.post(&format!("/{sid}"), json!({"janus": "destroy"})).await;
                break;
            }
        }
    }
    poller.abort();
    let _ = shards.0.cmds.send(ShardCmd::Remove { id: pub_id });
    let _ = shards.1.cmds.send(ShardCmd::Remove { id: sub_id });
    counters.left.fetch_add(1, Ordering::Relaxed);
}
