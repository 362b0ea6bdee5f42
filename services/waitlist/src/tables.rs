//! The waitlist's tables, every column declared (`pexper_platform::data_map`).

use pexper_platform::data_map::Category::*;
use pexper_platform::data_map::{Column, HASH_OF_A_SECRET, LINK, MAIL, Table, YOUR_ID};

pub const TABLES: &[Table] = &[
    Table {
        name: "waitlist_entry",
        purpose: "a place on the waitlist: confirmation, place in line, referrals, product email",
        columns: &[
            Column::personal("person_id", Identifier).not_exported(YOUR_ID),
            Column::personal("status", Preference),
            Column::personal("source", Activity),
            // Their place in line (the export and the welcome email give it as `position`).
            Column::personal("confirm_seq", Preference).sent_to(MAIL),
            Column::personal("referrals", Activity).sent_to(MAIL),
            Column::personal("referral_code", Identifier).sent_to(MAIL),
            // Erasing the referrer leaves the entries they referred, unlinked from them.
            Column::personal("referred_by", Identifier)
                .unlinked()
                .not_exported(
                    "another person's id: the export says only whether someone referred them",
                ),
            Column::personal("subscribed", Preference),
            Column::personal("unsubscribed_at", Preference),
            Column::personal("confirmed_at", Activity),
            Column::personal("invited_at", Activity),
            Column::personal("last_signup_mail_at", Activity),
            Column::plain("last_signup_mail_job"),
            Column::personal("created_at", Activity),
            Column::plain("updated_at"),
        ],
    },
    Table {
        name: "waitlist_token",
        purpose: "confirmation links",
        columns: &[
            Column::personal("token_hash", Credential).not_exported(HASH_OF_A_SECRET),
            Column::personal("person_id", Identifier).not_exported(LINK),
            Column::plain("expires_at"),
            Column::plain("used_at"),
            Column::plain("created_at"),
        ],
    },
    Table {
        name: "broadcast",
        purpose: "product emails written by the operator, sent to subscribers",
        columns: &[
            Column::plain("id"),
            Column::plain("content_hash"),
            Column::plain("template"),
            Column::plain("subject"),
            Column::plain("body"),
            Column::plain("created_at"),
        ],
    },
    Table {
        name: "broadcast_delivery",
        purpose: "which subscriber each broadcast was queued for, so none gets two copies",
        columns: &[
            Column::plain("broadcast_id"),
            Column::personal("person_id", Identifier).not_exported(YOUR_ID),
            Column::personal("queued_at", Activity),
        ],
    },
];
