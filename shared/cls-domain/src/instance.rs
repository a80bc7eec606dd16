//! Instance ids: what one activation occupies a seat for (a site URL, a hostname, a machine id).
//!
//! Seats are counted per distinct instance, so two spellings of one site must be one id, or a
//! customer re-activating `https://Site.example/` after `https://site.example` would burn a
//! second seat. SPEC §2 lists the URL normalizations; everything that is not an `http(s)` URL
//! is opaque to us and kept as given (after trimming). The normalization is written by hand,
//! not with a URL crate, because it must be exactly these rules and nothing more (a full URL
//! parser would also resolve `..`, punycode hosts, re-encode the path, …, and any change in its
//! behaviour would silently split existing activations).

use crate::error::FieldError;
use crate::text::text_newtype;

/// Longest accepted instance id, in characters.
const MAX_CHARS: usize = 255;

/// A normalized instance id, 1-255 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(String);

impl InstanceId {
    /// Trimmed; 1-255 chars after trimming; no control chars. A URL (scheme `http` or `https`,
    /// case-insensitive) has scheme and host lower-cased, the scheme's default port (`:80` /
    /// `:443`) dropped, any query (`?...`) and fragment (`#...`) dropped, and trailing `/`s
    /// dropped, so `"https://A.com/"` == `"https://a.com"`; path case is kept;
    /// `"https://a.com:8443/x/"` becomes `"https://a.com:8443/x"`. A URL must name a host and
    /// must not contain whitespace (a real site URL never does, and allowing it would let
    /// trimming after normalization change the id). Anything else is kept as given.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return Err(FieldError::new("must not be empty"));
        }
        let too_long = || FieldError::new(format!("must be at most {MAX_CHARS} characters"));
        if trimmed.chars().count() > MAX_CHARS {
            return Err(too_long());
        }
        if trimmed.chars().any(char::is_control) {
            return Err(FieldError::new("must not contain control characters"));
        }
        let normalized = match split_http_scheme(trimmed) {
            Some((scheme, rest)) => normalize_url(scheme, rest)?,
            None => trimmed.to_owned(),
        };
        // Unicode lower-casing of the host can lengthen it (e.g. `İ` → `i̇`), so check again.
        if normalized.chars().count() > MAX_CHARS {
            return Err(too_long());
        }
        Ok(Self(normalized))
    }
}
text_newtype!(InstanceId);

/// The lower-cased scheme and what follows `://`, if `s` starts with `http://` or `https://`
/// in any case.
fn split_http_scheme(s: &str) -> Option<(&'static str, &str)> {
    ["https", "http"].into_iter().find_map(|scheme| {
        let lead_len = scheme.len() + 3;
        // `get` rather than slicing: the input may have a multi-byte character at that offset.
        let lead = s.get(..lead_len)?;
        // Compare bytes: a multi-byte character inside `lead` (`hTtpſ://`) is simply no match.
        let (name, sep) = lead.as_bytes().split_at(scheme.len());
        let matches = name.eq_ignore_ascii_case(scheme.as_bytes()) && sep == b"://";
        matches.then(|| (scheme, &s[lead_len..]))
    })
}

