-- Audit log: one row per audited request, append-only, sealed in signed Merkle batches.
-- Rows and seals are never updated or deleted; the database refuses it (triggers below). A DBA can
-- still disable triggers, which is why every row carries a keyed MAC and seals are signed and
-- chained: `qnect audit verify` reports any edit, deletion or insertion made behind our back.
CREATE TABLE audit_events (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id       uuid NOT NULL UNIQUE,       -- idempotency key for a SIEM relay
    ts             timestamptz NOT NULL,       -- set by the writer's clock (MAC-covered)
    actor_type     text NOT NULL,
    actor_id       text NOT NULL,
    actor_roles    text[] NOT NULL,
    purpose        text NOT NULL,
    legal_basis    text,
    art9_condition text,
    policy_version text NOT NULL,
    action         text NOT NULL,
    resource       text NOT NULL,
    fields         text[] NOT NULL,
    masked_fields  text[] NOT NULL,
    denied_fields  text[] NOT NULL,
    categories     text[] NOT NULL,
    subject_refs   bytea[] NOT NULL,           -- keyed pseudonyms, never raw subject ids
    decision       text NOT NULL,
    result         text NOT NULL,
    row_count      integer NOT NULL,
    reason         text,
    key_ids        text[] NOT NULL,
    entry_mac      bytea NOT NULL              -- HMAC-SHA256(audit MAC key, canonical event)
);
CREATE INDEX audit_events_subject_refs ON audit_events USING gin (subject_refs);
CREATE INDEX audit_events_ts ON audit_events (ts);
CREATE INDEX audit_events_actor ON audit_events (actor_id);
CREATE INDEX audit_events_purpose ON audit_events (purpose);

CREATE TABLE audit_seals (
    seal_no        bigint PRIMARY KEY,
    seqs           bigint[] NOT NULL,          -- explicit, ascending: late commits seal later
    leaf_count     integer NOT NULL,
    merkle_root    bytea NOT NULL,             -- RFC 6962 root over (u64 seq || entry_mac)
    prev_seal_hash bytea NOT NULL,
    seal_hash      bytea NOT NULL,
    signature      bytea NOT NULL,             -- Ed25519 over seal_hash
    public_key     bytea NOT NULL,
    sealed_at      timestamptz NOT NULL
);
-- The sealer's late-commit window looks only at seals made since the window opened.
CREATE INDEX audit_seals_sealed_at ON audit_seals (sealed_at);
-- The highest seq sealed so far, read from an index instead of every seal's array.
CREATE INDEX audit_seals_last_seq ON audit_seals ((seqs[cardinality(seqs)]));

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'P0001',
              HINT = 'audit rows and seals are never changed; write a new event instead';
END
$$;

CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_seals_no_change BEFORE UPDATE OR DELETE ON audit_seals
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_seals_no_truncate BEFORE TRUNCATE ON audit_seals
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
-- ALWAYS: the triggers also fire under session_replication_role = replica, so only an explicit
-- (and pgaudit-logged) ALTER TABLE ... DISABLE TRIGGER gets past them.
ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_no_change;
ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_no_truncate;
ALTER TABLE audit_seals ENABLE ALWAYS TRIGGER audit_seals_no_change;
ALTER TABLE audit_seals ENABLE ALWAYS TRIGGER audit_seals_no_truncate;
