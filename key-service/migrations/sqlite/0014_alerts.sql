-- Alerts (issue 20, parts 3 and 4): webhooks, the events written for them (an outbox,
-- filled in the same transaction as the change it tells of), one delivery row per event
-- and webhook, and the marks that make each threshold fire once per budget period.
-- Number 0013 is budget periods' (written in parallel); the two do not touch each other.

-- A date by which the key's secret should be rotated (unix seconds); NULL = none.
ALTER TABLE keys ADD COLUMN rotate_by BIGINT;

CREATE TABLE webhooks (
    id         TEXT PRIMARY KEY,
    -- The account whose keys' events it receives; NULL = every event (a global webhook).
    -- No foreign key: accounts cannot be deleted today, and a webhook must not block it.
    account    TEXT,
    url        TEXT NOT NULL,
    -- Kept as given, not hashed: each delivery is signed with it (HMAC-SHA256).
    secret     TEXT NOT NULL,
    -- JSON list of event types; [] = all of them.
    events     TEXT NOT NULL DEFAULT '[]',
    enabled    BOOLEAN NOT NULL DEFAULT TRUE,
    created_at BIGINT NOT NULL
);

CREATE INDEX webhooks_account ON webhooks (account);

-- The outbox: one row per event, its payload the exact bytes every delivery sends.
CREATE TABLE alert_events (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    -- 'k:' || key id, or 'a:' || account name ('' for a webhook's test event).
    subject    TEXT NOT NULL,
    account    TEXT,
    payload    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX alert_events_created_at ON alert_events (created_at);

-- One per event and webhook that takes it. Times in unix milliseconds, so that a backoff
-- of a fraction of a second (tests) is exact.
CREATE TABLE alert_deliveries (
    event_id        TEXT NOT NULL REFERENCES alert_events (id) ON DELETE CASCADE,
    webhook_id      TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    -- pending, delivered or failed.
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        BIGINT NOT NULL DEFAULT 0,
    created_ms      BIGINT NOT NULL,
    next_attempt_ms BIGINT NOT NULL,
    -- A replica sending it holds it until then; another may take it after (it died).
    locked_until_ms BIGINT NOT NULL DEFAULT 0,
    last_status     BIGINT,
    -- What went wrong last, in our words (never a secret, never the receiver's body).
    last_error      TEXT,
    delivered_at    BIGINT,
    PRIMARY KEY (event_id, webhook_id)
);

CREATE INDEX alert_deliveries_due ON alert_deliveries (status, next_attempt_ms);
CREATE INDEX alert_deliveries_webhook ON alert_deliveries (webhook_id, created_ms);

-- A threshold (or an expiry, a rotation date) already alerted on: the primary key is the
-- dedupe, so a crossing seen twice (two replicas, a retried batch) writes one event.
CREATE TABLE alert_marks (
    subject      TEXT NOT NULL,
    kind         TEXT NOT NULL,
    threshold    BIGINT NOT NULL,
    -- The budget period the threshold belongs to (0 = a budget for the key's whole life);
    -- for expiry and rotation reminders, the date alerted on.
    period_start BIGINT NOT NULL,
    at           BIGINT NOT NULL,
    PRIMARY KEY (subject, kind, threshold, period_start)
);
