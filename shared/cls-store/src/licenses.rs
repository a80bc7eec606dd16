//! License keys and licenses (the licenses module's tables), plus the license reads the query
//! service serves (listings, lookups, the cross-brand ecosystem listing).

use chrono::{DateTime, Utc};
use cls_domain::{Email, KeyHash};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::{StoreError, WriteError, unique_violation};

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LicenseKeyRecord {
    pub id: Uuid,
    pub brand_id: Uuid,
    pub customer_email: String,
    pub key_hint: String,
    pub imported: bool,
    pub created_at: DateTime<Utc>,
    pub version: i64,
}

/// A license with what every answer shows about it: its key's hint and email, its product's
/// code, and the seats in use (active activations).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LicenseView {
    pub id: Uuid,
    pub brand_id: Uuid,
    pub license_key_id: Uuid,
    pub key_hint: String,
    pub customer_email: String,
    pub product_id: Uuid,
    pub product: String,
    pub status: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub seat_limit: Option<i32>,
    pub seats_used: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

/// A license across brands (US6).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EcosystemLicense {
    pub id: Uuid,
    pub brand: String,
    pub product: String,
    pub status: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub seat_limit: Option<i32>,
    pub seats_used: i64,
    pub key_hint: String,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ActiveActivation {
    pub id: Uuid,
    pub instance_id: String,
    pub instance_name: Option<String>,
    pub activated_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

/// The key's hash is taken (anywhere, any brand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyTaken;

/// The key already holds a non-cancelled license for the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LicenseExists;

const KEY_COLUMNS: &str = "id, brand_id, customer_email, key_hint, imported, created_at, version";

/// The select list and joins of [`LicenseView`]; `seats_used` counts active activations, and a
/// cancelled license reports 0 (SPEC §3).
const VIEW: &str = "SELECT l.id, l.brand_id, l.license_key_id, k.key_hint, k.customer_email, l.product_id, p.code AS product,
        l.status, l.expires_at, l.seat_limit,
        CASE WHEN l.status = 'cancelled' THEN 0
             ELSE (SELECT count(*) FROM activations a WHERE a.license_id = l.id AND a.deactivated_at IS NULL) END AS seats_used,
        l.created_at, l.updated_at, l.version
    FROM licenses l
    JOIN license_keys k ON k.id = l.license_key_id
    JOIN products p ON p.id = l.product_id";

/// Serializes key choice for one (brand, email) until the transaction ends, so concurrent first
/// purchases create one key.
pub async fn lock_customer(conn: &mut PgConnection, brand_id: Uuid, email: &Email) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("license-key:{brand_id}:{}", email.as_str()))
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn find_key(conn: &mut PgConnection, brand_id: Uuid, id: Uuid) -> Result<Option<LicenseKeyRecord>, StoreError> {
    Ok(sqlx::query_as::<_, LicenseKeyRecord>(sqlx::AssertSqlSafe(format!(
        "SELECT {KEY_COLUMNS} FROM license_keys WHERE id = $1 AND brand_id = $2"
    )))
    .bind(id)
    .bind(brand_id)
    .fetch_optional(conn)
    .await?)
}

/// The brand's most recent key for the email.
pub async fn latest_key(conn: &mut PgConnection, brand_id: Uuid, email: &Email) -> Result<Option<LicenseKeyRecord>, StoreError> {
    Ok(sqlx::query_as::<_, LicenseKeyRecord>(sqlx::AssertSqlSafe(format!(
        "SELECT {KEY_COLUMNS} FROM license_keys WHERE brand_id = $1 AND customer_email = $2
         ORDER BY created_at DESC, id DESC LIMIT 1"
    )))
    .bind(brand_id)
    .bind(email.as_str())
    .fetch_optional(conn)
    .await?)
}

/// The key with this hash, in any brand.
pub async fn find_key_by_hash(conn: &mut PgConnection, hash: &KeyHash) -> Result<Option<LicenseKeyRecord>, StoreError> {
    Ok(sqlx::query_as::<_, LicenseKeyRecord>(sqlx::AssertSqlSafe(format!(
        "SELECT {KEY_COLUMNS} FROM license_keys WHERE key_hash = $1"
    )))
    .bind(hash.as_str())
    .fetch_optional(conn)
    .await?)
}

