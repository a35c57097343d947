-- The rotation dashboard's warning and critical lists (`?limit=N`: the first N in key order of the
-- active devices in TIMEOUT, split by how long ago their last rotation completed). The planner
-- cannot know that TIMEOUT devices and completion times go together, expected thousands of
-- matches among all devices, and walked the whole fleet in key order to find an empty warning
-- list (140 ms at 100,000 devices). This index holds only the TIMEOUT devices, in key order, with
-- the completion time to filter on.
CREATE INDEX ix_devices_timeout_key ON devices (key, last_rotation_completed_at)
    WHERE active AND rotation_state = 'TIMEOUT';
