-- Why an address is suppressed, which decides what it still gets (platform mail::MailClass):
--   unsubscribed  they unsubscribed and were later erased (kept so erasure does not silently
--                 re-subscribe them; a fresh double opt-in lifts it)
--   bounced       a hard bounce (RFC 3464 status 5.x.x): the address does not take mail
--   complained    a spam complaint (RFC 5965 ARF report)
ALTER TABLE email_suppression
    ADD COLUMN reason text NOT NULL DEFAULT 'unsubscribed'
        CHECK (reason IN ('unsubscribed', 'bounced', 'complained'));

-- Soft bounces (4.x.x) of a message we sent, counted on the message's own row; erased with
-- the person like the rest of their email history.
ALTER TABLE email_event ADD COLUMN soft_bounces integer NOT NULL DEFAULT 0;

-- Bounce and complaint reports already ingested (a SHA-256 of the report's Message-ID, or of
-- the whole report without one): `pexper-admin mail bounces` is safe to run again over the
-- same mailbox. Nothing about the person is kept here.
CREATE TABLE mail_report (
    report_hash bytea PRIMARY KEY CHECK (length(report_hash) = 32),
    kind        text NOT NULL CHECK (kind IN ('hard_bounce', 'soft_bounce', 'complaint', 'unmatched')),
    received_at timestamptz NOT NULL DEFAULT now()
);
