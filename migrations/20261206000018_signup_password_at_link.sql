-- An account's password is chosen on the page its verification link opens, not on the sign-up
-- form: whoever can read the mail at the address is who sets the password. A password typed on
-- the sign-up form by anyone who knew the address was an account pre-hijack (the victim's click
-- on the link opened the account with the stranger's password). Pending sign-ups keep no hash.
ALTER TABLE account_signup DROP COLUMN password_hash;
