//! Brands, API keys and products (the brands module's tables).

use chrono::{DateTime, Utc};
use cls_domain::{ApiKeyName, BrandName, BrandSlug, KeyHash, KeyPrefix, ProductCode, ProductName, Scopes};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::{StoreError, WriteError, unique_violation};

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct BrandRecord {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub key_prefix: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ApiKeyRecord {
    pub id: Uuid,
    pub brand_id: Uuid,
    pub name: String,
    pub display_prefix: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ProductRecord {
    pub id: Uuid,
    pub brand_id: Uuid,
    pub code: String,
    pub name: String,
    pub default_seat_limit: Option<i32>,
    pub default_duration_days: Option<i32>,
    pub created_at: DateTime<Utc>,
}

/// Which unique rule a new brand broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrandConflict {
    Slug,
    KeyPrefix,
}

/// A new product's code is taken within its brand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProductCodeTaken;

pub struct NewBrand<'a> {
    pub id: Uuid,
    pub slug: &'a BrandSlug,
    pub name: &'a BrandName,
    pub key_prefix: &'a KeyPrefix,
    pub created_at: DateTime<Utc>,
}

pub async fn insert_brand(conn: &mut PgConnection, b: &NewBrand<'_>) -> Result<BrandRecord, WriteError<BrandConflict>> {
    sqlx::query_as::<_, BrandRecord>(
        "INSERT INTO brands (id, slug, name, key_prefix, created_at) VALUES ($1, $2, $3, $4, $5)
         RETURNING id, slug, name, key_prefix, created_at",
    )
    .bind(b.id)
    .bind(b.slug.as_str())
    .bind(b.name.as_str())
    .bind(b.key_prefix.as_str())
    .bind(b.created_at)
    .fetch_one(conn)
    .await
    .map_err(|e| match unique_violation(&e).as_deref() {
        Some("brands_slug_key") => WriteError::Conflict(BrandConflict::Slug),
        Some("brands_key_prefix_key") => WriteError::Conflict(BrandConflict::KeyPrefix),
        _ => WriteError::Store(e.into()),
    })
}

