-- keygate key-service schema, first version.
--
-- Kept to SQL that PostgreSQL also accepts apart from the AUTOINCREMENT of key_changes.seq
-- (issue 4 adds a postgres/ twin of this directory): BIGINT unix-second timestamps,
-- BOOLEAN flags, TEXT columns holding JSON lists, `$1` placeholders in the queries.

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
    -- Price multiplier. (PostgreSQL: DOUBLE PRECISION, its REAL is single precision.)
    ratio  REAL NOT NULL DEFAULT 1.0,
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
-- No foreign key: the log outlives deleted keys.
CREATE TABLE key_changes (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id TEXT NOT NULL,
    kind   TEXT NOT NULL,
    at     BIGINT NOT NULL
);
