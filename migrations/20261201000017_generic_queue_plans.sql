-- The queue's two batched statements plan once per session, not at every call.
--
-- Postgres re-plans a prepared statement at each call ("custom" plans) while those look
-- cheaper than its one generic plan, and for a batch the custom plan always looks cheaper:
-- it knows the batch holds 4 jobs where the generic one guesses 10. So the claim and the
-- delete of finished jobs were planned at every call: half of the claim's Postgres time,
-- and most of the delete's (issue 17). Their plans are pinned to the queue's indexes
-- (migration 16), so the generic plan is the same plan, made once.
ALTER FUNCTION claim_jobs(text[], interval, integer) SET plan_cache_mode = force_generic_plan;

-- Deletes finished jobs, each only if still at the attempt that finished it (jobs::finish).
-- Pinned as claim_jobs is: a generic plan made while the queue was small would otherwise
-- keep scanning the whole table once it is large.
CREATE FUNCTION finish_jobs(finished uuid[], at_attempts integer[]) RETURNS void
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
END
$$;
