-- The audit trail keyed (issue 27): each new event's link is an HMAC under the deployment's
-- audit-trail lookup key (wrapped under the master key like the others, never in clear here),
-- so someone who can write to the database can no longer rewrite an event and recompute the
-- chain. Events from before are kept as they are, plain SHA-256 links, and may only precede
-- the keyed ones.
ALTER TABLE lookup_key DROP CONSTRAINT lookup_key_purpose_check;
ALTER TABLE lookup_key ADD CONSTRAINT lookup_key_purpose_check
    CHECK (purpose IN ('blind-index', 'token-signing', 'audit-trail'));

ALTER TABLE privacy_audit ADD COLUMN keyed boolean NOT NULL DEFAULT false;

-- The head of the trail as last recorded, with a MAC under the same key over (seq, hash, at):
-- written with every event and refreshed by the privacy sweep, so deleting the newest events
-- leaves a head that names an event no longer there, and putting back an older head (a copy
-- kept from before) leaves one that stopped being refreshed.
CREATE TABLE privacy_audit_head (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq  bigint NOT NULL,
    hash bytea NOT NULL,
    at   timestamptz NOT NULL,
    mac  bytea NOT NULL
);
