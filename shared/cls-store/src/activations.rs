//! Activations (the activations module's table), the license reads and the one license write
//! the seat rules need, and the event-consumer inbox (`processed_events`).
//!
//! Seats are counted under a lock: a use case first locks the license row
//! ([`lock_license`], `SELECT … FOR UPDATE`), then counts its active activations in a
//! *separate* statement ([`active_count`]). Under READ COMMITTED each statement takes a fresh
//! snapshot, so the count sees every activation committed by whoever held the lock before; a
//! single-statement conditional insert keeps the snapshot it started with and oversells
//! (research/messaging.md §6). Every writer of activations locks the license first, so the lock
//! order is always license → activations and two writers cannot deadlock.
//!
//! The license's `version` moves with its activations (SPEC §2), so every change here also
//! [`bump_license_version`] in the same transaction.

use chrono::{DateTime, Utc};
use cls_domain::KeyHash;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::{StoreError, WriteError, unique_violation};

/// Who freed a seat (`activations.deactivated_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeactivatedBy {
    /// The product itself (`POST /v1/activations/deactivate`).
    Product,
    /// The brand (`DELETE /v1/activations/{id}`).
    Brand,
    /// The license was cancelled (the `license.cancelled` reaction).
    LicenseCancelled,
}

impl DeactivatedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            DeactivatedBy::Product => "product",
            DeactivatedBy::Brand => "brand",
            DeactivatedBy::LicenseCancelled => "license_cancelled",
        }
    }
}

/// What a license key holds for a product code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLicense {
    /// No key has this hash.
    UnknownKey,
    /// The key exists but holds no license for the product.
    NoLicense,
    /// The license that counts: the non-cancelled one, else the latest.
    License(Uuid),
}

/// A license as the seat rules see it, read under its row lock.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SeatLicense {
    pub id: Uuid,
    pub brand_id: Uuid,
    /// The product code.
    pub product: String,
    /// The stored status (the caller computes the effective one).
    pub status: String,
    pub expires_at: Option<DateTime<Utc>>,
    /// NULL = unlimited.
    pub seat_limit: Option<i32>,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ActivationRecord {
    pub id: Uuid,
    pub license_id: Uuid,
    pub instance_id: String,
    pub instance_name: Option<String>,
    pub activated_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub deactivated_at: Option<DateTime<Utc>>,
    pub deactivated_by: Option<String>,
}

impl ActivationRecord {
    pub fn is_active(&self) -> bool {
        self.deactivated_at.is_none()
    }
}

/// The instance is already active on the license (the partial unique index). Cannot happen
/// while the license row is locked; reported rather than surfacing as a database error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceActive;

pub struct NewActivation<'a> {
    pub id: Uuid,
    pub license_id: Uuid,
    pub instance_id: &'a str,
    pub instance_name: Option<&'a str>,
    /// A JSON object as JSON text.
    pub metadata: Option<&'a str>,
    pub at: DateTime<Utc>,
}

const ACTIVATION_COLUMNS: &str =
    "id, license_id, instance_id, instance_name, activated_at, last_seen_at, deactivated_at, deactivated_by";

/// The license a key holds for a product code (SPEC §2 Seats rule 1). Not locked: lock the
/// returned license with [`lock_license`] before deciding anything.
pub async fn license_for_key(conn: &mut PgConnection, key_hash: &KeyHash, product: &str) -> Result<KeyLicense, StoreError> {
    let row: Option<(Uuid, Option<Uuid>)> = sqlx::query_as(
        "SELECT k.id,
                (SELECT l.id FROM licenses l JOIN products p ON p.id = l.product_id
                 WHERE l.license_key_id = k.id AND p.code = $2
                 ORDER BY (l.status = 'cancelled'), l.created_at DESC, l.id DESC
                 LIMIT 1)
         FROM license_keys k WHERE k.key_hash = $1",
    )
    .bind(key_hash.as_str())
    .bind(product)
    .fetch_optional(conn)
    .await?;
    Ok(match row {
        None => KeyLicense::UnknownKey,
        Some((_, None)) => KeyLicense::NoLicense,
        Some((_, Some(license_id))) => KeyLicense::License(license_id),
    })
}

