//! What the Redis read model is built from: a consistent snapshot of a license key with its
//! licenses and their active activations (one statement, so one MVCC snapshot), the version a
//! change draws, API keys, and the ids a rebuild walks.
//!
//! Versions: every change to a key, one of its licenses or their activations draws
//! `license_keys.rm_version` from the global `read_model_version` sequence (at the end of the
//! transaction, while the key row is locked, so one key's versions increase with its commits).
//! A snapshot carries the version it was read at; the read model keeps the highest.

use chrono::{DateTime, Utc};
use cls_domain::KeyHash;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::StoreError;

/// Which key to snapshot.
#[derive(Debug, Clone, Copy)]
pub enum KeySelector<'a> {
    Id(Uuid),
    Hash(&'a KeyHash),
    /// The key that holds this license.
    License(Uuid),
}

/// A license key and everything validation and `GET /v1/licenses/{id}` show about it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySnapshot {
    pub key_id: Uuid,
    pub brand_id: Uuid,
    pub key_hash: String,
    pub key_hint: String,
    pub rm_version: i64,
    pub licenses: Vec<SnapshotLicense>,
    /// Hashes this key had before rotations, each with the version of its tombstone.
    pub retired: Vec<(String, i64)>,
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct SnapshotLicense {
    pub id: Uuid,
    pub product: String,
    pub status: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub seat_limit: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
    /// Active activations, oldest first (none once the license is cancelled and released).
    pub activations: Vec<SnapshotActivation>,
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct SnapshotActivation {
    pub id: Uuid,
    pub instance_id: String,
    pub instance_name: Option<String>,
    pub activated_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct SnapshotRow {
    id: Uuid,
    brand_id: Uuid,
    key_hash: String,
    key_hint: String,
    rm_version: i64,
    retired_hashes: Vec<String>,
    retired_versions: Vec<i64>,
    licenses: sqlx::types::Json<Vec<SnapshotLicense>>,
}

/// The snapshot statement without its `WHERE`: callers add the selection (one key here, the keys
/// a command touched in [`crate::effects::record`]).
pub(crate) const SNAPSHOT: &str = "SELECT k.id, k.brand_id, k.key_hash, k.key_hint, k.rm_version,
        ARRAY(SELECT r.key_hash FROM retired_key_hashes r WHERE r.license_key_id = k.id ORDER BY r.key_hash) AS retired_hashes,
        ARRAY(SELECT r.rm_version FROM retired_key_hashes r WHERE r.license_key_id = k.id ORDER BY r.key_hash) AS retired_versions,
        COALESCE((
            SELECT json_agg(json_build_object(
                'id', l.id, 'product', p.code, 'status', l.status, 'expires_at', l.expires_at,
                'seat_limit', l.seat_limit, 'created_at', l.created_at, 'updated_at', l.updated_at,
                'version', l.version,
                'activations', COALESCE((
                    SELECT json_agg(json_build_object(
                        'id', a.id, 'instance_id', a.instance_id, 'instance_name', a.instance_name,
                        'activated_at', a.activated_at, 'last_seen_at', a.last_seen_at) ORDER BY a.activated_at, a.id)
                    FROM activations a WHERE a.license_id = l.id AND a.deactivated_at IS NULL), '[]'::json)
            ) ORDER BY l.id)
            FROM licenses l JOIN products p ON p.id = l.product_id
            WHERE l.license_key_id = k.id), '[]'::json) AS licenses
    FROM license_keys k";

/// The key with everything under it, as of one snapshot; `None` if there is no such key.
pub async fn key_snapshot(conn: &mut PgConnection, selector: KeySelector<'_>) -> Result<Option<KeySnapshot>, StoreError> {
    let query = match selector {
        KeySelector::Id(_) => format!("{SNAPSHOT} WHERE k.id = $1"),
        KeySelector::Hash(_) => format!("{SNAPSHOT} WHERE k.key_hash = $1"),
        KeySelector::License(_) => format!("{SNAPSHOT} WHERE k.id = (SELECT license_key_id FROM licenses WHERE id = $1)"),
    };
    let query = sqlx::query_as::<_, SnapshotRow>(sqlx::AssertSqlSafe(query));
    let query = match selector {
        KeySelector::Id(id) | KeySelector::License(id) => query.bind(id),
        KeySelector::Hash(hash) => query.bind(hash.as_str().to_owned()),
    };
    Ok(query.fetch_optional(conn).await?.map(KeySnapshot::from))
}

impl From<SnapshotRow> for KeySnapshot {
    fn from(row: SnapshotRow) -> KeySnapshot {
        KeySnapshot {
            key_id: row.id,
            brand_id: row.brand_id,
            key_hash: row.key_hash,
            key_hint: row.key_hint,
            rm_version: row.rm_version,
            licenses: row.licenses.0,
            retired: row.retired_hashes.into_iter().zip(row.retired_versions).collect(),
        }
    }
}

/// Draws a new read-model version for a key (locking its row until the transaction ends).
pub async fn bump_key(conn: &mut PgConnection, key_id: Uuid) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("UPDATE license_keys SET rm_version = nextval('read_model_version') WHERE id = $1 RETURNING rm_version")
        .bind(key_id)
        .fetch_one(conn)
        .await?)
}

