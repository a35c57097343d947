-- Indexes that keep the admin lists' cost flat in fleet size (bench/scale.sh, bench/README.md):
--   * a page of a model's devices in key order reads only that page (GET /api/devices?model_id=…&limit=…);
--     it replaces the index on device_model_id alone, which it covers;
--   * the rotation summary (GET /api/rotation/status: counts per state, inactive devices, last
--     completed rotation) reads this narrow index instead of the device rows; it covers the index on
--     rotation_state alone. The capped dashboard's warning and critical pages start from it too;
--   * its inactive page reads the (usually few) inactive devices in key order.
CREATE INDEX ix_devices_model_key ON devices (device_model_id, key);
DROP INDEX IF EXISTS ix_devices_device_model_id;
CREATE INDEX ix_devices_rotation_summary ON devices (rotation_state, active, last_rotation_completed_at);
DROP INDEX IF EXISTS ix_devices_rotation_state;
CREATE INDEX ix_devices_inactive_key ON devices (key) WHERE NOT active;
