//! The contract between the gateway and the query service (internal address only).
//!
//! Every request carries the internal credential in [`INTERNAL_TOKEN_HEADER`]; read routes also
//! carry the authenticated principal (JSON of [`Principal`](crate::Principal)) in
//! [`PRINCIPAL_HEADER`]. The query service trusts the gateway's authentication, nothing else.

use serde::{Deserialize, Serialize};

pub const INTERNAL_TOKEN_HEADER: &str = "x-cls-internal-token";
pub const PRINCIPAL_HEADER: &str = "x-cls-principal";

/// `POST /internal/api-keys/resolve`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolveApiKey {
    pub key_hash: String,
}

/// The answer: `200` with this body, or `404` for an unknown or revoked key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedApiKey {
    pub api_key_id: String,
    pub brand_id: String,
    pub scopes: Vec<String>,
}

/// `PUT /internal/operations/{id}`: the gateway answered 202 for this command, so the operation
/// must read `pending` (not 404) until a worker stores its outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterOperation {
    /// [`Principal::scope`](crate::Principal::scope) of the sender.
    pub principal: String,
}

/// `POST /internal/license-keys/lookup`: the gateway hashes the pasted key, so the key itself
/// never travels further.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LookupKey {
    pub key_hash: String,
}

/// `POST /internal/license-keys/validate`: the key as its hash, the rest normalized.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValidateKey {
    /// `None` when the presented key cannot be a key at all (it is then simply not found).
    pub key_hash: Option<String>,
    pub product: Option<String>,
    pub instance_id: Option<String>,
}
