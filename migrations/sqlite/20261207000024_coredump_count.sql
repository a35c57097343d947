-- How many dumps each device holds, kept by triggers in the same transaction as every insert and
-- delete of a dump (whichever code path, including a device's cascade): per-device retention
-- reads it to prune only when a device is over `MAX_COREDUMPS`, and then only the dumps it
-- prunes, instead of reading every dump the device has on every upload. A dump never moves to
-- another device (no statement changes `device_id`). A migration that rebuilds `coredumps` must
-- create these triggers again.
ALTER TABLE devices ADD COLUMN coredump_count INTEGER NOT NULL DEFAULT 0;
UPDATE devices SET coredump_count = (SELECT COUNT(*) FROM coredumps WHERE coredumps.device_id = devices.id);

CREATE TRIGGER coredumps_counted_insert AFTER INSERT ON coredumps
BEGIN
    UPDATE devices SET coredump_count = coredump_count + 1 WHERE id = NEW.device_id;
END;
CREATE TRIGGER coredumps_counted_delete AFTER DELETE ON coredumps
BEGIN
    UPDATE devices SET coredump_count = coredump_count - 1 WHERE id = OLD.device_id;
END;

-- One index for a device's dumps in retention's and the list's order (uploaded_at, then id): it
-- replaces the two it covers, so an upload maintains one index fewer.
DROP INDEX IF EXISTS ix_coredumps_device_id;
DROP INDEX IF EXISTS ix_coredumps_device_id_uploaded_at;
CREATE INDEX ix_coredumps_device_id_uploaded_at_id ON coredumps (device_id, uploaded_at, id);
