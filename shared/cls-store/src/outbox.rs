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
}

/// Appends events, in order, in the caller's transaction (see [`crate::effects::record`]).
pub async fn append(conn: &mut PgConnection, events: &[NewOutboxEvent]) -> Result<(), StoreError> {
    crate::effects::record(conn, &[], events, None).await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingEvent {
    pub id: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub payload: Vec<u8>,
    pub correlation_id: Option<String>,
}

/// Locks up to `limit` unpublished rows for this transaction, skipping rows another relay holds.
pub async fn claim_pending(conn: &mut PgConnection, limit: i64) -> Result<Vec<PendingEvent>, StoreError> {
    Ok(sqlx::query_as::<_, PendingEvent>(
        "SELECT id, event_id, event_type, payload, correlation_id FROM outbox
         WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

pub async fn mark_published(conn: &mut PgConnection, ids: &[i64], now: DateTime<Utc>) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("UPDATE outbox SET published_at = $2, attempts = attempts + 1 WHERE id = ANY($1)")
        .bind(ids)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn mark_attempt_failed(conn: &mut PgConnection, ids: &[i64], error: &str) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1)")
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
