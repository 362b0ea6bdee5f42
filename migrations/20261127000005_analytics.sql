-- Analytics and crash reports from the desktop app: anonymous by construction. No table here
-- has a column for an IP address, a user agent, an account, an email, a device or an install
-- id; free text is never stored from usage events, and crash text is scrubbed before it lands.

-- Usage events, as validated against the allow-list in services/analytics/src/schema.rs.
-- session_id is random per app session (the client never keeps it across sessions).
CREATE TABLE analytics_event (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at  timestamptz NOT NULL,
    session_id   uuid NOT NULL,
    app_version  text NOT NULL,
    os           text NOT NULL,
    arch         text NOT NULL,
    name         text NOT NULL,
    props        jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX analytics_event_occurred_idx ON analytics_event (occurred_at);

-- What was refused, by day and reason (never the refused names or values themselves).
CREATE TABLE analytics_drop (
    day     date NOT NULL,
    reason  text NOT NULL,
    count   bigint NOT NULL,
    PRIMARY KEY (day, reason)
);

-- Crash reports rebuilt from an allow-list and scrubbed (services/analytics/src/crash/).
CREATE TABLE crash_report (
    id              uuid PRIMARY KEY,
    -- The SDK's event id: a retried upload is stored once.
    event_id        uuid NOT NULL,
    project_id      integer NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    occurred_at     timestamptz NOT NULL,
    release         text,
    environment     text,
    level           text,
    signature       text NOT NULL,
    exception_type  text,
    event           jsonb NOT NULL,
    CONSTRAINT crash_report_event_id_key UNIQUE (event_id)
);
CREATE INDEX crash_report_received_idx ON crash_report (received_at);
CREATE INDEX crash_report_signature_idx ON crash_report (signature);

-- Release health: one row per app session (sid is random per session), counted once, with
-- its latest status until a terminal one.
CREATE TABLE app_session (
    sid          uuid PRIMARY KEY,
    release      text NOT NULL,
    environment  text,
    started_at   timestamptz NOT NULL,
    status       text NOT NULL CHECK (status IN ('ok', 'exited', 'crashed', 'abnormal', 'errored')),
    errors       integer NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX app_session_started_idx ON app_session (started_at);

-- Pre-aggregated sessions (the `sessions` envelope item), per minute as sent.
CREATE TABLE session_aggregate (
    started      timestamptz NOT NULL,
    release      text NOT NULL,
    environment  text NOT NULL DEFAULT '',
    exited       bigint NOT NULL DEFAULT 0,
    errored      bigint NOT NULL DEFAULT 0,
    abnormal     bigint NOT NULL DEFAULT 0,
    crashed      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (started, release, environment)
);

-- Daily rollups, kept after the raw rows above are deleted by retention. `sessions` is how
-- many sessions a row stands for: reports show fewer than a threshold as "<k".
CREATE TABLE analytics_rollup (
    day          date NOT NULL,
    metric       text NOT NULL,
    app_version  text NOT NULL DEFAULT '',
    os           text NOT NULL DEFAULT '',
    key          text NOT NULL DEFAULT '',
    value        double precision NOT NULL,
    sessions     bigint NOT NULL,
    PRIMARY KEY (day, metric, app_version, os, key)
);
