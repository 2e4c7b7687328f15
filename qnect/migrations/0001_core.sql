-- Registry, sessions, device state and quarantine: plain relational tables on any PostgreSQL 15+.
CREATE TABLE devices (
    device_id        text PRIMARY KEY,
    model            text NOT NULL,
    status           text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    binding          text NOT NULL,            -- pseudonymous owner binding; data keys hang off it
    drk_version      integer NOT NULL DEFAULT 1,
    root_key_wrapped bytea,                    -- NULL once revoked (crypto-shredded)
    mac_enc          bytea NOT NULL,           -- factory MAC, field envelope under the network key
    current_epoch    bigint NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE data_keys (
    owner      text NOT NULL,
    key_class  smallint NOT NULL,
    version    integer NOT NULL,
    state      text NOT NULL DEFAULT 'active'
               CHECK (state IN ('active', 'decrypt_only', 'destroyed')),
    wrapped    bytea,                          -- NULL once destroyed
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, key_class, version)
);

CREATE TABLE device_sessions (
    device_id      text NOT NULL REFERENCES devices ON DELETE CASCADE,
    epoch          bigint NOT NULL,
    device_nonce   bytea NOT NULL,
    server_nonce   bytea NOT NULL,
    cid            bigint NOT NULL,
    drk_version    integer NOT NULL,
    established_at timestamptz NOT NULL,
    superseded_at  timestamptz,
    PRIMARY KEY (device_id, epoch),
    UNIQUE (device_id, device_nonce)
);
CREATE INDEX device_sessions_cid ON device_sessions (device_id, cid);

CREATE TABLE device_state (
    device_id      text PRIMARY KEY REFERENCES devices ON DELETE CASCADE,
    online         boolean,
    presence_epoch bigint,
    since          timestamptz,
    last_seen      timestamptz,                -- server time of the latest accepted frame
    last_ts        timestamptz,                -- device time of the latest telemetry
    latest         jsonb NOT NULL DEFAULT '{}',-- latest plain (non-personal) values by point
    firmware       text,
    rssi           smallint
);

-- Rejected messages: reason, sizes and ids only; never payload content.
CREATE TABLE quarantine (
    id           bigserial PRIMARY KEY,
    digest       bytea NOT NULL UNIQUE,        -- SHA-256 of topic and payload: one row per message
    received_at  timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    device_id    text,                         -- as named by a well-formed topic, else NULL
    kind         text NOT NULL,
    reason       text NOT NULL,
    detail       text NOT NULL,
    size         integer NOT NULL,
    epoch        bigint,
    counter      bigint,
    occurrences  integer NOT NULL DEFAULT 1
);
CREATE INDEX quarantine_received ON quarantine (received_at);
CREATE INDEX quarantine_device_reason ON quarantine (device_id, reason);

CREATE TABLE storage_layout (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    kind      text NOT NULL CHECK (kind IN ('timescale', 'native'))
);

-- Bridge worker sessions known to the broker: a shared-subscription member that stops for good
-- keeps receiving its share into its persistent session, so a smaller deployment drains the
-- sessions of the workers it no longer runs (qnect.bridge).
CREATE TABLE bridge_sessions (
    client_id  text PRIMARY KEY,
    last_start timestamptz NOT NULL DEFAULT now()
);
