-- SQLite twin of migrations/postgres/20261206000010_crash_groups.sql (read that file for the why).
-- SQLite serialises writers (BEGIN IMMEDIATE), which keeps the counters exact without row locks.

CREATE TABLE crash_groups (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    device_model_id INTEGER NOT NULL REFERENCES device_models (id) ON DELETE CASCADE,
    signature_hash  TEXT    NOT NULL,
    signature       TEXT    NOT NULL,
    title           TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'open'
        CONSTRAINT ck_crash_groups_status CHECK (status IN ('open', 'resolved', 'ignored')),
    first_seen_at   TEXT    NOT NULL,
    last_seen_at    TEXT    NOT NULL,
    coredump_count  INTEGER NOT NULL DEFAULT 0,
    device_count    INTEGER NOT NULL DEFAULT 0,
    resolved_at     TEXT,
    regressed_at    TEXT,
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    updated_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    CONSTRAINT uq_crash_groups_model_signature UNIQUE (device_model_id, signature_hash)
);
CREATE INDEX ix_crash_groups_model_last_seen ON crash_groups (device_model_id, last_seen_at);

CREATE TABLE crash_group_members (
    coredump_id      INTEGER PRIMARY KEY,
    crash_group_id   INTEGER NOT NULL REFERENCES crash_groups (id) ON DELETE CASCADE,
    device_id        INTEGER NOT NULL,
    firmware_version TEXT    NOT NULL,
    uploaded_at      TEXT    NOT NULL,
    grouped_at       TEXT    NOT NULL
);
CREATE INDEX ix_crash_group_members_group_device
    ON crash_group_members (crash_group_id, device_id, firmware_version);
CREATE INDEX ix_crash_group_members_group_uploaded
    ON crash_group_members (crash_group_id, uploaded_at);

CREATE TABLE crash_group_versions (
    crash_group_id   INTEGER NOT NULL REFERENCES crash_groups (id) ON DELETE CASCADE,
    firmware_version TEXT    NOT NULL,
    coredump_count   INTEGER NOT NULL,
    device_count     INTEGER NOT NULL,
    first_seen_at    TEXT    NOT NULL,
    last_seen_at     TEXT    NOT NULL,
    PRIMARY KEY (crash_group_id, firmware_version)
);

ALTER TABLE devices ADD COLUMN running_firmware_version TEXT;
ALTER TABLE devices ADD COLUMN last_seen_at TEXT;
CREATE INDEX ix_devices_model_running_version ON devices (device_model_id, running_firmware_version);

INSERT INTO jobs (kind, payload, max_attempts, run_at, created_at, updated_at)
SELECT 'group_coredumps', '{}', 20,
       strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now'),
       strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now'),
       strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now')
WHERE EXISTS (SELECT 1 FROM coredumps WHERE parse_status = 'PARSED' AND report IS NOT NULL);
