-- Change events for the admin UI's live stream (GET /api/sse/stream).
-- An event row is written in the same transaction as the change it describes, so a subscriber
-- can only ever see committed changes, and every `serve` process sharing the database sees them.
-- Rows older than an hour are deleted by the event hub; subscribers only read forward from the
-- newest id at the time they connect.
CREATE TABLE events (
    id         BIGSERIAL PRIMARY KEY,
    type       VARCHAR(64)  NOT NULL,
    payload    TEXT         NOT NULL,
    created_at TIMESTAMPTZ  NOT NULL DEFAULT now()
);
CREATE INDEX ix_events_created_at ON events (created_at);
