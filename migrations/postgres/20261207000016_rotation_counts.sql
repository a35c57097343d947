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
-- Inserts and deletes: statement triggers with transition tables (one grouped upsert per
-- statement). Updates: most updates of a device change none of the three columns (presence, the
-- most frequent write, sets last_seen_at), and those must not pay for this. So a row trigger
-- limited to the three columns, with a WHEN that PostgreSQL evaluates without calling anything,
-- appends the device's move to `device_rotation_count_moves`, and a statement trigger on the same
-- columns folds the moves into the counters at the end of the statement. Appending, not updating
-- the counter once per device: the fleet trigger moves every OK device in one statement, and
-- updating one row that many times in one transaction walks the versions it left behind each
-- time. The moves table is empty outside a statement (a statement's moves are folded and deleted
-- before it ends, and other transactions' are invisible to the fold), so it is unlogged.
--
-- Counters are upserted in key order, so two statements never take their locks in opposite
-- orders.
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

-- One row per moved device: its counted columns before and after.
CREATE UNLOGGED TABLE device_rotation_count_moves (
    old_active    BOOLEAN     NOT NULL,
    old_state     VARCHAR(20) NOT NULL,
    old_completed TIMESTAMPTZ,
    new_active    BOOLEAN     NOT NULL,
    new_state     VARCHAR(20) NOT NULL,
    new_completed TIMESTAMPTZ
);

-- Inserted and deleted devices: one grouped upsert per statement.
CREATE FUNCTION device_rotation_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO device_rotation_counts AS c (active, rotation_state, completed_day, devices)
        SELECT active, rotation_state,
               device_rotation_completed_day(active, rotation_state, last_rotation_completed_at),
               COUNT(*)
        FROM new_rows GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (active, rotation_state, completed_day)
            DO UPDATE SET devices = c.devices + EXCLUDED.devices;
    ELSE
        INSERT INTO device_rotation_counts AS c (active, rotation_state, completed_day, devices)
        SELECT active, rotation_state,
               device_rotation_completed_day(active, rotation_state, last_rotation_completed_at),
               -COUNT(*)
        FROM old_rows GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (active, rotation_state, completed_day)
            DO UPDATE SET devices = c.devices + EXCLUDED.devices;
    END IF;
    RETURN NULL;
END
$$;

-- An updated device whose counted columns changed: its move, appended as it is (the day is
-- worked out by the fold, over the whole statement's moves at once: calling the day function
-- here, once per device, tripled the cost of the fleet trigger's UPDATE).
CREATE FUNCTION device_rotation_counts_move() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO device_rotation_count_moves
    VALUES (OLD.active, OLD.rotation_state, OLD.last_rotation_completed_at,
            NEW.active, NEW.rotation_state, NEW.last_rotation_completed_at);
    RETURN NULL;
END
$$;

-- The end of an update statement: its moves, folded into the counters.
CREATE FUNCTION device_rotation_counts_fold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH moved AS (DELETE FROM device_rotation_count_moves RETURNING *)
    INSERT INTO device_rotation_counts AS c (active, rotation_state, completed_day, devices)
    SELECT active, rotation_state, day, SUM(n) FROM (
        SELECT old_active AS active, old_state AS rotation_state,
               device_rotation_completed_day(old_active, old_state, old_completed) AS day,
               -1 AS n
        FROM moved
        UNION ALL
        SELECT new_active, new_state,
               device_rotation_completed_day(new_active, new_state, new_completed), 1
        FROM moved
    ) AS sides
    GROUP BY 1, 2, 3 HAVING SUM(n) <> 0 ORDER BY 1, 2, 3
    ON CONFLICT (active, rotation_state, completed_day)
        DO UPDATE SET devices = c.devices + EXCLUDED.devices;
    RETURN NULL;
END
$$;

CREATE TRIGGER device_rotation_counts_insert AFTER INSERT ON devices
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION device_rotation_counts_apply();
CREATE TRIGGER device_rotation_counts_delete AFTER DELETE ON devices
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION device_rotation_counts_apply();
CREATE TRIGGER device_rotation_counts_move
    AFTER UPDATE OF active, rotation_state, last_rotation_completed_at ON devices
    FOR EACH ROW
    WHEN (OLD.active IS DISTINCT FROM NEW.active
          OR OLD.rotation_state IS DISTINCT FROM NEW.rotation_state
          OR OLD.last_rotation_completed_at IS DISTINCT FROM NEW.last_rotation_completed_at)
    EXECUTE FUNCTION device_rotation_counts_move();
CREATE TRIGGER device_rotation_counts_update
    AFTER UPDATE OF active, rotation_state, last_rotation_completed_at ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION device_rotation_counts_fold();
