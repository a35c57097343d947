-- SQLite twin of migrations/postgres/20261129000001_core_tables.sql (read that file for the why).
-- INTEGER PRIMARY KEY AUTOINCREMENT: ids are never reused, which object keys built from ids rely on.
-- Timestamps are RFC 3339 UTC text in the form sqlx writes them ("…T12:00:00.123456+00:00"), so
-- they compare correctly as strings; the defaults use the same form.

CREATE TABLE device_models (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    code             TEXT    NOT NULL CONSTRAINT device_models_code_key UNIQUE,
    name             TEXT    NOT NULL,
    firmware_version TEXT,
    config_schema    TEXT,
    created_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    updated_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
);

CREATE TABLE devices (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    key              TEXT    NOT NULL CONSTRAINT devices_key_key UNIQUE,
    device_model_id  INTEGER NOT NULL REFERENCES device_models (id) ON DELETE RESTRICT,
    config           TEXT    NOT NULL,
    device_name      TEXT,
    device_entity_id TEXT,
    enable_ota       BOOLEAN,
    active           BOOLEAN NOT NULL DEFAULT TRUE,
    secret_hash      TEXT,
    created_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    updated_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
);
CREATE INDEX ix_devices_device_model_id ON devices (device_model_id);

CREATE TABLE firmware_versions (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    device_model_id INTEGER NOT NULL REFERENCES device_models (id) ON DELETE CASCADE,
    version         TEXT    NOT NULL,
    uploaded_at     TEXT    NOT NULL,
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    CONSTRAINT uq_firmware_versions_model_version UNIQUE (device_model_id, version)
);
CREATE INDEX ix_firmware_versions_device_model_id ON firmware_versions (device_model_id);

CREATE TABLE coredumps (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id        INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    chip             TEXT    NOT NULL,
    firmware_version TEXT    NOT NULL,
    size             INTEGER NOT NULL,
    parse_status     TEXT    NOT NULL DEFAULT 'PENDING'
        CONSTRAINT ck_coredumps_parse_status CHECK (parse_status IN ('PENDING', 'PARSED', 'ERROR')),
    parsed_output    TEXT,
    uploaded_at      TEXT    NOT NULL,
    parsed_at        TEXT,
    created_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    updated_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
);
CREATE INDEX ix_coredumps_device_id ON coredumps (device_id);
