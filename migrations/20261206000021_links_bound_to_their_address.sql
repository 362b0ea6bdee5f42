-- An account's links (its verification link, a password-reset link) are bound to the address
-- they were mailed to: the person's email blind index when the link was made. If the address
-- changes (a correction request carried out with `privacy complete --new-email`), a link
-- mailed to the old address no longer works: otherwise whoever held the old address could use
-- a link kept from before to set the password of an account that is now someone else's.
-- Links made before this migration have no index and stop working (they last 2 days or 1 hour).
ALTER TABLE account_signup ADD COLUMN email_index bytea;
ALTER TABLE account_reset ADD COLUMN email_index bytea;
