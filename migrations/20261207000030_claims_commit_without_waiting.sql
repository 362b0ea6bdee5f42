-- A claim's commit does not wait for its WAL to reach the disk (issue 31): the claim is the
-- queue's one durable write that nothing depends on surviving a crash of Postgres. If one is
-- lost, its job is back where it was, `queued` at its earlier attempt, and runs again; an
-- email its worker sent meanwhile is recorded by that worker's finish whatever became of the
-- job (`finish_jobs`), and the next attempt finds it there and does not send it twice. Every
-- other transaction still waits for its flush, which carries the claims' WAL written before
-- it. `set_config(…, true)` lasts to the end of the claim's transaction: unlike the settings
-- in the function's SET clauses, it is not undone when the function returns.
--
-- Otherwise the claim of migration 16, with its plan pinned as in migration 17.
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
    PERFORM set_config('synchronous_commit', 'off', true);
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
    UPDATE job SET status = 'running', attempts = attempts + 1,
           locked_until = now() + lease, updated_at = now()
    WHERE id = ANY (ARRAY (SELECT id FROM lapsed UNION ALL SELECT id FROM ready LIMIT n))
    RETURNING job.*;
END
$$;
