//! Analytics' and crash intake's tables, every column declared (`pexper_platform::data_map`):
//! anonymous by construction, nothing in them is about a person.

use pexper_platform::data_map::{Column, Table};

pub const TABLES: &[Table] = &[
    Table {
        name: "analytics_event",
        purpose: "anonymous usage events from the desktop app (allow-listed names and values)",
        columns: &[
            Column::plain("id"),
            Column::plain("occurred_at"),
            Column::plain("session_id"),
            Column::plain("app_version"),
            Column::plain("os"),
            Column::plain("arch"),
            Column::plain("name"),
            Column::plain("props"),
        ],
    },
    Table {
        name: "analytics_drop",
        purpose: "how many events were dropped, by day and reason",
        columns: &[
            Column::plain("day"),
            Column::plain("reason"),
            Column::plain("count"),
        ],
    },
    Table {
        name: "analytics_rollup",
        purpose: "daily counts, kept after the raw events",
        columns: &[
            Column::plain("day"),
            Column::plain("metric"),
            Column::plain("app_version"),
            Column::plain("os"),
            Column::plain("key"),
            Column::plain("value"),
            Column::plain("sessions"),
        ],
    },
    Table {
        name: "crash_report",
        purpose: "scrubbed crash reports from the desktop app",
        columns: &[
            Column::plain("id"),
            Column::plain("event_id"),
            Column::plain("project_id"),
            Column::plain("received_at"),
            Column::plain("occurred_at"),
            Column::plain("release"),
            Column::plain("environment"),
            Column::plain("level"),
            Column::plain("signature"),
            Column::plain("exception_type"),
            Column::plain("event"),
        ],
    },
    Table {
        name: "app_session",
        purpose: "release health: an app session's state, by a random id with no device in it",
        columns: &[
            Column::plain("sid"),
            Column::plain("release"),
            Column::plain("environment"),
            Column::plain("started_at"),
            Column::plain("status"),
            Column::plain("errors"),
            Column::plain("updated_at"),
        ],
    },
    Table {
        name: "session_aggregate",
        purpose: "release health: sessions counted by hour, release and outcome",
        columns: &[
            Column::plain("started"),
            Column::plain("release"),
            Column::plain("environment"),
            Column::plain("exited"),
            Column::plain("errored"),
            Column::plain("abnormal"),
            Column::plain("crashed"),
        ],
    },
];
