-- Waitlist: one entry per person, double opt-in, position, referrals, subscription state.

CREATE TABLE waitlist_entry (
    person_id         uuid PRIMARY KEY REFERENCES person (id) ON DELETE CASCADE,
    -- pending: signed up, not confirmed; confirmed: on the list; invited: let in, off the list.
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'confirmed', 'invited')),
    -- Where the signup came from, e.g. "homepage": a short slug from a fixed alphabet, never
    -- free text (free text could hold anything a person typed).
    source            text CHECK (source ~ '^[a-z0-9_-]{1,32}$'),
    -- Order of confirmation; a person's place is confirm_seq - referral_bump * referrals.
    confirm_seq       bigint,
    referrals         integer NOT NULL DEFAULT 0,
    referral_code     text,
    referred_by       uuid REFERENCES person (id) ON DELETE SET NULL,
    -- Product email (updates, invitations) goes only to confirmed, subscribed people.
    subscribed        boolean NOT NULL DEFAULT false,
    unsubscribed_at   timestamptz,
    confirmed_at      timestamptz,
    invited_at        timestamptz,
    -- Repeat signups send at most one email per 10 minutes; the job that sent it may retry.
    last_signup_mail_at timestamptz,
    last_signup_mail_job uuid,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT waitlist_entry_referral_code_key UNIQUE (referral_code),
    CONSTRAINT waitlist_entry_confirm_seq_key UNIQUE (confirm_seq)
);
CREATE SEQUENCE waitlist_confirm_seq OWNED BY waitlist_entry.confirm_seq;

-- Single-use confirmation tokens, stored only as SHA-256 hashes (the token is 256 random bits).
CREATE TABLE waitlist_token (
    token_hash  bytea PRIMARY KEY,
    person_id   uuid NOT NULL REFERENCES person (id) ON DELETE CASCADE,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX waitlist_token_person_idx ON waitlist_token (person_id);

-- People who unsubscribed and were later erased: only a keyed hash of the address (a blind
-- index under its own domain), so erasure does not silently re-subscribe them. A new double
-- opt-in by the same address lifts it.
CREATE TABLE email_suppression (
    address_hash bytea PRIMARY KEY,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Product updates sent with `pexper-admin mail broadcast`. A broadcast is identified by its
-- content, so re-running the same command continues it instead of starting another.
CREATE TABLE broadcast (
    id            uuid PRIMARY KEY,
    content_hash  bytea NOT NULL,
    template      text NOT NULL,
    -- Written by an operator for everyone: not personal data.
    subject       text NOT NULL,
    body          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT broadcast_content_hash_key UNIQUE (content_hash)
);

-- Who a broadcast was queued for: the primary key is what makes "nobody gets the same
-- broadcast twice" hold across re-runs, crashes and finished (deleted) jobs.
CREATE TABLE broadcast_delivery (
    broadcast_id  uuid NOT NULL REFERENCES broadcast (id) ON DELETE CASCADE,
    person_id     uuid NOT NULL REFERENCES person (id) ON DELETE CASCADE,
    queued_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (broadcast_id, person_id)
);
CREATE INDEX broadcast_delivery_person_idx ON broadcast_delivery (person_id);
