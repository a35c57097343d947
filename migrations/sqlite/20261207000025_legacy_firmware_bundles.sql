-- SQLite twin of migrations/postgres/20261207000025_legacy_firmware_bundles.sql (read that file
-- for the why).
CREATE TABLE legacy_firmware_bundles (
    device_model_id INTEGER NOT NULL REFERENCES device_models (id) ON DELETE CASCADE,
    version         TEXT    NOT NULL,
    migrated_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    PRIMARY KEY (device_model_id, version)
);
INSERT INTO legacy_firmware_bundles (device_model_id, version, migrated_at)
SELECT device_model_id, version, uploaded_at FROM firmware_versions;
