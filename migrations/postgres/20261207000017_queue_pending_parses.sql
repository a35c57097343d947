-- A parse for every core dump left PENDING without one: the dumps of a database adopted from the
-- Python service (stored in the bucket already, so no `filename` left for `migrate-to-s3`, which
-- queues those itself when it moves them). Nothing else would ever parse them, and a PENDING dump
-- keeps its firmware version from retention.
--
-- A migration, not a step after adoption: it commits with the schema it belongs to, so a run
-- that fails after adopting (or a process that dies there) cannot leave them unqueued, and it
-- runs once. On a database that was never adopted it queues only dumps that lost their parse
-- some other way, which is what they need. The payload is `jobs::payload_text` of the parse
-- (`{"coredump_id":N}`), 16 attempts as `PARSE_MAX_ATTEMPTS`.
DO $$
DECLARE
    legacy BOOLEAN := EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'coredumps'
          AND column_name = 'filename');
BEGIN
    EXECUTE format(
        $sql$
        INSERT INTO jobs (kind, payload, max_attempts, run_at, created_at, updated_at)
        SELECT 'parse_coredump', '{"coredump_id":' || c.id || '}', 16, now(), now(), now()
        FROM coredumps c
        WHERE c.parse_status = 'PENDING' %s
          AND NOT EXISTS (
              SELECT 1 FROM jobs j
              WHERE j.kind = 'parse_coredump' AND j.status IN ('queued', 'running')
                AND j.payload = '{"coredump_id":' || c.id || '}')
        ORDER BY c.id
        $sql$,
        CASE WHEN legacy THEN 'AND c.filename IS NULL' ELSE '' END);
END
$$;
