-- When each retention rule last ran, and what it removed: `pexper-admin retention status`.
CREATE TABLE retention_run (
    rule         text PRIMARY KEY,
    last_run_at  timestamptz NOT NULL,
    last_removed bigint NOT NULL
);
