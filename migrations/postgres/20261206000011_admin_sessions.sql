-- Browser sessions of admins (issue 16). A session is created by signing in (the ADMIN_TOKEN form,
-- or the OIDC authorization-code flow) and named by a random cookie value; only its SHA-256 is
-- stored, so the table cannot be replayed from a backup. Sessions live in the database so they
-- survive restarts and work on every `serve` process.
CREATE TABLE admin_sessions (
    id_hash         VARCHAR(64)  PRIMARY KEY,
    subject         VARCHAR(255) NOT NULL,
    name            VARCHAR(255),
    email           VARCHAR(255),
    -- JSON array of role names, as the sign-in granted them.
    roles           TEXT         NOT NULL,
    -- admin_token | oidc
    method          VARCHAR(20)  NOT NULL,
    -- admin_token sessions: SHA-256 of the ADMIN_TOKEN they signed in with; a changed token ends
    -- them.
    credential_hash VARCHAR(64),
    -- What a cookie-authenticated write must carry in X-CSRF-Token (or send a matching Origin).
    csrf_token      VARCHAR(64)  NOT NULL,
    -- oidc sessions: the ID token, for the provider's logout (id_token_hint).
    id_token        TEXT,
    created_at      TIMESTAMPTZ  NOT NULL,
    expires_at      TIMESTAMPTZ  NOT NULL
);
CREATE INDEX ix_admin_sessions_expires_at ON admin_sessions (expires_at);

-- OIDC sign-ins in progress: from the redirect to the provider until its callback (any process may
-- get the callback). Keyed by the SHA-256 of `state`; taken once.
CREATE TABLE login_flows (
    state_hash    VARCHAR(64)  PRIMARY KEY,
    pkce_verifier VARCHAR(128) NOT NULL,
    nonce         VARCHAR(128) NOT NULL,
    redirect_uri  TEXT         NOT NULL,
    return_to     TEXT         NOT NULL,
    created_at    TIMESTAMPTZ  NOT NULL
);
CREATE INDEX ix_login_flows_created_at ON login_flows (created_at);
