-- Operators act in their own name: an erasure an operator starts (`privacy erase`) is a
-- request of source `operator`; every audit event names who did it (`actor`: the operator
-- from PEXPER_OPERATOR or the OS user, or `system` for the server's own work); and reads of
-- personal data in clear are audited too, with no request to belong to.
ALTER TABLE privacy_request DROP CONSTRAINT privacy_request_source_check;
ALTER TABLE privacy_request ADD CONSTRAINT privacy_request_source_check
    CHECK (source IN ('web', 'email', 'operator'));
ALTER TABLE privacy_audit ALTER COLUMN request_id DROP NOT NULL;
-- '' on the rows written before actors were recorded (their hashes do not cover one).
ALTER TABLE privacy_audit ADD COLUMN actor text NOT NULL DEFAULT '';
