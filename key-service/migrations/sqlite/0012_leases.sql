-- Credit leases: several Envoys ("holders") share keys and accounts, and each spends from
-- a lease of credit granted here instead of asking per request. One row per holder and
-- limited subject. Leases are granted under the writer lock, so that for every subject
-- the holders' outstanding (granted - billed, at least 0) adds up to no more than what
-- the subject has left (a key's quota - used_quota, an account's balance).
CREATE TABLE leases (
    -- An Envoy's random name.
    holder     TEXT NOT NULL,
    -- 'k:' || key id, or 'a:' || account name.
    subject    TEXT NOT NULL,
    -- What the holder may have spent in all, counted as it counts what it spent.
    granted    BIGINT NOT NULL CHECK (typeof(granted) = 'integer' AND granted >= 0),
    -- What of that reached the key's used_quota (or the account's balance): what the
    -- holder had spent when the row was made (billed by then: see store/leases.rs) plus
    -- the cost of the usage records it reported since.
    billed     BIGINT NOT NULL CHECK (typeof(billed) = 'integer' AND billed >= 0),
    -- Unix ms: the holder spends until then.
    expires_at BIGINT NOT NULL,
    -- Unix ms: its outstanding counts until then (records still on their way), then the
    -- row goes.
    drop_at    BIGINT NOT NULL,
    PRIMARY KEY (holder, subject)
);

CREATE INDEX leases_subject ON leases (subject);
CREATE INDEX leases_drop_at ON leases (drop_at);
