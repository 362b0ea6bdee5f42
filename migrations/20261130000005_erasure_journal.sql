-- Every erasure, written in the erasure's own transaction: a hash of the person's id
-- (`sha256('pexper/erased-person/' || id)`) and the time, nothing else. Ids are random, so the
-- hash points at nobody in this database; it points at the person in a backup taken before
-- the erasure, and `pexper-admin db restore` erases them again after restoring it
-- (services/platform/src/db/backup.rs).
CREATE TABLE erasure_journal (
    person_hash bytea PRIMARY KEY CHECK (length(person_hash) = 32),
    erased_at   timestamptz NOT NULL DEFAULT now()
);
