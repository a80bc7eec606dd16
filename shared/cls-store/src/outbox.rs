//! The transactional outbox: events are inserted in the use case's transaction and published by
//! the relay after commit.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::StoreError;

pub struct NewOutboxEvent {
    pub event_id: Uuid,
    pub event_type: &'static str,
    pub aggregate_id: Uuid,
    pub aggregate_version: i64,
    /// The encoded event envelope.
    pub payload: Vec<u8>,
    pub correlation_id: Option<String>,
    /// The read-model targets of the transaction that wrote the event, encoded and
    /// comma-separated; `None` when not known (see migration 0005).
    pub read_model_targets: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingEvent {
    pub id: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub payload: Vec<u8>,
    pub correlation_id: Option<String>,
    pub read_model_targets: Option<String>,
}

/// Claims up to `limit` unpublished rows for this transaction (skipping rows another relay
/// holds) and marks them published at `now`, in one statement; the rows come back in outbox
/// order. The mark is the relay's bet that the publishes will be confirmed: rows that are not
/// go back with [`unmark`] before the commit, and if the transaction never commits (a crash, a
/// lost connection), nothing was marked.
pub async fn claim_and_mark(conn: &mut PgConnection, limit: i64, now: DateTime<Utc>) -> Result<Vec<PendingEvent>, StoreError> {
    let mut rows = sqlx::query_as::<_, PendingEvent>(
        "UPDATE outbox SET published_at = $2, attempts = attempts + 1
         WHERE id IN (SELECT id FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING id, event_id, event_type, payload, correlation_id, read_model_targets",
    )
    .bind(limit)
    .bind(now)
    .fetch_all(conn)
    .await?;
    // RETURNING follows no order; events go out in outbox order.
    rows.sort_by_key(|r| r.id);
    Ok(rows)
}

/// Takes back the mark of claimed rows whose publish was not confirmed (they stay in the
/// outbox, with their attempt and error recorded).
pub async fn unmark(conn: &mut PgConnection, ids: &[i64], error: &str) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("UPDATE outbox SET published_at = NULL, last_error = $2 WHERE id = ANY($1)")
        .bind(ids)
        .bind(error)
        .execute(conn)
        .await?;
    Ok(())
}

/// Age in seconds of the oldest unpublished row (0 when none): the outbox lag.
pub async fn oldest_pending_age_seconds(conn: &mut PgConnection) -> Result<f64, StoreError> {
    Ok(sqlx::query_scalar(
        // The oldest by id, through the partial index of unpublished rows: one index probe.
        "SELECT EXTRACT(EPOCH FROM now() - created_at)::float8 FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT 1",
    )
    .fetch_optional(conn)
    .await?
    .unwrap_or(0.0))
}

/// Deletes rows published before `before` (retention, SPEC §6).
pub async fn purge_published(conn: &mut PgConnection, before: DateTime<Utc>) -> Result<u64, StoreError> {
    Ok(sqlx::query("DELETE FROM outbox WHERE published_at < $1").bind(before).execute(conn).await?.rows_affected())
}
