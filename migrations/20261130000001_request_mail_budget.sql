-- Mail that anyone can cause by typing someone's address into a public form (waitlist
-- confirmations, privacy-request acknowledgements) is capped per address per UTC day, so the
-- forms cannot be used to flood an inbox however many clients or addresses ask. The count
-- lives on the person row, so every replica shares it and erasure removes it with the person.
ALTER TABLE person
    ADD COLUMN request_mail_day   date,
    ADD COLUMN request_mail_count integer NOT NULL DEFAULT 0;
