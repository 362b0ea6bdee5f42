-- Platform tables: people (with their encrypted address and wrapped data key) and the job queue.

-- One row per person we hold anything about. The address is never stored in clear:
--   email_index      HMAC-SHA256 blind index of the normalised address, for lookups;
--   email_sealed     the address sealed with this person's data key (crypto.rs layout);
--   data_key         the person's data key, wrapped under master key version key_version.
-- Deleting the row destroys the data key, which makes every ciphertext made with it unreadable.
CREATE TABLE person (
    id            uuid PRIMARY KEY,
    email_index   bytea NOT NULL,
    email_sealed  bytea NOT NULL,
    data_key      bytea NOT NULL,
    key_version   integer NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT person_email_index_key UNIQUE (email_index)
);
-- `keys rotate` walks the rows still wrapped under an old version.
CREATE INDEX person_key_version_idx ON person (key_version);

-- The job queue. Side effects (email, exports, erasure) are rows here, written in the same
-- transaction as the change that causes them, and claimed with FOR UPDATE SKIP LOCKED.
-- Payloads hold ids, never personal data: a mail job names the person, not the address.
CREATE TABLE job (
    id            uuid PRIMARY KEY,
    kind          text NOT NULL,
    payload       jsonb NOT NULL DEFAULT '{}',
    -- queued: waiting for run_at; running: claimed until locked_until (the lease);
    -- dead: gave up (permanent error or max_attempts), kept for an operator to look at.
    -- Finished jobs are deleted: the queue is not an archive.
    status        text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'dead')),
    attempts      integer NOT NULL DEFAULT 0,
    max_attempts  integer NOT NULL DEFAULT 10,
    run_at        timestamptz NOT NULL DEFAULT now(),
    locked_until  timestamptz,
    -- The error of the last failed attempt, written by our code: never personal data.
    last_error    text,
    -- Set for jobs about one person, so erasure can find and cancel them.
    person_id     uuid,
    -- Optional key that makes an enqueue idempotent (e.g. one broadcast per person).
    dedupe_key    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT job_dedupe_key_key UNIQUE (dedupe_key)
);
-- The claim query: ready jobs of some kinds by run_at; and expired leases.
CREATE INDEX job_ready_idx ON job (run_at) WHERE status = 'queued';
CREATE INDEX job_lease_idx ON job (locked_until) WHERE status = 'running';
CREATE INDEX job_person_idx ON job (person_id) WHERE person_id IS NOT NULL;

-- Every email we sent to a person: what (template), when, and the Message-ID. No address, no
-- body: enough for a privacy export ("what did you send me?") and nothing more.
CREATE TABLE email_event (
    id          uuid PRIMARY KEY,
    person_id   uuid NOT NULL REFERENCES person (id) ON DELETE CASCADE,
    template    text NOT NULL,
    message_id  text NOT NULL,
    sent_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT email_event_message_id_key UNIQUE (message_id)
);
CREATE INDEX email_event_person_idx ON email_event (person_id);
