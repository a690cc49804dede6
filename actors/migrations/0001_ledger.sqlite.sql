-- Usage ledger and webhook outbox (SQLite). Times are Unix milliseconds, quantities integers.

-- Immutable usage rows: one per meter per interval slice (a slice never crosses an hour).
CREATE TABLE usage_events (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key TEXT    NOT NULL UNIQUE,
    node            TEXT    NOT NULL,
    meter           TEXT    NOT NULL,
    quantity        INTEGER NOT NULL,
    api_key         TEXT    NOT NULL,
    meeting         TEXT    NOT NULL,
    participant     TEXT    NOT NULL,
    identity        TEXT    NOT NULL,
    subject         TEXT    NOT NULL,
    started_ms      INTEGER NOT NULL,
    ended_ms        INTEGER NOT NULL,
    recorded_ms     INTEGER NOT NULL
);
CREATE INDEX usage_events_start ON usage_events (started_ms);
CREATE INDEX usage_events_key_start ON usage_events (api_key, started_ms);

-- Intervals still open, checkpointed every second; a node closes its own at start.
CREATE TABLE usage_open (
    interval_id   TEXT    PRIMARY KEY,
    node          TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    api_key       TEXT    NOT NULL,
    meeting       TEXT    NOT NULL,
    participant   TEXT    NOT NULL,
    identity      TEXT    NOT NULL,
    subject       TEXT    NOT NULL,
    started_ms    INTEGER NOT NULL,
    slice_ms      INTEGER NOT NULL,
    checkpoint_ms INTEGER NOT NULL,
    bytes_in      INTEGER NOT NULL,
    bytes_out     INTEGER NOT NULL,
    billed_in     INTEGER NOT NULL,
    billed_out    INTEGER NOT NULL
);
CREATE INDEX usage_open_node ON usage_open (node);

CREATE TABLE webhook_endpoints (
    id            TEXT    PRIMARY KEY,
    api_key       TEXT    NOT NULL,
    url           TEXT    NOT NULL,
    secret        TEXT    NOT NULL,
    events        TEXT    NOT NULL,
    description   TEXT    NOT NULL,
    enabled       INTEGER NOT NULL,
    paused        INTEGER NOT NULL,
    paused_reason TEXT    NOT NULL,
    failures      INTEGER NOT NULL,
    created_ms    INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL
);
CREATE INDEX webhook_endpoints_key ON webhook_endpoints (api_key);

-- The outbox: written in the same transaction as the usage rows it comes from.
CREATE TABLE webhook_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT    NOT NULL UNIQUE,
    api_key    TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    payload    TEXT    NOT NULL,
    created_ms INTEGER NOT NULL
);

CREATE TABLE webhook_deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id      TEXT    NOT NULL,
    event_id         TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    attempts         INTEGER NOT NULL,
    next_attempt_ms  INTEGER NOT NULL,
    last_status      INTEGER NOT NULL,
    last_error       TEXT    NOT NULL,
    created_ms       INTEGER NOT NULL,
    updated_ms       INTEGER NOT NULL,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_ms);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);
