-- Where the audit trail begins once its oldest events have been pruned (issue 28: the trail has
-- a retention period like everything else). The first event kept and the link it chains from,
-- under a MAC with the audit-trail key (privacy/src/audit.rs::prune): the trail still
-- verifies from there, and one cut further, or a start moved, does not.
CREATE TABLE privacy_audit_start (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq        bigint NOT NULL,
    prev_hash  bytea NOT NULL,
    at         timestamptz NOT NULL,
    mac        bytea NOT NULL
);
