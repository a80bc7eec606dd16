//! Snapshots (Postgres) → documents (Redis): the one place that decides what the read model
//! holds for a license key or an API key, used alike by the workers, the projector, cache fills
//! and the Postgres fallback (which answers from these documents without storing them).

use cls_contracts::format_time;
use cls_contracts::http::{Activation, License};
use cls_contracts::internal::ResolvedApiKey;
use cls_contracts::read_model::{ApiKeyDoc, KeyDoc, KeyLicense, LicenseDoc, LiveKey, LiveLicense};
use cls_store::read_model::{ApiKeySelector, ApiKeySnapshot, KeySelector, KeySnapshot, SnapshotLicense};
use uuid::Uuid;

use crate::keys::Keys;

/// One compare-and-set write: `key` takes `<version>|<json>` unless it holds a version as high.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub key: String,
    pub version: i64,
    pub json: String,
    /// Expiry in milliseconds; 0 = none.
    pub ttl_ms: u64,
}

/// A cancelled license holds no seats (SPEC §3), even before its activations are released.
fn seats(l: &SnapshotLicense) -> u32 {
    if l.status == "cancelled" { 0 } else { l.activations.len() as u32 }
}

fn key_license(l: &SnapshotLicense) -> KeyLicense {
    KeyLicense {
        id: l.id.to_string(),
        product: l.product.clone(),
        status: l.status.clone(),
        expires_at: l.expires_at.map(format_time),
        seat_limit: l.seat_limit.map(|n| n as u32),
        seats_used: seats(l),
        created_at: format_time(l.created_at),
        instances: if l.status == "cancelled" { Vec::new() } else { l.activations.iter().map(|a| a.instance_id.clone()).collect() },
    }
}

/// The key document of a snapshot (validation).
pub fn key_doc(s: &KeySnapshot) -> KeyDoc {
    KeyDoc::Live(LiveKey {
        key_id: s.key_id.to_string(),
        brand_id: s.brand_id.to_string(),
        key_hint: s.key_hint.clone(),
        licenses: s.licenses.iter().map(key_license).collect(),
    })
}

/// The document of one license of a snapshot (`GET /v1/licenses/{id}`); status as stored.
pub fn license_doc(s: &KeySnapshot, l: &SnapshotLicense) -> LicenseDoc {
    let seats_used = seats(l);
    let seat_limit = l.seat_limit.map(|n| n as u32);
    LicenseDoc::Live(Box::new(LiveLicense {
        brand_id: s.brand_id.to_string(),
        license: License {
            id: l.id.to_string(),
            license_key_id: s.key_id.to_string(),
            key_hint: s.key_hint.clone(),
            product: l.product.clone(),
            status: l.status.clone(),
            expires_at: l.expires_at.map(format_time),
            seat_limit,
            seats_used,
            seats_remaining: seat_limit.map(|n| n.saturating_sub(seats_used)),
            created_at: format_time(l.created_at),
            updated_at: format_time(l.updated_at),
            version: l.version,
        },
        activations: if l.status == "cancelled" { Vec::new() } else { l.activations.iter().map(activation).collect() },
    }))
}

fn activation(a: &cls_store::read_model::SnapshotActivation) -> Activation {
    Activation {
        id: a.id.to_string(),
        instance_id: a.instance_id.clone(),
        instance_name: a.instance_name.clone(),
        activated_at: format_time(a.activated_at),
        last_seen_at: format_time(a.last_seen_at),
    }
}

pub fn api_key_doc(s: &ApiKeySnapshot) -> ApiKeyDoc {
    if s.revoked_at.is_some() {
        ApiKeyDoc::Revoked
    } else {
        ApiKeyDoc::Live(ResolvedApiKey { api_key_id: s.id.to_string(), brand_id: s.brand_id.to_string(), scopes: s.scopes.clone() })
    }
}

fn json<T: serde::Serialize>(doc: &T) -> String {
    serde_json::to_string(doc).expect("documents always serialize")
}

/// Every write that brings a key's documents to its snapshot: the key by hash, each license by
/// id, a tombstone per retired hash, and the key's marker (what operations compare against).
pub fn key_writes(keys: &Keys, s: &KeySnapshot) -> Vec<Write> {
    let live = |key: String, json: String| Write { key, version: s.rm_version, json, ttl_ms: 0 };
    let mut writes = vec![live(keys.key(&s.key_hash), json(&key_doc(s)))];
    writes.extend(s.licenses.iter().map(|l| live(keys.license(l.id), json(&license_doc(s, l)))));
    writes.extend(
        s.retired
            .iter()
            .map(|(hash, version)| Write { key: keys.key(hash), version: *version, json: json(&KeyDoc::Retired), ttl_ms: 0 }),
    );
    writes.push(live(keys.key_marker(s.key_id), String::new()));
    writes
}

pub fn api_key_writes(keys: &Keys, s: &ApiKeySnapshot) -> Vec<Write> {
    vec![
        Write { key: keys.api_key(&s.key_hash), version: s.version, json: json(&api_key_doc(s)), ttl_ms: 0 },
        Write { key: keys.api_key_marker(s.id), version: s.version, json: String::new(), ttl_ms: 0 },
    ]
}

/// The writes that bring the read model to a key lookup's result: the key's documents, or a
/// negative entry where the lookup named a hash or a license that does not exist.
pub fn for_key(keys: &Keys, snapshot: Option<&KeySnapshot>, selector: KeySelector<'_>, negative_ttl_ms: u64) -> Vec<Write> {
    match (snapshot, selector) {
        (Some(s), _) => key_writes(keys, s),
        (None, KeySelector::Hash(hash)) => vec![negative(keys.key(hash.as_str()), &KeyDoc::Unknown, negative_ttl_ms)],
        (None, KeySelector::License(id)) => vec![negative(keys.license(id), &LicenseDoc::Unknown, negative_ttl_ms)],
        (None, KeySelector::Id(_)) => Vec::new(),
    }
}

/// The writes that bring the read model to an API-key lookup's result (see [`for_key`]).
pub fn for_api_key(keys: &Keys, snapshot: Option<&ApiKeySnapshot>, selector: ApiKeySelector<'_>, negative_ttl_ms: u64) -> Vec<Write> {
    match (snapshot, selector) {
        (Some(s), _) => api_key_writes(keys, s),
        (None, ApiKeySelector::Hash(hash)) => vec![negative(keys.api_key(hash.as_str()), &ApiKeyDoc::Unknown, negative_ttl_ms)],
        (None, ApiKeySelector::Id(_)) => Vec::new(),
    }
}

/// A negative entry: version 0, so any real document replaces it; it expires by itself.
pub fn negative<T: serde::Serialize>(key: String, doc: &T, ttl_ms: u64) -> Write {
    Write { key, version: 0, json: json(doc), ttl_ms }
}

/// The license with this id in a snapshot.
pub fn license_of(s: &KeySnapshot, id: Uuid) -> Option<LicenseDoc> {
    s.licenses.iter().find(|l| l.id == id).map(|l| license_doc(s, l))
}
