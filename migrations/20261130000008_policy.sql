-- Privacy-policy versions as announced (§8: notice by email at least 30 days before a change
-- takes effect). Written by an operator for everyone: not personal data.
CREATE TABLE policy_version (
    version      text PRIMARY KEY CHECK (version ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$'),
    effective_at date NOT NULL,
    summary      text NOT NULL CHECK (length(summary) BETWEEN 1 AND 2000),
    announced_at timestamptz NOT NULL DEFAULT now()
);

-- Who was told of which version: one row per person and version, written when their notice
-- is queued (so a re-run queues nobody twice), and how it ended. In their export; erased
-- with them.
CREATE TABLE policy_notice (
    person_id   uuid NOT NULL REFERENCES person (id) ON DELETE CASCADE,
    version     text NOT NULL REFERENCES policy_version (version),
    status      text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sent', 'suppressed')),
    queued_at   timestamptz NOT NULL DEFAULT now(),
    notified_at timestamptz,
    PRIMARY KEY (person_id, version)
);
