-- Accounts of the HTTP API (api.auth, device_registry.postgres_accounts): end users linked to
-- their data subject, staff with one role each. No login name is stored in the clear: the
-- login is found by a keyed hash of the normalised name (a key derived from the root key), the
-- password only as an Argon2id hash, refresh tokens only as SHA-256 hashes.
CREATE TABLE accounts (
    account_id      text PRIMARY KEY,                  -- opaque, random
    login_hash      bytea NOT NULL UNIQUE,             -- HMAC of the normalised login name
    password_hash   text NOT NULL,                     -- Argon2id (PHC string)
    role            text NOT NULL CHECK (role IN ('user', 'support', 'operator', 'analyst', 'dpo')),
    -- An end user's account is erased with its subject (Art. 17); staff have no subject.
    subject_id      text UNIQUE REFERENCES subjects ON DELETE CASCADE,
    oidc_subject    text UNIQUE,                        -- "<issuer> <sub>" of an external login
    disabled        boolean NOT NULL DEFAULT false,
    failed_logins   integer NOT NULL DEFAULT 0,
    locked_until    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((role = 'user') = (subject_id IS NOT NULL))
);

-- Refresh tokens rotate on every use; a family is one login. Presenting a rotated token again
-- (theft or replay) revokes its whole family (OAuth 2.0 Security BCP, refresh token rotation).
CREATE TABLE refresh_tokens (
    token_hash  bytea PRIMARY KEY,
    account_id  text NOT NULL REFERENCES accounts ON DELETE CASCADE,
    family_id   text NOT NULL,
    issued_at   timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    revoked_at  timestamptz,
    CHECK (expires_at > issued_at)
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_account ON refresh_tokens (account_id);

-- The device shadow's desired half (the reported half is device_state.latest). The version
-- increments on every change (optimistic concurrency for the app); confirmed_at is set when a
-- report that arrives after the change carries every desired value.
CREATE TABLE device_shadows (
    device_id    text PRIMARY KEY REFERENCES devices ON DELETE CASCADE,
    desired      jsonb NOT NULL DEFAULT '{}',
    version      bigint NOT NULL DEFAULT 0,
    desired_at   timestamptz,
    confirmed_at timestamptz
);

CREATE FUNCTION device_shadow_confirm() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE device_shadows SET confirmed_at = clock_timestamp()
     WHERE device_id = NEW.device_id AND confirmed_at IS NULL AND desired <> '{}'
       AND NEW.latest @> desired;
    RETURN NULL;
END $$;
-- Fires for every latest-state write of the ingest path (insert or update), after the row is
-- there: the writers need not know about shadows.
CREATE TRIGGER device_state_confirms_shadow AFTER INSERT OR UPDATE OF latest ON device_state
    FOR EACH ROW EXECUTE FUNCTION device_shadow_confirm();
