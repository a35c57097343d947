-- How many dumps each device holds, kept by triggers in the same transaction as every insert and
-- delete of a dump (whichever code path, including a device's cascade): per-device retention
-- reads it to prune only when a device is over `MAX_COREDUMPS`, and then only the dumps it
-- prunes, instead of reading every dump the device has on every upload.
-- No dump is added or deleted between the count and the triggers' creation: a process that is
-- still serving waits for the migration. Both tables at once, in the order every writer of dumps
-- locks them (the device, then its dumps), and in the mode the ALTER and the DROP INDEX need
-- anyway: taking a weaker lock first and a stronger one later could deadlock with such a writer.
LOCK TABLE devices, coredumps IN ACCESS EXCLUSIVE MODE;
ALTER TABLE devices ADD COLUMN coredump_count BIGINT NOT NULL DEFAULT 0;
UPDATE devices d SET coredump_count = c.n
FROM (SELECT device_id, COUNT(*) AS n FROM coredumps GROUP BY device_id) c
WHERE c.device_id = d.id;

-- Statement triggers with transition tables (as migration 16's): one grouped UPDATE per
-- statement, so deleting all of a device's dumps updates its row once, not once per dump (one
-- row updated many times in a transaction walks the versions it left behind each time). A dump
-- never moves to another device (no statement changes `device_id`), so updates fire nothing.
CREATE FUNCTION coredumps_counted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE devices d SET coredump_count = d.coredump_count + n.dumps
        FROM (SELECT device_id, COUNT(*) AS dumps FROM new_rows GROUP BY device_id) n
        WHERE d.id = n.device_id;
    ELSE
        UPDATE devices d SET coredump_count = d.coredump_count - n.dumps
        FROM (SELECT device_id, COUNT(*) AS dumps FROM old_rows GROUP BY device_id) n
        WHERE d.id = n.device_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER coredumps_counted_insert AFTER INSERT ON coredumps
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION coredumps_counted();
CREATE TRIGGER coredumps_counted_delete AFTER DELETE ON coredumps
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION coredumps_counted();

-- One index for a device's dumps in retention's and the list's order (uploaded_at, then id): it
-- replaces the two it covers, so an upload maintains one index fewer.
DROP INDEX IF EXISTS ix_coredumps_device_id;
DROP INDEX IF EXISTS ix_coredumps_device_id_uploaded_at;
CREATE INDEX ix_coredumps_device_id_uploaded_at_id ON coredumps (device_id, uploaded_at, id);
