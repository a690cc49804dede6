//! Webhooks: endpoints per API key, deliveries from the durable outbox (written by the
//! billing actor in the same transaction as the usage it comes from), signed as Standard
//! Webhooks do, retried with exponential backoff and jitter until the endpoint answers 2xx,
//! at least once, with a stable `webhook-id` for deduplication.
//!
//! Signature: `webhook-signature: v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>`
//! where the key is the base64 part of the endpoint's `whsec_...` secret.
//!
//! An endpoint whose deliveries keep failing is paused (`paused`, with the reason, in its
//! record and in the delivery log); enabling it again resumes its pending deliveries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use sqlx::Row;

use super::store::{Ledger, LedgerError, now_ms};
use crate::registry::{ActorKind, ActorRegistry, ActorSpec, Registration};

/// How deliveries are retried.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Delay after the first failure; doubled per attempt.
    pub retry_base: Duration,
    /// Longest delay between attempts.
    pub retry_max: Duration,
    /// Attempts per delivery before it is marked failed.
    pub max_attempts: u32,
    /// Consecutive failed attempts after which an endpoint is paused.
    pub pause_after: u32,
    /// Per request.
    pub timeout: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// How often due deliveries are looked for (besides after every ledger commit).
    pub poll: Duration,
    /// The `User-Agent`.
    pub user_agent: String,
    /// How long events and finished deliveries are kept (the delivery log's horizon).
    pub retention: Duration,
    /// Hosts endpoints may name (empty: any); lowercase host names or IP literals.
    pub allowed_hosts: Vec<String>,
}

impl WebhookConfig {
    /// Whether an endpoint may name `host`.
    pub fn host_allowed(&self, host: &str) -> bool {
        self.allowed_hosts.is_empty()
            || self
                .allowed_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host.trim_start_matches('[').trim_end_matches(']')))
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(3600),
            max_attempts: 12,
            pause_after: 50,
            timeout: Duration::from_secs(10),
            concurrency: 16,
            poll: Duration::from_millis(500),
            user_agent: format!("hearth-webhooks/{}", env!("CARGO_PKG_VERSION")),
            allowed_hosts: Vec::new(),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// An endpoint as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    pub id: String,
    pub api_key: String,
    pub url: String,
    #[serde(skip)]
    pub secret: String,
    /// Event types, or `["*"]`.
    pub events: Vec<String>,
    pub description: String,
    pub enabled: bool,
    pub paused: bool,
    pub paused_reason: String,
    pub failures: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A delivery as the log shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub id: i64,
    pub endpoint_id: String,
    pub event_id: String,
    pub event_type: String,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_ms: i64,
    pub last_status: i64,
    pub last_error: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// Changes to an endpoint.
#[derive(Clone, Debug, Default)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

fn events_column(events: &[String]) -> String {
    if events.is_empty() || events.iter().any(|e| e == "*") {
        "*".into()
    } else {
        format!(",{},", events.join(","))
    }
}

