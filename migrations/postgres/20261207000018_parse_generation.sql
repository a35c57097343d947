-- Which parse of a dump counts: a reparse increments it and carries the new value in its job's
-- payload (`{"coredump_id":N,"generation":G}`; the upload's first parse has generation 0 and keeps
-- the payload `{"coredump_id":N}`). A parse records its result only while the row still has the
-- generation it started with, so a parse that was in flight when a reparse was asked for (with
-- the ELF it was missing, say) can no longer record the old answer and consume the reparse.
-- A constant default: PostgreSQL adds the column without rewriting the table.
ALTER TABLE coredumps ADD COLUMN parse_generation BIGINT NOT NULL DEFAULT 0;
