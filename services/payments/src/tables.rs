//! Payments' tables, every column declared (`pexper_platform::data_map`).

use pexper_platform::data_map::Category::*;
use pexper_platform::data_map::{
    Column, KEYED_HASH, MAIL, STRIPE, STRIPE_AND_MAIL, Table, YOUR_ID,
};

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
                .kept("a keyed hash of the payment's reference at Stripe, which finds the purchase it was about")
                .not_exported(KEYED_HASH),
        ],
    },
    Table {
        name: "purchase",
        purpose: "what was bought, for the licence, receipts and accounting",
        columns: &[
            Column::personal("id", Transaction).kept(ACCOUNTING).sent_to(MAIL),
            Column::personal("checkout_session_hash", Transaction)
                .kept("a keyed hash of the Checkout Session id, which finds the purchase when a late event names it")
                .not_exported(KEYED_HASH),
            Column::personal("payment_intent_hash", Transaction)
                .kept(ACCOUNTING)
                .not_exported(KEYED_HASH),
            Column::personal("charge_hash", Transaction)
                .kept(ACCOUNTING)
                .not_exported(KEYED_HASH),
            Column::personal("person_id", Identifier).unlinked().not_exported(YOUR_ID),
            Column::personal("product", Transaction)
                .kept(ACCOUNTING)
                .sent_to(STRIPE_AND_MAIL),
            Column::plain("livemode"),
            Column::personal("paid_at", Transaction).kept(ACCOUNTING).sent_to(MAIL),
            Column::personal("payment_failed_at", Transaction).kept(ACCOUNTING),
            Column::personal("status", Transaction).kept(ACCOUNTING),
            Column::personal("created_at", Transaction).kept(ACCOUNTING),
            Column::plain("updated_at"),
            // The Checkout Session, payment intent and charge ids, the price, the amount and
            // currency, the billing country, the amount refunded and the dispute's status,
            // sealed under the records key; erasure takes the session id out.
            Column::personal("record_sealed", Transaction)
                .kept(ACCOUNTING)
                .sent_to(STRIPE_AND_MAIL),
        ],
    },
    Table {
        name: "payment_adjustment",
        purpose: "refunds and disputes, kept until their purchase is known, then applied",
        columns: &[
            Column::plain("id"),
            Column::plain("event_id"),
            Column::plain("kind"),
            Column::personal("payment_intent_hash", Transaction)
                .kept(ACCOUNTING)
                .not_exported(KEYED_HASH),
            Column::personal("charge_hash", Transaction)
                .kept(ACCOUNTING)
                .not_exported(KEYED_HASH),
            // The payment's references, the amount refunded or the dispute's status, sealed
            // under the records key; the export gives the purchase's totals of them.
            Column::personal("sealed", Transaction)
                .kept(ACCOUNTING)
                .not_exported("in the purchase's amount refunded and dispute status")
                .sent_to(STRIPE),
            Column::plain("occurred_at"),
        ],
    },
    Table {
        name: "license",
        purpose: "the licence a purchase issued: the key the desktop app verifies offline",
        columns: &[
            Column::personal("id", Transaction).kept(ACCOUNTING),
            Column::plain("purchase_id"),
            Column::personal("token_sealed", Transaction)
                .kept("with its purchase, sealed under the records key: it names no one, and a copy in use keeps working")
                .sent_to(MAIL),
            Column::personal("product", Transaction)
                .kept(ACCOUNTING)
                .not_exported("the purchase's product, in the export"),
            Column::personal("issued_at", Transaction).kept(ACCOUNTING),
            Column::personal("revoked_at", Transaction).kept(ACCOUNTING),
            Column::personal("revoked_reason", Transaction).kept(ACCOUNTING),
        ],
    },
    Table {
        name: "payments_unsealed",
        purpose: "rows from before purchase records were sealed (migration 24), until the first process with the keys (a server starting, an admin command, a restore) seals them where they belong",
        columns: &[
            Column::plain("source"),
            Column::plain("id"),
            Column::personal("clear", Transaction)
                .kept("from the migration to the first process with the keys, which seals it into its row and deletes it (payments::seal::backlog)")
                .not_exported("sealed into its row, and exported from there, before anything reads it"),
        ],
    },
];