pub async fn find_brand(conn: &mut PgConnection, id: Uuid) -> Result<Option<BrandRecord>, StoreError> {
    Ok(sqlx::query_as::<_, BrandRecord>("SELECT id, slug, name, key_prefix, created_at FROM brands WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?)
}

/// Brands in creation order (ids are UUIDv7), after the cursor.
pub async fn list_brands(conn: &mut PgConnection, after: Option<Uuid>, limit: i64) -> Result<Vec<BrandRecord>, StoreError> {
    Ok(sqlx::query_as::<_, BrandRecord>(
        "SELECT id, slug, name, key_prefix, created_at FROM brands
         WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

pub struct NewApiKey<'a> {
    pub id: Uuid,
    pub brand_id: Uuid,
    pub name: &'a ApiKeyName,
    pub key_hash: &'a KeyHash,
    pub display_prefix: &'a str,
    pub scopes: &'a Scopes,
    pub created_at: DateTime<Utc>,
}

pub async fn insert_api_key(conn: &mut PgConnection, k: &NewApiKey<'_>) -> Result<ApiKeyRecord, StoreError> {
    Ok(sqlx::query_as::<_, ApiKeyRecord>(
        "INSERT INTO api_keys (id, brand_id, name, key_hash, display_prefix, scopes, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         RETURNING id, brand_id, name, display_prefix, scopes, created_at, revoked_at, version",
    )
    .bind(k.id)
    .bind(k.brand_id)
    .bind(k.name.as_str())
    .bind(k.key_hash.as_str())
    .bind(k.display_prefix)
    .bind(k.scopes.to_strings())
    .bind(k.created_at)
    .fetch_one(conn)
    .await?)
}

/// Revokes a key if it is not revoked yet; returns the key as it is now, or `None` if no such key.
/// `changed` tells whether this call revoked it (a repeated revoke changes nothing).
pub async fn revoke_api_key(
    conn: &mut PgConnection,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<(ApiKeyRecord, bool)>, StoreError> {
    let revoked = sqlx::query_as::<_, ApiKeyRecord>(
        "UPDATE api_keys SET revoked_at = GREATEST(created_at, $2), version = version + 1
         WHERE id = $1 AND revoked_at IS NULL
         RETURNING id, brand_id, name, display_prefix, scopes, created_at, revoked_at, version",
    )
    .bind(id)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(key) = revoked {
        return Ok(Some((key, true)));
    }
    Ok(find_api_key(conn, id).await?.map(|k| (k, false)))
}

pub async fn find_api_key(conn: &mut PgConnection, id: Uuid) -> Result<Option<ApiKeyRecord>, StoreError> {
    Ok(sqlx::query_as::<_, ApiKeyRecord>(
        "SELECT id, brand_id, name, display_prefix, scopes, created_at, revoked_at, version FROM api_keys WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// The live (not revoked) key with this hash: API-key authentication.
pub async fn find_live_api_key_by_hash(conn: &mut PgConnection, hash: &KeyHash) -> Result<Option<ApiKeyRecord>, StoreError> {
    Ok(sqlx::query_as::<_, ApiKeyRecord>(
        "SELECT id, brand_id, name, display_prefix, scopes, created_at, revoked_at, version
         FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(hash.as_str())
    .fetch_optional(conn)
    .await?)
}

pub async fn list_api_keys(
    conn: &mut PgConnection,
    brand_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<ApiKeyRecord>, StoreError> {
    Ok(sqlx::query_as::<_, ApiKeyRecord>(
        "SELECT id, brand_id, name, display_prefix, scopes, created_at, revoked_at, version FROM api_keys
         WHERE brand_id = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3",
    )
    .bind(brand_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

pub struct NewProduct<'a> {
    pub id: Uuid,
    pub brand_id: Uuid,
    pub code: &'a ProductCode,
    pub name: &'a ProductName,
    pub default_seat_limit: Option<u32>,
    pub default_duration_days: Option<u32>,
    pub created_at: DateTime<Utc>,
}

pub async fn insert_product(conn: &mut PgConnection, p: &NewProduct<'_>) -> Result<ProductRecord, WriteError<ProductCodeTaken>> {
    sqlx::query_as::<_, ProductRecord>(
        "INSERT INTO products (id, brand_id, code, name, default_seat_limit, default_duration_days, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         RETURNING id, brand_id, code, name, default_seat_limit, default_duration_days, created_at",
    )
    .bind(p.id)
    .bind(p.brand_id)
    .bind(p.code.as_str())
    .bind(p.name.as_str())
    .bind(p.default_seat_limit.map(|n| n as i32))
    .bind(p.default_duration_days.map(|n| n as i32))
    .bind(p.created_at)
    .fetch_one(conn)
    .await
    .map_err(|e| match unique_violation(&e).as_deref() {
        Some("products_brand_code_key") => WriteError::Conflict(ProductCodeTaken),
        _ => WriteError::Store(e.into()),
    })
}

pub async fn list_products(
    conn: &mut PgConnection,
    brand_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<ProductRecord>, StoreError> {
    Ok(sqlx::query_as::<_, ProductRecord>(
        "SELECT id, brand_id, code, name, default_seat_limit, default_duration_days, created_at FROM products
         WHERE brand_id = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3",
    )
    .bind(brand_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// What a provisioning needs of its brand: the key prefix (for a new key) and the products with
/// the requested codes (those that exist), in one lookup. `None` if there is no such brand.
pub struct Catalog {
    pub key_prefix: String,
    pub products: Vec<ProductRecord>,
}

pub async fn catalog(conn: &mut PgConnection, brand_id: Uuid, codes: &[String]) -> Result<Option<Catalog>, StoreError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        key_prefix: String,
        id: Option<Uuid>,
        code: Option<String>,
        name: Option<String>,
        default_seat_limit: Option<i32>,
        default_duration_days: Option<i32>,
        created_at: Option<DateTime<Utc>>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT b.key_prefix, p.id, p.code, p.name, p.default_seat_limit, p.default_duration_days, p.created_at
         FROM brands b LEFT JOIN products p ON p.brand_id = b.id AND p.code = ANY($2)
         WHERE b.id = $1",
    )
    .bind(brand_id)
    .bind(codes)
    .fetch_all(conn)
    .await?;
    let Some(key_prefix) = rows.first().map(|r| r.key_prefix.clone()) else { return Ok(None) };
    let products = rows
        .into_iter()
        .filter_map(|r| {
            Some(ProductRecord {
                id: r.id?,
                brand_id,
                code: r.code?,
                name: r.name?,
                default_seat_limit: r.default_seat_limit,
                default_duration_days: r.default_duration_days,
                created_at: r.created_at?,
            })
        })
        .collect();
    Ok(Some(Catalog { key_prefix, products }))
}
