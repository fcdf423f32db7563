-- keygate key-service schema, first version: PostgreSQL's twin of sqlite/0001_initial.sql,
-- the same tables with PostgreSQL's types (BIGINT identity for the change log's sequence,
-- DOUBLE PRECISION for REAL, which is single precision here).

CREATE TABLE accounts (
    name    TEXT PRIMARY KEY,
    -- Credits left; NULL = unlimited.
    balance BIGINT
);

INSERT INTO accounts (name, balance) VALUES ('default', NULL);

CREATE TABLE groups (
    name   TEXT PRIMARY KEY,
    -- JSON list of model names; ["*"] = every model.
    models TEXT NOT NULL DEFAULT '["*"]',
    -- Price multiplier.
    ratio  DOUBLE PRECISION NOT NULL DEFAULT 1.0,
    -- Requests and tokens per minute; NULL = no limit.
    rpm    BIGINT,
    tpm    BIGINT
);

INSERT INTO groups (name) VALUES ('default');

CREATE TABLE keys (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    -- Lower-case hex SHA-256 of the secret; the secret itself is never stored.
    key_hash        TEXT NOT NULL UNIQUE,
    masked_key      TEXT NOT NULL,
    account         TEXT NOT NULL REFERENCES accounts (name),
    group_name      TEXT NOT NULL REFERENCES groups (name),
    enabled         BOOLEAN NOT NULL DEFAULT TRUE,
    expires_at      BIGINT,
    unlimited_quota BOOLEAN NOT NULL DEFAULT TRUE,
    quota           BIGINT NOT NULL DEFAULT 0,
    used_quota      BIGINT NOT NULL DEFAULT 0,
    -- JSON lists of strings; [] = no restriction beyond the group's.
    models          TEXT NOT NULL DEFAULT '[]',
    ip_allowlist    TEXT NOT NULL DEFAULT '[]',
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    last_used_at    BIGINT
);

CREATE INDEX keys_account ON keys (account);
CREATE INDEX keys_group_name ON keys (group_name);
CREATE INDEX keys_created_at ON keys (created_at);

-- One row per change to a key, written in the same transaction as the change. The
-- snapshot version is MAX(seq), so every replica reading this database agrees on it.
-- Writers hold one advisory lock until they commit, so sequence numbers commit in order.
-- No foreign key: the log outlives deleted keys.
CREATE TABLE key_changes (
    seq    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id TEXT NOT NULL,
    kind   TEXT NOT NULL,
    at     BIGINT NOT NULL
);
