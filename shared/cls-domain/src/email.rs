//! Customer email addresses, normalized so that one customer is one key holder (SPEC §2).
//!
//! This is deliberately not an RFC 5322 validator: it catches typos and garbage (missing `@`,
//! no domain dot, spaces) and makes case and surrounding whitespace irrelevant, which is what
//! license lookups by email need. Deliverability is the email system's business, not ours.

use crate::error::FieldError;
use crate::text::text_newtype;

/// A normalized email address: trimmed, lower-cased, at most 254 characters, exactly one `@`
/// with a non-empty local part, and a domain that contains a dot, has no empty label (so it
/// does not start or end with `.`, nor contain `..`), with no whitespace or control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Email(String);

impl Email {
    /// Longest accepted address, in characters (the SMTP path limit).
    pub const MAX_CHARS: usize = 254;

    /// Normalizes, then checks. The whole address is lower-cased, local part included: RFC
    /// 5321 lets a server treat `Bob@` and `bob@` as different mailboxes, but no real provider
    /// does, and treating them as one customer is what support expects.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let normalized = s.trim().to_lowercase();
        if normalized.is_empty() {
            return Err(FieldError::new("must not be empty"));
        }
        if normalized.chars().count() > Self::MAX_CHARS {
            return Err(FieldError::new(format!(
                "must be at most {} characters",
                Self::MAX_CHARS
            )));
        }
        if normalized
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(FieldError::new(
                "must not contain spaces or control characters",
            ));
        }
        let Some((local, domain)) = normalized.split_once('@') else {
            return Err(FieldError::new("must contain an '@'"));
        };
        if domain.contains('@') {
            return Err(FieldError::new("must contain exactly one '@'"));
        }
        if local.is_empty() {
            return Err(FieldError::new("must have a name before the '@'"));
        }
        // `split('.')` yields an empty label for a leading, trailing or doubled dot.
        if !domain.contains('.') || domain.split('.').any(str::is_empty) {
            return Err(FieldError::new(
                "must have a domain with a dot after the '@', like example.com",
            ));
        }
        Ok(Self(normalized))
    }

    /// The part after the `@`, e.g. `example.com`.
    pub fn domain(&self) -> &str {
        // The `@` is guaranteed by `parse`.
        self.0.split_once('@').map_or("", |(_, d)| d)
    }
}
text_newtype!(Email);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("alice@example.com", Some("alice@example.com")),
            ("  Alice@Example.COM \n", Some("alice@example.com")),
            ("a+tag@sub.example.co.uk", Some("a+tag@sub.example.co.uk")),
            ("a@b.c", Some("a@b.c")),
            ("ÉLODIE@exemple.fr", Some("élodie@exemple.fr")),
            ("", None),
            ("   ", None),
            ("alice", None),
            ("alice@", None),
            ("@example.com", None),
            ("alice@example", None),
            ("alice@.example.com", None),
            ("alice@example.com.", None),
            ("alice@example..com", None),
            ("a@b@example.com", None),
            ("al ice@example.com", None),
            ("alice@exa\tmple.com", None),
            ("alice\u{7}@example.com", None),
        ];
        for &(input, want) in cases {
            let got = Email::parse(input).ok();
            assert_eq!(got.as_ref().map(Email::as_str), want, "input {input:?}");
        }
    }

    #[test]
    fn length_limit_is_254() {
        let domain = "@example.com"; // 12 characters
        let ok = format!("{}{domain}", "a".repeat(254 - domain.len()));
        let too_long = format!("a{ok}");
        assert!(Email::parse(&ok).is_ok());
        assert_eq!(
            Email::parse(&too_long).unwrap_err().message,
            "must be at most 254 characters"
        );
    }

    #[test]
    fn domain_accessor() {
        assert_eq!(
            Email::parse("x@Example.org").unwrap().domain(),
            "example.org"
        );
    }

    proptest! {
        #[test]
        fn parse_is_idempotent(s in "\\PC{0,40}@?\\PC{0,40}") {
            if let Ok(email) = Email::parse(&s) {
                prop_assert_eq!(Email::parse(email.as_str()).unwrap(), email);
            }
        }

        #[test]
        fn case_and_padding_do_not_matter(
            local in "[a-zA-Z0-9._+-]{1,30}",
            domain in "[a-zA-Z0-9-]{1,20}(\\.[a-zA-Z]{2,6}){1,3}",
            pad in "[ \t\n]{0,3}",
        ) {
            let raw = format!("{pad}{local}@{domain}{pad}");
            let email = Email::parse(&raw).unwrap();
            prop_assert_eq!(email.as_str(), format!("{local}@{domain}").to_lowercase());
            prop_assert_eq!(Email::parse(&raw.to_uppercase()).unwrap(), email);
        }
    }
}
