-- SQLite twin of migrations/postgres/20261129000006_legacy_coredump_files.sql (read that file for
-- the why). SQLite databases are never adopted from the Python service, so this stays empty there;
-- it exists so both backends have the same schema.
CREATE TABLE legacy_coredump_files (
    device_id   INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    filename    TEXT    NOT NULL,
    coredump_id INTEGER NOT NULL,
    migrated_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    PRIMARY KEY (device_id, filename)
);
