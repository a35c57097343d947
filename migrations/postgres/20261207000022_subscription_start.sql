-- The newest device-log line when a live-log subscription was made: a stream that notices the
-- subscription late (made through another process) sends the device's lines after this one, not
-- lines from before the subscription that the UI's history request already showed. NULL for
-- subscriptions made before (from where the stream last read its subscriptions, as then).
ALTER TABLE device_log_subscriptions ADD COLUMN from_line_id BIGINT;
