-- How many devices are in each (active, rotation state), and the active TIMEOUT ones per UTC day
-- of their last completed rotation, kept by triggers in the transactions that insert, update or
-- delete devices: see the PostgreSQL migration of the same name. Row triggers here (SQLite has no
-- statement triggers); an update that changes none of the three columns does not fire them.
CREATE TABLE device_rotation_counts (
    active         BOOLEAN     NOT NULL,
    rotation_state VARCHAR(20) NOT NULL,
    completed_day  VARCHAR(10) NOT NULL,
    devices        BIGINT      NOT NULL,
    PRIMARY KEY (active, rotation_state, completed_day)
);

INSERT INTO device_rotation_counts (active, rotation_state, completed_day, devices)
SELECT active, rotation_state,
       CASE WHEN devices.active AND devices.rotation_state = 'TIMEOUT' THEN COALESCE(date(devices.last_rotation_completed_at), '') ELSE '' END, COUNT(*)
FROM devices GROUP BY 1, 2, 3;

CREATE TRIGGER device_rotation_counts_insert AFTER INSERT ON devices
BEGIN
    INSERT INTO device_rotation_counts (active, rotation_state, completed_day, devices)
    VALUES (NEW.active, NEW.rotation_state,
            CASE WHEN NEW.active AND NEW.rotation_state = 'TIMEOUT' THEN COALESCE(date(NEW.last_rotation_completed_at), '') ELSE '' END, 1)
    ON CONFLICT (active, rotation_state, completed_day) DO UPDATE SET devices = devices + 1;
END;

CREATE TRIGGER device_rotation_counts_delete AFTER DELETE ON devices
BEGIN
    UPDATE device_rotation_counts SET devices = devices - 1
    WHERE active = OLD.active AND rotation_state = OLD.rotation_state
      AND completed_day = CASE WHEN OLD.active AND OLD.rotation_state = 'TIMEOUT' THEN COALESCE(date(OLD.last_rotation_completed_at), '') ELSE '' END;
END;

CREATE TRIGGER device_rotation_counts_update
AFTER UPDATE OF active, rotation_state, last_rotation_completed_at ON devices
WHEN OLD.active IS NOT NEW.active OR OLD.rotation_state IS NOT NEW.rotation_state
  OR OLD.last_rotation_completed_at IS NOT NEW.last_rotation_completed_at
BEGIN
    UPDATE device_rotation_counts SET devices = devices - 1
    WHERE active = OLD.active AND rotation_state = OLD.rotation_state
      AND completed_day = CASE WHEN OLD.active AND OLD.rotation_state = 'TIMEOUT' THEN COALESCE(date(OLD.last_rotation_completed_at), '') ELSE '' END;
    INSERT INTO device_rotation_counts (active, rotation_state, completed_day, devices)
    VALUES (NEW.active, NEW.rotation_state,
            CASE WHEN NEW.active AND NEW.rotation_state = 'TIMEOUT' THEN COALESCE(date(NEW.last_rotation_completed_at), '') ELSE '' END, 1)
    ON CONFLICT (active, rotation_state, completed_day) DO UPDATE SET devices = devices + 1;
END;
