//! The documents of the Redis read model (SPEC §4): what the hot reads need, written by the
//! workers (read-your-writes), the projector and cache fills, always through a version
//! compare-and-set. Stored as JSON after the version (`<version>|<json>`), so an operator can
//! read them with `redis-cli`.
//!
//! Times are RFC 3339 strings like everywhere else; statuses are the *stored* ones (the effective
//! status depends on the clock and is computed at read time, so a license past its expiry reads
//! expired before any sweep).
//!
//! The documents are internally tagged (`{"state":"live",…the variant's fields}`). Their
//! `Serialize` is derived; their `Deserialize` is written below (see [`Tagged`]) so that a
//! document is decoded in one pass over its JSON.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, IgnoredAny, MapAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Deserializer, Serialize};

use crate::http::{Activation, License};
use crate::internal::ResolvedApiKey;

/// A license key by the hash of the key (validation).
#[derive(Debug, Clone, PartialEq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize)]
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

// ---- decoding: one pass ----

/// A document stored as one JSON object: its variant's name under `state`, then the variant's
/// fields, as the derived `Serialize` of an internally tagged enum writes it (tag first).
///
/// Serde's derived decoder for that shape cannot know where the tag is, so it buffers the whole
/// object into an intermediate tree and decodes it a second time: a large part of the key
/// document's decode, itself a quarter of the query service's work per validation
/// (docs/benchmarks.md, proposal 7). Decoding through this trait reads the tag first and hands
/// the rest of the object straight to the variant's own decoder. An object whose tag is not first (written by hand, say) still decodes,
/// through a buffered path, and unknown fields are ignored as before.
trait Tagged: Sized {
    /// The variant names, as `Serialize` writes them.
    type State: DeserializeOwned;

    /// The document of variant `state`, decoded from the object's other fields.
    fn from_fields<'de, D: Deserializer<'de>>(state: Self::State, fields: D) -> Result<Self, D::Error>;
}

fn deserialize_tagged<'de, T: Tagged, D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
    deserializer.deserialize_map(TaggedVisitor(PhantomData))
}

struct TaggedVisitor<T>(PhantomData<T>);

/// The first key of a document's object.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum FirstKey {
    State,
    Other(String),
}

impl<'de, T: Tagged> Visitor<'de> for TaggedVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with a \"state\" field")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        match map.next_key()? {
            Some(FirstKey::State) => {
                let state = map.next_value()?;
                T::from_fields(state, MapAccessDeserializer::new(map))
            }
            Some(FirstKey::Other(first)) => buffered(first, map),
            None => Err(de::Error::missing_field("state")),
        }
    }
}

/// The slow path, for an object whose first key is `first` rather than the tag: buffer the
/// object, take the tag out, decode the rest.
fn buffered<'de, T: Tagged, A: MapAccess<'de>>(first: String, mut map: A) -> Result<T, A::Error> {
    let mut fields = serde_json::Map::new();
    fields.insert(first, map.next_value()?);
    while let Some((key, value)) = map.next_entry()? {
        fields.insert(key, value);
    }
    let state = fields.remove("state").ok_or_else(|| de::Error::missing_field("state"))?;
    let state = T::State::deserialize(state).map_err(de::Error::custom)?;
    T::from_fields(state, serde_json::Value::Object(fields)).map_err(de::Error::custom)
}

/// A variant without fields: whatever else the object holds is skipped, as the derived decoder did.
fn without_fields<'de, T, D: Deserializer<'de>>(doc: T, fields: D) -> Result<T, D::Error> {
    IgnoredAny::deserialize(fields)?;
    Ok(doc)
}

/// The variant names of [`KeyDoc`]: a variant added there is added here, with a golden encoding in the tests.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum KeyState {
    Live,
    Retired,
    Unknown,
}

impl Tagged for KeyDoc {
    type State = KeyState;

