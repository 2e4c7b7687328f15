-- Data subjects, households, device ownership, the consent ledger and erasure tombstones.
-- Personal values are field envelopes (crypto.envelope) under the subject's profile data key;
-- nothing here stores a plaintext e-mail address or name.
CREATE TABLE households (
    household_id text PRIMARY KEY,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE subjects (
    subject_id   text PRIMARY KEY,              -- opaque, random
    household_id text NOT NULL REFERENCES households,
    email_enc    bytea NOT NULL,
    name_enc     bytea,
    restricted   boolean NOT NULL DEFAULT false, -- Art. 18: only legal compliance may read
    status       text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'erasure_pending')),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subjects_household ON subjects (household_id);

-- A binding is one ownership period of a device; device data keys hang off it, so a resold
-- device's former owner can be shredded without touching the new owner's data.
CREATE TABLE bindings (
    binding      text PRIMARY KEY,
    device_id    text NOT NULL REFERENCES devices ON DELETE CASCADE,
    subject_id   text REFERENCES subjects ON DELETE SET NULL,
    household_id text REFERENCES households ON DELETE SET NULL,
    bound_at     timestamptz NOT NULL DEFAULT now(),
    unbound_at   timestamptz
);
CREATE INDEX bindings_subject ON bindings (subject_id);
CREATE INDEX bindings_device ON bindings (device_id);

-- Append-only consent ledger: the latest event per (subject, key) is in force. A withdrawal
-- takes effect on the next read because reads consult the ledger, not a cache.
CREATE TABLE consent_events (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject_id     text NOT NULL REFERENCES subjects,
    consent_key    text NOT NULL,       -- marketing, personalisation, health, precise_location, or a purpose
    kind           text NOT NULL CHECK (kind IN ('grant', 'withdraw', 'object', 'unobject')),
    policy_version text NOT NULL,
    source         text NOT NULL,       -- app, support ticket id, dpo
    at             timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX consent_events_subject ON consent_events (subject_id, consent_key, seq DESC);

-- The ledger refuses edits; rows go only with their subject's erasure, which names itself in
-- the transaction (SET LOCAL qnect.erasing = <subject_id>).
CREATE FUNCTION consent_events_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE'
       AND current_setting('qnect.erasing', true) IS NOT DISTINCT FROM OLD.subject_id THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'consent_events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER consent_events_append_only BEFORE UPDATE OR DELETE ON consent_events
    FOR EACH ROW EXECUTE FUNCTION consent_events_guard();

-- Proof of erasure that survives it: a keyed hash of the subject id, never the id itself.
-- Re-applied after a backup restore (privacy.postgres_dsr.reapply_tombstones).
CREATE TABLE erasure_tombstones (
    subject_hash bytea PRIMARY KEY,
    request_id   text NOT NULL,
    erased_at    timestamptz NOT NULL DEFAULT now()
);

-- Data-subject requests and their statutory due dates (Art. 12(3): one month).
CREATE TABLE dsr_requests (
    request_id   text PRIMARY KEY,
    subject_id   text,                  -- NULL once the subject is erased
    kind         text NOT NULL CHECK (kind IN ('export', 'rectify', 'restrict', 'unrestrict', 'withdraw', 'object', 'erase')),
    received_at  timestamptz NOT NULL DEFAULT now(),
    due_at       timestamptz NOT NULL,
    status       text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'done', 'refused')),
    completed_at timestamptz
);
CREATE INDEX dsr_requests_open ON dsr_requests (due_at) WHERE status = 'open';
