-- The job table is a queue: every row is inserted, updated a few times and deleted within
-- seconds, so under a launch's backlog its dead rows pile up faster than the default
-- autovacuum (20% of the table) clears them, and its statistics describe a queue that is no
-- longer there. Vacuum and analyze it after every thousand changes instead, as the queue
-- libraries built on Postgres advise for their tables.
ALTER TABLE job SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 1000
);
