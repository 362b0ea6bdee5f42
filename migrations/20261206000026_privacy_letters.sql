-- Letters to privacy@, taken in by the mailbox reader (issue 29).
--
-- A letter whose right we could not tell is `unclassified`: on the clock like the others,
-- until an operator classifies it (`pexper-admin privacy classify ID --kind K`).
ALTER TABLE privacy_request DROP CONSTRAINT privacy_request_kind_check;
ALTER TABLE privacy_request ADD CONSTRAINT privacy_request_kind_check
    CHECK (kind IN ('access', 'portability', 'deletion', 'correction', 'restriction',
                    'objection', 'opt_out_of_sale', 'unclassified'));

-- One row per letter ever taken in, so a letter read twice (delivered twice, or read again
-- after a crash between the commit and the mailbox's `\Seen`) is the same request.
CREATE TABLE privacy_letter (
    -- SHA-256 of the letter's Message-ID with its sender and words, or of the whole message
    -- when it has no Message-ID.
    key           bytea PRIMARY KEY,
    -- The request it became; NULL when it became none (a reply to our acknowledgement, a
    -- letter with no address to answer) or once that request is deleted.
    request_id    uuid REFERENCES privacy_request (id) ON DELETE SET NULL,
    -- Our receiving server said the sender's domain failed DMARC: the From may be forged
    -- (verification by emailed link is what proves the address either way).
    dmarc_failed  boolean NOT NULL DEFAULT false,
    -- The language the acknowledgement is written in (en, de, fr, es, it, nl, pl).
    language      text NOT NULL DEFAULT 'en',
    -- The letter's Message-ID and subject, sealed under the person's key, for the
    -- acknowledgement's `In-Reply-To` and `Re:`; gone once the request is no longer waiting
    -- for its person, and at erasure.
    reply_sealed  bytea,
    taken_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX privacy_letter_request_idx ON privacy_letter (request_id);