/// [`license_for_key`] and [`lock_license`] in one round trip: the license the key holds for
/// the product, locked until the transaction ends. `None` when there is none (ask
/// [`license_for_key`] why). Like the two-step form, the choice among the key's licenses is made
/// before the lock; the lock then holds the chosen row.
pub async fn lock_license_for_key(conn: &mut PgConnection, key_hash: &KeyHash, product: &str) -> Result<Option<SeatLicense>, StoreError> {
    Ok(sqlx::query_as::<_, SeatLicense>(
        "SELECT l.id, l.brand_id, p.code AS product, l.status, l.expires_at, l.seat_limit, l.version
         FROM licenses l JOIN products p ON p.id = l.product_id
         WHERE l.id = (SELECT c.id FROM license_keys k
                       JOIN licenses c ON c.license_key_id = k.id
                       JOIN products cp ON cp.id = c.product_id
                       WHERE k.key_hash = $1 AND cp.code = $2
                       ORDER BY (c.status = 'cancelled'), c.created_at DESC, c.id DESC
                       LIMIT 1)
         FOR UPDATE OF l",
    )
    .bind(key_hash.as_str())
    .bind(product)
    .fetch_optional(conn)
    .await?)
}

/// Locks the license row until the transaction ends and reads it. Every change to a license's
/// activations happens under this lock.
pub async fn lock_license(conn: &mut PgConnection, license_id: Uuid) -> Result<Option<SeatLicense>, StoreError> {
    Ok(sqlx::query_as::<_, SeatLicense>(
        "SELECT l.id, l.brand_id, p.code AS product, l.status, l.expires_at, l.seat_limit, l.version
         FROM licenses l JOIN products p ON p.id = l.product_id
         WHERE l.id = $1
         FOR UPDATE OF l",
    )
    .bind(license_id)
    .fetch_optional(conn)
    .await?)
}

/// The license's active activations. Run it after [`lock_license`], as its own statement.
pub async fn active_count(conn: &mut PgConnection, license_id: Uuid) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM activations WHERE license_id = $1 AND deactivated_at IS NULL")
        .bind(license_id)
        .fetch_one(conn)
        .await?)
}

#[derive(sqlx::FromRow)]
struct SeatsRow {
    active: i64,
    id: Option<Uuid>,
    license_id: Option<Uuid>,
    instance_id: Option<String>,
    instance_name: Option<String>,
    activated_at: Option<DateTime<Utc>>,
    last_seen_at: Option<DateTime<Utc>>,
}

/// [`active_count`] and the instance's *active* activation, if any, in one statement (one
/// snapshot, taken after the lock). Run it after [`lock_license`].
pub async fn seats_and_instance(conn: &mut PgConnection, license_id: Uuid, instance_id: &str) -> Result<(i64, Option<ActivationRecord>), StoreError> {
    let row = sqlx::query_as::<_, SeatsRow>(
        "SELECT (SELECT count(*) FROM activations WHERE license_id = $1 AND deactivated_at IS NULL) AS active,
                a.id, a.license_id, a.instance_id, a.instance_name, a.activated_at, a.last_seen_at
         FROM (SELECT 1) AS one
         LEFT JOIN activations a ON a.license_id = $1 AND a.instance_id = $2 AND a.deactivated_at IS NULL",
    )
    .bind(license_id)
    .bind(instance_id)
    .fetch_one(conn)
    .await?;
    let active = match (row.id, row.license_id, row.instance_id, row.activated_at, row.last_seen_at) {
        (Some(id), Some(license_id), Some(instance_id), Some(activated_at), Some(last_seen_at)) => Some(ActivationRecord {
            id,
            license_id,
            instance_id,
            instance_name: row.instance_name,
            activated_at,
            last_seen_at,
            deactivated_at: None,
            deactivated_by: None,
        }),
        _ => None,
    };
    Ok((row.active, active))
}

/// The instance's activation on the license: the active one, else the latest inactive one.
pub async fn latest_for_instance(conn: &mut PgConnection, license_id: Uuid, instance_id: &str) -> Result<Option<ActivationRecord>, StoreError> {
    Ok(sqlx::query_as::<_, ActivationRecord>(sqlx::AssertSqlSafe(format!(
        "SELECT {ACTIVATION_COLUMNS} FROM activations WHERE license_id = $1 AND instance_id = $2
         ORDER BY (deactivated_at IS NOT NULL), activated_at DESC, id DESC LIMIT 1"
    )))
    .bind(license_id)
    .bind(instance_id)
    .fetch_optional(conn)
    .await?)
}

/// One activation of one of the brand's licenses; another brand's activation reads as missing.
pub async fn find_for_brand(conn: &mut PgConnection, brand_id: Uuid, activation_id: Uuid) -> Result<Option<ActivationRecord>, StoreError> {
    Ok(sqlx::query_as::<_, ActivationRecord>(
        "SELECT a.id, a.license_id, a.instance_id, a.instance_name, a.activated_at, a.last_seen_at, a.deactivated_at, a.deactivated_by
         FROM activations a JOIN licenses l ON l.id = a.license_id
         WHERE a.id = $1 AND l.brand_id = $2",
    )
    .bind(activation_id)
    .bind(brand_id)
    .fetch_optional(conn)
    .await?)
}

