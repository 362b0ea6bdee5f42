//! The analytics section of a privacy export, and why an erasure here removes nothing:
//! usage events and crash reports carry no identifier of a person, so there is nothing that
//! could be found for them, and nothing to erase.

use pexper_platform::crypto::Keyring;
use pexper_platform::person::PersonId;
use pexper_platform::personal_data::{BoxFuture, ErasureSummary, PersonalData};
use sqlx::PgConnection;

const STATEMENT: &str = "Anonymous usage analytics and crash reports hold nothing linkable to a person: no account, email address, IP address, user agent, device or install identifier. Nothing in them can be found for you, so there is nothing to export or erase. You can turn both off in Pexper's settings.";

#[derive(Debug, Clone, Copy, Default)]
pub struct AnalyticsData;

impl PersonalData for AnalyticsData {
    fn section(&self) -> &'static str {
        "analytics"
    }

    fn export<'a>(
        &'a self,
        _conn: &'a mut PgConnection,
        _keyring: &'a Keyring,
        _person: PersonId,
    ) -> BoxFuture<'a, anyhow::Result<serde_json::Value>> {
        Box::pin(async { Ok(serde_json::json!({ "statement": STATEMENT })) })
    }

    fn erase<'a>(
        &'a self,
        _conn: &'a mut PgConnection,
        _keyring: &'a Keyring,
        _person: PersonId,
    ) -> BoxFuture<'a, anyhow::Result<ErasureSummary>> {
        Box::pin(async move {
            Ok(ErasureSummary {
                section: self.section(),
                removed: Default::default(),
                kept: vec![STATEMENT.to_owned()],
            })
        })
    }
}
