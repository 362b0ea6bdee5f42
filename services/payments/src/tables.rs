//! Payments' tables, every column declared (`pexper_platform::data_map`).

use pexper_platform::data_map::Category::*;
use pexper_platform::data_map::{Column, MAIL, MISSING, STRIPE, STRIPE_AND_MAIL, Table};

/// Why a purchase's columns outlive the buyer's erasure.
const ACCOUNTING: &str = "the purchase record, unlinked from the person: 10 years, as tax law \
                          requires (payments.records)";

pub const TABLES: &[Table] = &[
    Table {
        name: "stripe_event",
        purpose: "Stripe's webhook events, once each: what was done with each",
        columns: &[
            Column::plain("id"),
            Column::plain("type"),
            Column::plain("livemode"),
            Column::plain("occurred_at"),
            Column::plain("received_at"),
            Column::plain("outcome"),
            Column::personal("payment_ref", Transaction)
                .kept("replaced by a keyed hash when it is a Checkout Session id; a payment's pi_/ch_ reference reconciles payouts")
                .not_exported(MISSING)
                .sent_to(STRIPE),
        ],
    },
    Table {
        name: "purchase",
        purpose: "what was bought, for the licence, receipts and accounting",
        columns: &[
            Column::personal("id", Transaction).kept(ACCOUNTING).sent_to(MAIL),
            Column::personal("checkout_session_id", Transaction)
                .kept("replaced by a keyed hash")
                .sent_to(STRIPE),
            Column::personal("payment_intent_id", Transaction)
                .kept(ACCOUNTING)
                .not_exported(MISSING)
                .sent_to(STRIPE),
            Column::personal("charge_id", Transaction)
                .kept(ACCOUNTING)
                .not_exported(MISSING)
                .sent_to(STRIPE),
            Column::personal("person_id", Identifier).unlinked().not_exported(MISSING),
            Column::personal("product", Transaction)
                .kept(ACCOUNTING)
                .sent_to(STRIPE_AND_MAIL),
            Column::personal("price_id", Transaction)
                .kept(ACCOUNTING)
                .not_exported(MISSING)
                .sent_to(STRIPE),
            Column::personal("amount_total", Transaction)
                .kept(ACCOUNTING)
                .sent_to(STRIPE_AND_MAIL),
            Column::personal("currency", Transaction)
                .kept(ACCOUNTING)
                .sent_to(STRIPE_AND_MAIL),
            Column::personal("country", Transaction).kept(ACCOUNTING).sent_to(STRIPE),
            Column::plain("livemode"),
            Column::personal("paid_at", Transaction).kept(ACCOUNTING).sent_to(MAIL),
            Column::personal("payment_failed_at", Transaction)
                .kept(ACCOUNTING)
                .not_exported(MISSING),
            Column::personal("amount_refunded", Transaction).kept(ACCOUNTING),
            Column::personal("dispute_status", Transaction)
                .kept(ACCOUNTING)
                .not_exported(MISSING),
            Column::personal("status", Transaction).kept(ACCOUNTING),
            Column::personal("created_at", Transaction).kept(ACCOUNTING),
            Column::plain("updated_at"),
        ],
    },
    Table {
        name: "payment_adjustment",
        purpose: "refunds and disputes, kept until their purchase is known, then applied",
        columns: &[
            Column::plain("event_id"),
            Column::plain("kind"),
            Column::personal("payment_intent_id", Transaction)
                .kept(ACCOUNTING)
                .not_exported(MISSING)
                .sent_to(STRIPE),
            Column::personal("charge_id", Transaction)
                .kept(ACCOUNTING)
                .not_exported(MISSING)
                .sent_to(STRIPE),
            Column::personal("amount_refunded", Transaction)
                .kept(ACCOUNTING)
                .not_exported(MISSING),
            Column::personal("dispute_status", Transaction)
                .kept(ACCOUNTING)
                .not_exported(MISSING),
            Column::plain("occurred_at"),
        ],
    },
    Table {
        name: "license",
        purpose: "the licence a purchase issued: the key the desktop app verifies offline",
        columns: &[
            Column::personal("id", Transaction).kept(ACCOUNTING),
            Column::plain("purchase_id"),
            Column::personal("token", Transaction)
                .kept("with its purchase: it names no one, and a copy in use keeps working")
                .sent_to(MAIL),
            Column::personal("product", Transaction).kept(ACCOUNTING).not_exported(MISSING),
            Column::personal("issued_at", Transaction).kept(ACCOUNTING).not_exported(MISSING),
            Column::personal("revoked_at", Transaction).kept(ACCOUNTING).not_exported(MISSING),
            Column::personal("revoked_reason", Transaction)
                .kept(ACCOUNTING)
                .not_exported(MISSING),
        ],
    },
];
