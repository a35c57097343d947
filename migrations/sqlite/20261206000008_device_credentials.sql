-- Device credentials and fleet rotation (SPEC §13). See the PostgreSQL migration for the design;
-- SQLite databases are never adopted, so the rotation columns are new here.

ALTER TABLE devices ADD COLUMN rotation_state VARCHAR(20) NOT NULL DEFAULT 'OK'
    CHECK (rotation_state IN ('OK', 'QUEUED', 'PENDING', 'TIMEOUT'));
ALTER TABLE devices ADD COLUMN secret_created_at TEXT;
ALTER TABLE devices ADD COLUMN last_rotation_attempt_at TEXT;
ALTER TABLE devices ADD COLUMN last_rotation_completed_at TEXT;
ALTER TABLE devices ADD COLUMN pending_secret_hash VARCHAR(64);
ALTER TABLE devices ADD COLUMN pending_secret_created_at TEXT;
ALTER TABLE devices ADD COLUMN rotation_timed_out_at TEXT;
-- At most one device is PENDING fleet-wide, whatever runs concurrently.
CREATE UNIQUE INDEX ux_devices_single_pending ON devices (rotation_state)
    WHERE rotation_state = 'PENDING';
CREATE INDEX ix_devices_rotation_state ON devices (rotation_state);
UPDATE devices SET secret_created_at = created_at
    WHERE secret_created_at IS NULL AND secret_hash IS NOT NULL;

CREATE TABLE settings (
    key        VARCHAR(255) PRIMARY KEY,
    value      TEXT         NOT NULL,
    updated_at TEXT         NOT NULL
);

CREATE TABLE signing_keys (
    kid         VARCHAR(64) PRIMARY KEY,
    algorithm   VARCHAR(10) NOT NULL,
    private_key TEXT        NOT NULL,
    public_jwk  TEXT        NOT NULL,
    created_at  TEXT        NOT NULL
);
