//! JSON bodies of the public HTTP API (SPEC §3). Requests are parsed by the gateway; responses are
//! written by the worker that handled the command (and stored as its outcome) or by the query
//! service.

use serde::{Deserialize, Serialize};

/// `POST /v1/admin/brands`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBrandRequest {
    pub slug: String,
    pub name: String,
    pub key_prefix: String,
}

/// `POST /v1/admin/brands/{brand_id}/api-keys`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    pub name: String,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

/// `POST /v1/products`. The seat and duration fields tell "absent" (the default) from `null`
/// (none), so they are `Option<Option<_>>` with `deserialize_with`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProductRequest {
    pub code: String,
    pub name: String,
    #[serde(default, deserialize_with = "present")]
    pub default_seat_limit: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    pub default_duration_days: Option<Option<i64>>,
}

/// Maps a present field (even `null`) to `Some(..)`, so absent stays `None`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Brand {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub key_prefix: String,
    pub created_at: String,
}

/// An API key as listed: never the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub brand_id: String,
    pub name: String,
    pub display_prefix: String,
    pub scopes: Vec<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// The one response that shows an API key's secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyCreated {
    pub id: String,
    pub brand_id: String,
    pub name: String,
    pub api_key: String,
    pub display_prefix: String,
    pub scopes: Vec<String>,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: String,
    pub code: String,
    pub name: String,
    pub default_seat_limit: Option<u32>,
    pub default_duration_days: Option<u32>,
    pub created_at: String,
}

/// A page of a listing: `{items, next_cursor}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// `202 Accepted` for a command still running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    pub operation_id: String,
}

/// `GET /v1/operations/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    pub id: String,
    pub status: OperationStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<OperationResponse>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationStatus {
    Pending,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationResponse {
    pub status: u16,
    pub body: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_and_null_are_different() {
        let absent: CreateProductRequest = serde_json::from_str(r#"{"code":"a","name":"A"}"#).unwrap();
        assert_eq!(absent.default_seat_limit, None);
        let null: CreateProductRequest =
            serde_json::from_str(r#"{"code":"a","name":"A","default_seat_limit":null}"#).unwrap();
        assert_eq!(null.default_seat_limit, Some(None));
        let five: CreateProductRequest =
            serde_json::from_str(r#"{"code":"a","name":"A","default_seat_limit":5}"#).unwrap();
        assert_eq!(five.default_seat_limit, Some(Some(5)));
    }
}
