//! The event envelope of SPEC §5 and every event payload.
//!
//! On the wire an event is one MessagePack map:
//! `{id, type, schema_version, occurred_at, brand_id, aggregate_id, aggregate_version,
//!   correlation_id, causation_id, data}`. No event ever carries a full license key or API key.

use serde::{Deserialize, Serialize};

/// Major version of the event envelope and payloads.
pub const EVENT_SCHEMA_VERSION: u16 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// UUIDv7; also the AMQP `message_id`. Consumers deduplicate by it.
    pub id: String,
    pub schema_version: u16,
    pub occurred_at: String,
    pub brand_id: Option<String>,
    pub aggregate_id: String,
    /// Consumers order by it (the aggregate's `version` after the change).
    pub aggregate_version: i64,
    /// The request id of the HTTP request that caused the event.
    pub correlation_id: Option<String>,
    /// The command id that caused the event.
    pub causation_id: Option<String>,
    /// `type` and `data`.
    #[serde(flatten)]
    pub event: Event,
}

/// Every event type; the serde tag is the routing key on `<ns>.events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    #[serde(rename = "brand.created")]
    BrandCreated(BrandCreated),
    #[serde(rename = "api_key.created")]
    ApiKeyCreated(ApiKeyCreated),
    #[serde(rename = "api_key.revoked")]
    ApiKeyRevoked(ApiKeyRevoked),
    #[serde(rename = "product.created")]
    ProductCreated(ProductCreated),
    #[serde(rename = "license_key.created")]
    LicenseKeyCreated(LicenseKeyCreated),
    #[serde(rename = "license.provisioned")]
    LicenseProvisioned(LicenseProvisioned),
    #[serde(rename = "license.renewed")]
    LicenseRenewed(LicenseState),
    #[serde(rename = "license.suspended")]
    LicenseSuspended(LicenseState),
    #[serde(rename = "license.resumed")]
    LicenseResumed(LicenseState),
    #[serde(rename = "license.cancelled")]
    LicenseCancelled(LicenseState),
    #[serde(rename = "license.expired")]
    LicenseExpired(LicenseState),
    #[serde(rename = "license.seats_changed")]
    LicenseSeatsChanged(LicenseState),
    #[serde(rename = "license_key.rotated")]
    LicenseKeyRotated(LicenseKeyChanged),
    #[serde(rename = "license_key.transferred")]
    LicenseKeyTransferred(LicenseKeyChanged),
    #[serde(rename = "activation.created")]
    ActivationCreated(ActivationChanged),
    #[serde(rename = "activation.deactivated")]
    ActivationDeactivated(ActivationChanged),
    #[serde(rename = "activation.rejected")]
    ActivationRejected(ActivationRejected),
}

impl Event {
    /// The event type, which is also its routing key.
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::BrandCreated(_) => "brand.created",
            Event::ApiKeyCreated(_) => "api_key.created",
            Event::ApiKeyRevoked(_) => "api_key.revoked",
            Event::ProductCreated(_) => "product.created",
            Event::LicenseKeyCreated(_) => "license_key.created",
            Event::LicenseProvisioned(_) => "license.provisioned",
            Event::LicenseRenewed(_) => "license.renewed",
            Event::LicenseSuspended(_) => "license.suspended",
            Event::LicenseResumed(_) => "license.resumed",
            Event::LicenseCancelled(_) => "license.cancelled",
            Event::LicenseExpired(_) => "license.expired",
            Event::LicenseSeatsChanged(_) => "license.seats_changed",
            Event::LicenseKeyRotated(_) => "license_key.rotated",
            Event::LicenseKeyTransferred(_) => "license_key.transferred",
            Event::ActivationCreated(_) => "activation.created",
            Event::ActivationDeactivated(_) => "activation.deactivated",
            Event::ActivationRejected(_) => "activation.rejected",
        }
    }

    /// Every event type this version of CLS can emit.
    pub const ALL_TYPES: &'static [&'static str] =
        &[
            "brand.created",
            "api_key.created",
            "api_key.revoked",
            "product.created",
            "license_key.created",
            "license.provisioned",
            "license.renewed",
            "license.suspended",
            "license.resumed",
            "license.cancelled",
            "license.expired",
            "license.seats_changed",
            "license_key.rotated",
            "license_key.transferred",
            "activation.created",
            "activation.deactivated",
            "activation.rejected",
        ];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrandCreated {
    pub brand_id: String,
    pub slug: String,
    pub name: String,
    pub key_prefix: String,
    pub created_at: String,
}

