-- Device credentials and fleet rotation (SPEC §13).
--
-- A device has a current secret (secret_hash) and at most one pending one (pending_secret_hash),
-- both SHA-256 hex. The first request authenticated with the pending secret promotes it.
--
-- The rotation columns keep the Python service's names and values. A database adopted from it
-- already has them (TIMESTAMP without time zone, values in UTC): they are kept and converted.

ALTER TABLE devices ADD COLUMN IF NOT EXISTS rotation_state VARCHAR(20) NOT NULL DEFAULT 'OK';
ALTER TABLE devices ADD COLUMN IF NOT EXISTS secret_created_at TIMESTAMPTZ;
ALTER TABLE devices ADD COLUMN IF NOT EXISTS last_rotation_attempt_at TIMESTAMPTZ;
ALTER TABLE devices ADD COLUMN IF NOT EXISTS last_rotation_completed_at TIMESTAMPTZ;
DO $$
DECLARE c text;
BEGIN
    FOREACH c IN ARRAY ARRAY['secret_created_at', 'last_rotation_attempt_at', 'last_rotation_completed_at']
    LOOP
        IF (SELECT data_type FROM information_schema.columns
            WHERE table_schema = current_schema() AND table_name = 'devices' AND column_name = c)
           = 'timestamp without time zone' THEN
            EXECUTE format('ALTER TABLE devices ALTER COLUMN %I TYPE TIMESTAMPTZ USING %I AT TIME ZONE ''UTC''', c, c);
        END IF;
    END LOOP;
END $$;

-- The pending secret, when it was minted, and when the device last timed out (a TIMEOUT device is
-- retried no sooner than ROTATION_TIMEOUT_SECONDS after that).
ALTER TABLE devices ADD COLUMN pending_secret_hash VARCHAR(64);
ALTER TABLE devices ADD COLUMN pending_secret_created_at TIMESTAMPTZ;
ALTER TABLE devices ADD COLUMN rotation_timed_out_at TIMESTAMPTZ;

-- Values the original never wrote (a legacy 'ROTATING') count as OK; of several PENDING devices
-- (the original did not guarantee one) all but the first time out.
UPDATE devices SET rotation_state = 'OK'
    WHERE rotation_state NOT IN ('OK', 'QUEUED', 'PENDING', 'TIMEOUT');
UPDATE devices SET rotation_state = 'TIMEOUT', rotation_timed_out_at = now()
    WHERE rotation_state = 'PENDING'
      AND id <> (SELECT MIN(id) FROM devices WHERE rotation_state = 'PENDING');
ALTER TABLE devices ADD CONSTRAINT ck_devices_rotation_state
    CHECK (rotation_state IN ('OK', 'QUEUED', 'PENDING', 'TIMEOUT'));
-- At most one device is PENDING fleet-wide, whatever runs concurrently.
CREATE UNIQUE INDEX ux_devices_single_pending ON devices (rotation_state)
    WHERE rotation_state = 'PENDING';
CREATE INDEX IF NOT EXISTS ix_devices_rotation_state ON devices (rotation_state);
-- Devices created before this migration got their secret when they were created.
UPDATE devices SET secret_created_at = created_at
    WHERE secret_created_at IS NULL AND secret_hash IS NOT NULL;

-- The Python service's key/value table; the only key is LAST_SCHEDULED_AT (naive UTC ISO text).
CREATE TABLE IF NOT EXISTS settings (
    key        VARCHAR(255) PRIMARY KEY,
    value      TEXT         NOT NULL,
    updated_at TIMESTAMPTZ  NOT NULL DEFAULT now()
);
DO $$
BEGIN
    IF (SELECT data_type FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'settings' AND column_name = 'updated_at')
       = 'timestamp without time zone' THEN
        ALTER TABLE settings ALTER COLUMN updated_at TYPE TIMESTAMPTZ USING updated_at AT TIME ZONE 'UTC';
    END IF;
END $$;

-- The keys device tokens are signed with (ES256), generated once and shared by every process;
-- the public halves are published as a JWKS. kid = the JWK's RFC 7638 thumbprint.
CREATE TABLE signing_keys (
    kid         VARCHAR(64) PRIMARY KEY,
    algorithm   VARCHAR(10) NOT NULL,
    -- base64 of the PKCS#8 DER private key.
    private_key TEXT        NOT NULL,
    public_jwk  TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
