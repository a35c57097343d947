-- What we record about each stored firmware build beyond the Python service's columns (SPEC §2, §7).
-- All columns are nullable: rows adopted from the Python service (or written by migrate-to-s3 before
-- it learnt to fill them) lack these facts; the API shows them as null and downloads of such
-- artifacts carry no ETag.
--
-- Per artifact (the five objects under firmware/{model_code}/{version}/): the size in bytes and
-- the SHA-256 as lower-case hex. The SHA-256 is the download ETag and decides whether a re-upload
-- of a stored version is identical (idempotent) or different (409).
ALTER TABLE firmware_versions ADD COLUMN firmware_bin_size    BIGINT;
ALTER TABLE firmware_versions ADD COLUMN firmware_bin_sha256  VARCHAR(64);
ALTER TABLE firmware_versions ADD COLUMN firmware_elf_size    BIGINT;
ALTER TABLE firmware_versions ADD COLUMN firmware_elf_sha256  VARCHAR(64);
ALTER TABLE firmware_versions ADD COLUMN firmware_map_size    BIGINT;
ALTER TABLE firmware_versions ADD COLUMN firmware_map_sha256  VARCHAR(64);
ALTER TABLE firmware_versions ADD COLUMN sdkconfig_size       BIGINT;
ALTER TABLE firmware_versions ADD COLUMN sdkconfig_sha256     VARCHAR(64);
ALTER TABLE firmware_versions ADD COLUMN version_json_size    BIGINT;
ALTER TABLE firmware_versions ADD COLUMN version_json_sha256  VARCHAR(64);

-- Facts from the image's esp_app_desc_t (docs/esp-formats.md A.4) and header. The string fields are
-- at most 31 characters in the descriptor; build_date/build_time are empty strings when the build
-- disabled CONFIG_APP_COMPILE_TIME_DATE. app_elf_sha256 is the ELF hash embedded in the image (it
-- equals firmware_elf_sha256 for every bundle we accepted). chip is the target name (esp32c3, ...).
ALTER TABLE firmware_versions ADD COLUMN project_name   VARCHAR(32);
ALTER TABLE firmware_versions ADD COLUMN idf_version    VARCHAR(32);
ALTER TABLE firmware_versions ADD COLUMN build_date     VARCHAR(16);
ALTER TABLE firmware_versions ADD COLUMN build_time     VARCHAR(16);
ALTER TABLE firmware_versions ADD COLUMN app_elf_sha256 VARCHAR(64);
ALTER TABLE firmware_versions ADD COLUMN secure_version BIGINT;
ALTER TABLE firmware_versions ADD COLUMN chip           VARCHAR(50);
