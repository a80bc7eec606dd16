//! Crockford base32: the alphabet of generated license keys and API keys.
//!
//! Crockford's alphabet leaves out I, L, O and U, so a generated key never contains a
//! character that a person could misread as another; `LicenseKey::parse` relies on that to map
//! the look-alikes back (O→0, I/L→1) without ever changing a key we generated.

/// The 32 symbols, in value order.
pub(crate) const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Encodes `bytes` as upper-case Crockford base32, 5 bits per symbol, most significant first.
/// Callers pass a byte count that is a multiple of 5 (10 bytes → 16 symbols, 25 → 40), so every
/// symbol carries exactly 5 random bits and no padding or bias appears.
pub(crate) fn encode(bytes: &[u8]) -> String {
    debug_assert!(
        bytes.len().is_multiple_of(5),
        "Crockford input must be a multiple of 5 bytes"
    );
    let mut out = String::with_capacity(bytes.len() * 8 / 5);
    let mut buffer: u16 = 0;
    let mut bits = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u16::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[usize::from((buffer >> bits) & 0x1f)]));
        }
        // Keep only the bits not yet emitted, so the buffer never overflows.
        buffer &= (1 << bits) - 1;
    }
    out
}

/// Maps a character a person may have typed for a Crockford symbol to that symbol:
/// `O` reads as `0`, `I` and `L` as `1`. Everything else is returned unchanged.
pub(crate) fn fold_look_alike(c: u8) -> u8 {
    match c {
        b'O' => b'0',
        b'I' | b'L' => b'1',
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_table() {
        let cases: &[(&[u8], &str)] = &[
            (&[0; 5], "00000000"),
            (&[0xff; 5], "ZZZZZZZZ"),
            // 0x08 0x42 0x10 0x84 0x21 = 00001 00001 00001 ... : eight ones.
            (&[0x08, 0x42, 0x10, 0x84, 0x21], "11111111"),
            // Bits 00000 00001 00010 00011 00100 00101 00110 00111.
            (&[0x00, 0x44, 0x32, 0x14, 0xc7], "01234567"),
        ];
        for (input, want) in cases {
            assert_eq!(encode(input), *want, "input {input:?}");
        }
    }

    #[test]
    fn alphabet_has_no_look_alikes() {
        for c in [b'I', b'L', b'O', b'U'] {
            assert!(!ALPHABET.contains(&c));
        }
        for &c in ALPHABET {
            assert_eq!(fold_look_alike(c), c, "a real symbol must never be folded");
        }
    }
}