/// A new API key; never the secret, only its display prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyCreated {
    pub api_key_id: String,
    pub brand_id: String,
    pub name: String,
    pub display_prefix: String,
    pub scopes: Vec<String>,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRevoked {
    pub api_key_id: String,
    pub brand_id: String,
    pub revoked_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductCreated {
    pub product_id: String,
    pub brand_id: String,
    pub code: String,
    pub name: String,
    pub default_seat_limit: Option<u32>,
    pub default_duration_days: Option<u32>,
    pub created_at: String,
}

/// A new license key: its hint, never the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LicenseKeyCreated {
    pub license_key_id: String,
    pub brand_id: String,
    pub customer_email: String,
    pub key_hint: String,
    pub imported: bool,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LicenseProvisioned {
    pub license_id: String,
    pub license_key_id: String,
    pub brand_id: String,
    pub customer_email: String,
    pub product: String,
    pub status: String,
    pub expires_at: Option<String>,
    pub seat_limit: Option<u32>,
    pub created_at: String,
}

/// A license's state after a lifecycle change (renewed, suspended, resumed, cancelled, expired,
/// seats changed): every such event carries the whole state, so a consumer needs nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LicenseState {
    pub license_id: String,
    pub license_key_id: String,
    pub brand_id: String,
    pub product: String,
    /// The stored status after the change.
    pub status: String,
    pub expires_at: Option<String>,
    pub seat_limit: Option<u32>,
    pub reason: Option<String>,
    /// The status before the change.
    pub previous_status: String,
}

/// A key rotated (new hint) or transferred (new email); never the key itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LicenseKeyChanged {
    pub license_key_id: String,
    pub brand_id: String,
    pub customer_email: String,
    pub key_hint: String,
    pub previous_key_hint: Option<String>,
    pub previous_customer_email: Option<String>,
}

/// A seat taken or freed. `aggregate_id` of the envelope is the license (its version moves).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationChanged {
    pub activation_id: String,
    pub license_id: String,
    pub brand_id: String,
    pub product: String,
    pub instance_id: String,
    pub instance_name: Option<String>,
    pub at: String,
    /// Seats in use after the change.
    pub seats_used: u32,
    /// For a deactivation: `product`, `brand` or `license_cancelled`.
    pub deactivated_by: Option<String>,
}

/// A refused activation (e.g. seat limit reached), for fraud and sales signals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationRejected {
    pub license_id: Option<String>,
    pub brand_id: Option<String>,
    pub product: String,
    pub instance_id: String,
    /// The problem code answered.
    pub code: String,
    pub at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EventEnvelope {
        EventEnvelope {
            id: "0192f0e0-0000-7000-8000-000000000001".into(),
            schema_version: EVENT_SCHEMA_VERSION,
            occurred_at: "2026-11-28T10:00:00.000000Z".into(),
            brand_id: Some("b".into()),
            aggregate_id: "a".into(),
            aggregate_version: 1,
            correlation_id: Some("req".into()),
            causation_id: Some("cmd".into()),
            event: Event::ApiKeyRevoked(ApiKeyRevoked {
                api_key_id: "k".into(),
                brand_id: "b".into(),
                revoked_at: "2026-11-28T10:00:00.000000Z".into(),
            }),
        }
    }

    #[test]
    fn envelope_round_trips_as_a_flat_msgpack_map() {
        let bytes = crate::encode(&sample());
        let back: EventEnvelope = crate::decode(&bytes).unwrap();
        assert_eq!(back, sample());

        // A reader that knows nothing of our types sees the SPEC §5 members at the top level.
        let generic: std::collections::BTreeMap<String, serde::de::IgnoredAny> = rmp_serde::from_slice(&bytes).unwrap();
        let keys: Vec<&str> = generic.keys().map(String::as_str).collect();
        for k in [
            "id", "type", "schema_version", "occurred_at", "brand_id", "aggregate_id",
            "aggregate_version", "correlation_id", "causation_id", "data",
        ] {
            assert!(keys.contains(&k), "missing {k} in {keys:?}");
        }
    }

    #[test]
    fn every_variant_is_listed_in_all_types() {
        let e = sample().event;
        assert!(Event::ALL_TYPES.contains(&e.event_type()));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], e.event_type());
    }
}
