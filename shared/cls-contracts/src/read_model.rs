//! The documents of the Redis read model (SPEC §4): what the hot reads need, written by the
//! workers (read-your-writes), the projector and cache fills, always through a version
//! compare-and-set. Stored as JSON after the version (`<version>|<json>`), so an operator can
//! read them with `redis-cli`.
//!
//! Times are RFC 3339 strings like everywhere else; statuses are the *stored* ones (the effective
//! status depends on the clock and is computed at read time, so a license past its expiry reads
//! expired before any sweep).

use serde::{Deserialize, Serialize};

use crate::http::{Activation, License};
use crate::internal::ResolvedApiKey;

/// A license key by the hash of the key (validation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum KeyDoc {
    Live(LiveKey),
    /// The key was rotated away: it answers LICENSE_KEY_NOT_FOUND, and no late write revives it.
    Retired,
    /// No key has this hash (a negative entry, kept briefly).
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveKey {
    pub key_id: String,
    pub brand_id: String,
    pub key_hint: String,
    pub licenses: Vec<KeyLicense>,
}

/// A license as validation sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyLicense {
    pub id: String,
    pub product: String,
    /// The stored status.
    pub status: String,
    pub expires_at: Option<String>,
    pub seat_limit: Option<u32>,
    pub seats_used: u32,
    pub created_at: String,
    /// The instance ids holding a seat now (normalized as the domain normalizes them).
    pub instances: Vec<String>,
}

/// A license by id (`GET /v1/licenses/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LicenseDoc {
    Live(Box<LiveLicense>),
    /// No license has this id (a negative entry, kept briefly).
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveLicense {
    /// Only this brand may read it; another brand gets the same 404 as for an unknown id.
    pub brand_id: String,
    /// The license with its *stored* status (see the module docs).
    pub license: License,
    pub activations: Vec<Activation>,
}

/// An API key by the hash of its secret (the gateway's authentication).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ApiKeyDoc {
    Live(ResolvedApiKey),
    Revoked,
    /// No API key has this hash (a negative entry, kept briefly).
    Unknown,
}

/// Something a command changed that reads must reflect before its 2xx: the read model shows it
/// once the entity's marker holds at least `version`. Stored in the inbox as `<kind>:<id>:<version>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// A license key with everything under it (its licenses and their activations).
    LicenseKey { id: uuid::Uuid, version: i64 },
    ApiKey { id: uuid::Uuid, version: i64 },
}

impl Target {
    pub fn version(&self) -> i64 {
        match self {
            Target::LicenseKey { version, .. } | Target::ApiKey { version, .. } => *version,
        }
    }

    pub fn encode(&self) -> String {
        match self {
            Target::LicenseKey { id, version } => format!("key:{id}:{version}"),
            Target::ApiKey { id, version } => format!("api_key:{id}:{version}"),
        }
    }

    pub fn decode(s: &str) -> Option<Target> {
        let mut parts = s.splitn(3, ':');
        let (kind, id, version) = (parts.next()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
        match kind {
            "key" => Some(Target::LicenseKey { id, version }),
            "api_key" => Some(Target::ApiKey { id, version }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_round_trip() {
        for t in [
            Target::LicenseKey { id: uuid::Uuid::now_v7(), version: 42 },
            Target::ApiKey { id: uuid::Uuid::now_v7(), version: 2 },
        ] {
            assert_eq!(Target::decode(&t.encode()), Some(t));
        }
        assert_eq!(Target::decode("key:nope:1"), None);
        assert_eq!(Target::decode("other:0192f0e0-0000-7000-8000-000000000001:1"), None);
    }

    #[test]
    fn documents_are_tagged_json() {
        let json = serde_json::to_string(&KeyDoc::Retired).unwrap();
        assert_eq!(json, r#"{"state":"retired"}"#);
        let doc = ApiKeyDoc::Live(ResolvedApiKey { api_key_id: "a".into(), brand_id: "b".into(), scopes: vec!["licenses:read".into()] });
        let back: ApiKeyDoc = serde_json::from_str(&serde_json::to_string(&doc).unwrap()).unwrap();
        assert_eq!(back, doc);
    }
}
