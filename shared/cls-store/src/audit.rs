//! Audit entries: one row per applied change, written in the change's transaction, never edited.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::StoreError;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AuditEntry {
    pub id: Uuid,
    pub brand_id: Option<Uuid>,
    /// `api_key`, `admin`, `license_key` or `system`.
    pub actor_kind: String,
    pub actor_id: Option<String>,
    pub action: String,
    pub target_type: String,
    pub target_id: Uuid,
    pub request_id: Option<String>,
    pub command_id: Option<Uuid>,
    pub status_before: Option<String>,
    pub status_after: Option<String>,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

/// A target's entries, newest first (ids are UUIDv7, so id order is time order), older than the
/// `before` cursor.
pub async fn list_for_target(conn: &mut PgConnection, target_id: Uuid, before: Option<Uuid>, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
    Ok(sqlx::query_as::<_, AuditEntry>(
        "SELECT id, brand_id, actor_kind, actor_id, action, target_type, target_id, request_id, command_id,
                status_before, status_after, reason, at
         FROM audit_entries WHERE target_id = $1 AND ($2::uuid IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
    )
    .bind(target_id)
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}
