//! What a transaction leaves behind besides its state change — its audit entries, its outbox
//! events and, for a command, the outcome in its inbox row — written by one statement.
//!
//! A command used to spend one round trip per audit entry, one for its events and one for its
//! outcome, each waited for in turn while the transaction held its row locks; on a two-core
//! machine those round trips were most of a write's latency. The data is the same; only the
//! number of round trips changed. The same statement reads the documents' snapshots of the
//! keys a command makes visible itself, the last read it needs before COMMIT.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use crate::audit::AuditEntry;
use crate::error::StoreError;
use crate::inbox::Outcome;
use crate::outbox::NewOutboxEvent;
use crate::read_model::{KeySnapshot, SNAPSHOT, SnapshotRow};

/// The outcome of a claimed command (see [`crate::inbox::claim`]), stored with its effects.
pub struct CommandOutcome<'a> {
    pub command_id: Uuid,
    pub outcome: &'a Outcome<'a>,
    pub completed_at: DateTime<Utc>,
}

/// The audit entries and outbox events (inserted in order) and, when given, the command's
/// completed inbox row.
const EFFECTS: &str = "WITH audit AS (
         INSERT INTO audit_entries (id, brand_id, actor_kind, actor_id, action, target_type, target_id, request_id,
                                    command_id, status_before, status_after, reason, at)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::uuid[],
                              $8::text[], $9::uuid[], $10::text[], $11::text[], $12::text[], $13::timestamptz[])
     ), events AS (
         INSERT INTO outbox (event_id, event_type, aggregate_id, aggregate_version, payload, correlation_id, read_model_targets)
         SELECT * FROM UNNEST($14::uuid[], $15::text[], $16::uuid[], $17::bigint[], $18::bytea[], $19::text[], $26::text[])
     ), outcome AS (
         UPDATE inbox SET state = 'succeeded', response_status = $21, response_body = $22, response_sealed = $23,
                          completed_at = $24, read_model_targets = $25
         WHERE command_id = $20
     )";

/// The effects, then the snapshots of the keys in `$27` as the transaction left them, in one
/// statement. The snapshot sees every earlier statement of the transaction and none of this
/// one's inserts, which touch no table a snapshot reads. PostgreSQL runs every data-modifying
/// `WITH` part whatever the main query returns, so with no keys it is the effects alone.
static EFFECTS_AND_SNAPSHOTS: LazyLock<String> =
    LazyLock::new(|| format!("{EFFECTS} {SNAPSHOT} WHERE k.id = ANY($27) ORDER BY k.id"));

/// Inserts the audit entries and outbox events (in order) and, when given, completes the
/// command's inbox row, in one statement of the caller's transaction. The same statement reads
/// the snapshots of `snapshot_keys` (a command's read-your-writes, see
/// `cls_readmodel::ReadModel::staging`): the keys' versions are drawn by then, so their rows are
/// locked and the snapshots are the state at those versions. Keys that do not exist are left
/// out.
pub async fn record(
    conn: &mut PgConnection,
    audit: &[AuditEntry],
    events: &[NewOutboxEvent],
    command: Option<&CommandOutcome<'_>>,
    snapshot_keys: &[Uuid],
) -> Result<Vec<KeySnapshot>, StoreError> {
    if audit.is_empty() && events.is_empty() && command.is_none() && snapshot_keys.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query_as::<_, SnapshotRow>(AssertSqlSafe(EFFECTS_AND_SNAPSHOTS.as_str()))
    .bind(audit.iter().map(|e| e.id).collect::<Vec<_>>())
    .bind(audit.iter().map(|e| e.brand_id).collect::<Vec<_>>())
    .bind(audit.iter().map(|e| e.actor_kind.as_str()).collect::<Vec<_>>())
    .bind(audit.iter().map(|e| e.actor_id.as_deref()).collect::<Vec<_>>())
    .bind(audit.iter().map(|e| e.action.as_str()).collect::<Vec<_>>())
    .bind(audit.iter().map(|e| e.target_type.as_str()).collect::<Vec<_>>())
    .bind(audit.iter().map(|e| e.target_id).collect::<Vec<_>>())
    .bind(audit.iter().map(|e| e.request_id.as_deref()).collect::<Vec<_>>())
    .bind(audit.iter().map(|e| e.command_id).collect::<Vec<_>>())
    .bind(audit.iter().map(|e| e.status_before.as_deref()).collect::<Vec<_>>())
    .bind(audit.iter().map(|e| e.status_after.as_deref()).collect::<Vec<_>>())
    .bind(audit.iter().map(|e| e.reason.as_deref()).collect::<Vec<_>>())
    .bind(audit.iter().map(|e| e.at).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.event_type).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.aggregate_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.aggregate_version).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.payload.as_slice()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.correlation_id.as_deref()).collect::<Vec<_>>())
    // No command: `command_id = NULL` matches no row.
    .bind(command.map(|c| c.command_id))
    .bind(command.map(|c| c.outcome.status as i16))
    .bind(command.map(|c| c.outcome.body))
    .bind(command.map(|c| c.outcome.sealed))
    .bind(command.map(|c| c.completed_at))
    .bind(command.map(|c| c.outcome.read_model_targets))
    .bind(events.iter().map(|e| e.read_model_targets.as_deref()).collect::<Vec<_>>())
    .bind(snapshot_keys)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(KeySnapshot::from).collect())
}