fn events_list(column: &str) -> Vec<String> {
    if column == "*" {
        vec!["*".into()]
    } else {
        column
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// A new random `whsec_` secret (24 random bytes).
pub fn new_secret() -> String {
    let bytes: [u8; 24] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The key inside a `whsec_` secret.
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// `v1,<signature>` of a message.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

fn endpoint_row(r: &sqlx::any::AnyRow) -> Result<Endpoint, sqlx::Error> {
    let events: String = r.try_get(4)?;
    Ok(Endpoint {
        id: r.try_get(0)?,
        api_key: r.try_get(1)?,
        url: r.try_get(2)?,
        secret: r.try_get(3)?,
        events: events_list(&events),
        description: r.try_get(5)?,
        enabled: r.try_get::<i64, _>(6)? != 0,
        paused: r.try_get::<i64, _>(7)? != 0,
        paused_reason: r.try_get(8)?,
        failures: r.try_get(9)?,
        created_ms: r.try_get(10)?,
        updated_ms: r.try_get(11)?,
    })
}

const ENDPOINT_COLUMNS: &str = "id, api_key, url, secret, events, description, enabled, paused, \
                                paused_reason, failures, created_ms, updated_ms";

impl Ledger {
    pub async fn create_endpoint(
        &self,
        api_key: &str,
        url: &str,
        events: &[String],
        description: &str,
        secret: Option<String>,
    ) -> Result<Endpoint, LedgerError> {
        let id = format!("ep_{}", hex(&rand::random::<[u8; 10]>()));
        let secret = secret.unwrap_or_else(new_secret);
        let now = now_ms();
        sqlx::query(
            "INSERT INTO webhook_endpoints (id, api_key, url, secret, events, description, \
             enabled, paused, paused_reason, failures, created_ms, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, 1, 0, '', 0, $7, $7)",
        )
        .bind(id.as_str())
        .bind(api_key)
        .bind(url)
        .bind(secret.as_str())
        .bind(events_column(events))
        .bind(description)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(self
            .endpoint(api_key, &id)
            .await?
            .expect("the endpoint just inserted"))
    }

    pub async fn endpoint(&self, api_key: &str, id: &str) -> Result<Option<Endpoint>, LedgerError> {
        let row = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND api_key = $2"
        ))
        .bind(id)
        .bind(api_key)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(endpoint_row).transpose()?)
    }

    pub async fn endpoints(&self, api_key: &str) -> Result<Vec<Endpoint>, LedgerError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE api_key = $1 ORDER BY created_ms, id"
        ))
        .bind(api_key)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(endpoint_row).collect::<Result<_, _>>()?)
    }

    /// Applies a patch; enabling an endpoint also lifts a pause. None if it does not exist.
    pub async fn update_endpoint(
        &self,
        api_key: &str,
        id: &str,
        patch: &EndpointPatch,
    ) -> Result<Option<Endpoint>, LedgerError> {
        let Some(mut ep) = self.endpoint(api_key, id).await? else {
            return Ok(None);
        };
        if let Some(url) = &patch.url {
            ep.url = url.clone();
        }
        if let Some(events) = &patch.events {
            ep.events = events.clone();
        }
        if let Some(d) = &patch.description {
            ep.description = d.clone();
        }
        if let Some(enabled) = patch.enabled {
            ep.enabled = enabled;
            if enabled {
                ep.paused = false;
                ep.paused_reason.clear();
                ep.failures = 0;
            }
        }
        sqlx::query(
            "UPDATE webhook_endpoints SET url = $1, events = $2, description = $3, enabled = $4, \
             paused = $5, paused_reason = $6, failures = $7, updated_ms = $8 \
             WHERE id = $9 AND api_key = $10",
        )
        .bind(ep.url.as_str())
        .bind(events_column(&ep.events))
        .bind(ep.description.as_str())
        .bind(ep.enabled as i64)
        .bind(ep.paused as i64)
        .bind(ep.paused_reason.as_str())
        .bind(ep.failures)
        .bind(now_ms())
        .bind(id)
        .bind(api_key)
        .execute(self.pool())
        .await?;
        self.endpoint(api_key, id).await
    }

    /// Deletes an endpoint and its deliveries; false if it did not exist.
    pub async fn delete_endpoint(&self, api_key: &str, id: &str) -> Result<bool, LedgerError> {
        let mut tx = self.pool().begin().await?;
        let n = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1 AND api_key = $2")
            .bind(id)
            .bind(api_key)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n > 0 {
            sqlx::query("DELETE FROM webhook_deliveries WHERE endpoint_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    /// The delivery log of an endpoint, newest first, before `before` (0: from the newest).
    pub async fn deliveries(
        &self,
        endpoint: &str,
        before: i64,
        limit: i64,
    ) -> Result<Vec<Delivery>, LedgerError> {
        let rows = sqlx::query(
            "SELECT d.id, d.endpoint_id, d.event_id, e.type, d.status, d.attempts, \
             d.next_attempt_ms, d.last_status, d.last_error, d.created_ms, d.updated_ms \
             FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id \
             WHERE d.endpoint_id = $1 AND ($2 = 0 OR d.id < $2) ORDER BY d.id DESC LIMIT $3",
        )
        .bind(endpoint)
        .bind(before)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Delivery {
                    id: r.try_get(0)?,
                    endpoint_id: r.try_get(1)?,
                    event_id: r.try_get(2)?,
                    event_type: r.try_get(3)?,
                    status: r.try_get(4)?,
                    attempts: r.try_get(5)?,
                    next_attempt_ms: r.try_get(6)?,
                    last_status: r.try_get(7)?,
                    last_error: r.try_get(8)?,
                    created_ms: r.try_get(9)?,
                    updated_ms: r.try_get(10)?,
                })
            })
            .collect()
    }

    /// Queues a delivery again (any status); false if it does not exist.
    pub async fn redeliver(&self, endpoint: &str, delivery: i64) -> Result<bool, LedgerError> {
        let now = now_ms();
        let n = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_ms = $1, \
             updated_ms = $1 WHERE id = $2 AND endpoint_id = $3",
        )
        .bind(now)
        .bind(delivery)
        .bind(endpoint)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Forgets finished deliveries and events older than `before_ms` (an event with a
    /// pending delivery stays). Returns the events removed.
    pub async fn prune_outbox(&self, before_ms: i64) -> Result<u64, LedgerError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE status <> 'pending' AND updated_ms < $1")
            .bind(before_ms)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query(
            "DELETE FROM webhook_events WHERE created_ms < $1 AND id NOT IN \
             (SELECT event_id FROM webhook_deliveries)",
        )
        .bind(before_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    async fn due(&self, now: i64, limit: i64) -> Result<Vec<Due>, LedgerError> {
        let rows = sqlx::query(
            "SELECT d.id, d.event_id, d.attempts, p.url, p.secret, e.payload, p.id \
             FROM webhook_deliveries d \
             JOIN webhook_endpoints p ON p.id = d.endpoint_id \
             JOIN webhook_events e ON e.id = d.event_id \
             WHERE d.status = 'pending' AND d.next_attempt_ms <= $1 AND p.enabled = 1 \
             AND p.paused = 0 ORDER BY d.next_attempt_ms, d.id LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Due {
                    id: r.try_get(0)?,
                    event_id: r.try_get(1)?,
                    attempts: r.try_get(2)?,
                    url: r.try_get(3)?,
                    secret: r.try_get(4)?,
                    payload: r.try_get(5)?,
                    endpoint: r.try_get(6)?,
                })
            })
            .collect()
    }

    async fn record_attempt(
        &self,
        due: &Due,
        outcome: &Outcome,
        config: &WebhookConfig,
    ) -> Result<(), LedgerError> {
        let now = now_ms();
        let attempts = due.attempts + 1;
        let mut tx = self.pool().begin().await?;
        if outcome.ok {
            sqlx::query(
                "UPDATE webhook_deliveries SET status = 'delivered', attempts = $1, last_status = $2, \
                 last_error = '', updated_ms = $3 WHERE id = $4",
            )
            .bind(attempts)
            .bind(outcome.status)
            .bind(now)
            .bind(due.id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE webhook_endpoints SET failures = 0 WHERE id = $1")
                .bind(due.endpoint.as_str())
                .execute(&mut *tx)
                .await?;
        } else {
            let exhausted = attempts >= config.max_attempts as i64;
            let next = now + backoff(config, attempts as u32).as_millis() as i64;
            sqlx::query(
                "UPDATE webhook_deliveries SET status = $1, attempts = $2, next_attempt_ms = $3, \
                 last_status = $4, last_error = $5, updated_ms = $6 WHERE id = $7",
            )
            .bind(if exhausted { "failed" } else { "pending" })
            .bind(attempts)
            .bind(next)
            .bind(outcome.status)
            .bind(outcome.error.as_str())
            .bind(now)
            .bind(due.id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE webhook_endpoints SET failures = failures + 1, \
                 paused = CASE WHEN failures + 1 >= $1 THEN 1 ELSE paused END, \
                 paused_reason = CASE WHEN failures + 1 >= $1 AND paused = 0 THEN $2 ELSE paused_reason END, \
                 updated_ms = $3 WHERE id = $4",
            )
            .bind(config.pause_after as i64)
            .bind(format!(
                "{} consecutive failed attempts (last: {})",
                config.pause_after, outcome.error
            ))
            .bind(now)
            .bind(due.endpoint.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Delay before attempt `attempts + 1`: base * 2^(attempts-1), capped, +-20 % jitter.
pub fn backoff(config: &WebhookConfig, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let base = config
        .retry_base
        .saturating_mul(1u32 << exp.min(20))
        .min(config.retry_max);
    let jitter: f64 = 0.8 + rand::random::<f64>() * 0.4;
    base.mul_f64(jitter)
}

struct Due {
    id: i64,
    event_id: String,
    attempts: i64,
    url: String,
    secret: String,
    payload: String,
    endpoint: String,
}

struct Outcome {
    ok: bool,
    status: i64,
    error: String,
}

/// What the webhook sender shares (kept outside the actor so a restart resumes it).
pub struct Webhooks {
    pub ledger: Ledger,
    pub config: WebhookConfig,
    client: reqwest::Client,
    /// Woken when there may be new deliveries.
    pub wake: Arc<tokio::sync::Notify>,
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    /// Actor starts (restarts = starts - 1).
    pub starts: AtomicU64,
    fault: AtomicBool,
}

impl Webhooks {
    pub fn new(ledger: Ledger, config: WebhookConfig, wake: Arc<tokio::sync::Notify>) -> Arc<Self> {
        // The node's TLS provider is ring (TURN over TLS); reqwest uses the process default.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(config.user_agent.clone())
            .build()
            .expect("an HTTP client with no custom TLS");
        Arc::new(Webhooks {
            ledger,
            config,
            client,
            wake,
            delivered: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            starts: AtomicU64::new(0),
            fault: AtomicBool::new(false),
        })
    }

    /// Makes the sender's next round fail as a bug would (drills and tests).
    pub fn inject_fault(&self) {
        self.fault.store(true, Ordering::Release);
    }

    /// Sends what is due; returns how many attempts were made.
    pub async fn round(&self) -> Result<usize, LedgerError> {
        let due = self
            .ledger
            .due(now_ms(), self.config.concurrency as i64 * 4)
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let n = due.len();
        let sends = due.into_iter().map(|d| async move {
            let outcome = self.send(&d).await;
            (d, outcome)
        });
        let results = futures_buffered(sends, self.config.concurrency).await;
        for (d, outcome) in results {
            if outcome.ok {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("hearth_webhook_deliveries_total", "result" => "delivered")
                    .increment(1);
            } else {
                self.failed_attempts.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("hearth_webhook_deliveries_total", "result" => "failed")
                    .increment(1);
                tracing::debug!(delivery = d.id, event = %d.event_id, error = %outcome.error, "webhook attempt failed");
            }
            self.ledger
                .record_attempt(&d, &outcome, &self.config)
                .await?;
        }
        Ok(n)
    }

    async fn send(&self, d: &Due) -> Outcome {
        let host = d
            .url
            .parse::<reqwest::Url>()
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        if !self.config.host_allowed(&host) {
            return Outcome {
                ok: false,
                status: 0,
                error: format!(
                    "host {host:?} is not allowed by this node (--webhook-allowed-hosts)"
                ),
            };
        }
        let Some(key) = secret_key(&d.secret) else {
            return Outcome {
                ok: false,
                status: 0,
                error: "the endpoint's secret is not valid base64".into(),
            };
        };
        let timestamp = now_ms() / 1000;
        let signature = sign(&key, &d.event_id, timestamp, &d.payload);
        let result = self
            .client
            .post(&d.url)
            .header("content-type", "application/json")
            .header("webhook-id", d.event_id.as_str())
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(d.payload.clone())
            .send()
            .await;
        match result {
            Ok(resp) => {
                let status = resp.status();
                Outcome {
                    ok: status.is_success(),
                    status: status.as_u16() as i64,
                    error: if status.is_success() {
                        String::new()
                    } else {
                        format!("HTTP {status}")
                    },
                }
            }
            Err(e) => Outcome {
                ok: false,
                status: 0,
                error: if e.is_timeout() {
                    "timed out".into()
                } else if e.is_connect() {
                    "cannot connect".into()
                } else {
                    "request failed".into()
                },
            },
        }
    }
}

/// Runs futures with at most `limit` at once; results in input order.
async fn futures_buffered<F, T>(futs: impl Iterator<Item = F>, limit: usize) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    use futures::StreamExt;
    futures::stream::iter(futs)
        .buffered(limit.max(1))
        .collect()
        .await
}

/// Sends due deliveries: after every ledger commit and every poll interval.
pub struct WebhookActor;

pub enum WebhookMsg {
    Round,
}

pub struct WebhookState {
    hooks: Arc<Webhooks>,
    reg: Registration,
    waker: tokio::task::JoinHandle<()>,
    failing: bool,
    /// When the outbox was last pruned.
    pruned: std::time::Instant,
}

/// How often old events are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

impl Actor for WebhookActor {
    type Msg = WebhookMsg;
    type State = WebhookState;
    type Arguments = (Arc<Webhooks>, Arc<ActorRegistry>, ractor::ActorId);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (hooks, actors, parent): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let restarts = hooks.starts.fetch_add(1, Ordering::Relaxed) as u32;
        let reg = actors.register(
            ActorSpec::new(myself.get_id(), ActorKind::Webhooks, "webhooks")
                .parent(parent)
                .restarted(restarts, None),
        );
        let wake = Arc::clone(&hooks.wake);
        let poll = hooks.config.poll;
        let me = myself.clone();
        // One wake-up source: a commit, or the poll interval, whichever comes first.
        let waker = tokio::spawn(async move {
            loop {
                let _ = tokio::time::timeout(poll, wake.notified()).await;
                if me.send_message(WebhookMsg::Round).is_err() {
                    break;
                }
            }
        });
        Ok(WebhookState {
            hooks,
            reg,
            waker,
            failing: false,
            pruned: std::time::Instant::now(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.waker.abort();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        _msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.reg.handled();
        if state.hooks.fault.swap(false, Ordering::AcqRel) {
            panic!("fault injected into the webhook sender");
        }
        if state.pruned.elapsed() >= PRUNE_EVERY {
            state.pruned = std::time::Instant::now();
            let before = now_ms() - state.hooks.config.retention.as_millis() as i64;
            match state.hooks.ledger.prune_outbox(before).await {
                Ok(n) if n > 0 => tracing::info!(events = n, "pruned old webhook events"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot prune old webhook events"),
            }
        }
        // Keep going while a round is full: a backlog drains without waiting for wake-ups.
        loop {
            match state.hooks.round().await {
                Ok(n) => {
                    if state.failing {
                        state.failing = false;
                        tracing::info!("webhook deliveries resumed: the database answers again");
                    }
                    if n < state.hooks.config.concurrency * 4 {
                        break;
                    }
                }
                Err(e) => {
                    if !state.failing {
                        state.failing = true;
                        tracing::error!(error = %e, "webhook sender cannot read the outbox; retrying");
                    }
                    break;
                }
            }
        }
        Ok(())
    }
}

impl Drop for WebhookState {
    fn drop(&mut self) {
        // Also after a failure (post_stop does not run then).
        self.waker.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn backoff_grows_and_caps() {
        let c = WebhookConfig {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            ..WebhookConfig::default()
        };
        let d1 = backoff(&c, 1);
        assert!(d1 >= Duration::from_millis(800) && d1 <= Duration::from_millis(1200));
        let d3 = backoff(&c, 3);
        assert!(d3 >= Duration::from_millis(3200) && d3 <= Duration::from_millis(4800));
        assert!(backoff(&c, 30) <= Duration::from_secs(72));
    }

    #[test]
    fn events_column_round_trips() {
        let e = vec![
            "meeting.started".to_string(),
            "participant.left".to_string(),
        ];
        assert_eq!(events_column(&e), ",meeting.started,participant.left,");
        assert_eq!(events_list(&events_column(&e)), e);
        assert_eq!(events_list(&events_column(&[])), vec!["*".to_string()]);
    }
}