    fn from_fields<'de, D: Deserializer<'de>>(state: KeyState, fields: D) -> Result<Self, D::Error> {
        match state {
            KeyState::Live => LiveKey::deserialize(fields).map(KeyDoc::Live),
            KeyState::Retired => without_fields(KeyDoc::Retired, fields),
            KeyState::Unknown => without_fields(KeyDoc::Unknown, fields),
        }
    }
}

/// The variant names of [`LicenseDoc`]: a variant added there is added here, with a golden encoding in the tests.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum LicenseState {
    Live,
    Unknown,
}

impl Tagged for LicenseDoc {
    type State = LicenseState;

    fn from_fields<'de, D: Deserializer<'de>>(state: LicenseState, fields: D) -> Result<Self, D::Error> {
        match state {
            LicenseState::Live => Box::<LiveLicense>::deserialize(fields).map(LicenseDoc::Live),
            LicenseState::Unknown => without_fields(LicenseDoc::Unknown, fields),
        }
    }
}

/// The variant names of [`ApiKeyDoc`]: a variant added there is added here, with a golden encoding in the tests.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ApiKeyState {
    Live,
    Revoked,
    Unknown,
}

impl Tagged for ApiKeyDoc {
    type State = ApiKeyState;

    fn from_fields<'de, D: Deserializer<'de>>(state: ApiKeyState, fields: D) -> Result<Self, D::Error> {
        match state {
            ApiKeyState::Live => ResolvedApiKey::deserialize(fields).map(ApiKeyDoc::Live),
            ApiKeyState::Revoked => without_fields(ApiKeyDoc::Revoked, fields),
            ApiKeyState::Unknown => without_fields(ApiKeyDoc::Unknown, fields),
        }
    }
}

/// Each document decodes through [`deserialize_tagged`] (a blanket impl over [`Tagged`] is not
/// allowed for serde's trait).
macro_rules! deserialize_through_tag {
    ($($doc:ty),+) => {$(
        impl<'de> Deserialize<'de> for $doc {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserialize_tagged(deserializer)
            }
        }
    )+};
}

