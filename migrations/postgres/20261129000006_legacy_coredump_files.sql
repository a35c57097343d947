-- Legacy core-dump files moved into the bucket by `iotsupport migrate-to-s3` (SPEC §10).
--
-- The Python service kept each dump as COREDUMPS_DIR/{device_key}/{filename} and the row's
-- coredumps.filename named it. migrate-to-s3 uploads the file to coredumps/{key}/{id}.dmp and sets
-- coredumps.filename to NULL; this table remembers which file became which dump, so a second run
-- recognises the file as already migrated instead of calling it an orphan (and it outlives the
-- filename column, which is dropped once no row needs it). coredump_id has no foreign key: the
-- dump may later be pruned by retention or deleted, and the file is still migrated.
CREATE TABLE legacy_coredump_files (
    device_id   BIGINT       NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    filename    VARCHAR(255) NOT NULL,
    coredump_id BIGINT       NOT NULL,
    migrated_at TIMESTAMPTZ  NOT NULL DEFAULT now(),
    CONSTRAINT pk_legacy_coredump_files PRIMARY KEY (device_id, filename)
);
