//! Assembles a server: the node (actors, media port) and the HTTP gateway on one port.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use hearth_actors::limits::{ConnGate, FdBudget, GateLimits};
use hearth_actors::participant::{FORWARD_DELAY_BUCKETS, FORWARD_DELAY_METRIC};
use hearth_actors::{Grants, Node, NodeConfig};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::config::Config;
use crate::listen::ConnInfo;
use crate::token::{self, KeyStore};
use crate::web;

/// Shared by every request handler.
pub struct AppState {
    pub node: Node,
    pub keys: KeyStore,
    pub config: Config,
    /// When the server started.
    pub started_at: SystemTime,
    ready: AtomicBool,
    metrics: PrometheusHandle,
    addrs: OnceLock<(SocketAddr, Option<SocketAddr>)>,
    /// gRPC health: NOT_SERVING once the node drains.
    pub(crate) health: OnceLock<tonic_health::server::HealthReporter>,
    /// Live WHIP and WHEP sessions (their resources).
    pub http_sessions: crate::whip::Sessions,
    /// gRPC channels to the other nodes of the cluster (forwarded calls).
    pub peers: crate::grpc::forward::Peers,
}

impl AppState {
    /// The HTTP listener's address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.addrs.get().map(|a| a.0)
    }

    /// Where gRPC is served (the HTTP address unless `--grpc` moved it).
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.addrs.get().map(|a| a.1.unwrap_or(a.0))
    }

    /// /readyz answers 503 and gRPC health NOT_SERVING from now on (drain, shutdown).
    pub async fn set_unready(&self) {
        self.ready.store(false, Ordering::Release);
        if let Some(health) = self.health.get() {
            for name in crate::grpc::HEALTH_SERVICES {
                health
                    .set_service_status(*name, tonic_health::ServingStatus::NotServing)
                    .await;
            }
        }
    }

    /// The Prometheus exposition of the process's metrics.
    pub fn metrics_text(&self) -> String {
        self.metrics.render()
    }
}

/// The ledger could not be opened at start (the binary exits with its own code).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LedgerStartError(pub String);

/// Opens the ledger (None when usage is not metered) and this node's id.
async fn ledger_setup(
    config: &Config,
) -> anyhow::Result<Option<hearth_actors::node::BillingSetup>> {
    let Some(ledger) = &config.ledger else {
        return Ok(None);
    };
    let node_id = match ledger.node_id.as_ref().or(config.node_id.as_ref()) {
        Some(id) => id.clone(),
        None => node_id_from(&config.data_dir).map_err(|e| {
            LedgerStartError(format!("the node id in {}: {e}", config.data_dir.display()))
        })?,
    };
    let db = hearth_actors::billing::store::Ledger::connect(&ledger.url)
        .await
        .map_err(|e| {
            LedgerStartError(format!(
                "{e} (start with --no-ledger to run without usage metering)"
            ))
        })?;
    tracing::info!(db = %db.display_url, backend = db.backend().as_str(), node_id = %node_id, "usage ledger open");
    Ok(Some(hearth_actors::node::BillingSetup {
        ledger: db,
        node_id,
        tick: Duration::from_secs(1),
        webhooks: ledger.webhooks.clone(),
        encode: crate::rest::usage::webhook_body,
    }))
}

/// This node's part in a cluster: its id and the URLs other nodes and clients use.
fn cluster_config(
    config: &Config,
    c: &crate::config::ClusterSettings,
    http_addr: SocketAddr,
    grpc_addr: Option<SocketAddr>,
) -> anyhow::Result<hearth_actors::cluster::ClusterConfig> {
    let node_id = match &config.node_id {
        Some(id) => id.clone(),
        None => node_id_from(&config.data_dir)
            .map_err(|e| anyhow::anyhow!("the node id in {}: {e}", config.data_dir.display()))?,
    };
    let host = |port: u16| SocketAddr::new(config.public_ip, port);
    let http_url = c
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", host(http_addr.port())));
    let mut cluster = hearth_actors::cluster::ClusterConfig::new(&c.redis_url, node_id);
    cluster.region = c.region.clone();
    cluster.grpc_url = match grpc_addr {
        Some(addr) => format!("http://{}", host(addr.port())),
        None => http_url.clone(),
    };
    cluster.http_url = http_url;
    cluster.turn = config
        .turn
        .as_ref()
        .filter(|t| t.listen.port() != 0)
        .map(|t| host(t.listen.port()).to_string())
        .unwrap_or_default();
    cluster.selector = c.selector;
    Ok(cluster)
}

