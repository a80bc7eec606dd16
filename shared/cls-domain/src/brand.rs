//! Brand identity: the tenant's slug, its license-key prefix and its display name (SPEC §2).
//!
//! The slug and the prefix are identifiers that must be unique across brands, so they are
//! checked strictly and never rewritten: `"RankMath"` is rejected as a slug rather than quietly
//! becoming `"rankmath"`, which might already belong to someone else.

use crate::error::FieldError;
use crate::text::{self, text_newtype};

/// A brand's URL-safe identifier, e.g. `rankmath`: 2-40 characters of `a-z`, `0-9` and `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BrandSlug(String);

impl BrandSlug {
    /// Accepts exactly `[a-z0-9-]{2,40}`; no trimming, no lower-casing.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        text::strict_ascii(
            s,
            2,
            40,
            |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-',
            "must be 2-40 characters of a-z, 0-9 and '-'",
        )
        .map(Self)
    }
}
text_newtype!(BrandSlug);

/// The start of every license key generated for a brand, e.g. `RM` in `RM-7Q2M-…`:
/// 2-8 characters of `A-Z` and `0-9`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    /// Accepts exactly `[A-Z0-9]{2,8}`; no trimming, no upper-casing.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        text::strict_ascii(
            s,
            2,
            8,
            |b| b.is_ascii_uppercase() || b.is_ascii_digit(),
            "must be 2-8 characters of A-Z and 0-9",
        )
        .map(Self)
    }
}
text_newtype!(KeyPrefix);

/// A brand's human name, e.g. `Rank Math`: trimmed, 1-200 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BrandName(String);

impl BrandName {
    /// Longest accepted name, in characters.
    pub const MAX_CHARS: usize = 200;

    /// Trims surrounding whitespace, then checks length and characters.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        text::label(s, Self::MAX_CHARS).map(Self)
    }
}
text_newtype!(BrandName);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn slug_table() {
        let cases = [
            ("rankmath", true),
            ("wp-rocket", true),
            ("ab", true),
            ("a1-2", true),
            (&*"a".repeat(40), true),
            (&*"a".repeat(41), false),
            ("a", false),
            ("", false),
            ("RankMath", false),
            (" rankmath", false),
            ("rank_math", false),
            ("rank math", false),
            ("räk", false),
        ];
        for (input, ok) in cases {
            assert_eq!(BrandSlug::parse(input).is_ok(), ok, "input {input:?}");
        }
    }

    #[test]
    fn slug_error_states_the_rule() {
        let err = BrandSlug::parse("Nope").unwrap_err();
        assert_eq!(err.message, "must be 2-40 characters of a-z, 0-9 and '-'");
    }

    #[test]
    fn prefix_table() {
        let cases = [
            ("RM", true),
            ("WPR", true),
            ("A1B2C3D4", true),
            ("A1B2C3D4E", false),
            ("R", false),
            ("rm", false),
            ("R-M", false),
            ("RM ", false),
        ];
        for (input, ok) in cases {
            assert_eq!(KeyPrefix::parse(input).is_ok(), ok, "input {input:?}");
        }
    }

    #[test]
    fn name_is_trimmed_and_displayed() {
        let name = BrandName::parse("  Rank Math ").unwrap();
        assert_eq!(name.as_str(), "Rank Math");
        assert_eq!(name.to_string(), "Rank Math");
        assert_eq!(format!("{name:?}"), "BrandName(\"Rank Math\")");
        assert!(BrandName::parse(&"x".repeat(201)).is_err());
        assert!(BrandName::parse(&"x".repeat(200)).is_ok());
        assert_eq!(
            "Imagify".parse::<BrandName>().unwrap().into_inner(),
            "Imagify"
        );
    }

    proptest! {
        #[test]
        fn any_slug_shaped_string_parses_unchanged(s in "[a-z0-9-]{2,40}") {
            let slug = BrandSlug::parse(&s).unwrap();
            prop_assert_eq!(slug.as_str(), s.as_str());
        }

        #[test]
        fn any_prefix_shaped_string_parses_unchanged(s in "[A-Z0-9]{2,8}") {
            let prefix = KeyPrefix::parse(&s).unwrap();
            prop_assert_eq!(prefix.as_str(), s.as_str());
        }

        #[test]
        fn slug_accepts_only_its_alphabet(s in "\\PC{0,45}") {
            let shaped = (2..=40).contains(&s.len())
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            prop_assert_eq!(BrandSlug::parse(&s).is_ok(), shaped);
        }

        #[test]
        fn name_parse_is_idempotent(s in "\\PC{0,210}") {
            if let Ok(name) = BrandName::parse(&s) {
                prop_assert_eq!(BrandName::parse(name.as_str()).unwrap(), name);
            }
        }
    }
}
