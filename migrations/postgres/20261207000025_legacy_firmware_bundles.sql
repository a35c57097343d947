-- Firmware versions migrate-to-s3 must never create again. A rerun of migrate-to-s3 finds every
-- ZIP of ASSETS_DIR once more; a version that retention pruned or an admin deleted since the
-- first run has no row then, and without a record the rerun would store it again as new (and
-- the model hold more than MAX_FIRMWARES versions). migrate-to-s3 records each bundle it stores;
-- the versions this database holds when this migration runs are recorded too, since a run
-- before it may have stored them. A version uploaded through the API is not recorded here, but
-- one this migration finds is: it was in this database once, and a rerun must not bring it back
-- after a delete either.
CREATE TABLE legacy_firmware_bundles (
    device_model_id BIGINT      NOT NULL REFERENCES device_models (id) ON DELETE CASCADE,
    version         VARCHAR(50) NOT NULL,
    migrated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT pk_legacy_firmware_bundles PRIMARY KEY (device_model_id, version)
);
INSERT INTO legacy_firmware_bundles (device_model_id, version, migrated_at)
SELECT device_model_id, version, uploaded_at FROM firmware_versions;
