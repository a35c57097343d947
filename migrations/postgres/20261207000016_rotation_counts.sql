-- How many devices are in each (active, rotation state), kept by triggers in the transactions
-- that insert, update or delete devices, so that GET /api/rotation/status and the rotation
-- dashboard's counts read a handful of rows instead of scanning the fleet (bench/scale.sh).
--
-- Statement triggers with transition tables: the fleet trigger moves every OK device to QUEUED in
-- one statement, and that is one change of two counters, not one per device (a row trigger would
-- update the same counter row once per device, each time walking the versions it left behind).
-- Rows are changed in key order, so two statements never take the counters' locks in opposite
-- orders. A statement that changes no device's state or activity (presence, config, secrets)
-- writes nothing here; it only pays for the trigger's one grouped query over its own rows.
CREATE TABLE device_rotation_counts (
    active         BOOLEAN     NOT NULL,
    rotation_state VARCHAR(20) NOT NULL,
    devices        BIGINT      NOT NULL,
    PRIMARY KEY (active, rotation_state)
);

-- Nothing changes devices while the migration runs (it holds the migrations' lock, and the
-- LOCK makes a process that is still serving wait for the triggers to exist).
LOCK TABLE devices IN SHARE ROW EXCLUSIVE MODE;

INSERT INTO device_rotation_counts (active, rotation_state, devices)
SELECT active, rotation_state, COUNT(*) FROM devices GROUP BY active, rotation_state;

CREATE FUNCTION device_rotation_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO device_rotation_counts AS c (active, rotation_state, devices)
        SELECT active, rotation_state, COUNT(*) FROM new_rows
        GROUP BY active, rotation_state ORDER BY active, rotation_state
        ON CONFLICT (active, rotation_state) DO UPDATE SET devices = c.devices + EXCLUDED.devices;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO device_rotation_counts AS c (active, rotation_state, devices)
        SELECT active, rotation_state, -COUNT(*) FROM old_rows
        GROUP BY active, rotation_state ORDER BY active, rotation_state
        ON CONFLICT (active, rotation_state) DO UPDATE SET devices = c.devices + EXCLUDED.devices;
    ELSE
        INSERT INTO device_rotation_counts AS c (active, rotation_state, devices)
        SELECT active, rotation_state, SUM(n) FROM (
            SELECT active, rotation_state, 1 AS n FROM new_rows
            UNION ALL
            SELECT active, rotation_state, -1 AS n FROM old_rows
        ) AS moved
        GROUP BY active, rotation_state HAVING SUM(n) <> 0 ORDER BY active, rotation_state
        ON CONFLICT (active, rotation_state) DO UPDATE SET devices = c.devices + EXCLUDED.devices;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER device_rotation_counts_insert AFTER INSERT ON devices
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION device_rotation_counts_apply();
CREATE TRIGGER device_rotation_counts_update AFTER UPDATE ON devices
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION device_rotation_counts_apply();
CREATE TRIGGER device_rotation_counts_delete AFTER DELETE ON devices
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION device_rotation_counts_apply();
