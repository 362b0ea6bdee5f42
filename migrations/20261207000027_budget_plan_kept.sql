-- take_request_mail in PL/pgSQL, which keeps its UPDATE's plan for the session. As a SQL
-- function that is not inlined (it writes), PostgreSQL before 18 planned that UPDATE again at
-- every call: 45 µs of the database's time for each signup email, more than running it took;
-- the statement that calls it (the signup email's decision) went from 252 to 148 µs an email
-- (pg_stat_statements over a benchmark run, issue 31). Same rule, same answers: true if some
-- of the day's budget was left, NULL once it is spent.
CREATE OR REPLACE FUNCTION take_request_mail(who uuid, per_day integer) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    taken boolean;
BEGIN
    UPDATE person
    SET request_mail_count = CASE WHEN request_mail_day = today THEN request_mail_count + 1 ELSE 1 END,
        request_mail_day = today
    WHERE id = who AND (request_mail_day IS DISTINCT FROM today OR request_mail_count < per_day)
    RETURNING true INTO taken;
    RETURN taken;
END
$$;
