-- The pending secret that an admin's provisioning package replaced: it stays valid until either
-- it or the new pending secret is used, so a device that stored it (mid-rotation) while the
-- package was never flashed is not locked out.
ALTER TABLE devices ADD COLUMN superseded_secret_hash TEXT;
