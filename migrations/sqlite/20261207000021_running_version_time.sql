-- When the version in running_firmware_version was observed. A version observation is compared
-- with this, not with last_seen_at: another process may write a newer last_seen_at from a request
-- that reported no version, and an older version report flushed after it must still land if it
-- is the newest version report. NULL for versions written before (the next report replaces them).
ALTER TABLE devices ADD COLUMN running_firmware_version_at TEXT;
