-- PostgreSQL only (see the migration of the same name there): it queues the parses of dumps a
-- database adopted from the Python service left PENDING, and SQLite databases are never adopted.
-- Kept so both folders hold the same versions.
SELECT 1;
