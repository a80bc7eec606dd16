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

/// `POST /v1/licenses` (US1).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionRequest {
    pub customer_email: String,
    pub products: Vec<ProvisionItemRequest>,
    #[serde(default)]
    pub license_key_id: Option<String>,
    #[serde(default)]
    pub new_key: Option<bool>,
    #[serde(default)]
    pub import_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionItemRequest {
    pub code: String,
    #[serde(default, deserialize_with = "present")]
    pub seat_limit: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    pub expires_at: Option<Option<String>>,
}

/// `POST /v1/licenses/{id}/renew` (US2): exactly one of the two.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub extend_days: Option<i64>,
}

/// `POST /v1/licenses/{id}/suspend` and `/cancel`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /v1/licenses/{id}/seats`: `seat_limit` is required, `null` = unlimited.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeatsRequest {
    #[serde(default, deserialize_with = "present")]
    pub seat_limit: Option<Option<i64>>,
}

/// `POST /v1/license-keys/{id}/transfer`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    pub customer_email: String,
}

/// `POST /v1/license-keys/{id}/rotate` answer: the new key, shown only here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RotatedKey {
    pub id: String,
    pub key: String,
    pub key_hint: String,
}

/// `POST /v1/license-keys/{id}/transfer` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferredKey {
    pub id: String,
    pub key_hint: String,
    pub customer_email: String,
}

/// `POST /v1/activations` (US3).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivateRequest {
    pub license_key: String,
    pub product: String,
    pub instance_id: String,
    #[serde(default)]
    pub instance_name: Option<String>,
    /// Free-form, but an object repeating a key is refused ([`crate::strict_json`]).
    #[serde(default, deserialize_with = "crate::strict_json::optional")]
    pub metadata: Option<serde_json::Value>,
}

/// `POST /v1/activations/deactivate` (US5).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeactivateRequest {
    pub license_key: String,
    pub product: String,
    pub instance_id: String,
}

/// `POST /v1/activations` answer (201 new, 200 existing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activated {
    pub activation: ActivationRef,
    pub license: SeatView,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationRef {
    pub id: String,
    pub instance_id: String,
    pub activated_at: String,
}

/// What a product may see of its license: no email, no key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeatView {
    pub product: String,
    pub status: String,
    pub expires_at: Option<String>,
    pub seat_limit: Option<u32>,
    pub seats_used: u32,
    pub seats_remaining: Option<u32>,
}

/// `POST /v1/activations/deactivate` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deactivated {
    pub deactivated: bool,
    pub seats_remaining: Option<u32>,
}

/// `POST /v1/license-keys/lookup`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupRequest {
    pub license_key: String,
}

/// A license as every answer shows it (SPEC §3 "License").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct License {
    pub id: String,
    pub license_key_id: String,
    pub key_hint: String,
    pub product: String,
    /// The effective status.
    pub status: String,
    pub expires_at: Option<String>,
    pub seat_limit: Option<u32>,
    pub seats_used: u32,
    /// Null when unlimited.
    pub seats_remaining: Option<u32>,
    pub created_at: String,
    pub updated_at: String,
    pub version: i64,
}

/// The key part of a provisioning answer; `key` only when this request created the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisionedKey {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub key_hint: String,
    pub customer_email: String,
    pub created: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provisioned {
    pub license_key: ProvisionedKey,
    pub licenses: Vec<License>,
}

/// `GET /v1/licenses/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LicenseDetail {
    #[serde(flatten)]
    pub license: License,
    pub activations: Vec<Activation>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activation {
    pub id: String,
    pub instance_id: String,
    pub instance_name: Option<String>,
    pub activated_at: String,
    pub last_seen_at: String,
}

/// An item of `GET /v1/licenses`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListedLicense {
    #[serde(flatten)]
    pub license: License,
    pub customer_email: String,
}

/// `POST /v1/license-keys/validate` (US4).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateRequest {
    pub license_key: String,
    #[serde(default)]
    pub product: Option<String>,
    #[serde(default)]
    pub instance_id: Option<String>,
}

/// The validation answer (always 200): nothing private, never the email or the full key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    pub valid: bool,
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_hint: Option<String>,
    pub licenses: Vec<ValidatedLicense>,
    pub checked_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidatedLicense {
    pub product: String,
    pub status: String,
    pub valid: bool,
    pub code: String,
    pub expires_at: Option<String>,
    pub seat_limit: Option<u32>,
    pub seats_used: u32,
    pub seats_remaining: Option<u32>,
    /// Only when an instance was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_active: Option<bool>,
}

/// `POST /v1/license-keys/lookup` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LookedUpKey {
    pub id: String,
    pub key_hint: String,
    pub customer_email: String,
    pub created_at: String,
    pub licenses: Vec<License>,
}

/// An item of `GET /v1/ecosystem/licenses` (US6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EcosystemLicense {
    pub brand: String,
    pub product: String,
    pub status: String,
    pub expires_at: Option<String>,
    pub seat_limit: Option<u32>,
    pub seats_used: u32,
    pub key_hint: String,
}

/// An item of `GET /v1/licenses/{id}/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: String,
    pub actor: Actor,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub request_id: Option<String>,
    pub status_before: Option<String>,
    pub status_after: Option<String>,
    pub reason: Option<String>,
    pub at: String,
}

/// Who made a change: `api_key` (with its id), `admin`, `license_key` or `system` (with its name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Actor {
    pub kind: String,
    pub id: Option<String>,
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
