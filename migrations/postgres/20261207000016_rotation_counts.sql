-- How many devices are in each (active, rotation state), kept by triggers in the transactions
-- that insert, update or delete devices, so that GET /api/rotation/status and the rotation
-- dashboard's counts read a few rows instead of scanning the fleet (bench/scale.sh).
--
-- Active TIMEOUT devices are counted per UTC day of their last completed rotation
-- (`completed_day`, '' when they never completed one; '' for every other device): the
-- dashboard's critical list holds those whose completion is at least the threshold ago, a cutoff
-- that moves with the time of the request. Whole days before the cutoff's day are summed here,
-- and only the devices of the cutoff's own day are counted from the index.
--
-- Statement triggers with transition tables: the fleet trigger moves every OK device to QUEUED in
-- one statement, and that is one change of two counters, not one per device (a row trigger would
-- update the same counter row once per device, each time walking the versions it left behind).
-- Rows are changed in key order, so two statements never take the counters' locks in opposite
-- orders. A statement that changes no device's state, activity or completion (presence, config,
-- secrets) writes nothing here; it only pays for the trigger's one grouped query over its rows.
CREATE TABLE device_rotation_counts (
    active         BOOLEAN     NOT NULL,
    rotation_state VARCHAR(20) NOT NULL,
    completed_day  VARCHAR(10) NOT NULL,
    devices        BIGINT      NOT NULL,
    PRIMARY KEY (active, rotation_state, completed_day)
);

CREATE FUNCTION device_rotation_completed_day(active BOOLEAN, rotation_state VARCHAR,
                                              completed TIMESTAMPTZ) RETURNS VARCHAR
    LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN active AND rotation_state = 'TIMEOUT'
                THEN COALESCE(to_char(completed AT TIME ZONE 'UTC', 'YYYY-MM-DD'), '')
                ELSE '' END
$$;

-- Nothing changes devices while the migration runs (it holds the migrations' lock, and the
-- LOCK makes a process that is still serving wait for the triggers to exist).
LOCK TABLE devices IN SHARE ROW EXCLUSIVE MODE;

INSERT INTO device_rotation_counts (active, rotation_state, completed_day, devices)
SELECT active, rotation_state,
       device_rotation_completed_day(active, rotation_state, last_rotation_completed_at), COUNT(*)
FROM devices GROUP BY 1, 2, 3;

-- One function for the three triggers; each branch reads only the transition tables its event
-- has (a branch that does not run is never planned).
CREATE FUNCTION device_rotation_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO device_rotation_counts AS c (active, rotation_state, completed_day, devices)
        SELECT active, rotation_state,
               device_rotation_completed_day(active, rotation_state, last_rotation_completed_at) AS day,
               COUNT(*)
        FROM new_rows GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (active, rotation_state, completed_day)
            DO UPDATE SET devices = c.devices + EXCLUDED.devices;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO device_rotation_counts AS c (active, rotation_state, completed_day, devices)
        SELECT active, rotation_state,
               device_rotation_completed_day(active, rotation_state, last_rotation_completed_at) AS day,
               -COUNT(*)
        FROM old_rows GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (active, rotation_state, completed_day)
            DO UPDATE SET devices = c.devices + EXCLUDED.devices;
    ELSE
        INSERT INTO device_rotation_counts AS c (active, rotation_state, completed_day, devices)
        SELECT active, rotation_state, day, SUM(n) FROM (
            SELECT active, rotation_state,
                   device_rotation_completed_day(active, rotation_state, last_rotation_completed_at) AS day,
                   1 AS n
            FROM new_rows
            UNION ALL
            SELECT active, rotation_state,
                   device_rotation_completed_day(active, rotation_state, last_rotation_completed_at),
                   -1
            FROM old_rows
        ) AS moved
        GROUP BY 1, 2, 3 HAVING SUM(n) <> 0 ORDER BY 1, 2, 3
        ON CONFLICT (active, rotation_state, completed_day)
            DO UPDATE SET devices = c.devices + EXCLUDED.devices;
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
