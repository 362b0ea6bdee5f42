-- One check for a restriction of processing (GDPR Art. 18, `privacy complete` of a restriction
-- request): whether a person's data may be used for `purpose`. While restricted, only storage,
-- legal notices and the person's own requests go on; product email, invitations, the
-- operator's exports of addresses and referral credit stop. Used in SQL by the statements that
-- select people for such work, and from Rust through `person::may_process`.
CREATE FUNCTION may_process(who uuid, purpose text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT purpose IN ('storage', 'legal_notice', 'own_request')
        OR NOT EXISTS (SELECT 1 FROM person p WHERE p.id = who AND p.restricted_since IS NOT NULL)
$$;
