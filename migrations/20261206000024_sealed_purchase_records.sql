-- Purchase records sealed (issue 28): the policy says purchase records are stored encrypted,
-- and until now their amounts, currencies, countries, Stripe references and licence keys were
-- plain columns. From here on:
--
-- * What a purchase, a refund or a dispute was (amounts, currency, country, price, the clear
--   Stripe references) is one value sealed under the deployment's records key
--   (`Keyring::records_key`, stored wrapped under the master key with the lookup keys). It is
--   not the buyer's key on purpose: the record must outlive the buyer's erasure for 10 years.
-- * Stripe's references (cs_, pi_, ch_) are kept for matching only as keyed hashes (`h:…`,
--   `payments::store::stripe_ref`), so the database alone names nothing at Stripe.
-- * A licence key is sealed too: it is a bearer credential for the product.
--
-- The keys are not in the database, so this migration cannot seal: it moves every clear value
-- into `payments_unsealed`, and the first process with the keys seals them and empties it
-- (`payments::seal::backlog`, at server start, before any request is served, and by the admin
-- commands that read purchases).

-- The records key is stored by the first process to start (`keys::keyring`).
ALTER TABLE lookup_key DROP CONSTRAINT lookup_key_purpose_check;
ALTER TABLE lookup_key ADD CONSTRAINT lookup_key_purpose_check
    CHECK (purpose IN ('blind-index', 'token-signing', 'audit-trail', 'records'));

-- A row waiting to be sealed: which table and row, and its clear values.
CREATE TABLE payments_unsealed (
    source  text NOT NULL CHECK (source IN ('purchase', 'payment_adjustment', 'stripe_event',
                                            'license')),
    id      text NOT NULL,
    clear   jsonb NOT NULL,
    PRIMARY KEY (source, id)
);

INSERT INTO payments_unsealed (source, id, clear)
SELECT 'purchase', id::text,
       jsonb_build_object('session', checkout_session_id, 'payment_intent', payment_intent_id,
                          'charge', charge_id, 'price', price_id, 'amount_total', amount_total,
                          'currency', currency, 'country', country,
                          'amount_refunded', amount_refunded, 'dispute_status', dispute_status)
FROM purchase;

ALTER TABLE payment_adjustment ADD COLUMN id uuid NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE payment_adjustment ALTER COLUMN id DROP DEFAULT;
ALTER TABLE payment_adjustment ADD CONSTRAINT payment_adjustment_id_key UNIQUE (id);
INSERT INTO payments_unsealed (source, id, clear)
SELECT 'payment_adjustment', id::text,
       jsonb_build_object('payment_intent', payment_intent_id, 'charge', charge_id,
                          'amount_refunded', amount_refunded, 'dispute_status', dispute_status)
FROM payment_adjustment;

INSERT INTO payments_unsealed (source, id, clear)
SELECT 'stripe_event', id, jsonb_build_object('payment_ref', payment_ref)
FROM stripe_event WHERE payment_ref IS NOT NULL AND payment_ref NOT LIKE 'h:%';

INSERT INTO payments_unsealed (source, id, clear)
SELECT 'license', id::text, jsonb_build_object('token', token) FROM license;

-- The purchase: what SQL needs in the clear (who, which product, state, dates), the keyed
-- hashes it is found by, and the sealed record. A row from before stays findable by its clear
-- ids until it is sealed, moments later; nothing else reads them.
ALTER TABLE purchase RENAME COLUMN checkout_session_id TO checkout_session_hash;
ALTER TABLE purchase RENAME COLUMN payment_intent_id TO payment_intent_hash;
ALTER TABLE purchase RENAME COLUMN charge_id TO charge_hash;
ALTER TABLE purchase RENAME CONSTRAINT purchase_checkout_session_id_key
    TO purchase_checkout_session_hash_key;
ALTER TABLE purchase DROP COLUMN price_id, DROP COLUMN amount_total, DROP COLUMN currency,
    DROP COLUMN country, DROP COLUMN amount_refunded, DROP COLUMN dispute_status;
-- NULL only for a row from before this migration, until `payments::seal::backlog` ran.
ALTER TABLE purchase ADD COLUMN record_sealed bytea;

ALTER TABLE payment_adjustment RENAME COLUMN payment_intent_id TO payment_intent_hash;
ALTER TABLE payment_adjustment RENAME COLUMN charge_id TO charge_hash;
ALTER TABLE payment_adjustment DROP COLUMN amount_refunded, DROP COLUMN dispute_status;
ALTER TABLE payment_adjustment ADD COLUMN sealed bytea;

ALTER TABLE license DROP COLUMN token;
ALTER TABLE license ADD COLUMN token_sealed bytea;
