//! The privacy service's tables, every column declared (`pexper_platform::data_map`).

use pexper_platform::data_map::Category::*;
use pexper_platform::data_map::{Column, LINK, MAIL, Table, YOUR_ID};

/// Why a request's receipt outlives the person.
const RECEIPT: &str =
    "the request's receipt, unlinked: 3 years after it closed, as proof we answered";

/// Why the audit trail outlives the person.
const TRAIL: &str = "the audit trail: ids (requests, accounts, purchases) and redacted reasons, \
                     never an address; kept as proof of what was done, 3 years and while the \
                     request's receipt is (the privacy sweep prunes it: audit::prune)";

pub const TABLES: &[Table] = &[
    Table {
        name: "privacy_request",
        purpose: "requests to exercise a right (GDPR, CCPA), on a 30-day clock",
        columns: &[
            Column::personal("id", Identifier).kept(RECEIPT),
            Column::personal("person_id", Identifier)
                .unlinked()
                .not_exported(YOUR_ID),
            Column::personal("kind", Activity)
                .kept(RECEIPT)
                .sent_to(MAIL),
            Column::personal("jurisdiction", Activity).kept(RECEIPT),
            Column::personal("source", Activity).kept(RECEIPT),
            Column::personal("status", Activity).kept(RECEIPT),
            Column::personal("details_sealed", Message).unlinked(),
            Column::personal("outcome_sealed", Message)
                .unlinked()
                .sent_to(MAIL),
            Column::personal("received_at", Activity)
                .kept(RECEIPT)
                .sent_to(MAIL),
            Column::personal("due_at", Activity)
                .kept(RECEIPT)
                .sent_to(MAIL),
            Column::personal("verify_by", Activity).kept(RECEIPT),
            Column::personal("verified_at", Activity).kept(RECEIPT),
            Column::personal("closed_at", Activity).kept(RECEIPT),
            Column::plain("reminders"),
            Column::plain("created_at"),
            Column::plain("updated_at"),
            Column::personal("acknowledgement_held_at", Activity).kept(RECEIPT),
        ],
    },
    Table {
        name: "privacy_letter",
        purpose: "letters to privacy@ taken in, each once: the same letter read again is the same request",
        columns: &[
            Column::personal("key", Identifier)
                .kept("a hash of the letter's Message-ID, sender and words: only tells a letter read again from a new one")
                .not_exported("a hash of the letter's Message-ID, sender and words, which says nothing"),
            Column::personal("request_id", Identifier).kept(RECEIPT),
            Column::personal("dmarc_failed", Activity).kept(RECEIPT),
            Column::personal("language", Preference).kept(RECEIPT),
            Column::personal("reply_sealed", Message)
                .unlinked()
                .not_exported("the letter's subject and Message-ID, kept only to reply to it until the request is confirmed; its text is the request's details")
                .sent_to(MAIL),
            Column::plain("taken_at"),
        ],
    },
    Table {
        name: "privacy_token",
        purpose: "verification and export links",
        columns: &[
            Column::personal("token_hash", Credential).not_exported(LINK),
            Column::plain("request_id"),
            Column::plain("purpose"),
            Column::plain("expires_at"),
            Column::plain("used_at"),
            Column::plain("created_at"),
        ],
    },
    Table {
        name: "privacy_export",
        purpose: "an access export, sealed under the person's key, downloadable for 7 days",
        columns: &[
            Column::plain("request_id"),
            Column::personal("person_id", Identifier).not_exported("the export itself"),
            Column::personal("document_sealed", Message).not_exported("the export itself"),
            Column::plain("expires_at"),
            Column::plain("created_at"),
        ],
    },
    Table {
        name: "privacy_audit",
        purpose: "the tamper-evident trail of every request's status and every operator read",
        columns: &[
            Column::plain("seq"),
            Column::personal("request_id", Identifier).kept(TRAIL),
            Column::plain("event"),
            Column::plain("status"),
            Column::personal("detail", Activity).kept(TRAIL),
            Column::plain("at"),
            Column::plain("prev_hash"),
            Column::plain("hash"),
            Column::personal("actor", Identifier)
                .kept(TRAIL)
                .not_exported("the operator's name, not the person's data"),
            Column::plain("keyed"),
        ],
    },
    Table {
        name: "privacy_audit_head",
        purpose: "the audit trail's head, under a MAC",
        columns: &[
            Column::plain("one"),
            Column::plain("seq"),
            Column::plain("hash"),
            Column::plain("at"),
            Column::plain("mac"),
        ],
    },
    Table {
        name: "privacy_audit_start",
        purpose: "where the audit trail starts once its oldest events were pruned, under a MAC",
        columns: &[
            Column::plain("one"),
            Column::plain("seq"),
            Column::plain("prev_hash"),
            Column::plain("at"),
            Column::plain("mac"),
        ],
    },
    Table {
        name: "policy_version",
        purpose: "privacy-policy versions announced, with their summaries",
        columns: &[
            Column::plain("version"),
            Column::plain("effective_at"),
            Column::plain("summary"),
            Column::plain("announced_at"),
        ],
    },
    Table {
        name: "policy_notice",
        purpose: "who was told of a policy change, once each",
        columns: &[
            Column::personal("person_id", Identifier).not_exported(YOUR_ID),
            Column::personal("version", Activity),
            Column::personal("status", Activity),
            Column::personal("queued_at", Activity),
            Column::personal("notified_at", Activity),
        ],
    },
];
