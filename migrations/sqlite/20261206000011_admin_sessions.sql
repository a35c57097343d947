-- Browser sessions of admins (issue 16). See the PostgreSQL migration for the design.
CREATE TABLE admin_sessions (
    id_hash         VARCHAR(64)  PRIMARY KEY,
    subject         VARCHAR(255) NOT NULL,
    name            VARCHAR(255),
    email           VARCHAR(255),
    roles           TEXT         NOT NULL,
    method          VARCHAR(20)  NOT NULL,
    credential_hash VARCHAR(64),
    csrf_token      VARCHAR(64)  NOT NULL,
    id_token        TEXT,
    created_at      TEXT         NOT NULL,
    expires_at      TEXT         NOT NULL
);
CREATE INDEX ix_admin_sessions_expires_at ON admin_sessions (expires_at);

CREATE TABLE login_flows (
    state_hash    VARCHAR(64)  PRIMARY KEY,
    pkce_verifier VARCHAR(128) NOT NULL,
    nonce         VARCHAR(128) NOT NULL,
    redirect_uri  TEXT         NOT NULL,
    return_to     TEXT         NOT NULL,
    created_at    TEXT         NOT NULL
);
CREATE INDEX ix_login_flows_created_at ON login_flows (created_at);
