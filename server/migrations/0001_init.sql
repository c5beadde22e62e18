-- Kernex on PostgreSQL (SPEC §8), schema 1.
--
-- Each record keeps its whole form in `doc` (the JSON of the server's record type, as
-- the backup format carries it); the columns beside it are what queries filter, join
-- or order by. Plain SQL: no extensions, no triggers, no stored procedures, so the
-- same schema runs on PostgreSQL-compatible distributed engines.

-- Devices: identity and what operators set (DeviceRecord). Heartbeats never write here.
CREATE TABLE devices (
    device_id   text PRIMARY KEY,
    fingerprint text NOT NULL UNIQUE,
    admission   text NOT NULL,            -- pending | accepted | rejected
    doc         jsonb NOT NULL
);
CREATE INDEX devices_by_admission ON devices (admission, device_id);

CREATE TABLE device_tags (
    tag       text NOT NULL,
    device_id text NOT NULL REFERENCES devices ON DELETE CASCADE,
    PRIMARY KEY (tag, device_id)
);
CREATE INDEX device_tags_by_device ON device_tags (device_id);

-- What heartbeats change (LiveRecord): one row per device that ever beat.
CREATE TABLE device_live (
    device_id      text PRIMARY KEY REFERENCES devices ON DELETE CASCADE,
    last_heartbeat timestamptz NOT NULL,
    online_until   timestamptz NOT NULL,  -- last_heartbeat + 3 × polling interval
    beats          bigint NOT NULL,       -- heartbeats stored so far: the next ring slot
    doc            jsonb NOT NULL
);
CREATE INDEX device_live_online ON device_live (online_until);

-- Heartbeat history: a ring per device, slot = beat number mod the retention, so a
-- beat overwrites the oldest one in place and nothing is ever pruned by a scan.
CREATE TABLE heartbeats (
    device_id text NOT NULL REFERENCES devices ON DELETE CASCADE,
    slot      integer NOT NULL,
    seq       bigint NOT NULL,
    doc       jsonb NOT NULL,             -- HeartbeatRecord
    PRIMARY KEY (device_id, slot)
);

CREATE TABLE configs (
    device_id text PRIMARY KEY REFERENCES devices ON DELETE CASCADE,
    doc       jsonb NOT NULL              -- DeviceConfig
);

-- Bearer tokens, stored only as SHA-256: one per device, one per operator name.
CREATE TABLE tokens (
    hash       text PRIMARY KEY,
    kind       text NOT NULL,             -- operator | device
    name       text NOT NULL,             -- the operator's name or the device id
    created_at timestamptz NOT NULL,
    UNIQUE (kind, name)
);

-- Registration signatures seen inside the replay window.
CREATE TABLE registrations (
    signature_hash text PRIMARY KEY,
    expires_at     timestamptz NOT NULL
);
CREATE INDEX registrations_by_expiry ON registrations (expires_at);

CREATE TABLE bundles (
    bundle_id  text PRIMARY KEY,          -- UUIDv7: sorts by creation
    version    text NOT NULL UNIQUE,
    doc        jsonb NOT NULL             -- BundleRecord
);

CREATE TABLE bundle_signatures (
    bundle_id text PRIMARY KEY REFERENCES bundles ON DELETE CASCADE,
    doc       jsonb NOT NULL              -- SignedDocument
);

-- The newest trust document (SPEC §7): one row.
CREATE TABLE trust (
    id      smallint PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL,
    doc     jsonb NOT NULL
);

-- Deployments without their targets (DeploymentRecord: counts, rollout state).
CREATE TABLE deployments (
    deployment_id  text PRIMARY KEY,      -- UUIDv7
    bundle_id      text NOT NULL,
    status         text NOT NULL,
    final          boolean NOT NULL,
    rollout_active boolean NOT NULL DEFAULT false,  -- what the rollout driver watches
    doc            jsonb NOT NULL
);
CREATE INDEX deployments_by_status ON deployments (status, deployment_id);
CREATE INDEX deployments_unfinished_by_bundle ON deployments (bundle_id) WHERE NOT final;
CREATE INDEX deployments_rollout_active ON deployments (deployment_id) WHERE rollout_active;

-- One device's part in a deployment (TargetRecord).
CREATE TABLE targets (
    deployment_id text NOT NULL REFERENCES deployments ON DELETE CASCADE,
    device_id     text NOT NULL,
    status        text NOT NULL,
    open          boolean NOT NULL,       -- deliverable and unfinished (sled's device_open)
    wave          integer NOT NULL,
    position      bigint NOT NULL,        -- rollout order
    doc           jsonb NOT NULL,
    PRIMARY KEY (deployment_id, device_id)
);
CREATE INDEX targets_open_by_device ON targets (device_id, deployment_id) WHERE open;
CREATE INDEX targets_by_device ON targets (device_id);
CREATE INDEX targets_by_wave ON targets (deployment_id, wave, position);

-- Result report ids: a result is applied once (SPEC §1.5).
CREATE TABLE reports (
    report_id     text PRIMARY KEY,
    deployment_id text NOT NULL,
    device_id     text NOT NULL
);

CREATE TABLE history (
    device_id  text NOT NULL,
    history_id text NOT NULL,             -- UUIDv7: newest last
    doc        jsonb NOT NULL,            -- HistoryRecord
    PRIMARY KEY (device_id, history_id)
);

-- Versions a device ran successfully (anti-rollback exceptions, SPEC §7).
CREATE TABLE device_success (
    device_id text NOT NULL,
    version   text NOT NULL,
    PRIMARY KEY (device_id, version)
);

-- Fleet counts for /metrics, kept in the transactions that change them.
CREATE TABLE counters (
    name  text PRIMARY KEY,
    value bigint NOT NULL
);
