//! The `replica` table: every server process says, while it runs, which master key version it
//! wraps new data keys under and which versions it can open. `pexper-admin keys status` reads
//! it, so that a version still current in some running process is never called removable.

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::crypto::Keyring;

/// How often a process says it is still there.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// A process not heard from in this long is gone (killed, or its host lost): four missed
/// heartbeats, so a slow database does not make a live process look dead.
pub const LIVE_WITHIN: Duration = Duration::from_secs(60);

/// A running process as it last said.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Replica {
    pub id: Uuid,
    pub master_version: i32,
    pub master_versions: Vec<i32>,
    pub seen_seconds_ago: f64,
}

/// Says this process is running until `shutdown`, then removes its row. Rows of processes
/// gone for a day are deleted on the way.
pub async fn heartbeat(pool: PgPool, keyring: &Keyring, mut shutdown: watch::Receiver<bool>) {
    let id = Uuid::now_v7();
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        if let Err(e) = beat(&pool, id, keyring).await {
            tracing::warn!(error = %format!("{e:#}"), "failed to record this process in `replica`");
        }
    }
    if let Err(e) = sqlx::query("DELETE FROM replica WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
    {
        tracing::warn!(error = %e, "failed to remove this process from `replica`");
    }
}

async fn beat(pool: &PgPool, id: Uuid, keyring: &Keyring) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO replica (id, master_version, master_versions) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET seen_at = now()",
    )
    .bind(id)
    .bind(keyring.current_version())
    .bind(keyring.versions())
    .execute(pool)
    .await?;
    sqlx::query("DELETE FROM replica WHERE seen_at < now() - interval '1 day'")
        .execute(pool)
        .await?;
    Ok(())
}

/// The processes heard from within `LIVE_WITHIN`.
pub async fn live(pool: &PgPool) -> anyhow::Result<Vec<Replica>> {
    sqlx::query_as(
        "SELECT id, master_version, master_versions,
                extract(epoch FROM now() - seen_at)::float8 AS seen_seconds_ago
         FROM replica WHERE seen_at > now() - make_interval(secs => $1) ORDER BY started_at",
    )
    .bind(LIVE_WITHIN.as_secs_f64())
    .fetch_all(pool)
    .await
    .context("failed to list running processes")
}
