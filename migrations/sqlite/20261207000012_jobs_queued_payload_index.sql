-- Withdrawing queued jobs by payload (core-dump retention withdraws the parse jobs of the dumps it
-- prunes, on every upload past MAX_COREDUMPS) looked at every queued job: with a backlog of
-- thousands of parses each upload paid for all of them. A partial index over the queued ones
-- finds them directly and costs nothing for running or failed jobs.
CREATE INDEX ix_jobs_queued_kind_payload ON jobs (kind, payload) WHERE status = 'queued';
