-- The job claim (jobs::claim), in one place that can pin its plan. Claims up to n jobs of
-- `kinds`: running ones whose lease has lapsed first, then ready ones in the order they are
-- due; a lapsed job whose every attempt ended that way goes 'dead' in the same statement.
--
-- The right plan here is the same at every size of queue: walk the partial indexes in order
-- and stop after n rows. The planner, estimating from statistics, chose otherwise whenever
-- they were stale: on a queue never analyzed since a burst of 90,000 signups it expected
-- one ready row, sorted them all (spilling to disk, 30 ms a claim) and the workers ran at a
-- sixth of their speed until autovacuum's next ANALYZE (issue 17). The settings below leave
-- it only index scans, in index order; PL/pgSQL keeps the plan for the session.
CREATE FUNCTION claim_jobs(kinds text[], lease interval, n integer) RETURNS SETOF job
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_sort = off
SET enable_hashjoin = off
SET enable_mergejoin = off
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
    UPDATE job SET status = 'running', attempts = attempts + 1,
           locked_until = now() + lease, updated_at = now()
    WHERE id = ANY (ARRAY (SELECT id FROM lapsed UNION ALL SELECT id FROM ready LIMIT n))
    RETURNING job.*;
END
$$;
