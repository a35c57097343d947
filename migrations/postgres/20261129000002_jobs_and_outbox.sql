-- Durable machinery behind the golden rules (SPEC §4).

-- Background jobs (e.g. parsing a core dump). A job row is written in the same transaction as the
-- data it works on, so no worker can see a job before that data is committed.
--   status 'queued'  : waiting until run_at
--   status 'running' : claimed by claimed_by, alive while heartbeat_at is fresh; a stale heartbeat
--                      means the worker died and the job may be claimed again
--   status 'failed'  : gave up (permanent error or attempts exhausted); kept for inspection
-- Finished jobs are deleted.
CREATE TABLE jobs (
    id           BIGSERIAL PRIMARY KEY,
    kind         VARCHAR(50)  NOT NULL,
    payload      TEXT         NOT NULL,
    status       VARCHAR(20)  NOT NULL DEFAULT 'queued'
        CONSTRAINT ck_jobs_status CHECK (status IN ('queued', 'running', 'failed')),
    attempts     INTEGER      NOT NULL DEFAULT 0,
    max_attempts INTEGER      NOT NULL,
    run_at       TIMESTAMPTZ  NOT NULL,
    claimed_by   VARCHAR(100),
    heartbeat_at TIMESTAMPTZ,
    last_error   TEXT,
    created_at   TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ  NOT NULL DEFAULT now()
);
CREATE INDEX ix_jobs_status_run_at ON jobs (status, run_at);

-- The outbox of object deletions: a row delete and the deletion of its objects are recorded in one
-- transaction; the outbox worker deletes the objects afterwards, retrying with backoff, so a crash
-- or an S3 outage only delays cleanup. A create that writes a key cancels pending deletions of it.
CREATE TABLE object_deletions (
    id              BIGSERIAL PRIMARY KEY,
    object_key      VARCHAR(1024) NOT NULL,
    attempts        INTEGER       NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ   NOT NULL,
    last_error      TEXT,
    created_at      TIMESTAMPTZ   NOT NULL DEFAULT now()
);
CREATE INDEX ix_object_deletions_next_attempt_at ON object_deletions (next_attempt_at);
CREATE INDEX ix_object_deletions_object_key ON object_deletions (object_key);
