//! Retention (SPEC §6): stored outcomes and event-consumer records past the retention window and published outbox rows
//! past a grace period are purged, hourly. Several replicas may purge at once; deletes are
//! idempotent.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use cls_store::{PgPool, inbox, outbox};
use tokio_util::sync::CancellationToken;

/// Idempotency outcomes are kept at least 24 h (SPEC §3); a week covers any redelivery window.
pub const INBOX_RETENTION: TimeDelta = TimeDelta::days(7);
/// Published events stay a day for inspection and replay.
pub const OUTBOX_GRACE: TimeDelta = TimeDelta::days(1);
const EVERY: Duration = Duration::from_secs(3600);

pub async fn run(pool: PgPool, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        if let Err(error) = purge_once(&pool).await {
            tracing::warn!(error = format!("{error:#}"), "retention purge failed; retrying next hour");
        }
    }
}

pub async fn purge_once(pool: &PgPool) -> anyhow::Result<(u64, u64)> {
    let mut conn = pool.acquire().await?;
    let now = Utc::now();
    let outcomes = inbox::purge(&mut conn, now - INBOX_RETENTION).await? + inbox::purge_events(&mut conn, now - INBOX_RETENTION).await?;
    let events = outbox::purge_published(&mut conn, now - OUTBOX_GRACE).await?;
    if outcomes + events > 0 {
        tracing::info!(outcomes, events, "retention purge");
    }
    Ok((outcomes, events))
}
