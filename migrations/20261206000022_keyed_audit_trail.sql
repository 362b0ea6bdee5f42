-- The audit trail keyed (issue 27): each new event's link is an HMAC under the deployment's
-- audit-trail lookup key (wrapped under the master key like the others, never in clear here),
-- so someone who can write to the database can no longer rewrite an event and recompute the
-- chain. Events from before are kept as they are, plain SHA-256 links, and may only precede
-- the keyed ones: the server seals them with the first head it records (privacy/src/audit.rs).
ALTER TABLE lookup_key DROP CONSTRAINT lookup_key_purpose_check;
ALTER TABLE lookup_key ADD CONSTRAINT lookup_key_purpose_check
    CHECK (purpose IN ('blind-index', 'token-signing', 'audit-trail'));

ALTER TABLE privacy_audit ADD COLUMN keyed boolean NOT NULL DEFAULT false;
-- No default from now on: a server from before (still running during a rollout) cannot add an
-- unkeyed event after keyed ones; its insert fails instead of breaking the chain for good.
ALTER TABLE privacy_audit ALTER COLUMN keyed DROP DEFAULT;

-- The head of the trail as last recorded, with a MAC under the same key over (seq, hash, at):
-- written with every event, so deleting the newest events leaves a head that names an event
-- no longer there (an older head put back shows only against one noted outside the database).
CREATE TABLE privacy_audit_head (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq  bigint NOT NULL,
    hash bytea NOT NULL,
    at   timestamptz NOT NULL,
    mac  bytea NOT NULL
);
