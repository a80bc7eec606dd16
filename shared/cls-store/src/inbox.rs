//! The command inbox: one row per command a worker has taken on, holding its stored outcome.
//!
//! The row is claimed first in the command's transaction. A concurrent duplicate delivery waits
//! on the row lock, then finds the committed outcome and replays it; a command that was
//! dead-lettered (`failed`) may be claimed again when an operator replays it.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::StoreError;

pub struct NewCommand<'a> {
    pub command_id: Uuid,
    pub module: &'a str,
    pub command_type: &'a str,
    pub principal: &'a str,
    pub request_hash: &'a str,
    pub request_id: &'a str,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StoredCommand {
    pub command_id: Uuid,
    pub principal: String,
    pub request_hash: String,
    pub state: String,
    pub response_status: Option<i16>,
    pub response_body: Option<Vec<u8>>,
    pub response_sealed: bool,
    /// What the command made visible in the read model (`read_model::Target` encoded).
    pub read_model_targets: Vec<String>,
}

impl StoredCommand {
    pub fn succeeded(&self) -> bool {
        self.state == "succeeded"
    }

    pub fn failed(&self) -> bool {
        self.state == "failed"
    }
}

/// The result of trying to take a command on.
#[derive(Debug)]
pub enum Claim {
    /// This transaction owns the command: do the work, then [`complete`].
    Claimed,
    /// The command was handled before (or is being handled and has now committed).
    Existing(StoredCommand),
}

pub async fn claim(conn: &mut PgConnection, c: &NewCommand<'_>) -> Result<Claim, StoreError> {
    let claimed: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO inbox (command_id, module, command_type, principal, request_hash, request_id, state, received_at)
         VALUES ($1, $2, $3, $4, $5, $6, 'processing', $7)
         ON CONFLICT (command_id) DO UPDATE SET state = 'processing', failure = NULL
             WHERE inbox.state = 'failed' AND inbox.request_hash = EXCLUDED.request_hash
         RETURNING command_id",
    )
    .bind(c.command_id)
    .bind(c.module)
    .bind(c.command_type)
    .bind(c.principal)
    .bind(c.request_hash)
    .bind(c.request_id)
    .bind(c.received_at)
    .fetch_optional(&mut *conn)
    .await?;
    if claimed.is_some() {
        return Ok(Claim::Claimed);
    }
    let existing = find(conn, c.command_id).await?.ok_or_else(|| {
        StoreError::Fatal(sqlx::Error::Protocol("inbox row vanished between claim and read".into()))
    })?;
    Ok(Claim::Existing(existing))
}

/// The outcome of a claimed command.
pub struct Outcome<'a> {
    pub status: u16,
    pub body: &'a [u8],
    pub sealed: bool,
    /// What reads must reflect before this outcome counts as visible (`read_model::Target`s).
    pub read_model_targets: &'a [String],
}

/// Stores the outcome of a claimed command (same transaction as the claim).
pub async fn complete(conn: &mut PgConnection, command_id: Uuid, outcome: &Outcome<'_>, now: DateTime<Utc>) -> Result<(), StoreError> {
    let command = crate::effects::CommandOutcome { command_id, outcome, completed_at: now };
    crate::effects::record(conn, &[], &[], Some(&command), &[]).await.map(drop)
}

/// Records that a command was dead-lettered (its operation reads `failed`), unless it succeeded.
pub async fn record_failure(conn: &mut PgConnection, c: &NewCommand<'_>, failure: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO inbox (command_id, module, command_type, principal, request_hash, request_id, state, failure,
                            received_at, completed_at)
         VALUES ($1, $2, $3, $4, $5, $6, 'failed', $7, $8, $8)
         ON CONFLICT (command_id) DO UPDATE SET state = 'failed', failure = EXCLUDED.failure, completed_at = $8
             WHERE inbox.state <> 'succeeded'",
    )
    .bind(c.command_id)
    .bind(c.module)
    .bind(c.command_type)
    .bind(c.principal)
    .bind(c.request_hash)
    .bind(c.request_id)
    .bind(failure)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn find(conn: &mut PgConnection, command_id: Uuid) -> Result<Option<StoredCommand>, StoreError> {
    Ok(sqlx::query_as::<_, StoredCommand>(
        "SELECT command_id, principal, request_hash, state, response_status, response_body, response_sealed,
                read_model_targets
         FROM inbox WHERE command_id = $1",
    )
    .bind(command_id)
    .fetch_optional(conn)
    .await?)
}

/// Deletes completed rows older than `before` (retention, SPEC §6); returns how many.
pub async fn purge(conn: &mut PgConnection, before: DateTime<Utc>) -> Result<u64, StoreError> {
    Ok(sqlx::query("DELETE FROM inbox WHERE completed_at < $1").bind(before).execute(conn).await?.rows_affected())
}

/// Records that an event consumer took an event on, in the consumer's transaction; `false` when
/// it handled that event before (a redelivery), so the caller changes nothing.
pub async fn claim_event(conn: &mut PgConnection, consumer: &str, event_id: Uuid) -> Result<bool, StoreError> {
    let inserted = sqlx::query("INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(consumer)
        .bind(event_id)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(inserted == 1)
}

/// Deletes event-consumer records older than `before` (retention, SPEC §6).
pub async fn purge_events(conn: &mut PgConnection, before: DateTime<Utc>) -> Result<u64, StoreError> {
    Ok(sqlx::query("DELETE FROM processed_events WHERE processed_at < $1").bind(before).execute(conn).await?.rows_affected())
}
