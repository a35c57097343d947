-- The fleet's core tables, with the Python service's table and column names (SPEC §2) so that its
-- PostgreSQL database can be adopted. Differences from the Python schema, on purpose:
--   * ids are BIGINT and timestamps TIMESTAMPTZ (UTC); adoption converts the legacy columns.
--   * devices.device_model_id is ON DELETE RESTRICT: a model with devices cannot be deleted (409).
--   * devices.secret_hash holds the SHA-256 of the per-device secret (never the secret itself).
--   * coredumps has no legacy `filename` column; adoption keeps it only while legacy files remain.

CREATE TABLE device_models (
    id               BIGSERIAL PRIMARY KEY,
    code             VARCHAR(50)  NOT NULL CONSTRAINT device_models_code_key UNIQUE,
    name             VARCHAR(255) NOT NULL,
    -- The version served to devices; always names a row of firmware_versions (golden rule 3).
    firmware_version VARCHAR(50),
    config_schema    TEXT,
    created_at       TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ  NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    id               BIGSERIAL PRIMARY KEY,
    key              VARCHAR(8)   NOT NULL CONSTRAINT devices_key_key UNIQUE,
    device_model_id  BIGINT       NOT NULL REFERENCES device_models (id) ON DELETE RESTRICT,
    -- The device's configuration as submitted (JSON text, stored verbatim).
    config           TEXT         NOT NULL,
    device_name      VARCHAR(255),
    device_entity_id VARCHAR(255),
    enable_ota       BOOLEAN,
    active           BOOLEAN      NOT NULL DEFAULT TRUE,
    secret_hash      VARCHAR(64),
    created_at       TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ  NOT NULL DEFAULT now()
);
CREATE INDEX ix_devices_device_model_id ON devices (device_model_id);

CREATE TABLE firmware_versions (
    id              BIGSERIAL PRIMARY KEY,
    device_model_id BIGINT      NOT NULL REFERENCES device_models (id) ON DELETE CASCADE,
    version         VARCHAR(50) NOT NULL,
    -- Set and bumped on every (re)upload; retention keeps the newest MAX_FIRMWARES by this.
    uploaded_at     TIMESTAMPTZ NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT uq_firmware_versions_model_version UNIQUE (device_model_id, version)
);
CREATE INDEX ix_firmware_versions_device_model_id ON firmware_versions (device_model_id);

CREATE TABLE coredumps (
    id               BIGSERIAL PRIMARY KEY,
    device_id        BIGINT      NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    chip             VARCHAR(50) NOT NULL,
    -- As reported by the device; the parser looks for this version's firmware.elf.
    firmware_version VARCHAR(50) NOT NULL,
    size             BIGINT      NOT NULL,
    parse_status     VARCHAR(20) NOT NULL DEFAULT 'PENDING'
        CONSTRAINT ck_coredumps_parse_status CHECK (parse_status IN ('PENDING', 'PARSED', 'ERROR')),
    parsed_output    TEXT,
    uploaded_at      TIMESTAMPTZ NOT NULL,
    parsed_at        TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ix_coredumps_device_id ON coredumps (device_id);
