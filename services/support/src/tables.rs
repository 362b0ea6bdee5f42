//! Support's tables, every column declared (`pexper_platform::data_map`).

use pexper_platform::data_map::Category::*;
use pexper_platform::data_map::{Column, MAIL, Table, YOUR_ID};

pub const TABLES: &[Table] = &[
    Table {
        name: "support_request",
        purpose: "support requests from pexper.com, answered by email",
        columns: &[
            Column::personal("id", Identifier),
            Column::personal("reference", Identifier).sent_to(MAIL),
            Column::personal("person_id", Identifier).not_exported(YOUR_ID),
            Column::personal("subject_sealed", Message),
            Column::personal("message_sealed", Message),
            Column::personal("status", Activity),
            Column::personal("created_at", Activity),
            Column::plain("updated_at"),
            Column::personal("closed_at", Activity),
        ],
    },
    Table {
        name: "support_reply",
        purpose: "our replies to support requests",
        columns: &[
            Column::plain("id"),
            Column::plain("request_id"),
            Column::personal("body_sealed", Message).sent_to(MAIL),
            Column::personal("created_at", Activity),
        ],
    },
];
