-- The client address that started each OIDC sign-in in progress (see the migration of the same
-- name for PostgreSQL): one address may have only a few of them at a time.
ALTER TABLE login_flows ADD COLUMN client_scope TEXT NOT NULL DEFAULT '';
CREATE INDEX ix_login_flows_client_scope ON login_flows (client_scope);
