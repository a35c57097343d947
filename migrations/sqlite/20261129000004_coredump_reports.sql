-- SQLite twin of migrations/postgres/20261129000004_coredump_reports.sql (read that file for the why).
ALTER TABLE coredumps ADD COLUMN report TEXT;

CREATE INDEX ix_coredumps_device_id_uploaded_at ON coredumps (device_id, uploaded_at);
