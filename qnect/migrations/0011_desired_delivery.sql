-- Desired state delivered by the bridge workers, sealed under the device's session downlink key
-- (device_registry.postgres_shadow). A shadow is due when unconfirmed, non-empty and its device
-- online, and: this version was never sent, or it went out under another session (the device
-- re-keyed since), or it went out longer ago than the retry period.
ALTER TABLE device_shadows
    ADD COLUMN sent_version bigint,
    ADD COLUMN sent_epoch   bigint,
    ADD COLUMN sent_at      timestamptz,
    -- The API used to publish desired states in plaintext, retained, on down/desired. Rows from
    -- then may have such a message on the broker: a worker clears it (an empty retained
    -- message) once and resets the flag. Rows made from now on never had one.
    ADD COLUMN plain_retained boolean NOT NULL DEFAULT false;
UPDATE device_shadows SET plain_retained = true WHERE version > 0;
CREATE INDEX device_shadows_unconfirmed ON device_shadows (device_id)
    WHERE confirmed_at IS NULL OR plain_retained;
