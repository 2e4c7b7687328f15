-- Signed firmware artifacts and staged OTA campaigns (device_registry.postgres_ota).
-- No personal data: device ids are pseudonymous references, the rest is fleet operations.
CREATE TABLE firmware_artifacts (
    artifact_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version     text NOT NULL UNIQUE,
    seq         bigint NOT NULL CHECK (seq > 0),  -- anti-rollback: increases per model line
    models      text[] NOT NULL,
    min_version text NOT NULL,
    size        integer NOT NULL CHECK (size > 0),
    sha256      bytea NOT NULL CHECK (length(sha256) = 32),
    manifest    bytea NOT NULL,            -- canonical JSON, exactly the signed bytes
    signature   bytea NOT NULL CHECK (length(signature) = 64),  -- Ed25519, release key
    content     bytea NOT NULL,            -- the image itself (TOAST keeps it out of line)
    created_by  text NOT NULL,             -- the operator's account id (or oidc:<sub>)
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (length(content) = size)
);

CREATE TABLE ota_campaigns (
    campaign_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name              text NOT NULL,
    artifact_id       bigint NOT NULL REFERENCES firmware_artifacts,
    model             text NOT NULL,
    from_min          text NOT NULL,
    from_max          text NOT NULL,
    waves             smallint[] NOT NULL,     -- cumulative percentages, e.g. {1,10,50,100}
    failure_threshold real NOT NULL CHECK (failure_threshold >= 0 AND failure_threshold < 1),
    status            text NOT NULL DEFAULT 'running'
                      CHECK (status IN ('running', 'paused', 'halted', 'completed', 'aborted')),
    current_wave      smallint NOT NULL DEFAULT 0,
    wave_started_at   timestamptz NOT NULL DEFAULT now(),
    halted_wave       smallint,
    created_by        text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz
);

CREATE TABLE ota_devices (
    campaign_id bigint NOT NULL REFERENCES ota_campaigns ON DELETE CASCADE,
    device_id   text NOT NULL REFERENCES devices ON DELETE CASCADE,
    wave        smallint NOT NULL,
    state       text NOT NULL DEFAULT 'pending' CHECK (state IN (
                    'pending', 'offered', 'downloading', 'verifying', 'installing',
                    'succeeded', 'failed', 'timed_out', 'cancelled', 'skipped')),
    received    bigint NOT NULL DEFAULT 0,   -- bytes the device holds (its resume offset)
    reason      text,
    offers      integer NOT NULL DEFAULT 0,
    offered_at  timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, device_id)
);
-- A device is in at most one unfinished campaign at a time.
CREATE UNIQUE INDEX ota_devices_one_active ON ota_devices (device_id)
    WHERE state IN ('pending', 'offered', 'downloading', 'verifying', 'installing');
-- Workers look for due offers and stale devices among the unfinished ones only.
CREATE INDEX ota_devices_active ON ota_devices (campaign_id, wave, state)
    WHERE state IN ('pending', 'offered', 'downloading', 'verifying', 'installing');