pub struct NewLicenseKey<'a> {
    pub id: Uuid,
    pub brand_id: Uuid,
    pub customer_email: &'a Email,
    pub key_hash: &'a KeyHash,
    pub key_hint: &'a str,
    pub imported: bool,
    pub created_at: DateTime<Utc>,
}

pub async fn insert_key(conn: &mut PgConnection, k: &NewLicenseKey<'_>) -> Result<LicenseKeyRecord, WriteError<KeyTaken>> {
    sqlx::query_as::<_, LicenseKeyRecord>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO license_keys (id, brand_id, customer_email, key_hash, key_hint, imported, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
         ON CONFLICT ON CONSTRAINT license_keys_key_hash_key DO NOTHING
         RETURNING {KEY_COLUMNS}"
    )))
    .bind(k.id)
    .bind(k.brand_id)
    .bind(k.customer_email.as_str())
    .bind(k.key_hash.as_str())
    .bind(k.key_hint)
    .bind(k.imported)
    .bind(k.created_at)
    .fetch_optional(conn)
    .await
    .map_err(|e| WriteError::Store(e.into()))?
    // A taken hash inserts nothing (and, unlike a unique violation, leaves the transaction usable).
    .ok_or(WriteError::Conflict(KeyTaken))
}

/// Whether the key holds a non-cancelled license for the product.
pub async fn has_live_license(conn: &mut PgConnection, license_key_id: Uuid, product_id: Uuid) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM licenses WHERE license_key_id = $1 AND product_id = $2 AND status <> 'cancelled')",
    )
    .bind(license_key_id)
    .bind(product_id)
    .fetch_one(conn)
    .await?)
}

pub struct NewLicense {
    pub id: Uuid,
    pub brand_id: Uuid,
    pub license_key_id: Uuid,
    pub product_id: Uuid,
    pub expires_at: Option<DateTime<Utc>>,
    pub seat_limit: Option<u32>,
    pub created_at: DateTime<Utc>,
}

/// Inserts new (valid) licenses and returns them as [`LicenseView`]s in id order, in one
/// statement (a provisioning used to insert each license and then read them back).
pub async fn insert_licenses(conn: &mut PgConnection, new: &[NewLicense]) -> Result<Vec<LicenseView>, WriteError<LicenseExists>> {
    sqlx::query_as::<_, LicenseView>(
        "WITH l AS (
             INSERT INTO licenses (id, brand_id, license_key_id, product_id, status, expires_at, seat_limit, created_at, updated_at)
             SELECT id, brand_id, license_key_id, product_id, 'valid', expires_at, seat_limit, created_at, created_at
             FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::timestamptz[], $6::int[], $7::timestamptz[])
                  AS n (id, brand_id, license_key_id, product_id, expires_at, seat_limit, created_at)
             RETURNING *
         )
         SELECT l.id, l.brand_id, l.license_key_id, k.key_hint, k.customer_email, l.product_id, p.code AS product,
                l.status, l.expires_at, l.seat_limit, 0::bigint AS seats_used, l.created_at, l.updated_at, l.version
         FROM l
         JOIN license_keys k ON k.id = l.license_key_id
         JOIN products p ON p.id = l.product_id
         ORDER BY l.id",
    )
    .bind(new.iter().map(|l| l.id).collect::<Vec<_>>())
    .bind(new.iter().map(|l| l.brand_id).collect::<Vec<_>>())
    .bind(new.iter().map(|l| l.license_key_id).collect::<Vec<_>>())
    .bind(new.iter().map(|l| l.product_id).collect::<Vec<_>>())
    .bind(new.iter().map(|l| l.expires_at).collect::<Vec<_>>())
    .bind(new.iter().map(|l| l.seat_limit.map(|n| n as i32)).collect::<Vec<_>>())
    .bind(new.iter().map(|l| l.created_at).collect::<Vec<_>>())
    .fetch_all(conn)
    .await
    .map_err(|e| match unique_violation(&e).as_deref() {
        Some("licenses_one_live_per_product") => WriteError::Conflict(LicenseExists),
        _ => WriteError::Store(e.into()),
    })
}

/// One of the brand's licenses.
pub async fn license(conn: &mut PgConnection, brand_id: Uuid, id: Uuid) -> Result<Option<LicenseView>, StoreError> {
    Ok(sqlx::query_as::<_, LicenseView>(sqlx::AssertSqlSafe(format!("{VIEW} WHERE l.id = $1 AND l.brand_id = $2")))
        .bind(id)
        .bind(brand_id)
        .fetch_optional(conn)
        .await?)
}

