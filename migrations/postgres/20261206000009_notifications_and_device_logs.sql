-- MQTT (SPEC §14).
--
-- notifications: the durable queue of device notifications. A row is written in the transaction of
-- the change that causes it (so a rolled-back change queues nothing) and deleted once the broker
-- acknowledged the message; a process takes rows with a short lease, so each message is published
-- by one process at a time. Written only when MQTT_URL is set.
CREATE TABLE notifications (
    id               BIGSERIAL    PRIMARY KEY,
    -- firmware | config | provisioning: the topic iotsupport/updates/{kind}
    kind             VARCHAR(20)  NOT NULL,
    client_id        VARCHAR(100) NOT NULL,
    firmware_version VARCHAR(50),
    created_at       TIMESTAMPTZ  NOT NULL,
    next_attempt_at  TIMESTAMPTZ  NOT NULL,
    lease_until      TIMESTAMPTZ,
    attempts         INTEGER      NOT NULL DEFAULT 0,
    last_error       TEXT
);
CREATE INDEX ix_notifications_due ON notifications (next_attempt_at, id);

-- device_logs: lines devices publish to iotsupport/logsink, one row per line. Reads are "one
-- device's lines in a time window, in time order", so the main index is (device_id, logged_at, id):
-- every query of the history API is a range scan on it, at any table size, and so is trimming a
-- device to its newest lines. Age retention deletes the oldest lines of all devices in bounded
-- batches through the index on logged_at; live streams read "after the last id" by the key.
CREATE TABLE device_logs (
    id        BIGSERIAL   PRIMARY KEY,
    device_id BIGINT      NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    logged_at TIMESTAMPTZ NOT NULL,
    message   TEXT        NOT NULL
);
CREATE INDEX ix_device_logs_device_time ON device_logs (device_id, logged_at, id);
-- Age retention deletes the oldest lines of all devices in batches.
CREATE INDEX ix_device_logs_time ON device_logs (logged_at);
-- Log documents name their device by entity id.
CREATE INDEX ix_devices_device_entity_id ON devices (device_entity_id);

-- Which devices' live log lines an event stream (by its request_id) asked for.
CREATE TABLE device_log_subscriptions (
    request_id VARCHAR(128) NOT NULL,
    device_id  BIGINT       NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    renewed_at TIMESTAMPTZ  NOT NULL,
    PRIMARY KEY (request_id, device_id)
);
