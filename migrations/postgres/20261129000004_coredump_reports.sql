-- Core dump parsing (issue #5).
--
-- coredumps.report: the built-in parser's structured crash report as JSON text (esp-coredump's
-- CrashReport), next to the text rendering in parsed_output. NULL while PENDING, after an ERROR,
-- and when the report came from the parser sidecar (which only returns text).
ALTER TABLE coredumps ADD COLUMN report TEXT;

-- Per-device retention keeps the newest MAX_COREDUMPS by uploaded_at, and the admin list shows a
-- device's dumps newest first: both read this index.
CREATE INDEX ix_coredumps_device_id_uploaded_at ON coredumps (device_id, uploaded_at);
