-- Separate daily budgets for mail a stranger can cause by typing someone's address
-- (person::MailBudget). One budget for everything let three support requests with someone's
-- address silence, for the rest of the UTC day, their password reset, their account link and
-- the acknowledgement of their privacy request. Now:
--   contact (the request_mail_* columns): waitlist confirmations, support acknowledgements;
--   access: account links, password resets, privacy-request acknowledgements with their
--           verification link: the mail a person needs to reach their own account and data;
--   owner:  what a signed-in person asks for (a licence sent again): no stranger can spend it;
--   held:   the one email a day that acknowledges the privacy requests the access budget held
--           back (privacy sweep): no other mail spends it, so a stranger who spends the access
--           budget every day cannot keep a person's request from being acknowledged.
-- Each lives on the person row, like the first: every replica shares it, erasure removes it.
ALTER TABLE person
    ADD COLUMN access_mail_day   date,
    ADD COLUMN access_mail_count integer NOT NULL DEFAULT 0,
    ADD COLUMN owner_mail_day    date,
    ADD COLUMN owner_mail_count  integer NOT NULL DEFAULT 0,
    ADD COLUMN held_mail_day     date,
    ADD COLUMN held_mail_count   integer NOT NULL DEFAULT 0;

-- Takes one email from one of a person's daily budgets: true if some was left, NULL once it is
-- spent (as take_request_mail, which stays the contact budget: the signup statement calls it).
-- One UPDATE of the person row: concurrent callers, on any replica, queue on its lock.
CREATE FUNCTION take_mail(who uuid, budget text, per_day integer) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    taken boolean;
BEGIN
    IF budget = 'contact' THEN
        RETURN take_request_mail(who, per_day);
    ELSIF budget = 'access' THEN
        UPDATE person
        SET access_mail_count = CASE WHEN access_mail_day = today THEN access_mail_count + 1 ELSE 1 END,
            access_mail_day = today
        WHERE id = who AND (access_mail_day IS DISTINCT FROM today OR access_mail_count < per_day)
        RETURNING true INTO taken;
    ELSIF budget = 'owner' THEN
        UPDATE person
        SET owner_mail_count = CASE WHEN owner_mail_day = today THEN owner_mail_count + 1 ELSE 1 END,
            owner_mail_day = today
        WHERE id = who AND (owner_mail_day IS DISTINCT FROM today OR owner_mail_count < per_day)
        RETURNING true INTO taken;
    ELSIF budget = 'held' THEN
        UPDATE person
        SET held_mail_count = CASE WHEN held_mail_day = today THEN held_mail_count + 1 ELSE 1 END,
            held_mail_day = today
        WHERE id = who AND (held_mail_day IS DISTINCT FROM today OR held_mail_count < per_day)
        RETURNING true INTO taken;
    ELSE
        RAISE EXCEPTION 'unknown mail budget %', budget;
    END IF;
    RETURN taken;
END
$$;
