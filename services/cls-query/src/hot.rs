//! Hot reads: answered on every request, so they are the ones the Redis read model will serve
//! (SPEC §4). For now they read Postgres; the read-model port replaces the body of these
//! functions, not their callers.

use cls_contracts::internal::ResolvedApiKey;
use cls_domain::KeyHash;
use cls_store::{PgPool, StoreError, brands};

/// The live API key with this hash, or `None` (unknown or revoked).
pub async fn resolve_api_key(pool: &PgPool, hash: &KeyHash) -> Result<Option<ResolvedApiKey>, StoreError> {
    let mut conn = pool.acquire().await?;
    Ok(brands::find_live_api_key_by_hash(&mut conn, hash).await?.map(|k| ResolvedApiKey {
        api_key_id: k.id.to_string(),
        brand_id: k.brand_id.to_string(),
        scopes: k.scopes,
    }))
}
