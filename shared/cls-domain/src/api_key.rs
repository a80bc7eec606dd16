//! Brand API keys: the secret, its scopes and its label (SPEC §2, §3 "Brand (X-API-Key)").
//!
//! A key is shown once at creation and stored as the SHA-256 of its exact text plus a short
//! `display_prefix`, so a leaked database does not leak working credentials. What a caller
//! *sends* is parsed loosely (any visible ASCII): an unknown or malformed key must fail the
//! same way as a revoked one, as "not found" by hash, so the parser does not hint at our format.

use crate::crockford;
use crate::error::FieldError;
use crate::license_key::KeyHash;
use crate::text::{self, text_newtype};
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;

/// The start of every generated API key. A fixed, greppable prefix lets secret scanners (and
/// people) recognise a leaked CLS key.
const GENERATED_PREFIX: &str = "cls_";
/// Random bytes in a generated key: 25 bytes = 200 bits = 40 Crockford symbols.
const RANDOM_BYTES: usize = 25;
/// Longest accepted `X-API-Key` value.
const MAX_SENT_CHARS: usize = 200;
/// Characters of the key kept in clear as `display_prefix`.
const DISPLAY_PREFIX_CHARS: usize = 8;

/// An API key's secret text. `Debug` prints no secret; there is no `Display`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ApiKeySecret(String);

impl ApiKeySecret {
    /// A new key: `cls_` + 40 lower-case Crockford base32 symbols (200 bits) from the CSPRNG.
    pub fn generate<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; RANDOM_BYTES];
        rng.fill_bytes(&mut bytes);
        // Lower case because the key is copied and pasted, never read aloud; it also makes the
        // random part visibly distinct from the `cls_` marker in upper-case-insensitive fonts.
        Self(format!(
            "{GENERATED_PREFIX}{}",
            crockford::encode(&bytes).to_ascii_lowercase()
        ))
    }

    /// What a caller sent in `X-API-Key`: 1-200 visible ASCII characters (`!` to `~`).
    /// Our own format is not required: an unknown key is simply not found by its hash later.
    /// Nothing is trimmed or case-folded, because the hash is of the exact text.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        if (1..=MAX_SENT_CHARS).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(FieldError::new("must be 1-200 visible ASCII characters"))
        }
    }

    /// The full key, for the one response that creates it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 hex of the exact key text: what the store keeps and looks up by.
    pub fn hash(&self) -> KeyHash {
        KeyHash::digest(self.0.as_bytes())
    }

    /// The first 8 characters (the whole key if shorter), stored in clear so a brand can tell
    /// its keys apart in a listing. For a generated key that is `cls_` + 4 random symbols
    /// (20 bits), which leaves 180 secret bits.
    pub fn display_prefix(&self) -> String {
        // Every character is ASCII (checked by `parse`, produced by `generate`).
        self.0.chars().take(DISPLAY_PREFIX_CHARS).collect()
    }
}

impl fmt::Debug for ApiKeySecret {
    /// Prints no key text, so a key inside a logged struct stays secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKeySecret(…)")
    }
}

/// One permission an API key can hold.
///
/// Ordered by [`Scope::as_str`], so a `Scopes` set iterates in the same order as
/// [`Scopes::to_strings`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Read licenses and keys (`licenses:read`).
    LicensesRead,
    /// Provision and change licenses (`licenses:write`); implies `licenses:read`.
    LicensesWrite,
    /// Read across the brand's customers for ecosystem views (`ecosystem:read`).
    EcosystemRead,
}

impl Scope {
    /// Every scope, in `as_str` order.
    pub const ALL: [Scope; 3] = [
        Scope::EcosystemRead,
        Scope::LicensesRead,
        Scope::LicensesWrite,
    ];

    /// The wire name, e.g. `licenses:read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::LicensesRead => "licenses:read",
            Scope::LicensesWrite => "licenses:write",
            Scope::EcosystemRead => "ecosystem:read",
        }
    }

    /// Accepts exactly one of the wire names (case-sensitive, untrimmed: scopes are
    /// identifiers, and a near miss should be reported, not guessed).
    pub fn parse(s: &str) -> Result<Scope, FieldError> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                FieldError::new(
                    "must be one of 'ecosystem:read', 'licenses:read', 'licenses:write'",
                )
            })
    }
}