/// The node id kept in `dir/node-id`, made on first use.
fn node_id_from(dir: &std::path::Path) -> std::io::Result<String> {
    let path = dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(dir)?;
    let bytes: [u8; 6] = rand::random();
    let id = format!(
        "node-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    std::fs::write(&path, format!("{id}\n"))?;
    Ok(id)
}

/// A running server.
pub struct RunningServer {
    pub http_addr: SocketAddr,
    /// The probe listener (`--probe-http`), if any.
    pub probe_addr: Option<SocketAddr>,
    /// The gRPC listener when it has its own (`--grpc`); else gRPC is on `http_addr`.
    pub grpc_addr: Option<SocketAddr>,
    /// The SFU media port (None on a TURN-only node).
    pub media_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    grpc_task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    /// The page URL (what the banner prints).
    pub fn url(&self) -> String {
        format!("http://{}/", self.http_addr)
    }

    /// Stops accepting, ends meetings, stops the actors.
    pub async fn shutdown(self) {
        self.state.set_unready().await;
        let _ = self.shutdown.send(true);
        self.state.node.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        if let Some(task) = self.grpc_task {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    /// Resolves when a drain (AdminService.Drain) has ended every meeting.
    pub async fn drained(&self) {
        self.state.node.drained().await;
    }
}

/// The process-wide Prometheus recorder (installed once, shared by every server).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(FORWARD_DELAY_METRIC.to_owned()),
                    FORWARD_DELAY_BUCKETS,
                )
                .expect("the bucket list is a non-empty constant")
                .build_recorder();
            let handle = recorder.handle();
            // Histogram samples wait in per-handle buffers until folded into buckets; fold
            // them every second even when nobody scrapes /metrics, so memory stays flat.
            let upkeep = handle.clone();
            if let Err(e) = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(1));
                        upkeep.run_upkeep();
                    }
                })
            {
                tracing::error!(error = %e, "no metrics upkeep thread: histogram samples are folded only when /metrics is read");
            }
            // Fails only if another recorder was installed first; then ours stays unused
            // and /metrics shows what this one saw (nothing).
            let _ = metrics::set_global_recorder(recorder);
            describe_metrics();
            handle
        })
        .clone()
}

fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        FORWARD_DELAY_METRIC,
        Unit::Seconds,
        "Time a forwarded packet spends in the node: publisher's datagram received to the subscriber's copy sent (one packet in 8 sampled)."
    );
    describe_gauge!("hearth_meetings", "Meetings running on this node.");
    describe_gauge!(
        "hearth_participants",
        "Participants connected to this node."
    );
    describe_counter!(
        "hearth_media_packets_in_total",
        "UDP datagrams received on the media port."
    );
    describe_counter!(
        "hearth_media_bytes_in_total",
        "Bytes received on the media port."
    );
    describe_counter!(
        "hearth_media_packets_out_total",
        "UDP datagrams sent from the media port."
    );
    describe_counter!(
        "hearth_media_bytes_out_total",
        "Bytes sent from the media port."
    );
    describe_counter!("hearth_media_dropped_total", "Media dropped, by reason.");
    describe_counter!(
        "hearth_actor_failures_total",
        "Actors that failed (panicked), by kind."
    );
    describe_counter!(
        "hearth_actor_restarts_total",
        "Actors restarted by their supervisor, by kind."
    );
    describe_counter!(
        "hearth_signal_sessions_total",
        "Signaling WebSocket sessions opened."
    );
    describe_counter!(
        "hearth_signal_errors_total",
        "Signaling errors sent to clients, by code."
    );
    describe_counter!(
        "hearth_signal_auth_failures_total",
        "Joins refused for their token."
    );
    describe_gauge!(
        "hearth_connections",
        "TCP connections open, by listener (http, grpc, turn-tcp, turn-tls)."
    );
    describe_counter!(
        "hearth_connections_refused_total",
        "Connections refused at accept, by listener and reason (per_source, listener_full, fd_budget, fd_exhausted, accept_error)."
    );
    describe_counter!(
        "hearth_connections_closed_total",
        "Connections the node closed itself, by listener and reason (header_timeout, evicted_unproven, ...)."
    );
    describe_gauge!(
        "hearth_open_file_limit",
        "The process's open-file limit after raising it to the hard limit at start."
    );
    describe_gauge!(
        "hearth_connection_budget",
        "Client connections the node admits across its listeners (the open-file limit minus a reserve)."
    );
}

