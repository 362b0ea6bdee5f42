-- Recurring jobs (sweeps, rollups): the last period each kind was enqueued for. Every replica
-- ticks on its own clock; the conditional upsert on this row lets exactly one of them enqueue
-- a kind per period (a job's own row is deleted when it finishes, so its dedupe key cannot
-- say that it already ran in this period).
CREATE TABLE recurring_job (
    kind text PRIMARY KEY,
    -- floor(unix seconds / period length) of the last enqueue
    period bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