/// Several licenses by id (in id order), e.g. the ones a provisioning just created.
pub async fn licenses_by_ids(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<LicenseView>, StoreError> {
    Ok(sqlx::query_as::<_, LicenseView>(sqlx::AssertSqlSafe(format!("{VIEW} WHERE l.id = ANY($1) ORDER BY l.id")))
        .bind(ids)
        .fetch_all(conn)
        .await?)
}

/// The licenses on a key, oldest first.
pub async fn licenses_of_key(conn: &mut PgConnection, license_key_id: Uuid) -> Result<Vec<LicenseView>, StoreError> {
    Ok(sqlx::query_as::<_, LicenseView>(sqlx::AssertSqlSafe(format!("{VIEW} WHERE l.license_key_id = $1 ORDER BY l.id")))
        .bind(license_key_id)
        .fetch_all(conn)
        .await?)
}

/// The brand's licenses (optionally for one email), in creation order after the cursor.
pub async fn list_licenses(
    conn: &mut PgConnection,
    brand_id: Uuid,
    email: Option<&Email>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<LicenseView>, StoreError> {
    Ok(sqlx::query_as::<_, LicenseView>(sqlx::AssertSqlSafe(format!(
        "{VIEW} WHERE l.brand_id = $1 AND ($2::text IS NULL OR k.customer_email = $2) AND ($3::uuid IS NULL OR l.id > $3)
         ORDER BY l.id LIMIT $4"
    )))
    .bind(brand_id)
    .bind(email.map(Email::as_str))
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Every license of an email across all brands (US6), in creation order after the cursor.
pub async fn ecosystem_licenses(conn: &mut PgConnection, email: &Email, after: Option<Uuid>, limit: i64) -> Result<Vec<EcosystemLicense>, StoreError> {
    Ok(sqlx::query_as::<_, EcosystemLicense>(
        "SELECT l.id, b.slug AS brand, p.code AS product, l.status, l.expires_at, l.seat_limit,
                CASE WHEN l.status = 'cancelled' THEN 0
                     ELSE (SELECT count(*) FROM activations a WHERE a.license_id = l.id AND a.deactivated_at IS NULL) END AS seats_used,
                k.key_hint
         FROM license_keys k
         JOIN licenses l ON l.license_key_id = k.id
         JOIN products p ON p.id = l.product_id
         JOIN brands b ON b.id = l.brand_id
         WHERE k.customer_email = $1 AND ($2::uuid IS NULL OR l.id > $2)
         ORDER BY l.id LIMIT $3",
    )
    .bind(email.as_str())
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// The license's active activations, oldest first.
pub async fn active_activations(conn: &mut PgConnection, license_id: Uuid) -> Result<Vec<ActiveActivation>, StoreError> {
    Ok(sqlx::query_as::<_, ActiveActivation>(
        "SELECT id, instance_id, instance_name, activated_at, last_seen_at FROM activations
         WHERE license_id = $1 AND deactivated_at IS NULL ORDER BY activated_at, id",
    )
    .bind(license_id)
    .fetch_all(conn)
    .await?)
}

/// A license row as the lifecycle commands see it (locked for update).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LicenseRow {
    pub id: Uuid,
    pub brand_id: Uuid,
    pub license_key_id: Uuid,
    pub product_id: Uuid,
    pub status: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub seat_limit: Option<i32>,
    pub version: i64,
}

/// Locks one of the brand's licenses for this transaction (lock order: the license row first).
pub async fn lock_license(conn: &mut PgConnection, brand_id: Uuid, id: Uuid) -> Result<Option<LicenseRow>, StoreError> {
    Ok(sqlx::query_as::<_, LicenseRow>(
        "SELECT id, brand_id, license_key_id, product_id, status, expires_at, seat_limit, version
         FROM licenses WHERE id = $1 AND brand_id = $2 FOR UPDATE",
    )
    .bind(id)
    .bind(brand_id)
    .fetch_optional(conn)
    .await?)
}

/// Writes a license's new state and bumps its version; returns the new version.
pub async fn update_license(
    conn: &mut PgConnection,
    id: Uuid,
    status: &str,
    expires_at: Option<DateTime<Utc>>,
    seat_limit: Option<u32>,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        // GREATEST: a replica whose clock lags must not move updated_at before created_at.
        "UPDATE licenses SET status = $2, expires_at = $3, seat_limit = $4, updated_at = GREATEST(updated_at, $5), version = version + 1
         WHERE id = $1 RETURNING version",
    )
    .bind(id)
    .bind(status)
    .bind(expires_at)
    .bind(seat_limit.map(|n| n as i32))
    .bind(now)
    .fetch_one(conn)
    .await?)
}

/// Locks one of the brand's keys for this transaction.
pub async fn lock_key(conn: &mut PgConnection, brand_id: Uuid, id: Uuid) -> Result<Option<LicenseKeyRecord>, StoreError> {
    Ok(sqlx::query_as::<_, LicenseKeyRecord>(sqlx::AssertSqlSafe(format!(
        "SELECT {KEY_COLUMNS} FROM license_keys WHERE id = $1 AND brand_id = $2 FOR UPDATE"
    )))
    .bind(id)
    .bind(brand_id)
    .fetch_optional(conn)
    .await?)
}

/// Gives a key a new value (hash and hint); the old value stops matching at once.
pub async fn rotate_key(
    conn: &mut PgConnection,
    id: Uuid,
    key_hash: &KeyHash,
    key_hint: &str,
    now: DateTime<Utc>,
) -> Result<LicenseKeyRecord, WriteError<KeyTaken>> {
    // The old hash is retired in the same statement: the read model keeps a tombstone for it,
    // versioned above anything the old key was ever written with.
    sqlx::query_as::<_, LicenseKeyRecord>(sqlx::AssertSqlSafe(format!(
        "WITH retired AS (
             INSERT INTO retired_key_hashes (key_hash, license_key_id, rm_version, retired_at)
             SELECT key_hash, id, nextval('read_model_version'), $4 FROM license_keys WHERE id = $1
             ON CONFLICT (key_hash) DO UPDATE
                 SET license_key_id = EXCLUDED.license_key_id, rm_version = EXCLUDED.rm_version, retired_at = EXCLUDED.retired_at
         )
         UPDATE license_keys SET key_hash = $2, key_hint = $3, imported = false, updated_at = GREATEST(updated_at, $4), version = version + 1
         WHERE id = $1 RETURNING {KEY_COLUMNS}"
    )))
    .bind(id)
    .bind(key_hash.as_str())
    .bind(key_hint)
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(|e| match unique_violation(&e).as_deref() {
        Some("license_keys_key_hash_key") => WriteError::Conflict(KeyTaken),
        _ => WriteError::Store(e.into()),
    })
}

/// Moves a key to another customer email.
pub async fn transfer_key(conn: &mut PgConnection, id: Uuid, email: &Email, now: DateTime<Utc>) -> Result<LicenseKeyRecord, StoreError> {
    Ok(sqlx::query_as::<_, LicenseKeyRecord>(sqlx::AssertSqlSafe(format!(
        "UPDATE license_keys SET customer_email = $2, updated_at = GREATEST(updated_at, $3), version = version + 1 WHERE id = $1 RETURNING {KEY_COLUMNS}"
    )))
    .bind(id)
    .bind(email.as_str())
    .bind(now)
    .fetch_one(conn)
    .await?)
}

/// Takes the sweeper's lock for this transaction, if no other sweep holds it.
pub async fn try_sweep_lock(conn: &mut PgConnection) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended('cls-expiry-sweeper', 0))").fetch_one(conn).await?)
}

/// Persists `expired` for up to `limit` valid licenses whose expiry has passed; returns their
/// new state (version bumped).
pub async fn expire_due(conn: &mut PgConnection, now: DateTime<Utc>, limit: i64) -> Result<Vec<LicenseView>, StoreError> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE licenses SET status = 'expired', updated_at = GREATEST(updated_at, $1), version = version + 1
         WHERE id IN (SELECT id FROM licenses WHERE status = 'valid' AND expires_at <= $1
                      ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING id",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    licenses_by_ids(conn, &ids).await
}

/// Whether the instance holds an active seat of the license.
pub async fn instance_active(conn: &mut PgConnection, license_id: Uuid, instance_id: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM activations WHERE license_id = $1 AND instance_id = $2 AND deactivated_at IS NULL)",
    )
    .bind(license_id)
    .bind(instance_id)
    .fetch_one(conn)
    .await?)
}