/// Starts the node and the gateway; returns once both accept connections.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    // One TLS provider for the process (ring): TURN over TLS, webhook deliveries.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = metrics_handle();
    // Every connection and socket is a file: take what the hard limit allows, and keep the
    // connection budget below it so the node refuses clients before `accept` starts failing.
    let nofile = hearth_actors::limits::raise_nofile_limit();
    let budget = FdBudget::global();
    tracing::info!(
        open_file_limit = nofile,
        connection_budget = budget.capacity(),
        "open-file limit"
    );
    metrics::gauge!("hearth_open_file_limit").set(nofile as f64);
    metrics::gauge!("hearth_connection_budget").set(budget.capacity() as f64);
    let listener = crate::listen::bind(config.http)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.http))?;
    let http_addr = listener.local_addr()?;
    let grpc_listener = match config.grpc {
        Some(addr) => Some(
            crate::listen::bind(addr)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (gRPC): {e}"))?,
        ),
        None => None,
    };
    let grpc_addr = match &grpc_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let billing = ledger_setup(&config).await?;
    let cluster = match &config.cluster {
        Some(c) => Some(cluster_config(&config, c, http_addr, grpc_addr)?),
        None => None,
    };
    let node = Node::start(NodeConfig {
        billing,
        cluster,
        media_bind: config.media_bind,
        public_ip: config.public_ip,
        media_workers: config.media_workers,
        empty_timeout: config.empty_timeout,
        max_participants: config.max_participants,
        sfu: !config.turn_only,
        turn: config.turn.clone(),
        transcription: crate::stt::transcription_config(&config.stt),
        ..NodeConfig::default()
    })
    .await
    .map_err(|e| match e {
        hearth_actors::NodeError::Ledger(m) => anyhow::Error::new(LedgerStartError(m)),
        e => e.into(),
    })?;
    let media_addr = node.media_addr();
    let state = Arc::new(AppState {
        node,
        keys: config.keys.clone(),
        config,
        started_at: SystemTime::now(),
        ready: AtomicBool::new(true),
        metrics,
        addrs: OnceLock::new(),
        health: OnceLock::new(),
        http_sessions: Default::default(),
        peers: Default::default(),
    });
    let _ = state.addrs.set((http_addr, grpc_addr));
    let grpc = crate::grpc::routes(&state).await.into_axum_router();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let limits = state.config.http_limits;
    let gate = |name: &'static str| {
        ConnGate::new(
            name,
            GateLimits {
                max_connections: limits.max_connections,
                max_per_source: limits.max_per_source,
            },
            FdBudget::global(),
        )
    };
    let (app, grpc_task) = match grpc_listener {
        None => (router_with_grpc(Arc::clone(&state), grpc), None),
        Some(listener) => {
            let task = tokio::spawn(crate::listen::serve(
                listener,
                grpc,
                gate("grpc"),
                limits,
                shutdown.subscribe(),
            ));
            (router(Arc::clone(&state)), Some(task))
        }
    };
    let task = tokio::spawn(crate::listen::serve(
        listener,
        app,
        gate("http"),
        limits,
        shutdown_rx,
    ));
    let probe_addr = match state.config.probe_http {
        Some(addr) => Some(start_probe_listener(addr, &state, shutdown.subscribe())?),
        None => None,
    };
    Ok(RunningServer {
        probe_addr,
        http_addr,
        grpc_addr,
        media_addr,
        state,
        shutdown,
        task,
        grpc_task,
    })
}

/// `/healthz`, `/readyz` and `/metrics` on a listener of their own, served by a thread of
/// their own (a current-thread runtime): a flood of connections on the main port keeps the
/// node's workers busy, not this thread, so orchestrators' probes still answer fast.
fn start_probe_listener(
    addr: SocketAddr,
    state: &Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (probes): {e}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(crate::rest::not_found)
        .with_state(Arc::clone(state));
    std::thread::Builder::new()
        .name("hearth-probes".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "the probe listener cannot start");
                    return;
                }
            };
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let stop = async move {
                    while !*shutdown.borrow() {
                        if shutdown.changed().await.is_err() {
                            break;
                        }
                    }
                };
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await;
            });
        })?;
    Ok(local)
}

