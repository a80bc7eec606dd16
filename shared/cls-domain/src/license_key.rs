//! License keys: the secret a customer types into a product, and its stored hash (SPEC §2).
//!
//! A key is stored only as the SHA-256 of its *normalized* form, so normalization is part of the
//! key's identity: every path that turns text into a key (customer input, brand import, our own
//! generator) goes through the same `normalize`, or lookups would silently miss.
//!
//! The key text is a secret. `LicenseKey` has no `Display`, its `Debug` prints no key text, and
//! the only way to read the text is the explicitly named `expose`.

use crate::brand::KeyPrefix;
use crate::crockford;
use crate::error::FieldError;
use sha2::{Digest, Sha256};
use std::fmt;

/// Shortest accepted key, in characters. Short enough for keys imported from older systems,
/// long enough that a key is never a trivially guessable word.
const MIN_CHARS: usize = 8;
/// Longest accepted key, in characters.
const MAX_CHARS: usize = 64;
/// Random symbols in a generated key (16 × 5 bits = 80 bits).
const RANDOM_SYMBOLS: usize = 16;
/// Random bytes drawn for a generated key: exactly the 80 bits the 16 symbols encode.
const RANDOM_BYTES: usize = RANDOM_SYMBOLS * 5 / 8;

/// A normalized license key. Equal keys have equal hashes, whatever the customer typed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LicenseKey(String);

impl LicenseKey {
    /// A customer-typed or stored key: trimmed, upper-cased, 8-64 chars of A-Z 0-9 '-' (after
    /// upper-casing). If it has the generated shape `PREFIX-XXXX-XXXX-XXXX-XXXX` (PREFIX
    /// `[A-Z0-9]{2,8}`, X = 4 chars each), then inside the 16 chars after the prefix 'O' reads as
    /// '0' and 'I'/'L' as '1' (Crockford), so a typo still matches.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        normalize(s)
            .map(Self)
            .ok_or_else(|| FieldError::new("must be 8-64 characters of A-Z, 0-9 and '-'"))
    }

    /// An imported key from a brand migrating from another system: 8-64 chars of A-Z a-z 0-9
    /// '-' (after trimming), then normalized exactly like [`LicenseKey::parse`] so a customer
    /// typing the key in any case still finds it. Two imported keys that differ only in case
    /// are therefore the same key; the store's uniqueness on the hash reports the clash.
    pub fn parse_import(s: &str) -> Result<Self, FieldError> {
        normalize(s)
            .map(Self)
            .ok_or_else(|| FieldError::new("must be 8-64 characters of A-Z, a-z, 0-9 and '-'"))
    }

    /// A new key: the brand's prefix, then 16 Crockford base32 symbols (80 bits) from the given
    /// CSPRNG, as `PREFIX-XXXX-XXXX-XXXX-XXXX`. The bound is `CryptoRng` so a predictable
    /// generator cannot be passed by accident; callers pass `&mut rand::rng()`.
    pub fn generate<R: rand::CryptoRng + ?Sized>(prefix: &KeyPrefix, rng: &mut R) -> Self {
        let mut bytes = [0u8; RANDOM_BYTES];
        rng.fill_bytes(&mut bytes);
        let symbols = crockford::encode(&bytes);
        let mut key = String::with_capacity(prefix.as_str().len() + RANDOM_SYMBOLS + 4);
        key.push_str(prefix.as_str());
        for group in symbols.as_bytes().chunks(4) {
            key.push('-');
            // Crockford symbols are ASCII, so every 4-byte chunk is valid UTF-8.
            key.extend(group.iter().map(|&b| char::from(b)));
        }
        // The alphabet has no O/I/L, so the key is already in normal form.
        debug_assert_eq!(normalize(&key).as_deref(), Some(key.as_str()));
        Self(key)
    }

    /// The full key, for the one response that shows it (creation or rotation).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the normalized key: what the store keeps and looks up by.
    pub fn hash(&self) -> KeyHash {
        KeyHash::digest(self.0.as_bytes())
    }

    /// A hint safe to show after creation: `RM-…-7F3K` for a generated-shape key (prefix and
    /// last 4 symbols), `…7F3K` for any other key. Four symbols (20 bits) let support tell a
    /// customer's keys apart without weakening the key meaningfully.
    pub fn hint(&self) -> String {
        let last4 = &self.0[self.0.len() - 4..];
        match self.generated_prefix() {
            Some(prefix) => format!("{prefix}-…-{last4}"),
            None => format!("…{last4}"),
        }
    }

    /// The `PREFIX` part if the key has the generated shape `PREFIX-XXXX-XXXX-XXXX-XXXX`,
    /// `None` for other (imported) keys. An imported key may happen to have this shape too.
    pub fn generated_prefix(&self) -> Option<&str> {
        split_generated(&self.0).map(|(prefix, _)| prefix)
    }
}

