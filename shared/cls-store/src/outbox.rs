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

pub async fn append(conn: &mut PgConnection, events: &[NewOutboxEvent]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    // One statement for the batch, so the statement-level trigger notifies once.
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type).collect();
    let aggregates: Vec<Uuid> = events.iter().map(|e| e.aggregate_id).collect();
    let versions: Vec<i64> = events.iter().map(|e| e.aggregate_version).collect();
    let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload.as_slice()).collect();
    let correlations: Vec<Option<&str>> = events.iter().map(|e| e.correlation_id.as_deref()).collect();
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, aggregate_id, aggregate_version, payload, correlation_id)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::bigint[], $5::bytea[], $6::text[])",
    )
    .bind(ids)
    .bind(types)
    .bind(aggregates)
    .bind(versions)
    .bind(payloads)
    .bind(correlations)
    .execute(conn)
    .await?;
    Ok(())
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
