-- A restriction of processing (GDPR Art. 18), set when an operator completes a restriction
-- request and cleared when they lift it: while set, the person's data is only stored — no
-- product email — and the legally required messages still go.
ALTER TABLE person ADD COLUMN restricted_since timestamptz;
