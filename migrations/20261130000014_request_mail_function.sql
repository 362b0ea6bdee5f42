-- Takes one email from a person's daily budget of request-caused mail
-- (person::REQUEST_MAIL_PER_DAY): true if some was left, NULL once it is spent. A function so
-- that a statement deciding to send (the signup email's) takes it in the same round trip, and
-- the rule is written once: person::take_request_mail calls it too. One UPDATE of the person
-- row: concurrent callers, on any replica, queue on its lock and see each other's counts.
CREATE FUNCTION take_request_mail(who uuid, per_day integer) RETURNS boolean
LANGUAGE sql VOLATILE AS $$
    UPDATE person
    SET request_mail_count = CASE WHEN request_mail_day = (now() AT TIME ZONE 'UTC')::date
                                  THEN request_mail_count + 1 ELSE 1 END,
        request_mail_day = (now() AT TIME ZONE 'UTC')::date
    WHERE id = who
      AND (request_mail_day IS DISTINCT FROM (now() AT TIME ZONE 'UTC')::date
           OR request_mail_count < per_day)
    RETURNING true
$$;
