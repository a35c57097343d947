-- A device's queued notifications, by client id: withdrawn when the device is deleted, and
-- superseded by a newer message of the same kind (a model's new firmware replaces the fan-out of
-- the one before, a config write the config message still waiting), without reading the queue.
CREATE INDEX ix_notifications_client ON notifications (client_id, kind);
