-- Releases before this one wrote firmware objects through object_store's `Path::from`, which
-- percent-encodes some characters of a version (`2.1~rc1` became `firmware/m/2.1%7Erc1/…`).
-- Keys now hold versions verbatim (SPEC §3). Queue one job that moves such objects to their keys;
-- it finds nothing to do where no version has those characters.
INSERT INTO jobs (kind, payload, max_attempts, run_at, created_at, updated_at)
SELECT 'rekey_firmware_objects', '{}', 20, now(), now(), now()
WHERE EXISTS (SELECT 1 FROM firmware_versions);
