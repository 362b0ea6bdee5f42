//! The analytics section of a privacy export, and why an erasure here removes nothing:
//! usage events and crash reports carry no identifier of a person, so there is nothing that
//! could be found for them, and nothing to erase.

use pexper_platform::crypto::Keyring;
use pexper_platform::person::PersonId;
use pexper_platform::personal_data::{ErasureSummary, PersonalData, RetentionRule};
use sqlx::PgConnection;

const STATEMENT: &str = "Anonymous usage analytics and crash reports hold nothing linkable to a person: no account, email address, IP address, user agent, device or install identifier. Nothing in them can be found for you, so there is nothing to export or erase. You can turn both off in Pexper's settings.";

#[derive(Debug, Clone, Copy, Default)]
pub struct AnalyticsData;

impl PersonalData for AnalyticsData {
    fn section(&self) -> &'static str {
        "analytics"
    }

    async fn export(
        &self,
        _conn: &mut PgConnection,
        _keyring: &Keyring,
        _person: PersonId,
    ) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::json!({ "statement": STATEMENT }))
    }

    /// Raw events and crash reports go after `PEXPER_ANALYTICS_RETENTION_DAYS` in the rollup
    /// job, once their day is summarised; the daily summaries, counts with no identifier,
    /// after two years (a year compared with the one before).
    fn retention(&self) -> Vec<RetentionRule> {
        vec![RetentionRule {
            name: "analytics.rollups",
            keeps: "daily usage and crash-free summaries (counts per version and OS): 2 years",
            due: "SELECT count(*) FROM analytics_rollup WHERE day < current_date - interval '2 years'"
                .into(),
            apply: "DELETE FROM analytics_rollup WHERE day < current_date - interval '2 years'"
                .into(),
        }]
    }

    async fn erase(
        &self,
        _conn: &mut PgConnection,
        _keyring: &Keyring,
        _person: PersonId,
    ) -> anyhow::Result<ErasureSummary> {
        Ok(ErasureSummary {
            section: self.section(),
            removed: Default::default(),
            kept: vec![STATEMENT.to_owned()],
        })
    }
}
