-- A person being erased: their data is gone, and their row waits only for the goodbye email
-- before `person::destroy`. At that moment their blind index is replaced by random bytes, so a
-- signup or a purchase for the same address in that window makes a new person, instead of
-- attaching to one about to be destroyed and vanishing with it.
ALTER TABLE person ADD COLUMN erasing_since timestamptz;
