-- An email a job sent is recorded in the person's email history by the statement that deletes
-- the finished job (jobs::finish), many jobs at once, instead of by an INSERT and a commit of
-- its own per email (issue 31). The two-argument finish_jobs stays for replicas of the
-- previous version during a rolling upgrade.
--
-- Whatever became of the job (its lease may have passed to another worker), its email left,
-- so it is recorded. A person erased meanwhile is skipped, not an error that would fail the
-- whole batch: FOR KEY SHARE waits for an erasure in progress and then sees its delete.
--
-- Locks, so that no cycle can form: the jobs are deleted first, in the order an erasure takes
-- its locks (jobs, then the person), each in id order; the people, and the emails' unique
-- keys, are locked in one order (by person, then Message-ID); and a key-share lock waits only
-- for a change of a person's key or their deletion, which lock one person at a time (the
-- statements that lock several people at once take weaker locks: the signup statement's
-- no-op update and the key rotation change no key).
CREATE FUNCTION finish_jobs(
    finished uuid[], at_attempts integer[],
    sent_ids uuid[], sent_to uuid[], sent_templates text[], sent_message_ids text[]
) RETURNS void
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    DELETE FROM job USING unnest(finished, at_attempts) AS done (id, attempts)
    WHERE job.id = done.id AND job.attempts = done.attempts;
    INSERT INTO email_event (id, person_id, template, message_id)
    SELECT sent.id, sent.person_id, sent.template, sent.message_id
    FROM unnest(sent_ids, sent_to, sent_templates, sent_message_ids)
             AS sent (id, person_id, template, message_id)
    JOIN person ON person.id = sent.person_id
    ORDER BY person.id, sent.message_id
    FOR KEY SHARE OF person
    ON CONFLICT ON CONSTRAINT email_event_message_id_key DO NOTHING;
END
$$;