impl PartialOrd for Scope {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scope {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = FieldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::parse(s)
    }
}

/// The non-empty set of scopes an API key holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scopes(BTreeSet<Scope>);

impl Scopes {
    /// Non-empty, each a known scope name; duplicates are folded. The first unknown name is
    /// reported (by position, not by echoing the caller's text).
    pub fn parse_list(items: &[String]) -> Result<Self, FieldError> {
        if items.is_empty() {
            return Err(FieldError::new("must list at least one scope"));
        }
        let mut set = BTreeSet::new();
        for (i, item) in items.iter().enumerate() {
            let scope = Scope::parse(item)
                .map_err(|e| FieldError::new(format!("item {}: {}", i + 1, e.message)))?;
            set.insert(scope);
        }
        Ok(Self(set))
    }

    /// The scopes of a key created without any: `{licenses:write}`, the brand back office's
    /// everyday need (which implies reading), but not the wider `ecosystem:read`.
    pub fn default_for_new_key() -> Self {
        Self(BTreeSet::from([Scope::LicensesWrite]))
    }

    /// Every scope.
    pub fn all() -> Self {
        Self(Scope::ALL.into_iter().collect())
    }

    /// Whether a request needing `required` may proceed. `licenses:write` implies
    /// `licenses:read`: a key that may change a license may also see it.
    pub fn allows(&self, required: Scope) -> bool {
        self.0.contains(&required)
            || (required == Scope::LicensesRead && self.0.contains(&Scope::LicensesWrite))
    }

    /// The wire names, sorted by name (as stored and as returned by the API).
    pub fn to_strings(&self) -> Vec<String> {
        // `Scope`'s `Ord` is by name, so set order is already name order.
        self.0.iter().map(|s| s.as_str().to_owned()).collect()
    }

    /// The scopes, in name order.
    pub fn iter(&self) -> impl Iterator<Item = Scope> + '_ {
        self.0.iter().copied()
    }
}

/// An API key's label, e.g. `billing prod`: trimmed, 1-100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ApiKeyName(String);

impl ApiKeyName {
    /// Longest accepted name, in characters.
    pub const MAX_CHARS: usize = 100;

