//! Authentication of the three principals of SPEC §3.
//!
//! API keys are resolved through the query service and cached in-process for at most
//! [`CACHE_TTL`], so a revoked key stops working within 2 s everywhere.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cls_contracts::internal::{ResolveApiKey, ResolvedApiKey};
use cls_domain::{ApiKeySecret, KeyHash, Scope, Scopes};
use hyper::{Method, StatusCode};

use crate::query::{QueryClient, Unavailable};

/// Below SPEC's 2 s bound with room for the revoke's own round trip.
pub const CACHE_TTL: Duration = Duration::from_secs(1);
const CACHE_MAX_ENTRIES: usize = 10_000;

/// A brand's API key, authenticated.
#[derive(Debug, Clone)]
pub struct BrandKey {
    pub api_key_id: String,
    pub brand_id: String,
    pub scope_names: Vec<String>,
}

pub enum Failure {
    Unauthenticated,
    Forbidden,
    Unavailable,
}

#[derive(Default)]
pub struct ApiKeyCache {
    entries: Mutex<HashMap<KeyHash, (Instant, Option<ResolvedApiKey>)>>,
}

impl ApiKeyCache {
    /// Authenticates `X-API-Key` and checks `scope` (when given).
    pub async fn authenticate(&self, query: &QueryClient, header: Option<&str>, scope: Option<Scope>, request_id: &str) -> Result<BrandKey, Failure> {
        let secret = header.and_then(|h| ApiKeySecret::parse(h).ok()).ok_or(Failure::Unauthenticated)?;
        let hash = secret.hash();
        let resolved = match self.cached(&hash) {
            Some(hit) => hit,
            None => {
                let fresh = resolve(query, &hash, request_id).await.map_err(|_| Failure::Unavailable)?;
                self.store(hash, fresh.clone());
                fresh
            }
        };
        let resolved = resolved.ok_or(Failure::Unauthenticated)?;
        let scopes = Scopes::parse_list(&resolved.scopes).map_err(|_| Failure::Unauthenticated)?;
        if let Some(required) = scope
            && !scopes.allows(required)
        {
            return Err(Failure::Forbidden);
        }
        Ok(BrandKey { api_key_id: resolved.api_key_id, brand_id: resolved.brand_id, scope_names: resolved.scopes })
    }

    fn cached(&self, hash: &KeyHash) -> Option<Option<ResolvedApiKey>> {
        let entries = self.entries.lock().expect("cache lock poisoned");
        entries.get(hash).filter(|(at, _)| at.elapsed() < CACHE_TTL).map(|(_, v)| v.clone())
    }

    fn store(&self, hash: KeyHash, value: Option<ResolvedApiKey>) {
        let mut entries = self.entries.lock().expect("cache lock poisoned");
        if entries.len() >= CACHE_MAX_ENTRIES {
            entries.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
            if entries.len() >= CACHE_MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(hash, (Instant::now(), value));
    }
}

async fn resolve(query: &QueryClient, hash: &KeyHash, request_id: &str) -> Result<Option<ResolvedApiKey>, Unavailable> {
    let body = serde_json::to_vec(&ResolveApiKey { key_hash: hash.as_str().to_owned() }).expect("serializable");
    let answer = query.send(Method::POST, "/internal/api-keys/resolve", None, request_id, Some(body)).await?;
    match answer.status {
        StatusCode::OK => serde_json::from_slice(&answer.body).map(Some).map_err(|_| Unavailable),
        StatusCode::NOT_FOUND => Ok(None),
        _ => Err(Unavailable),
    }
}
