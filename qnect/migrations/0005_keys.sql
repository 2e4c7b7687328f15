-- KEK versions and the MAC blind index (device_registry.postgres, crypto.blind_index).
-- Wrapped blobs name their KEK version in their header; this table says which versions exist:
-- the newest active one wraps new keys, older active ones are being rotated away, retired ones
-- no longer wrap any blob (`qnect keys rotate-kek`).
CREATE TABLE kek_versions (
    version    integer PRIMARY KEY CHECK (version BETWEEN 1 AND 65535),  -- u16 in the wrap header
    state      text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'retired')),
    created_at timestamptz NOT NULL DEFAULT now(),
    retired_at timestamptz,
    CHECK ((state = 'retired') = (retired_at IS NOT NULL))
);
INSERT INTO kek_versions (version) VALUES (1);  -- every blob written before this migration

-- Truncated HMAC of the normalised MAC (22 bits): a lookup aid with coincidences, not a secret.
-- NULL for devices provisioned before this migration (filling it needs the root key).
ALTER TABLE devices ADD COLUMN mac_bidx integer;
CREATE INDEX devices_mac_bidx ON devices (mac_bidx);