deserialize_through_tag!(KeyDoc, LicenseDoc, ApiKeyDoc);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Activation, License};

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

    // The encodings written before decoding was hand-written (captured from the derived code):
    // documents like these are in Redis now, so they must keep decoding, and writers must keep
    // writing exactly these bytes (older readers decode them too).
    const LIVE_KEY: &str = r#"{"state":"live","key_id":"0192f0e0-0000-7000-8000-00000000000a","brand_id":"0192f0e0-0000-7000-8000-00000000000b","key_hint":"RM-…-7QXZ","licenses":[{"id":"0192f0e0-0000-7000-8000-000000000001","product":"rankmath","status":"valid","expires_at":"2031-01-02T03:04:05.678901Z","seat_limit":5,"seats_used":2,"created_at":"2025-01-02T03:04:05.000001Z","instances":["host-1.example.com","C:\\Sites\\\"quoted\""]},{"id":"0192f0e0-0000-7000-8000-000000000002","product":"content-ai","status":"cancelled","expires_at":null,"seat_limit":null,"seats_used":0,"created_at":"2025-02-03T04:05:06.000000Z","instances":[]}]}"#;
    const LIVE_LICENSE: &str = r#"{"state":"live","brand_id":"0192f0e0-0000-7000-8000-00000000000b","license":{"id":"0192f0e0-0000-7000-8000-000000000001","license_key_id":"0192f0e0-0000-7000-8000-00000000000a","key_hint":"RM-…-7QXZ","product":"rankmath","status":"valid","expires_at":"2031-01-02T03:04:05.678901Z","seat_limit":5,"seats_used":1,"seats_remaining":4,"created_at":"2025-01-02T03:04:05.000001Z","updated_at":"2025-03-04T05:06:07.000000Z","version":7},"activations":[{"id":"0192f0e0-0000-7000-8000-0000000000a1","instance_id":"host-1.example.com","instance_name":null,"activated_at":"2025-03-04T05:06:07.000000Z","last_seen_at":"2025-03-05T05:06:07.000000Z"}]}"#;
    const LIVE_API_KEY: &str = r#"{"state":"live","api_key_id":"0192f0e0-0000-7000-8000-0000000000c1","brand_id":"0192f0e0-0000-7000-8000-00000000000b","scopes":["licenses:read","licenses:write"]}"#;

    fn live_key() -> KeyDoc {
        KeyDoc::Live(LiveKey {
            key_id: "0192f0e0-0000-7000-8000-00000000000a".into(),
            brand_id: "0192f0e0-0000-7000-8000-00000000000b".into(),
            key_hint: "RM-…-7QXZ".into(),
            licenses: vec![
                KeyLicense {
                    id: "0192f0e0-0000-7000-8000-000000000001".into(),
                    product: "rankmath".into(),
                    status: "valid".into(),
                    expires_at: Some("2031-01-02T03:04:05.678901Z".into()),
                    seat_limit: Some(5),
                    seats_used: 2,
                    created_at: "2025-01-02T03:04:05.000001Z".into(),
                    instances: vec!["host-1.example.com".into(), "C:\\Sites\\\"quoted\"".into()],
                },
                KeyLicense {
                    id: "0192f0e0-0000-7000-8000-000000000002".into(),
                    product: "content-ai".into(),
                    status: "cancelled".into(),
                    expires_at: None,
                    seat_limit: None,
                    seats_used: 0,
                    created_at: "2025-02-03T04:05:06.000000Z".into(),
                    instances: vec![],
                },
            ],
        })
    }

    fn live_license() -> LicenseDoc {
        LicenseDoc::Live(Box::new(LiveLicense {
            brand_id: "0192f0e0-0000-7000-8000-00000000000b".into(),
            license: License {
                id: "0192f0e0-0000-7000-8000-000000000001".into(),
                license_key_id: "0192f0e0-0000-7000-8000-00000000000a".into(),
                key_hint: "RM-…-7QXZ".into(),
                product: "rankmath".into(),
                status: "valid".into(),
                expires_at: Some("2031-01-02T03:04:05.678901Z".into()),
                seat_limit: Some(5),
                seats_used: 1,
                seats_remaining: Some(4),
                created_at: "2025-01-02T03:04:05.000001Z".into(),
                updated_at: "2025-03-04T05:06:07.000000Z".into(),
                version: 7,
            },
            activations: vec![Activation {
                id: "0192f0e0-0000-7000-8000-0000000000a1".into(),
                instance_id: "host-1.example.com".into(),
                instance_name: None,
                activated_at: "2025-03-04T05:06:07.000000Z".into(),
                last_seen_at: "2025-03-05T05:06:07.000000Z".into(),
            }],
        }))
    }

    fn live_api_key() -> ApiKeyDoc {
        ApiKeyDoc::Live(ResolvedApiKey {
            api_key_id: "0192f0e0-0000-7000-8000-0000000000c1".into(),
            brand_id: "0192f0e0-0000-7000-8000-00000000000b".into(),
            scopes: vec!["licenses:read".into(), "licenses:write".into()],
        })
    }

    /// Every variant must encode to its golden bytes and decode back from them.
    fn check_golden<T>(doc: T, golden: &str)
    where
        T: Serialize + DeserializeOwned + PartialEq + fmt::Debug,
    {
        assert_eq!(serde_json::to_string(&doc).unwrap(), golden);
        assert_eq!(serde_json::from_str::<T>(golden).unwrap(), doc);
        assert_eq!(serde_json::from_slice::<T>(golden.as_bytes()).unwrap(), doc);
        let tree: serde_json::Value = serde_json::from_str(golden).unwrap();
        assert_eq!(serde_json::from_value::<T>(tree).unwrap(), doc);
    }

    #[test]
    fn encodings_are_byte_for_byte_unchanged_and_decode() {
        check_golden(live_key(), LIVE_KEY);
        check_golden(KeyDoc::Retired, r#"{"state":"retired"}"#);
        check_golden(KeyDoc::Unknown, r#"{"state":"unknown"}"#);
        check_golden(live_license(), LIVE_LICENSE);
        check_golden(LicenseDoc::Unknown, r#"{"state":"unknown"}"#);
        check_golden(live_api_key(), LIVE_API_KEY);
        check_golden(ApiKeyDoc::Revoked, r#"{"state":"revoked"}"#);
        check_golden(ApiKeyDoc::Unknown, r#"{"state":"unknown"}"#);
    }

    /// The decoders serde derived for these documents before: the reference for the hand-written ones.
    mod derived {
        use super::super::*;

        #[derive(Debug, Deserialize)]
        #[serde(tag = "state", rename_all = "snake_case")]
        pub enum KeyDoc {
            Live(LiveKey),
            Retired,
            Unknown,
        }

        #[derive(Debug, Deserialize)]
        #[serde(tag = "state", rename_all = "snake_case")]
        pub enum LicenseDoc {
            Live(Box<LiveLicense>),
            Unknown,
        }

        #[derive(Debug, Deserialize)]
        #[serde(tag = "state", rename_all = "snake_case")]
        pub enum ApiKeyDoc {
            Live(ResolvedApiKey),
            Revoked,
            Unknown,
        }

        impl From<KeyDoc> for super::KeyDoc {
            fn from(doc: KeyDoc) -> Self {
                match doc {
                    KeyDoc::Live(k) => super::KeyDoc::Live(k),
                    KeyDoc::Retired => super::KeyDoc::Retired,
                    KeyDoc::Unknown => super::KeyDoc::Unknown,
                }
            }
        }

        impl From<LicenseDoc> for super::LicenseDoc {
            fn from(doc: LicenseDoc) -> Self {
                match doc {
                    LicenseDoc::Live(l) => super::LicenseDoc::Live(l),
                    LicenseDoc::Unknown => super::LicenseDoc::Unknown,
                }
            }
        }

        impl From<ApiKeyDoc> for super::ApiKeyDoc {
            fn from(doc: ApiKeyDoc) -> Self {
                match doc {
                    ApiKeyDoc::Live(k) => super::ApiKeyDoc::Live(k),
                    ApiKeyDoc::Revoked => super::ApiKeyDoc::Revoked,
                    ApiKeyDoc::Unknown => super::ApiKeyDoc::Unknown,
                }
            }
        }
    }

    /// The hand-written decoder accepts what the derived one accepted, with the same result, and
    /// refuses what it refused.
    fn decodes_like_derived<New, Old>(json: &str)
    where
        New: DeserializeOwned + PartialEq + fmt::Debug,
        Old: DeserializeOwned + Into<New>,
    {
        let new = serde_json::from_str::<New>(json);
        let old = serde_json::from_str::<Old>(json).map(Into::into);
        match (new, old) {
            (Ok(new), Ok(old)) => assert_eq!(new, old, "{json}"),
            (Err(_), Err(_)) => {}
            (new, old) => panic!("{json}: hand-written {new:?}, derived {old:?}"),
        }
    }

    /// Objects that are not well-formed documents, for any document type.
    const MALFORMED: &[&str] = &[
        r#"{}"#,
        r#"{"state":"dead"}"#,
        r#"{"state":"Live"}"#,
        r#"{"state":1}"#,
        r#"{"state":null}"#,
        r#"{"state":"live"}"#,
        r#"{"key_id":"k"}"#,
        r#"{"state":"unknown"} trailing"#,
        r#"{"state":"unknown","#,
        r#"null"#,
        r#""unknown""#,
        r#"[]"#,
    ];

    #[test]
    fn decoding_matches_the_derived_decoder() {
        let key_cases = [
            LIVE_KEY,
            r#"{"state":"retired"}"#,
            r#"{"state":"unknown"}"#,
            // The tag after the fields, or among them (the buffered path).
            r#"{"key_id":"k","brand_id":"b","key_hint":"h","licenses":[],"state":"live"}"#,
            r#"{"key_id":"k","state":"live","brand_id":"b","key_hint":"h","licenses":[]}"#,
            r#"{"x":{"y":[1,2]},"state":"retired"}"#,
            // Unknown fields are skipped, wherever they are.
            r#"{"state":"live","added_later":{"a":[1]},"key_id":"k","brand_id":"b","key_hint":"h","licenses":[]}"#,
            r#"{"state":"retired","x":[1,{"y":2}],"z":null}"#,
            // A field of the variant missing or of the wrong type.
            r#"{"state":"live","key_id":"k","brand_id":"b","key_hint":"h"}"#,
            r#"{"state":"live","key_id":1,"brand_id":"b","key_hint":"h","licenses":[]}"#,
            r#"{"key_id":1,"brand_id":"b","key_hint":"h","licenses":[],"state":"live"}"#,
            r#"{"key_id":"k","state":"revoked"}"#,
        ];
        for json in key_cases.iter().chain(MALFORMED) {
            decodes_like_derived::<KeyDoc, derived::KeyDoc>(json);
        }
        let license_cases = [
            LIVE_LICENSE,
            r#"{"state":"unknown"}"#,
            r#"{"activations":[],"state":"unknown"}"#,
            r#"{"state":"retired"}"#,
            r#"{"state":"live","brand_id":"b","activations":[]}"#,
        ];
        for json in license_cases.iter().chain(MALFORMED) {
            decodes_like_derived::<LicenseDoc, derived::LicenseDoc>(json);
        }
        let api_key_cases = [
            LIVE_API_KEY,
            r#"{"state":"revoked"}"#,
            r#"{"state":"unknown"}"#,
            r#"{"scopes":[],"brand_id":"b","api_key_id":"a","state":"live"}"#,
            r#"{"state":"live","api_key_id":"a","brand_id":"b"}"#,
            r#"{"state":"retired"}"#,
        ];
        for json in api_key_cases.iter().chain(MALFORMED) {
            decodes_like_derived::<ApiKeyDoc, derived::ApiKeyDoc>(json);
        }
    }

    #[test]
    fn a_document_is_an_object() {
        // The derived decoder also took a sequence (`["retired"]`); `Serialize` never wrote one.
        assert!(serde_json::from_str::<derived::KeyDoc>(r#"["retired"]"#).is_ok());
        assert!(serde_json::from_str::<KeyDoc>(r#"["retired"]"#).is_err());
    }

    /// `cargo test --release -p cls-contracts --lib -- --ignored --nocapture decode_speed`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn decode_speed() {
        const N: u32 = 100_000;
        fn time<T: DeserializeOwned>(what: &str, json: &str) {
            let start = std::time::Instant::now();
            for _ in 0..N {
                std::hint::black_box(serde_json::from_slice::<T>(std::hint::black_box(json.as_bytes())).unwrap());
            }
            println!("{what:>40}: {:>6.0} ns per decode", start.elapsed().as_nanos() as f64 / f64::from(N));
        }
        for _ in 0..3 {
            time::<derived::KeyDoc>("live key, derived", LIVE_KEY);
            time::<KeyDoc>("live key, hand-written", LIVE_KEY);
            time::<derived::KeyDoc>("retired key, derived", r#"{"state":"retired"}"#);
            time::<KeyDoc>("retired key, hand-written", r#"{"state":"retired"}"#);
            time::<derived::LicenseDoc>("live license, derived", LIVE_LICENSE);
            time::<LicenseDoc>("live license, hand-written", LIVE_LICENSE);
            time::<derived::ApiKeyDoc>("live API key, derived", LIVE_API_KEY);
            time::<ApiKeyDoc>("live API key, hand-written", LIVE_API_KEY);
        }
    }
}
