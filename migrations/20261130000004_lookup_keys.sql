-- The deployment's lookup keys (the blind-index key and the token-signing key), wrapped under
-- master key version master_version. What they make is kept — blind indexes and suppression
-- hashes in rows, MACs in unsubscribe links already mailed — so they stay the same across
-- master key rotations: `keys rotate` only re-wraps them, as it re-wraps data keys.
CREATE TABLE lookup_key (
    purpose        text PRIMARY KEY CHECK (purpose IN ('blind-index', 'token-signing')),
    master_version integer NOT NULL,
    wrapped        bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Each running server process, as it last said: which master version it wraps new data keys
-- under and which it can open. `keys status` reads it to tell whether a version is still in
-- use by a process before it says the version can be removed.
CREATE TABLE replica (
    id               uuid PRIMARY KEY,
    master_version   integer NOT NULL,
    master_versions  integer[] NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    seen_at          timestamptz NOT NULL DEFAULT now()
);
