-- PostgreSQL's twin of sqlite/0017_audit.sql.
--
-- The audit log (issue 21, part 3): who changed what through the management API, when and
-- from where, with the thing changed as it was before and after (secrets never kept).
-- Number 0016 is tenants'; 0018 is reserved for other work.

CREATE TABLE audit_log (
    -- The order entries were written in: the listing's newest-first order and its id.
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Unix seconds.
    at            BIGINT NOT NULL,
    -- 'admin', 'token', 'sso' or 'cli'.
    actor_kind    TEXT NOT NULL,
    -- 'admin', an account token's id, an SSO subject, the OS user of a CLI run: never a
    -- credential.
    actor_id      TEXT NOT NULL,
    -- The account a tenant actor belongs to; NULL for the operator.
    actor_account TEXT,
    -- The peer's IP address as text; NULL when unknown.
    address       TEXT,
    -- '<thing>.<verb>', e.g. 'key.create'.
    action        TEXT NOT NULL,
    -- The id or name of the thing changed.
    target        TEXT NOT NULL,
    -- The account the thing belongs to; NULL = global (a group, a price).
    account       TEXT,
    -- JSON of the thing before and after the change; NULL for none (a creation has no
    -- before, a deletion no after).
    before        TEXT,
    after         TEXT
);

CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_account ON audit_log (account, seq);
CREATE INDEX audit_log_action ON audit_log (action, seq);
CREATE INDEX audit_log_actor ON audit_log (actor_kind, actor_id, seq);
CREATE INDEX audit_log_target ON audit_log (target, seq);
