-- Usage ledger and webhook outbox (PostgreSQL). Times are Unix milliseconds, quantities integers.

-- Immutable usage rows: one per meter per interval slice (a slice never crosses an hour).
CREATE TABLE usage_events (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key TEXT    NOT NULL UNIQUE,
    node            TEXT    NOT NULL,
    meter           TEXT    NOT NULL,
    quantity        BIGINT NOT NULL,
    api_key         TEXT    NOT NULL,
    meeting         TEXT    NOT NULL,
    participant     TEXT    NOT NULL,
    identity        TEXT    NOT NULL,
    subject         TEXT    NOT NULL,
    started_ms      BIGINT NOT NULL,
    ended_ms        BIGINT NOT NULL,
    recorded_ms     BIGINT NOT NULL
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
    started_ms    BIGINT NOT NULL,
    slice_ms      BIGINT NOT NULL,
    checkpoint_ms BIGINT NOT NULL,
    bytes_in      BIGINT NOT NULL,
    bytes_out     BIGINT NOT NULL,
    billed_in     BIGINT NOT NULL,
    billed_out    BIGINT NOT NULL
);
CREATE INDEX usage_open_node ON usage_open (node);

CREATE TABLE webhook_endpoints (
    id            TEXT    PRIMARY KEY,
    api_key       TEXT    NOT NULL,
    url           TEXT    NOT NULL,
    secret        TEXT    NOT NULL,
    events        TEXT    NOT NULL,
    description   TEXT    NOT NULL,
    enabled       BIGINT NOT NULL,
    paused        BIGINT NOT NULL,
    paused_reason TEXT    NOT NULL,
    failures      BIGINT NOT NULL,
    created_ms    BIGINT NOT NULL,
    updated_ms    BIGINT NOT NULL
);
CREATE INDEX webhook_endpoints_key ON webhook_endpoints (api_key);

-- The outbox: written in the same transaction as the usage rows it comes from.
CREATE TABLE webhook_events (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         TEXT    NOT NULL UNIQUE,
    api_key    TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    payload    TEXT    NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE TABLE webhook_deliveries (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id      TEXT    NOT NULL,
    event_id         TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    attempts         BIGINT NOT NULL,
    next_attempt_ms  BIGINT NOT NULL,
    last_status      BIGINT NOT NULL,
    last_error       TEXT    NOT NULL,
    created_ms       BIGINT NOT NULL,
    updated_ms       BIGINT NOT NULL,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_ms);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);
