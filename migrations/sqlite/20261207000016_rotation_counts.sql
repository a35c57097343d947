-- How many devices are in each (active, rotation state), kept by triggers in the transactions
-- that insert, update or delete devices, so that GET /api/rotation/status and the rotation
-- dashboard's counts read a handful of rows instead of scanning the fleet (bench/scale.sh). Row
-- triggers here (SQLite has no statement triggers); an update that changes neither column does
-- not fire them.
CREATE TABLE device_rotation_counts (
    active         BOOLEAN     NOT NULL,
    rotation_state VARCHAR(20) NOT NULL,
    devices        BIGINT      NOT NULL,
    PRIMARY KEY (active, rotation_state)
);

INSERT INTO device_rotation_counts (active, rotation_state, devices)
SELECT active, rotation_state, COUNT(*) FROM devices GROUP BY active, rotation_state;

CREATE TRIGGER device_rotation_counts_insert AFTER INSERT ON devices
BEGIN
    INSERT INTO device_rotation_counts (active, rotation_state, devices)
    VALUES (NEW.active, NEW.rotation_state, 1)
    ON CONFLICT (active, rotation_state) DO UPDATE SET devices = devices + 1;
END;

CREATE TRIGGER device_rotation_counts_delete AFTER DELETE ON devices
BEGIN
    UPDATE device_rotation_counts SET devices = devices - 1
    WHERE active = OLD.active AND rotation_state = OLD.rotation_state;
END;

CREATE TRIGGER device_rotation_counts_update AFTER UPDATE OF active, rotation_state ON devices
WHEN OLD.active IS NOT NEW.active OR OLD.rotation_state IS NOT NEW.rotation_state
BEGIN
    UPDATE device_rotation_counts SET devices = devices - 1
    WHERE active = OLD.active AND rotation_state = OLD.rotation_state;
    INSERT INTO device_rotation_counts (active, rotation_state, devices)
    VALUES (NEW.active, NEW.rotation_state, 1)
    ON CONFLICT (active, rotation_state) DO UPDATE SET devices = devices + 1;
END;
