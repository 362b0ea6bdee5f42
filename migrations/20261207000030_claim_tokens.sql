-- Each claim of a job gets a token of its own, and every write after the claim is fenced by it
-- as well as by the attempt number (jobs.rs). With the token, a claim can commit without
-- waiting for its WAL to reach the disk (issue 31: 10-20% more email a second, measured).
--
-- Why the attempt number alone no longer fences: a claim lost in a crash of Postgres puts its
-- job back at its earlier attempt, so the next claim hands out the lost claim's attempt number
-- again, and the worker that held the lost claim (it never knew) could finish, fail, renew or
-- hand back the new owner's claim. A random token is never handed out twice.
--
-- What a lost claim costs: its job is queued again at once, and the worker that held it does
-- not know, so until that worker's next write (fenced) the two can run the job side by side,
-- and its email can go twice (under one Message-ID), as a worker killed between sending and
-- recording sends it twice. Only claims whose WAL had not reached the disk are lost: while
-- jobs finish, the finisher's durable commit (every 10 ms) flushes the claims before it, and
-- Postgres's WAL writer flushes the rest within 3 × wal_writer_delay (600 ms by default).
--
-- A rolling upgrade: the previous version's workers claim through the same function (so
-- their claims get tokens too, which they ignore), commit their claims durably, and fence by
-- the attempt number alone, as before; a stale worker of this version is fenced by its token.
ALTER TABLE job ADD COLUMN claim uuid;

-- As in migration 16, with the token.
CREATE OR REPLACE FUNCTION claim_jobs(kinds text[], lease interval, n integer) RETURNS SETOF job
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_sort = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    UPDATE job SET status = 'dead', locked_until = NULL, updated_at = now(),
           last_error = 'the worker stopped during every attempt (killed or crashed)'
    WHERE job.kind = ANY (kinds) AND status = 'running' AND locked_until < now()
      AND attempts >= max_attempts;
    RETURN QUERY
    WITH lapsed AS (
        SELECT id FROM job
        WHERE status = 'running' AND locked_until < now() AND attempts < max_attempts
          AND job.kind = ANY (kinds)
        ORDER BY locked_until
        LIMIT n
        FOR UPDATE SKIP LOCKED
    ), ready AS (
        SELECT id FROM job
        WHERE status = 'queued' AND run_at <= now() AND job.kind = ANY (kinds)
        ORDER BY run_at
        LIMIT n
        FOR UPDATE SKIP LOCKED
    )
    UPDATE job SET status = 'running', attempts = attempts + 1, claim = gen_random_uuid(),
           locked_until = now() + lease, updated_at = now()
    WHERE id = ANY (ARRAY (SELECT id FROM lapsed UNION ALL SELECT id FROM ready LIMIT n))
    RETURNING job.*;
END
$$;

-- The claim this version's workers make: claim_jobs, in a transaction that commits without
-- waiting for the disk. What a crash can lose is the claim alone, and a lost claim is a job
-- still to do, which the next claim takes (its email, if it left, is sent again under the same
-- Message-ID, as after a lapsed lease). Everything after the claim commits durably, and its
-- first durable commit flushes the claim's WAL with its own.
--
-- set_config(…, true) lasts to the end of the transaction only in a function without SET
-- clauses (a function's SET clauses undo every setting made inside it when it returns), so it
-- is made here, around claim_jobs, which keeps its pinned plan.
--
-- It refuses to run in a transaction that has written already: that write would lose its
-- durability with the claim's.
CREATE FUNCTION claim_jobs_async(kinds text[], lease interval, n integer) RETURNS SETOF job
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'claim_jobs_async commits its transaction without waiting for the disk: call it in a transaction of its own';
    END IF;
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY SELECT * FROM claim_jobs(kinds, lease, n);
END
$$;

-- As in migration 29, each job deleted only if still at the claim that finished it. The
-- previous version's finish_jobs (migration 29) stays for its replicas during a rolling
-- upgrade; the one before it (migration 17), which no replica that can run beside this
-- version calls, goes.
DROP FUNCTION finish_jobs(uuid[], integer[]);

CREATE FUNCTION finish_jobs(
    finished uuid[], at_attempts integer[], at_claims uuid[],
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
    DELETE FROM job USING unnest(finished, at_attempts, at_claims) AS done (id, attempts, claim)
    WHERE job.id = done.id AND job.attempts = done.attempts AND job.claim = done.claim;
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
