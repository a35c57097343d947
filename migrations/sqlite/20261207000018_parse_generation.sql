-- Which parse of a dump counts (see the migration of the same name for PostgreSQL): a reparse
-- increments it and carries it in its job's payload; a parse records its result only while the
-- row still has the generation it started with.
ALTER TABLE coredumps ADD COLUMN parse_generation INTEGER NOT NULL DEFAULT 0;