/// The key's id and its current read-model version (one index lookup), without its snapshot:
/// enough to tell whether the read model already holds this state.
pub async fn key_version(conn: &mut PgConnection, selector: KeySelector<'_>) -> Result<Option<(Uuid, i64)>, StoreError> {
    let query = sqlx::query_as(match selector {
        KeySelector::Id(_) => "SELECT id, rm_version FROM license_keys WHERE id = $1",
        KeySelector::Hash(_) => "SELECT id, rm_version FROM license_keys WHERE key_hash = $1",
        KeySelector::License(_) => {
            "SELECT k.id, k.rm_version FROM licenses l JOIN license_keys k ON k.id = l.license_key_id WHERE l.id = $1"
        }
    });
    let query = match selector {
        KeySelector::Id(id) | KeySelector::License(id) => query.bind(id),
        KeySelector::Hash(hash) => query.bind(hash.as_str().to_owned()),
    };
    Ok(query.fetch_optional(conn).await?)
}

/// Draws a new read-model version for the key that holds a license; returns the key and version.
pub async fn bump_key_of_license(conn: &mut PgConnection, license_id: Uuid) -> Result<(Uuid, i64), StoreError> {
    Ok(sqlx::query_as(
        "UPDATE license_keys SET rm_version = nextval('read_model_version')
         WHERE id = (SELECT license_key_id FROM licenses WHERE id = $1) RETURNING id, rm_version",
    )
    .bind(license_id)
    .fetch_one(conn)
    .await?)
}

/// Draws new versions for the keys of many licenses at once (the expiry sweep), locking the key
/// rows in id order.
pub async fn bump_keys_of_licenses(conn: &mut PgConnection, license_ids: &[Uuid]) -> Result<Vec<(Uuid, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "WITH keys AS (
             SELECT id FROM license_keys
             WHERE id IN (SELECT license_key_id FROM licenses WHERE id = ANY($1))
             ORDER BY id FOR UPDATE
         )
         UPDATE license_keys k SET rm_version = nextval('read_model_version')
         FROM keys WHERE k.id = keys.id RETURNING k.id, k.rm_version",
    )
    .bind(license_ids)
    .fetch_all(conn)
    .await?)
}

/// Which API key to snapshot.
#[derive(Debug, Clone, Copy)]
pub enum ApiKeySelector<'a> {
    Id(Uuid),
    Hash(&'a KeyHash),
}

/// An API key as authentication sees it. `version` is 1 while live and moves on revocation.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ApiKeySnapshot {
    pub id: Uuid,
    pub brand_id: Uuid,
    pub key_hash: String,
    pub scopes: Vec<String>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub version: i64,
}

pub async fn api_key_snapshot(conn: &mut PgConnection, selector: ApiKeySelector<'_>) -> Result<Option<ApiKeySnapshot>, StoreError> {
    const COLUMNS: &str = "SELECT id, brand_id, key_hash, scopes, revoked_at, version FROM api_keys";
    Ok(match selector {
        ApiKeySelector::Id(id) => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{COLUMNS} WHERE id = $1"))).bind(id).fetch_optional(conn).await?
        }
        ApiKeySelector::Hash(hash) => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{COLUMNS} WHERE key_hash = $1")))
                .bind(hash.as_str().to_owned())
                .fetch_optional(conn)
                .await?
        }
    })
}

/// The version an API key has now (for the target a command records).
pub async fn api_key_version(conn: &mut PgConnection, id: Uuid) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("SELECT version FROM api_keys WHERE id = $1").bind(id).fetch_one(conn).await?)
}

/// License key ids in id order after `after` (a rebuild walks them in pages).
pub async fn key_ids(conn: &mut PgConnection, after: Option<Uuid>, limit: i64) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar("SELECT id FROM license_keys WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2")
        .bind(after)
        .bind(limit)
        .fetch_all(conn)
        .await?)
}

/// API key ids in id order after `after`.
pub async fn api_key_ids(conn: &mut PgConnection, after: Option<Uuid>, limit: i64) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar("SELECT id FROM api_keys WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2")
        .bind(after)
        .bind(limit)
        .fetch_all(conn)
        .await?)
}
