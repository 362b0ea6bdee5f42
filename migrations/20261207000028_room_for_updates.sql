-- Room on each page for the new versions of rows that every signup email updates (the daily
-- budget's count on `person`, the last signup email on `waitlist_entry`): with pages filled
-- to the brim, as a burst of signups leaves them, each such UPDATE moved its row to another
-- page and wrote an entry in every index; with room, it stays on its page and touches no
-- index (a heap-only tuple). Applies to pages written from now on.
ALTER TABLE person SET (fillfactor = 85);
ALTER TABLE waitlist_entry SET (fillfactor = 85);
