-- Three unique keys that most rows leave NULL: a job's dedupe key (only broadcasts, receipts,
-- privacy processing and recurring jobs have one), and an entry's referral code and place
-- (set at confirmation). A unique constraint indexes every NULL too: three index entries
-- written by every signup for nothing. A partial unique index holds only the keys; lookups
-- by key (`= $1`) use it as before.
ALTER TABLE job DROP CONSTRAINT job_dedupe_key_key;
CREATE UNIQUE INDEX job_dedupe_key_key ON job (dedupe_key) WHERE dedupe_key IS NOT NULL;

ALTER TABLE waitlist_entry
    DROP CONSTRAINT waitlist_entry_referral_code_key,
    DROP CONSTRAINT waitlist_entry_confirm_seq_key;
CREATE UNIQUE INDEX waitlist_entry_referral_code_key ON waitlist_entry (referral_code)
    WHERE referral_code IS NOT NULL;
CREATE UNIQUE INDEX waitlist_entry_confirm_seq_key ON waitlist_entry (confirm_seq)
    WHERE confirm_seq IS NOT NULL;