impl fmt::Debug for LicenseKey {
    /// Prints no key text, so a key inside a logged struct or a panic message stays secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LicenseKey(…)")
    }
}

/// Trims, upper-cases (ASCII only: `ı` must not become `I`), checks the 8-64 `[A-Z0-9-]`
/// shape, and folds Crockford look-alikes in the random part of a generated-shape key.
/// `None` when the shape is wrong. Accepting lower case here is what makes `parse` and
/// `parse_import` agree on every input.
fn normalize(s: &str) -> Option<String> {
    let mut key = s.trim().to_ascii_uppercase().into_bytes();
    let shaped = (MIN_CHARS..=MAX_CHARS).contains(&key.len())
        && key
            .iter()
            .all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-');
    if !shaped {
        return None;
    }
    // Only the random part is folded: the prefix is the brand's, and `KeyPrefix` may contain
    // O, I or L (e.g. `OIL`); folding it would change which brand the key names.
    let start = split_generated_bytes(&key).map(|prefix_len| prefix_len + 1);
    if let Some(start) = start {
        for b in &mut key[start..] {
            *b = crockford::fold_look_alike(*b);
        }
    }
    // Every byte is ASCII by the shape check above.
    String::from_utf8(key).ok()
}

/// If `key` has the generated shape, its prefix and the rest (`XXXX-XXXX-XXXX-XXXX`).
fn split_generated(key: &str) -> Option<(&str, &str)> {
    split_generated_bytes(key.as_bytes()).map(|n| (&key[..n], &key[n + 1..]))
}

/// The prefix length if `key` (already upper-case `[A-Z0-9-]`) is
/// `[A-Z0-9]{2,8}-XXXX-XXXX-XXXX-XXXX` with each `X` in `[A-Z0-9]`.
fn split_generated_bytes(key: &[u8]) -> Option<usize> {
    let mut parts = key.split(|&b| b == b'-');
    let prefix = parts.next()?;
    let alnum = |part: &[u8]| part.iter().all(u8::is_ascii_alphanumeric);
    let prefix_ok = (2..=8).contains(&prefix.len()) && alnum(prefix);
    let groups: Vec<&[u8]> = parts.collect();
    let groups_ok = groups.len() == 4 && groups.iter().all(|g| g.len() == 4 && alnum(g));
    (prefix_ok && groups_ok).then_some(prefix.len())
}

/// A lower-case hex SHA-256 digest (64 characters): how license keys and API keys are stored.
///
/// Not a secret in itself (a hash of an 80-bit key cannot be reversed), so it prints normally.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(String);

