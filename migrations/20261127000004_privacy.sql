-- Privacy requests (GDPR/CCPA): the queue, its tokens, access exports, and a tamper-evident
-- audit trail. What a person wrote is sealed under their data key; the audit trail holds no
-- personal data and outlives the person.

CREATE TABLE privacy_request (
    id                 uuid PRIMARY KEY,
    -- NULL once the person is erased: the row stays as a receipt (kind, dates, outcome).
    person_id          uuid REFERENCES person (id) ON DELETE SET NULL,
    kind               text NOT NULL CHECK (kind IN ('access', 'portability', 'deletion',
                            'correction', 'restriction', 'objection', 'opt_out_of_sale')),
    jurisdiction       text NOT NULL CHECK (jurisdiction IN ('gdpr', 'ccpa', 'other')),
    -- web: the form; email: taken in by an operator from privacy@.
    source             text NOT NULL CHECK (source IN ('web', 'email')),
    -- received: waiting for the person to verify; verified: theirs, not yet handled;
    -- processing: being handled; completed / rejected: answered; expired: never verified.
    status             text NOT NULL CHECK (status IN ('received', 'verified', 'processing',
                            'completed', 'rejected', 'expired')),
    details_sealed     bytea,       -- what they wrote, sealed under their key
    outcome_sealed     bytea,       -- the operator's note or reason, as told to them
    received_at        timestamptz NOT NULL,
    -- received_at + 30 days, or the jurisdiction's legal deadline if that is sooner.
    due_at             timestamptz NOT NULL,
    verify_by          timestamptz NOT NULL,
    verified_at        timestamptz,
    closed_at          timestamptz,
    -- Operator reminders already sent: '7d', '3d', '1d', 'overdue' (each once).
    reminders          text[] NOT NULL DEFAULT '{}',
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX privacy_request_person_idx ON privacy_request (person_id);
CREATE INDEX privacy_request_open_idx ON privacy_request (due_at)
    WHERE status IN ('received', 'verified', 'processing');

-- Links in our emails: verification (single use) and export download (until it expires).
-- Only SHA-256 hashes of the 256-bit tokens are stored.
CREATE TABLE privacy_token (
    token_hash   bytea PRIMARY KEY,
    request_id   uuid NOT NULL REFERENCES privacy_request (id) ON DELETE CASCADE,
    purpose      text NOT NULL CHECK (purpose IN ('verify', 'export')),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX privacy_token_request_idx ON privacy_token (request_id);

-- An access request's export: one JSON document sealed under the person's key, so erasing
-- them makes any copy unreadable. Deleted when it expires or they are erased.
CREATE TABLE privacy_export (
    request_id       uuid PRIMARY KEY REFERENCES privacy_request (id) ON DELETE CASCADE,
    person_id        uuid NOT NULL REFERENCES person (id) ON DELETE CASCADE,
    document_sealed  bytea NOT NULL,
    expires_at       timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- Every status change, chained: hash = SHA-256(prev_hash ‖ the row's fields), so editing or
-- deleting a row breaks every hash after it (`pexper-admin privacy audit` checks). No personal
-- data: ids, kinds, statuses, counts.
CREATE TABLE privacy_audit (
    seq         bigserial PRIMARY KEY,
    request_id  uuid NOT NULL,
    event       text NOT NULL,
    status      text NOT NULL,
    detail      text NOT NULL DEFAULT '',
    at          timestamptz NOT NULL,
    prev_hash   bytea NOT NULL,
    hash        bytea NOT NULL
);
CREATE INDEX privacy_audit_request_idx ON privacy_audit (request_id);
