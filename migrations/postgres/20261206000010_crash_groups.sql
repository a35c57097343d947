-- Crash groups (SPEC §15): which distinct crashes a device model has, how often, on how many
-- devices, and in which firmware versions they were seen.
--
-- A group is one (device model, crash signature) pair. The signature (crates/esp-coredump,
-- signature.rs) hashes the crash reason and the first application frames by function name only,
-- so one crash in two builds, on two devices or in two dump formats is one group.
--
-- Counts are of dumps ever grouped, not of dumps still stored: a dump deleted by retention, by an
-- admin or with its device leaves them ("a deleted dump leaves the counts"). So the membership
-- ledger, crash_group_members, has no foreign key to coredumps or devices: it outlives them.
-- A dump is in at most one group (its primary key); a reparse whose signature changed moves it.
--
-- crash_groups.coredump_count/device_count and crash_group_versions are counters kept equal to
-- aggregates of the ledger. Every transaction that changes a group's members first locks the
-- group's row (SELECT … FOR UPDATE, groups in id order), so the counters of one group move one
-- transaction at a time and "is this device new to the group?" is answered from committed rows.

CREATE TABLE crash_groups (
    id              BIGSERIAL PRIMARY KEY,
    device_model_id BIGINT      NOT NULL REFERENCES device_models (id) ON DELETE CASCADE,
    -- Lower-case hex SHA-256 of the signature text; the text and title as the rule made them.
    signature_hash  VARCHAR(64) NOT NULL,
    signature       TEXT        NOT NULL,
    title           TEXT        NOT NULL,
    status          VARCHAR(20) NOT NULL DEFAULT 'open'
        CONSTRAINT ck_crash_groups_status CHECK (status IN ('open', 'resolved', 'ignored')),
    -- Upload times of the earliest and latest dump in the group.
    first_seen_at   TIMESTAMPTZ NOT NULL,
    last_seen_at    TIMESTAMPTZ NOT NULL,
    coredump_count  BIGINT      NOT NULL DEFAULT 0,
    -- Distinct devices among the group's dumps.
    device_count    BIGINT      NOT NULL DEFAULT 0,
    -- When the group was last set to resolved: a dump uploaded after this reopens it.
    resolved_at     TIMESTAMPTZ,
    -- When a dump last reopened the group after it had been resolved.
    regressed_at    TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT uq_crash_groups_model_signature UNIQUE (device_model_id, signature_hash)
);
CREATE INDEX ix_crash_groups_model_last_seen ON crash_groups (device_model_id, last_seen_at);

-- The ledger: which dump went into which group, with the dump's facts the counters are made of.
CREATE TABLE crash_group_members (
    coredump_id      BIGINT      PRIMARY KEY,
    crash_group_id   BIGINT      NOT NULL REFERENCES crash_groups (id) ON DELETE CASCADE,
    device_id        BIGINT      NOT NULL,
    firmware_version VARCHAR(50) NOT NULL,
    uploaded_at      TIMESTAMPTZ NOT NULL,
    grouped_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- "Has this device another dump in the group (of this version)?" and the group's newest dumps.
CREATE INDEX ix_crash_group_members_group_device
    ON crash_group_members (crash_group_id, device_id, firmware_version);
CREATE INDEX ix_crash_group_members_group_uploaded
    ON crash_group_members (crash_group_id, uploaded_at);

-- Per group and firmware version: dumps, distinct devices, first and last upload time.
CREATE TABLE crash_group_versions (
    crash_group_id   BIGINT      NOT NULL REFERENCES crash_groups (id) ON DELETE CASCADE,
    firmware_version VARCHAR(50) NOT NULL,
    coredump_count   BIGINT      NOT NULL,
    device_count     BIGINT      NOT NULL,
    first_seen_at    TIMESTAMPTZ NOT NULL,
    last_seen_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (crash_group_id, firmware_version)
);

-- What a device last said it runs (the firmware_version of its core-dump uploads, or the
-- X-Firmware-Version header of any device request) and when it was last heard from. Written
-- coalesced, at most about once a minute per device and process (src/presence.rs).
ALTER TABLE devices ADD COLUMN running_firmware_version VARCHAR(50);
ALTER TABLE devices ADD COLUMN last_seen_at TIMESTAMPTZ;
CREATE INDEX ix_devices_model_running_version ON devices (device_model_id, running_firmware_version);

-- Dumps parsed before this migration get their groups from a one-off job (coredumps::backfill).
-- It works through parsed dumps without a membership in id order, so it resumes where it stopped.
INSERT INTO jobs (kind, payload, max_attempts, run_at, created_at, updated_at)
SELECT 'group_coredumps', '{}', 20, now(), now(), now()
WHERE EXISTS (SELECT 1 FROM coredumps WHERE parse_status = 'PARSED' AND report IS NOT NULL);
