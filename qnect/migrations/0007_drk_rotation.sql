-- Device root-key (DRK) rotation (device_registry.postgres_rekey, `qnect keys rotate`).
-- A rotation stages a pending next key; bridge workers offer it on the device's downlink; the
-- device's proof of possession (or a key exchange under the new version) commits it: the
-- current key becomes the previous one, kept decrypt-only until drk_prev_until (sessions
-- derived from it keep verifying), then its blob is destroyed (NULL). Sessions already record
-- the DRK version their keys derive from (device_sessions.drk_version, 0001_core).
ALTER TABLE devices
    ADD COLUMN drk_next_version    integer,
    ADD COLUMN drk_next_wrapped    bytea,  -- under the KEK ring, context (device, next version)
    ADD COLUMN drk_next_offered_at timestamptz,  -- last offer sent; NULL: not offered yet
    ADD COLUMN drk_prev_version    integer,
    ADD COLUMN drk_prev_wrapped    bytea,  -- NULL once the grace ended (destroyed)
    ADD COLUMN drk_prev_until      timestamptz,
    ADD COLUMN drk_rotated_at      timestamptz,
    ADD CONSTRAINT devices_drk_next CHECK (
        (drk_next_version IS NULL) = (drk_next_wrapped IS NULL)
        AND (drk_next_version IS NULL OR drk_next_version = drk_version + 1)),
    ADD CONSTRAINT devices_drk_prev CHECK (
        (drk_prev_version IS NULL) = (drk_prev_until IS NULL)
        AND (drk_prev_version IS NOT NULL OR drk_prev_wrapped IS NULL)
        AND (drk_prev_version IS NULL OR drk_prev_version < drk_version));
-- Workers look for offers to send and for previous keys to destroy; both sets are small.
CREATE INDEX devices_drk_pending ON devices (device_id) WHERE drk_next_version IS NOT NULL;
CREATE INDEX devices_drk_grace ON devices (drk_prev_until) WHERE drk_prev_wrapped IS NOT NULL;
