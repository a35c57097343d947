-- SQLite twin of migrations/postgres/20261129000002_jobs_and_outbox.sql (read that file for the why).

CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    status       TEXT    NOT NULL DEFAULT 'queued'
        CONSTRAINT ck_jobs_status CHECK (status IN ('queued', 'running', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    run_at       TEXT    NOT NULL,
    claimed_by   TEXT,
    heartbeat_at TEXT,
    last_error   TEXT,
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    updated_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
);
CREATE INDEX ix_jobs_status_run_at ON jobs (status, run_at);

CREATE TABLE object_deletions (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    object_key      TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT    NOT NULL,
    last_error      TEXT,
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
);
CREATE INDEX ix_object_deletions_next_attempt_at ON object_deletions (next_attempt_at);
CREATE INDEX ix_object_deletions_object_key ON object_deletions (object_key);
