-- Old secrets of keys rotated with a grace period: each stays valid until `until` (unix
-- seconds), as its key (same id and settings). Sent to the filter as extra snapshot
-- records whose expiry is `until`.
CREATE TABLE grace_secrets (
    key_hash TEXT PRIMARY KEY,
    key_id   TEXT NOT NULL,
    until    BIGINT NOT NULL
);

CREATE INDEX grace_secrets_key ON grace_secrets (key_id);
