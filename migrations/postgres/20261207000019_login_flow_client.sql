-- The client address (its throttle scope, `crate::http::client_addr`) that started each OIDC
-- sign-in in progress: one address may have only a few of them at a time, so nobody can fill the
-- table's bound and keep everyone else from signing in. '' for flows started before this column.
ALTER TABLE login_flows ADD COLUMN client_scope VARCHAR(64) NOT NULL DEFAULT '';
CREATE INDEX ix_login_flows_client_scope ON login_flows (client_scope);
