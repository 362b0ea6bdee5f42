-- Support requests (the policy's "when you contact us for help"). What the person wrote is
-- sealed under their data key, bound to its row; the reference (`S-…`) is what they quote.
CREATE TABLE support_request (
    id             uuid PRIMARY KEY,
    reference      text NOT NULL UNIQUE CHECK (reference ~ '^S-[0-9A-Z]{8}$'),
    person_id      uuid REFERENCES person (id) ON DELETE CASCADE,
    subject_sealed bytea,
    message_sealed bytea NOT NULL,
    status         text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'answered', 'closed')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    closed_at      timestamptz
);
CREATE INDEX support_request_person_idx ON support_request (person_id);

-- The operator's replies, sealed under the same person's key; each goes out as an email.
CREATE TABLE support_reply (
    id          uuid PRIMARY KEY,
    request_id  uuid NOT NULL REFERENCES support_request (id) ON DELETE CASCADE,
    body_sealed bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX support_reply_request_idx ON support_reply (request_id);
