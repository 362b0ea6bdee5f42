-- A privacy request taken in when its address's access mail budget was spent (a stranger used
-- it up) is kept and on the clock, and its acknowledgement is held, not dropped: the privacy
-- sweep sends it once the budget allows (the next UTC day), one email per person however many
-- requests piled up, and until then the request cannot expire unverified.
ALTER TABLE privacy_request ADD COLUMN acknowledgement_held_at timestamptz;
