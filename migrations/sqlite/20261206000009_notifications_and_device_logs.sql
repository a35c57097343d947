-- MQTT (SPEC §14). See the PostgreSQL migration for the design.
CREATE TABLE notifications (
    id               INTEGER      PRIMARY KEY AUTOINCREMENT,
    kind             VARCHAR(20)  NOT NULL,
    client_id        VARCHAR(100) NOT NULL,
    firmware_version VARCHAR(50),
    created_at       TEXT         NOT NULL,
    next_attempt_at  TEXT         NOT NULL,
    lease_until      TEXT,
    attempts         INTEGER      NOT NULL DEFAULT 0,
    last_error       TEXT
);
CREATE INDEX ix_notifications_due ON notifications (next_attempt_at, id);

CREATE TABLE device_logs (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id BIGINT  NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    logged_at TEXT    NOT NULL,
    message   TEXT    NOT NULL
);
CREATE INDEX ix_device_logs_device_time ON device_logs (device_id, logged_at, id);
-- Age retention deletes the oldest lines of all devices in batches.
CREATE INDEX ix_device_logs_time ON device_logs (logged_at);
-- Log documents name their device by entity id.
CREATE INDEX ix_devices_device_entity_id ON devices (device_entity_id);

CREATE TABLE device_log_subscriptions (
    request_id VARCHAR(128) NOT NULL,
    device_id  BIGINT       NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    renewed_at TEXT         NOT NULL,
    PRIMARY KEY (request_id, device_id)
);