/// A new activation with what its statement moved: the license's version and the read-model
/// version of the key that holds it.
pub struct Inserted {
    pub activation: ActivationRecord,
    pub license_version: i64,
    pub key_id: Uuid,
    /// The key's new read-model version (what [`crate::read_model::bump_key_of_license`] draws).
    pub key_rm_version: i64,
}

/// Inserts a new activation, moves the license's version by one (what [`bump_license_version`]
/// does) and draws the key's read-model version (locking the key row after the license row the
/// caller holds, the order every writer keeps), in one statement.
pub async fn insert(conn: &mut PgConnection, a: &NewActivation<'_>) -> Result<Inserted, WriteError<InstanceActive>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        activation: ActivationRecord,
        license_version: i64,
        key_id: Uuid,
        key_rm_version: i64,
    }
    sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "WITH inserted AS (
             INSERT INTO activations (id, license_id, instance_id, instance_name, metadata, activated_at, last_seen_at)
             VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $6) RETURNING {ACTIVATION_COLUMNS}
         ), license AS (
             UPDATE licenses SET version = version + 1, updated_at = GREATEST(updated_at, $6) WHERE id = $2
             RETURNING version, license_key_id
         ), key AS (
             UPDATE license_keys SET rm_version = nextval('read_model_version')
             WHERE id = (SELECT license_key_id FROM license) RETURNING id, rm_version
         )
         SELECT inserted.*, license.version AS license_version, key.id AS key_id, key.rm_version AS key_rm_version
         FROM inserted, license, key"
    )))
    .bind(a.id)
    .bind(a.license_id)
    .bind(a.instance_id)
    .bind(a.instance_name)
    .bind(a.metadata)
    .bind(a.at)
    .fetch_one(conn)
    .await
    .map(|row| Inserted { activation: row.activation, license_version: row.license_version, key_id: row.key_id, key_rm_version: row.key_rm_version })
    .map_err(|e| match unique_violation(&e).as_deref() {
        Some("activations_one_active_per_instance") => WriteError::Conflict(InstanceActive),
        _ => WriteError::Store(e.into()),
    })
}

/// Records that an active instance checked in again. Never moves `last_seen_at` backwards
/// (replicas' clocks differ slightly).
pub async fn touch(conn: &mut PgConnection, activation_id: Uuid, now: DateTime<Utc>) -> Result<(), StoreError> {
    sqlx::query("UPDATE activations SET last_seen_at = GREATEST(last_seen_at, $2) WHERE id = $1")
        .bind(activation_id)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// Frees the activation's seat if it holds one; returns the activation as it is now, or `None`
/// when it was already inactive (or does not exist).
pub async fn deactivate(
    conn: &mut PgConnection,
    activation_id: Uuid,
    by: DeactivatedBy,
    now: DateTime<Utc>,
) -> Result<Option<ActivationRecord>, StoreError> {
    Ok(sqlx::query_as::<_, ActivationRecord>(sqlx::AssertSqlSafe(format!(
        "UPDATE activations SET deactivated_at = GREATEST(activated_at, $3), deactivated_by = $2
         WHERE id = $1 AND deactivated_at IS NULL RETURNING {ACTIVATION_COLUMNS}"
    )))
    .bind(activation_id)
    .bind(by.as_str())
    .bind(now)
    .fetch_optional(conn)
    .await?)
}

/// Frees every seat of the license; returns the released activations, oldest first.
pub async fn deactivate_all(
    conn: &mut PgConnection,
    license_id: Uuid,
    by: DeactivatedBy,
    now: DateTime<Utc>,
) -> Result<Vec<ActivationRecord>, StoreError> {
    let mut released = sqlx::query_as::<_, ActivationRecord>(sqlx::AssertSqlSafe(format!(
        "UPDATE activations SET deactivated_at = GREATEST(activated_at, $3), deactivated_by = $2
         WHERE license_id = $1 AND deactivated_at IS NULL RETURNING {ACTIVATION_COLUMNS}"
    )))
    .bind(license_id)
    .bind(by.as_str())
    .bind(now)
    .fetch_all(conn)
    .await?;
    released.sort_by_key(|a| (a.activated_at, a.id));
    Ok(released)
}

/// The license changed through its activations: `version` + `by` (one per change) and
/// `updated_at`. Returns the new version. The one write of the activations module to the
/// licenses table, required because a license's version moves with its activations (SPEC §2).
pub async fn bump_license_version(conn: &mut PgConnection, license_id: Uuid, by: i64, now: DateTime<Utc>) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "UPDATE licenses SET version = version + $2, updated_at = GREATEST(updated_at, $3) WHERE id = $1 RETURNING version",
    )
    .bind(license_id)
    .bind(by)
    .bind(now)
    .fetch_one(conn)
    .await?)
}