/// Normalizes `rest`, the part of an `http(s)` URL after `scheme://`.
fn normalize_url(scheme: &str, rest: &str) -> Result<String, FieldError> {
    if rest.chars().any(char::is_whitespace) {
        return Err(FieldError::new("a URL must not contain spaces"));
    }
    // The query or fragment starts at the first `?` or `#`, even inside what looks like the
    // authority (`https://a.com?x=/y`): drop it before splitting anything else.
    let rest = &rest[..rest.find(['?', '#']).unwrap_or(rest.len())];
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));

    // Userinfo (`user:pw@`) is not part of the host and keeps its case.
    let (userinfo, host_port) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    // The port is after the last `:`, but not inside an IPv6 literal like `[::1]`.
    let search_from = if host_port.starts_with('[') {
        host_port.find(']').map_or(0, |close| close + 1)
    } else {
        0
    };
    let (host, port) = match host_port[search_from..].rfind(':') {
        Some(colon) => {
            let colon = search_from + colon;
            (&host_port[..colon], Some(&host_port[colon + 1..]))
        }
        None => (host_port, None),
    };
    // A host is a name or an IPv6 literal in brackets. Anything else (empty, a stray `:` or
    // bracket) is rejected rather than kept, because dropping an empty port from `a::` would
    // leave `a:`, which parses differently the second time.
    let host_ok = if host.starts_with('[') {
        host.len() > 2 && host.ends_with(']')
    } else {
        !host.is_empty() && !host.contains([':', '[', ']'])
    };
    if !host_ok {
        return Err(FieldError::new("a URL must name a valid host"));
    }

    let default_port = if scheme == "https" { "443" } else { "80" };
    // An empty port (`a.com:`) means the default too (RFC 3986 §6.2.3); leading zeros do not
    // change the number, so `:0443` is still the default.
    let keep_port = port.filter(|p| {
        let is_default =
            p.bytes().all(|b| b.is_ascii_digit()) && p.trim_start_matches('0') == default_port;
        !(p.is_empty() || is_default)
    });

    // All trailing slashes go, not just one, so that parsing the result again changes nothing.
    let path = path.trim_end_matches('/');

    let mut out = String::with_capacity(scheme.len() + 3 + rest.len());
    out.push_str(scheme);
    out.push_str("://");
    out.push_str(userinfo);
    out.push_str(&host.to_lowercase());
    if let Some(port) = keep_port {
        out.push(':');
        out.push_str(port);
    }
    out.push_str(path);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        let cases: &[(&str, &str)] = &[
            // From SPEC §2 and the type's documentation.
            ("https://A.com/", "https://a.com"),
            ("https://a.com", "https://a.com"),
            ("https://Site.example/", "https://site.example"),
            ("https://a.com:8443/x/", "https://a.com:8443/x"),
            // Scheme case, default ports, query and fragment.
            (
                "HTTPS://WWW.Example.COM/Shop/",
                "https://www.example.com/Shop",
            ),
            ("Http://example.com:80/", "http://example.com"),
            ("http://example.com:443", "http://example.com:443"),
            ("https://example.com:443/a", "https://example.com/a"),
            ("https://example.com:0443", "https://example.com"),
            ("https://example.com:", "https://example.com"),
            ("https://example.com:80", "https://example.com:80"),
            (
                "https://example.com/a/b/?x=1#top",
                "https://example.com/a/b",
            ),
            ("https://example.com?x=/y", "https://example.com"),
            ("https://example.com#/", "https://example.com"),
            ("https://example.com//", "https://example.com"),
            ("https://example.com/A//", "https://example.com/A"),
            // Userinfo keeps its case; IPv6 literals keep their colons.
            ("https://User@EXAMPLE.com/", "https://User@example.com"),
            ("http://[::1]:80/", "http://[::1]"),
            ("http://[FE80::1]:8080/x", "http://[fe80::1]:8080/x"),
            ("https://[::1]", "https://[::1]"),
            // Trimming.
            ("  https://a.com/ \n", "https://a.com"),
            // Not an http(s) URL: kept as given after trimming.
            ("  MacBook-Pro.local ", "MacBook-Pro.local"),
            ("My Laptop", "My Laptop"),
            ("ftp://A.com/", "ftp://A.com/"),
            ("https:/a.com/", "https:/a.com/"),
            ("HTTPSX://a.com/", "HTTPSX://a.com/"),
            (
                "550e8400-e29b-41d4-a716-446655440000",
                "550e8400-e29b-41d4-a716-446655440000",
            ),
            ("é://A/", "é://A/"),
        ];
        for &(input, want) in cases {
            let got = InstanceId::parse(input).map(InstanceId::into_inner);
            assert_eq!(got.as_deref(), Ok(want), "input {input:?}");
        }
    }

    #[test]
    fn rejections() {
        let cases: &[(&str, &str)] = &[
            ("", "must not be empty"),
            ("  \t ", "must not be empty"),
            ("host\u{0}name", "must not contain control characters"),
            ("line\nbreak", "must not contain control characters"),
            ("https://a.com/my site", "a URL must not contain spaces"),
            ("https://", "a URL must name a valid host"),
            ("https:///path", "a URL must name a valid host"),
            ("https://:443/", "a URL must name a valid host"),
            ("https://user@/", "a URL must name a valid host"),
            ("http://::?", "a URL must name a valid host"),
            ("http://a:b:c/", "a URL must name a valid host"),
            ("http://[::1/", "a URL must name a valid host"),
            ("http://[]:80", "a URL must name a valid host"),
            ("http://a]b.com", "a URL must name a valid host"),
        ];
        for &(input, want) in cases {
            let got = InstanceId::parse(input).map_err(|e| e.message);
            assert_eq!(got, Err(want.to_owned()), "input {input:?}");
        }
    }

    #[test]
    fn length_is_counted_in_characters_after_trimming() {
        assert!(InstanceId::parse(&format!("  {}  ", "é".repeat(255))).is_ok());
        assert_eq!(
            InstanceId::parse(&"x".repeat(256)).unwrap_err().message,
            "must be at most 255 characters"
        );
        // Over-long input is rejected even if normalization would shorten it.
        let long_query = format!("https://a.com/?{}", "q".repeat(300));
        assert!(InstanceId::parse(&long_query).is_err());
    }

    /// A URL that normalizes to `https?://<host><port><path>` with random noise added.
    fn noisy_url() -> impl Strategy<Value = (String, String)> {
        (
            prop::bool::ANY,
            "[a-z0-9-]{1,20}(\\.[a-z]{2,6}){1,2}",
            prop::option::of(1000u16..9999),
            "(/[A-Za-z0-9._~-]{1,10}){0,3}",
            prop::collection::vec(any::<bool>(), 32),
            prop::bool::ANY,
            "[/]{0,3}",
            prop::option::of("[?#][a-z=&/?#]{0,10}"),
        )
            .prop_map(
                |(https, host, port, path, caps, default_port, slashes, tail)| {
                    let scheme = if https { "https" } else { "http" };
                    let port_text = port.map(|p| format!(":{p}")).unwrap_or_default();
                    let canonical = format!("{scheme}://{host}{port_text}{path}");
                    let shout = |s: &str| -> String {
                        s.chars()
                            .zip(caps.iter().cycle())
                            .map(|(c, &up)| if up { c.to_ascii_uppercase() } else { c })
                            .collect()
                    };
                    let noisy_port = match (port, default_port) {
                        (Some(_), _) => port_text.clone(),
                        (None, true) => {
                            if https {
                                ":443".into()
                            } else {
                                ":80".into()
                            }
                        }
                        (None, false) => String::new(),
                    };
                    let noisy = format!(
                        " {}://{}{noisy_port}{path}{slashes}{}\t",
                        shout(scheme),
                        shout(&host),
                        tail.unwrap_or_default()
                    );
                    (noisy, canonical)
                },
            )
    }

    proptest! {
        #[test]
        fn url_noise_normalizes_away((noisy, canonical) in noisy_url()) {
            let id = InstanceId::parse(&noisy).unwrap();
            prop_assert_eq!(id.as_str(), canonical.as_str());
        }

        #[test]
        fn parse_is_idempotent(
            s in "\\PC{0,260}|(?i:https?)://[A-Za-z0-9.:@\\[\\]/?#%-]{0,40}|[ A-Za-z0-9./:-]{0,60}",
        ) {
            if let Ok(id) = InstanceId::parse(&s) {
                prop_assert_eq!(InstanceId::parse(id.as_str()).unwrap(), id);
            }
        }

        #[test]
        fn non_urls_are_kept_after_trimming(s in "[A-Za-z0-9 ._-]{1,255}") {
            let trimmed = s.trim();
            prop_assume!(!trimmed.is_empty());
            let id = InstanceId::parse(&s).unwrap();
            prop_assert_eq!(id.as_str(), trimmed);
        }
    }
}
