-- Accounts on pexper.com (services/accounts). An account adds a password to a person: the
-- address stays in `person`, sealed, found through its blind index as everywhere else, so the
-- waitlist entry, purchases and privacy requests of that address are the account's.
CREATE TABLE account (
    id                  uuid PRIMARY KEY,
    person_id           uuid NOT NULL UNIQUE REFERENCES person (id) ON DELETE CASCADE,
    -- The argon2id PHC string (algorithm, parameters, salt, hash); never the password.
    password_hash       text NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    password_changed_at timestamptz NOT NULL DEFAULT now(),
    -- Set by an operator (`pexper-admin accounts disable`, audited with the reason).
    disabled_at         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- A sign-up waiting for its address to be verified. The account exists only once the link is
-- used, with the password given in the attempt whose link it was: someone who signs up with
-- another person's address cannot choose the password of an account that person then opens.
CREATE TABLE account_signup (
    id            uuid PRIMARY KEY,
    person_id     uuid NOT NULL REFERENCES person (id) ON DELETE CASCADE,
    password_hash text NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    -- Set when the verification email is sent (the token is made then, never queued in clear).
    token_hash    bytea UNIQUE,
    expires_at    timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_signup_person_idx ON account_signup (person_id);

-- Password-reset links: only the token's hash, single use, an hour.
CREATE TABLE account_reset (
    token_hash  bytea PRIMARY KEY,
    account_id  uuid NOT NULL REFERENCES account (id) ON DELETE CASCADE,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_reset_account_idx ON account_reset (account_id);

-- Signed-in browsers. The cookie holds a random 256-bit token; only its hash is here. No IP
-- address and no raw User-Agent: `device` is a label such as "Firefox on Linux".
CREATE TABLE account_session (
    id                 uuid PRIMARY KEY,
    account_id         uuid NOT NULL REFERENCES account (id) ON DELETE CASCADE,
    token_hash         bytea NOT NULL UNIQUE,
    device             text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    last_seen_at       timestamptz NOT NULL DEFAULT now(),
    -- The absolute end; the idle end is `last_seen_at` plus the idle lifetime.
    expires_at         timestamptz NOT NULL,
    -- The last time the password was typed in this session: export and deletion need a
    -- recent one.
    reauthenticated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_session_account_idx ON account_session (account_id);

-- Failed sign-ins per address, keyed by a keyed hash of the address (known or not: the answer
-- must not tell them apart). A row goes a day after its last failure.
CREATE TABLE signin_throttle (
    key           bytea PRIMARY KEY,
    failures      integer NOT NULL DEFAULT 0,
    blocked_until timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Export and deletion from one's own account are privacy requests too, of source `account`.
ALTER TABLE privacy_request DROP CONSTRAINT privacy_request_source_check;
ALTER TABLE privacy_request ADD CONSTRAINT privacy_request_source_check
    CHECK (source IN ('web', 'email', 'operator', 'account'));
