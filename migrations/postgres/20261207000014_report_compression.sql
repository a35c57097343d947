-- A parse writes the dump's text rendering and its JSON report (tens of KB each) in one UPDATE,
-- which was the costliest statement of a parse backlog's drain: PostgreSQL compressed both with
-- pglz. lz4 (PostgreSQL 14+, when built with it, as Debian's and the official images are) is
-- several times faster at about the same ratio. Only values written from now on use it; older
-- ones stay readable as they are. A server without lz4 keeps pglz: nothing else depends on it.
DO $$
BEGIN
    ALTER TABLE coredumps ALTER COLUMN parsed_output SET COMPRESSION lz4,
                          ALTER COLUMN report SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR syntax_error OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 compression not available, parse results stay compressed with pglz: %', SQLERRM;
END
$$;
