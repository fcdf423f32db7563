-- Tenants (issue 21, part 1): account tokens with a role, groups an account owns, and a
-- cap on how many keys an account's tenants may hold.

-- A bearer token that sees one account. Only its SHA-256 is kept, like a key's.
CREATE TABLE account_tokens (
    id           TEXT PRIMARY KEY,
    account      TEXT NOT NULL REFERENCES accounts (name),
    name         TEXT NOT NULL,
    -- 'owner' or 'viewer'.
    role         TEXT NOT NULL,
    -- Lower-case hex SHA-256 of the token.
    token_hash   TEXT NOT NULL UNIQUE,
    -- 'kgt_' and the token's last four characters.
    masked       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT
);

CREATE INDEX account_tokens_account ON account_tokens (account);

-- A group an account owns is seen (and usable for new keys) by that account's tenants
-- only; NULL = shared by every account. Only the operator changes groups.
ALTER TABLE groups ADD COLUMN account TEXT;

-- How many keys the account's tenants may hold; NULL = no limit. The operator is not
-- bound by it.
ALTER TABLE accounts ADD COLUMN max_keys BIGINT;

-- A webhook a tenant made is delivered to public addresses only (see alerts/public.rs).
ALTER TABLE webhooks ADD COLUMN public_only BOOLEAN NOT NULL DEFAULT FALSE;