    /// Trims surrounding whitespace, then checks length and characters.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        text::label(s, Self::MAX_CHARS).map(Self)
    }
}
text_newtype!(ApiKeyName);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn generate_has_the_documented_shape() {
        let key = ApiKeySecret::generate(&mut StdRng::seed_from_u64(1));
        let text = key.expose();
        assert_eq!(text.len(), 44);
        let random = text.strip_prefix("cls_").unwrap();
        assert!(
            random
                .bytes()
                .all(|b| crockford::ALPHABET.contains(&b.to_ascii_uppercase())
                    && !b.is_ascii_uppercase())
        );
        assert_eq!(key.display_prefix(), &text[..8]);
        assert_ne!(key, ApiKeySecret::generate(&mut rand::rng()));
    }

    #[test]
    fn parse_table() {
        let cases = [
            ("cls_0123456789abcdefghjkmnpqrstvwxyz01234", true),
            ("x", true),
            ("anything-a-brand-sends!~", true),
            (&*"k".repeat(200), true),
            (&*"k".repeat(201), false),
            ("", false),
            (" cls_abc", false),
            ("cls abc", false),
            ("cls_é", false),
            ("cls_\t", false),
        ];
        for (input, ok) in cases {
            assert_eq!(ApiKeySecret::parse(input).is_ok(), ok, "input {input:?}");
        }
    }

    #[test]
    fn hash_is_of_the_exact_text() {
        let a = ApiKeySecret::parse("cls_abc").unwrap();
        let b = ApiKeySecret::parse("CLS_ABC").unwrap();
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash(), KeyHash::digest(b"cls_abc"));
    }

    #[test]
    fn display_prefix_of_short_key_is_whole_key() {
        assert_eq!(ApiKeySecret::parse("abc").unwrap().display_prefix(), "abc");
    }

    #[test]
    fn debug_hides_the_secret() {
        let key = ApiKeySecret::parse("cls_supersecret").unwrap();
        assert_eq!(format!("{key:?}"), "ApiKeySecret(…)");
    }

    #[test]
    fn scope_names_round_trip() {
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()).unwrap(), scope);
            assert_eq!(scope.to_string(), scope.as_str());
        }
        for bad in [
            "",
            "licenses",
            "Licenses:read",
            " licenses:read",
            "licenses:*",
        ] {
            assert!(Scope::parse(bad).is_err(), "input {bad:?}");
        }
    }

    #[test]
    fn parse_list_table() {
        type Case<'a> = (&'a [&'a str], Result<&'a [&'a str], &'a str>);
        let cases: &[Case] = &[
            (&["licenses:read"], Ok(&["licenses:read"])),
            (
                &["licenses:write", "ecosystem:read", "licenses:write"],
                Ok(&["ecosystem:read", "licenses:write"]),
            ),
            (&[], Err("must list at least one scope")),
            (
                &["licenses:read", "admin"],
                Err("item 2: must be one of 'ecosystem:read', 'licenses:read', 'licenses:write'"),
            ),
        ];
        for (input, want) in cases {
            let got = Scopes::parse_list(&strings(input))
                .map(|s| s.to_strings())
                .map_err(|e| e.message);
            let want = want.map(strings).map_err(str::to_owned);
            assert_eq!(got, want, "input {input:?}");
        }
    }

    #[test]
    fn allows_table() {
        use Scope::*;
        let cases: &[(&[Scope], Scope, bool)] = &[
            (&[LicensesWrite], LicensesWrite, true),
            (&[LicensesWrite], LicensesRead, true),
            (&[LicensesWrite], EcosystemRead, false),
            (&[LicensesRead], LicensesRead, true),
            (&[LicensesRead], LicensesWrite, false),
            (&[EcosystemRead], LicensesRead, false),
            (&[EcosystemRead], EcosystemRead, true),
        ];
        for (held, required, want) in cases {
            let scopes = Scopes(held.iter().copied().collect());
            assert_eq!(
                scopes.allows(*required),
                *want,
                "{held:?} needs {required:?}"
            );
        }
    }

    #[test]
    fn default_and_all() {
        assert_eq!(
            Scopes::default_for_new_key().to_strings(),
            ["licenses:write"]
        );
        assert_eq!(
            Scopes::all().iter().collect::<Vec<_>>(),
            [
                Scope::EcosystemRead,
                Scope::LicensesRead,
                Scope::LicensesWrite
            ]
        );
        assert_eq!(
            Scopes::all().to_strings(),
            ["ecosystem:read", "licenses:read", "licenses:write"]
        );
    }

    #[test]
    fn api_key_name() {
        assert_eq!(ApiKeyName::parse(" billing ").unwrap().as_str(), "billing");
        assert!(ApiKeyName::parse(&"n".repeat(101)).is_err());
        assert!(ApiKeyName::parse("").is_err());
    }

    proptest! {
        #[test]
        fn a_generated_secret_always_parses_to_itself(seed in any::<u64>()) {
            let key = ApiKeySecret::generate(&mut StdRng::seed_from_u64(seed));
            let parsed = ApiKeySecret::parse(key.expose()).unwrap();
            prop_assert_eq!(parsed.hash(), key.hash());
            prop_assert!(key.display_prefix().starts_with("cls_"));
        }

        #[test]
        fn parse_accepts_exactly_visible_ascii(s in "\\PC{0,210}|[!-~]{1,200}") {
            let ok = (1..=200).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic());
            prop_assert_eq!(ApiKeySecret::parse(&s).is_ok(), ok);
        }

        #[test]
        fn scopes_round_trip_through_strings(
            picks in proptest::collection::vec(proptest::sample::select(Scope::ALL.to_vec()), 1..6),
        ) {
            let names: Vec<String> = picks.iter().map(|s| s.as_str().to_owned()).collect();
            let scopes = Scopes::parse_list(&names).unwrap();
            let again = Scopes::parse_list(&scopes.to_strings()).unwrap();
            prop_assert_eq!(&again, &scopes);
            let mut sorted = scopes.to_strings();
            sorted.sort();
            prop_assert_eq!(sorted, scopes.to_strings());
        }
    }
}
