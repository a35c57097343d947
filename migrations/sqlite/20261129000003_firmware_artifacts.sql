-- SQLite twin of migrations/postgres/20261129000003_firmware_artifacts.sql (read that file for the
-- why). Sizes are INTEGER, hashes and descriptor strings TEXT; all nullable for legacy rows.
ALTER TABLE firmware_versions ADD COLUMN firmware_bin_size    INTEGER;
ALTER TABLE firmware_versions ADD COLUMN firmware_bin_sha256  TEXT;
ALTER TABLE firmware_versions ADD COLUMN firmware_elf_size    INTEGER;
ALTER TABLE firmware_versions ADD COLUMN firmware_elf_sha256  TEXT;
ALTER TABLE firmware_versions ADD COLUMN firmware_map_size    INTEGER;
ALTER TABLE firmware_versions ADD COLUMN firmware_map_sha256  TEXT;
ALTER TABLE firmware_versions ADD COLUMN sdkconfig_size       INTEGER;
ALTER TABLE firmware_versions ADD COLUMN sdkconfig_sha256     TEXT;
ALTER TABLE firmware_versions ADD COLUMN version_json_size    INTEGER;
ALTER TABLE firmware_versions ADD COLUMN version_json_sha256  TEXT;

ALTER TABLE firmware_versions ADD COLUMN project_name   TEXT;
ALTER TABLE firmware_versions ADD COLUMN idf_version    TEXT;
ALTER TABLE firmware_versions ADD COLUMN build_date     TEXT;
ALTER TABLE firmware_versions ADD COLUMN build_time     TEXT;
ALTER TABLE firmware_versions ADD COLUMN app_elf_sha256 TEXT;
ALTER TABLE firmware_versions ADD COLUMN secure_version INTEGER;
ALTER TABLE firmware_versions ADD COLUMN chip           TEXT;
