-- PostgreSQL only (lz4 compression of parse results); kept so both folders have the same versions.
SELECT 1;
