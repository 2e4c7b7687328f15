-- Pairing tokens (device_registry.postgres_pairing): single-use, bound to a user and a
-- household, ten minutes at most; only a hash of each token is stored.
CREATE TABLE pairing_tokens (
    token_hash   bytea PRIMARY KEY,
    subject_id   text NOT NULL REFERENCES subjects ON DELETE CASCADE,
    household_id text NOT NULL REFERENCES households ON DELETE CASCADE,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz,
    device_id    text REFERENCES devices ON DELETE SET NULL,  -- the device that redeemed it
    CHECK (expires_at > created_at AND expires_at <= created_at + interval '10 minutes')
);
CREATE INDEX pairing_tokens_expiry ON pairing_tokens (expires_at) WHERE used_at IS NULL;
