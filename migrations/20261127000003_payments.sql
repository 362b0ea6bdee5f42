-- Payments: Stripe events we processed, purchases (metadata only), refunds and disputes, and
-- licences. Never card data, names, phones, addresses or a raw payload: the columns below are
-- everything we keep, and a buyer's email lives only in `person`, sealed under their own key.

-- Every verified Stripe event we acted on or ignored, by id: redelivery of an event id is a
-- no-op. The primary key decides between concurrent deliveries, not a read-then-write check.
CREATE TABLE stripe_event (
    id           text PRIMARY KEY,            -- evt_…
    type         text NOT NULL,
    livemode     boolean NOT NULL,
    -- Stripe's `created`: when the event happened, which orders disputes.
    occurred_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    -- applied: changed a purchase; pending: kept until its purchase arrives; ignored.
    outcome      text NOT NULL CHECK (outcome IN ('applied', 'pending', 'ignored')),
    -- The session, payment intent or charge it was about (for `purchases show`).
    payment_ref  text
);
CREATE INDEX stripe_event_payment_ref_idx ON stripe_event (payment_ref);

-- One row per Checkout Session, whichever events told us about it (`completed`, then
-- `async_payment_succeeded`, …): the unique session id is what makes fulfilment happen once.
CREATE TABLE purchase (
    id                   uuid PRIMARY KEY,
    checkout_session_id  text NOT NULL,       -- cs_…
    payment_intent_id    text,                -- pi_…; refunds and disputes name it
    charge_id            text,                -- ch_…; learnt from a refund, matches disputes
    -- The buyer, for the receipt and privacy requests; NULL once they are erased (the row
    -- stays: tax law requires the accounting record).
    person_id            uuid REFERENCES person (id) ON DELETE SET NULL,
    product              text NOT NULL,
    price_id             text,
    amount_total         bigint NOT NULL CHECK (amount_total >= 0),   -- minor units
    currency             text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    -- ISO 3166 country of the billing address when Stripe gives one: needed for VAT/sales tax.
    -- The rest of the address is never read.
    country              text CHECK (country ~ '^[A-Z]{2}$'),
    livemode             boolean NOT NULL,
    -- Payment facts are sticky flags, so the status never depends on the order events
    -- arrived in: once paid, a late "completed, unpaid" changes nothing.
    paid_at              timestamptz,
    payment_failed_at    timestamptz,
    -- Cumulative, as Stripe reports it on the charge: the largest value seen wins.
    amount_refunded      bigint NOT NULL DEFAULT 0,
    -- The latest dispute status by event time (needs_response, under_review, won, lost, …).
    dispute_status       text,
    -- Derived from the columns above by payments::store::status(); stored for listing.
    status               text NOT NULL CHECK (status IN ('unpaid', 'paid', 'payment_failed',
                              'partially_refunded', 'refunded', 'disputed', 'dispute_lost')),
    created_at           timestamptz NOT NULL,  -- the session's `created`
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT purchase_checkout_session_id_key UNIQUE (checkout_session_id)
);
CREATE INDEX purchase_payment_intent_idx ON purchase (payment_intent_id);
CREATE INDEX purchase_charge_idx ON purchase (charge_id);
CREATE INDEX purchase_person_idx ON purchase (person_id);
CREATE INDEX purchase_created_idx ON purchase (created_at DESC);

-- Refunds and disputes as they arrive, purchase or not: one that comes before its purchase
-- waits here and is applied when the purchase lands. Ids and amounts only.
CREATE TABLE payment_adjustment (
    event_id           text PRIMARY KEY REFERENCES stripe_event (id),
    kind               text NOT NULL CHECK (kind IN ('refund', 'dispute')),
    payment_intent_id  text,
    charge_id          text,
    amount_refunded    bigint,              -- refund: the charge's cumulative amount_refunded
    dispute_status     text,                -- dispute: its status in this event
    occurred_at        timestamptz NOT NULL,
    CHECK (payment_intent_id IS NOT NULL OR charge_id IS NOT NULL)
);
CREATE INDEX payment_adjustment_intent_idx ON payment_adjustment (payment_intent_id);
CREATE INDEX payment_adjustment_charge_idx ON payment_adjustment (charge_id);

-- A licence per paid purchase. `token` is the signed licence the buyer received; it holds no
-- personal data, and it stays valid after its buyer is erased (they paid for it).
CREATE TABLE license (
    id              uuid PRIMARY KEY,
    purchase_id     uuid NOT NULL REFERENCES purchase (id),
    token           text NOT NULL,
    product         text NOT NULL,
    issued_at       timestamptz NOT NULL,
    revoked_at      timestamptz,
    revoked_reason  text CHECK (revoked_reason IN ('refunded', 'dispute_lost', 'operator')),
    CONSTRAINT license_purchase_id_key UNIQUE (purchase_id)
);
