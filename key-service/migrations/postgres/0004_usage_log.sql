-- One row per request the filter reported, written once: `request_id` (Envoy's
-- x-request-id) makes a retried report a no-op, so nothing is billed twice.
CREATE TABLE usage_log (
    request_id          TEXT PRIMARY KEY,
    key_id              TEXT NOT NULL,
    -- The key's name and account when the record arrived (NULL: the key was gone).
    key_name            TEXT,
    account             TEXT,
    model               TEXT NOT NULL,
    input_tokens        BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    output_tokens       BIGINT NOT NULL,
    cost                BIGINT NOT NULL,
    -- FALSE: the model had no price, so the request cost nothing.
    priced              BOOLEAN NOT NULL,
    -- HTTP status the client got.
    status              BIGINT NOT NULL,
    ts                  BIGINT NOT NULL
);

CREATE INDEX usage_log_ts ON usage_log (ts);
CREATE INDEX usage_log_key ON usage_log (key_id, ts);
CREATE INDEX usage_log_account ON usage_log (account, ts);
