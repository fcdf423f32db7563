-- Single sign-on for the console (issue 21, part 2): sign-ins under way and the sessions
-- they open. Both kept as SHA-256 digests of what the browser holds, never the values.

-- A sign-in sent to the identity provider and not yet back: single use, short-lived.
CREATE TABLE sso_logins (
    -- Lower-case hex SHA-256 of the `state` sent to the provider.
    state_hash    TEXT PRIMARY KEY,
    -- The `nonce` the ID token must carry.
    nonce         TEXT NOT NULL,
    -- The PKCE code verifier (its S256 challenge went to the provider), for the token
    -- request; it is worth nothing without the code the provider gives the browser.
    code_verifier TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);

CREATE INDEX sso_logins_expires_at ON sso_logins (expires_at);

-- A console session: the `keygate_session` cookie's SHA-256, who signed in and what the
-- mapping rules gave them.
CREATE TABLE sso_sessions (
    token_hash TEXT PRIMARY KEY,
    -- The provider's `sub`.
    subject    TEXT NOT NULL,
    email      TEXT,
    account    TEXT NOT NULL REFERENCES accounts (name),
    -- 'owner' or 'viewer'.
    role       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE INDEX sso_sessions_expires_at ON sso_sessions (expires_at);