/// All HTTP routes: pages, signaling, probes, metrics and the REST API. A path no route
/// serves gets a 404 and a method a path does not serve a 405, both problem+json.
pub fn router(state: Arc<AppState>) -> Router {
    routes(&state)
        .fallback(crate::rest::not_found)
        .with_state(state)
}

/// [`router`] with the gRPC services on the same port: a request goes to gRPC only if it is
/// one (`content-type: application/grpc...`) and no HTTP route serves its path; anything
/// else unknown is the HTTP 404.
pub fn router_with_grpc(state: Arc<AppState>, grpc: Router) -> Router {
    let dispatch = tower::service_fn(move |request: axum::extract::Request| {
        let grpc = grpc.clone();
        async move {
            if is_grpc(&request) {
                grpc.oneshot(request).await
            } else {
                Ok(crate::rest::not_found(request).await)
            }
        }
    });
    routes(&state).fallback_service(dispatch).with_state(state)
}

fn is_grpc(request: &axum::extract::Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    let mut app = Router::new()
        .route("/", get(web::index))
        .route("/app.js", get(web::app_js))
        .route("/style.css", get(web::style_css))
        .route("/v1/signal", get(signal))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(crate::whip::routes());
    if state.config.dev {
        app = app.route("/v1/dev/token", get(dev_token));
    }
    app.merge(crate::rest::router_with(
        Arc::clone(state),
        state.config.rest,
    ))
    .method_not_allowed_fallback(crate::rest::method_not_allowed)
}

async fn signal(
    ws: WebSocketUpgrade,
    State(state): State<Arc<AppState>>,
    conn: Option<Extension<ConnInfo>>,
) -> Response {
    // A draining node still answers joins, with a clear NODE_UNAVAILABLE; /readyz already
    // tells load balancers to send new clients elsewhere.
    if !state.ready.load(Ordering::Acquire) && !state.node.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "node is shutting down").into_response();
    }
    // Frames up to 1 MiB reach the decoder, which answers MESSAGE_TOO_LARGE above 64 KiB;
    // bigger ones end the connection at the transport.
    // The read buffer is allocated up front for every connection (128 KiB by default, the
    // largest single item of a participant's memory); signaling messages are a few KiB and
    // mostly arrive before the media starts, and a larger one is read in several chunks.
    ws.read_buffer_size(2 * 1024)
        .max_message_size(1 << 20)
        .max_frame_size(1 << 20)
        .on_upgrade(move |socket| crate::signaling::run(socket, state, conn.map(|c| c.0)))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct DevTokenQuery {
    meeting: String,
    #[serde(default)]
    name: String,
}

#[derive(Serialize)]
struct DevToken {
    token: String,
    meeting: String,
    identity: String,
}

/// `GET /v1/dev/token?meeting=M&name=N` (dev mode only): a token for anyone who asks.
async fn dev_token(State(state): State<Arc<AppState>>, Query(q): Query<DevTokenQuery>) -> Response {
    if hearth_actors::MeetingId::parse(&q.meeting).is_none() {
        return (
            StatusCode::BAD_REQUEST,
            "meeting: 1 to 128 characters of A-Z a-z 0-9 . _ ~ -",
        )
            .into_response();
    }
    let Some((key, secret)) = state.keys.first() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no API key configured").into_response();
    };
    let name: String = q.name.chars().take(64).collect();
    let name = if name.trim().is_empty() {
        "guest".to_owned()
    } else {
        name
    };
    let slug: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(16)
        .collect::<String>()
        .to_ascii_lowercase();
    let identity = format!("{slug}-{}", hearth_actors::ids::random_string(6));
    let claims = token::claims_for(
        key,
        &q.meeting,
        &identity,
        &name,
        // Everyone may turn captions on in dev mode (the page's captions toggle).
        Grants {
            captions: true,
            ..Grants::default()
        },
        SystemTime::now(),
        Duration::from_secs(6 * 3600),
    );
    axum::Json(DevToken {
        token: token::mint(&claims, secret),
        meeting: q.meeting,
        identity,
    })
    .into_response()
}
