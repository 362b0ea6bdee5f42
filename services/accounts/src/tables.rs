//! Accounts' tables, every column declared (`pexper_platform::data_map`).

use pexper_platform::data_map::Category::*;
use pexper_platform::data_map::{Column, HASH_OF_A_SECRET, LINK, Table, YOUR_ID};

/// Why failed sign-ins are not exported.
const THROTTLE: &str = "a keyed hash of the address, with the count of failed sign-ins";
/// What erasure leaves of them: the address's count goes; a known browser's, keyed by browser
/// and address, goes with the `accounts.failed_sign_ins` rule, a day after its last failure.
const KNOWN_BROWSER: &str = "a known browser's count, at most a day (accounts.failed_sign_ins)";

pub const TABLES: &[Table] = &[
    Table {
        name: "account",
        purpose: "accounts on pexper.com: sign-in, purchases and data in one place",
        columns: &[
            Column::personal("id", Identifier),
            Column::personal("person_id", Identifier).not_exported(YOUR_ID),
            Column::personal("password_hash", Credential).not_exported(HASH_OF_A_SECRET),
            Column::personal("password_changed_at", Activity),
            Column::personal("disabled_at", Activity),
            Column::personal("created_at", Activity),
            Column::plain("updated_at"),
        ],
    },
    Table {
        name: "account_signup",
        purpose: "a sign-up waiting for its address to be verified",
        columns: &[
            Column::plain("id"),
            Column::personal("person_id", Identifier).not_exported(YOUR_ID),
            Column::personal("token_hash", Credential).not_exported(LINK),
            Column::personal("expires_at", Activity),
            Column::personal("created_at", Activity),
            Column::personal("email_index", Identifier).not_exported(LINK),
        ],
    },
    Table {
        name: "account_reset",
        purpose: "password-reset links",
        columns: &[
            Column::personal("token_hash", Credential).not_exported(LINK),
            Column::personal("account_id", Identifier).not_exported(LINK),
            Column::plain("expires_at"),
            Column::plain("used_at"),
            Column::plain("created_at"),
            Column::personal("email_index", Identifier).not_exported(LINK),
        ],
    },
    Table {
        name: "account_session",
        purpose: "signed-in sessions",
        columns: &[
            Column::personal("id", Identifier),
            Column::personal("account_id", Identifier)
                .not_exported("the link to the account, whose id the export gives"),
            Column::personal("token_hash", Credential).not_exported(HASH_OF_A_SECRET),
            Column::personal("device", Device),
            Column::personal("created_at", Activity),
            Column::personal("last_seen_at", Activity),
            Column::personal("expires_at", Activity),
            Column::personal("reauthenticated_at", Activity),
        ],
    },
    Table {
        name: "signin_throttle",
        purpose: "failed sign-ins per address (or known browser), under a keyed hash",
        columns: &[
            Column::personal("key", Identifier)
                .kept(KNOWN_BROWSER)
                .not_exported(THROTTLE),
            Column::personal("failures", Activity)
                .kept(KNOWN_BROWSER)
                .not_exported(THROTTLE),
            Column::personal("blocked_until", Activity)
                .kept(KNOWN_BROWSER)
                .not_exported(THROTTLE),
            Column::plain("updated_at"),
        ],
    },
];