impl KeyHash {
    /// Hashes `bytes` with SHA-256.
    pub(crate) fn digest(bytes: &[u8]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = Sha256::digest(bytes);
        let mut hex = String::with_capacity(64);
        for byte in digest.iter() {
            hex.push(char::from(HEX[usize::from(byte >> 4)]));
            hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        Self(hex)
    }

    /// A stored hash read back: 64 hex digits. Upper-case digits are accepted and lower-cased,
    /// so a hash copied from a tool that prints upper case still compares equal.
    pub fn from_hex(s: &str) -> Result<Self, FieldError> {
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(s.to_ascii_lowercase()))
        } else {
            Err(FieldError::new("must be 64 hexadecimal digits"))
        }
    }

    /// The 64 lower-case hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 lower-case hex digits, owned.
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn prefix(s: &str) -> KeyPrefix {
        KeyPrefix::parse(s).unwrap()
    }

    #[test]
    fn parse_table() {
        let cases: &[(&str, Option<&str>)] = &[
            // Generated shape: look-alikes folded in the random part only.
            ("RM-7Q2M-ABCD-EFGH-7F3K", Some("RM-7Q2M-ABCD-EFGH-7F3K")),
            ("  rm-7q2m-abcd-efgh-7f3k\n", Some("RM-7Q2M-ABCD-EFGH-7F3K")),
            ("RM-OOOO-IIII-LLLL-oil0", Some("RM-0000-1111-1111-0110")),
            ("OIL-O1LI-0000-0000-0000", Some("OIL-0111-0000-0000-0000")),
            (
                "ABCDEFGH-OOOO-OOOO-OOOO-OOOO",
                Some("ABCDEFGH-0000-0000-0000-0000"),
            ),
            // Not the generated shape: kept as typed (upper-cased), no folding.
            ("LEGACY-KEY-OIL", Some("LEGACY-KEY-OIL")),
            (
                "ABCDEFGHI-OOOO-OOOO-OOOO-OOOO",
                Some("ABCDEFGHI-OOOO-OOOO-OOOO-OOOO"),
            ),
            ("RM-OOOO-OOOO-OOOO-OOOOO", Some("RM-OOOO-OOOO-OOOO-OOOOO")),
            ("R-OOOO-OOOO-OOOO-OOOO", Some("R-OOOO-OOOO-OOOO-OOOO")),
            ("oldkey12", Some("OLDKEY12")),
            (&*"A".repeat(64), Some(&*"A".repeat(64))),
            // Rejected.
            ("", None),
            ("short", None),
            ("1234567", None),
            (&*"A".repeat(65), None),
            ("RM 7Q2M ABCD EFGH", None),
            ("RM_7Q2M_ABCD_EFGH", None),
            ("RM-7Q2M-ABCD-EFGH-7F3Ķ", None),
            // Dotless i must not sneak in as I via Unicode upper-casing.
            ("RM-ıııı-AAAA-AAAA-AAAA", None),
        ];
        for &(input, want) in cases {
            let got = LicenseKey::parse(input).ok();
            assert_eq!(
                got.as_ref().map(LicenseKey::expose),
                want,
                "input {input:?}"
            );
        }
    }

    #[test]
    fn import_normalizes_like_parse() {
        for input in ["legacy-Key-0001", "RM-oooo-1111-2222-3333", "abcdefgh"] {
            assert_eq!(
                LicenseKey::parse_import(input).unwrap(),
                LicenseKey::parse(input).unwrap()
            );
        }
        assert_eq!(
            LicenseKey::parse_import("bad key!").unwrap_err().message,
            "must be 8-64 characters of A-Z, a-z, 0-9 and '-'"
        );
    }

    #[test]
    fn generate_has_the_documented_shape() {
        let mut rng = StdRng::seed_from_u64(7);
        let key = LicenseKey::generate(&prefix("RM"), &mut rng);
        let text = key.expose();
        assert_eq!(text.len(), 2 + 4 * 5);
        assert_eq!(key.generated_prefix(), Some("RM"));
        let groups: Vec<&str> = text.split('-').collect();
        assert_eq!(groups.len(), 5);
        for g in &groups[1..] {
            assert_eq!(g.len(), 4);
            assert!(g.bytes().all(|b| crockford::ALPHABET.contains(&b)), "{g}");
        }
    }

    #[test]
    fn generate_accepts_the_thread_rng() {
        let a = LicenseKey::generate(&prefix("WPR"), &mut rand::rng());
        let b = LicenseKey::generate(&prefix("WPR"), &mut rand::rng());
        assert_ne!(a, b);
    }

    #[test]
    fn hint_table() {
        let cases = [
            ("RM-7Q2M-ABCD-EFGH-7F3K", "RM-…-7F3K"),
            ("legacy-key-0001", "…0001"),
            ("ABCDEFGH", "…EFGH"),
        ];
        for (input, want) in cases {
            assert_eq!(
                LicenseKey::parse(input).unwrap().hint(),
                want,
                "input {input:?}"
            );
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let key = LicenseKey::parse("RM-7Q2M-ABCD-EFGH-7F3K").unwrap();
        assert_eq!(format!("{key:?}"), "LicenseKey(…)");
        assert_eq!(format!("{:?}", Some(&key)), "Some(LicenseKey(…))");
    }

    #[test]
    fn hash_is_sha256_of_the_normalized_key() {
        // Known vector: SHA-256("abc").
        assert_eq!(
            KeyHash::digest(b"abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let typed = LicenseKey::parse(" rm-7q2m-abcd-efgh-7f3k ").unwrap();
        assert_eq!(typed.hash(), KeyHash::digest(b"RM-7Q2M-ABCD-EFGH-7F3K"));
    }

    #[test]
    fn key_hash_from_hex_table() {
        let lower = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let cases: &[(&str, Option<&str>)] = &[
            (lower, Some(lower)),
            (&*lower.to_uppercase(), Some(lower)),
            (&lower[1..], None),
            (&*format!("{lower}0"), None),
            (&*lower.replace('a', "g"), None),
            ("", None),
        ];
        for &(input, want) in cases {
            let got = KeyHash::from_hex(input).ok();
            assert_eq!(got.as_ref().map(KeyHash::as_str), want, "input {input:?}");
        }
    }

    /// A generated key as a customer might retype it: any case, look-alikes for 0 and 1,
    /// surrounding whitespace.
    fn retyped(key: &str, choices: &[u8]) -> String {
        let (prefix, rest) = key.split_once('-').unwrap();
        let rest: String = rest
            .chars()
            .zip(choices.iter().cycle())
            .map(|(c, &pick)| {
                let c = match (c, pick % 3) {
                    ('0', 0) => 'O',
                    ('1', 0) => 'I',
                    ('1', 1) => 'L',
                    (c, _) => c,
                };
                if pick >= 128 {
                    c.to_ascii_lowercase()
                } else {
                    c
                }
            })
            .collect();
        format!(" \t{prefix}-{rest}\n")
    }

    proptest! {
        #[test]
        fn a_generated_key_always_parses_to_itself(seed in any::<u64>(), p in "[A-Z0-9]{2,8}") {
            let key = LicenseKey::generate(&prefix(&p), &mut StdRng::seed_from_u64(seed));
            prop_assert_eq!(LicenseKey::parse(key.expose()).unwrap(), key.clone());
            prop_assert_eq!(LicenseKey::parse_import(key.expose()).unwrap(), key.clone());
            prop_assert_eq!(key.generated_prefix(), Some(p.as_str()));
            let hint_start = format!("{p}-…-");
            prop_assert!(key.hint().starts_with(&hint_start));
        }

        #[test]
        fn crockford_look_alikes_map_to_the_same_hash(
            seed in any::<u64>(),
            p in "[A-Z0-9]{2,8}",
            choices in proptest::collection::vec(any::<u8>(), 1..32),
        ) {
            let key = LicenseKey::generate(&prefix(&p), &mut StdRng::seed_from_u64(seed));
            let typed = retyped(key.expose(), &choices);
            prop_assert_eq!(LicenseKey::parse(&typed).unwrap().hash(), key.hash());
        }

        #[test]
        fn normalization_is_idempotent(s in "[ a-zA-Z0-9-]{0,70}|\\PC{0,70}") {
            if let Ok(key) = LicenseKey::parse(&s) {
                prop_assert_eq!(LicenseKey::parse(key.expose()).unwrap(), key);
            }
        }

        #[test]
        fn generated_shape_with_look_alikes_is_idempotent(
            s in "[A-Za-z0-9]{2,8}-[OILoil01A-Z]{4}-[OILoil01A-Z]{4}-[OILoil01A-Z]{4}-[OILoil01A-Z]{4}",
        ) {
            let key = LicenseKey::parse(&s).unwrap();
            let rest = key.expose().split_once('-').unwrap().1;
            prop_assert!(!rest.contains(['O', 'I', 'L']));
            prop_assert_eq!(LicenseKey::parse(key.expose()).unwrap(), key);
        }

        #[test]
        fn hash_is_64_lower_hex(s in "[A-Za-z0-9-]{8,64}") {
            let hash = LicenseKey::parse_import(&s).unwrap().hash();
            prop_assert_eq!(hash.as_str().len(), 64);
            prop_assert!(hash.as_str().bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            prop_assert_eq!(KeyHash::from_hex(hash.as_str()).unwrap(), hash);
        }
    }
}
