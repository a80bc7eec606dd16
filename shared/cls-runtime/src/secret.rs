//! Sealing of secrets at rest: a stored command outcome that contains a new API key or license
//! key is encrypted (ChaCha20-Poly1305) with a key derived from `CLS_SECRET_KEY`.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::settings::Secret;

const NONCE_LEN: usize = 12;

/// Seals and opens byte strings with the configured secret key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

#[derive(Debug, thiserror::Error)]
#[error("the sealed value cannot be opened with this CLS_SECRET_KEY")]
pub struct OpenError;

impl SecretBox {
    pub fn new(secret_key: &Secret) -> Self {
        // SHA-256 turns any configured string of 16+ characters into a 256-bit key.
        let key = Sha256::digest(secret_key.expose().as_bytes());
        let key = Key::from_slice(key.as_slice());
        SecretBox { cipher: ChaCha20Poly1305::new(key) }
    }

    /// `nonce || ciphertext`, with a fresh random nonce.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext)
            .expect("ChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < NONCE_LEN {
            return Err(OpenError);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher.decrypt(Nonce::from_slice(nonce), ciphertext).map_err(|_| OpenError)
    }
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(***)")
    }
}

/// Compares two secrets without leaking where they differ (compares their SHA-256 digests in
/// constant time).
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    SecretDigest::of(b).matches(a)
}

/// The SHA-256 of a configured secret, taken once, for a check made on every request (the
/// query service's internal credential): each check then hashes only what was presented.
#[derive(Clone)]
pub struct SecretDigest([u8; 32]);

impl SecretDigest {
    pub fn of(secret: &[u8]) -> SecretDigest {
        SecretDigest(Sha256::digest(secret).into())
    }

    /// Whether `presented` is the secret, in constant time over the digests.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let presented = Sha256::digest(presented);
        self.0.iter().zip(presented.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretDigest(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_round_trips_and_hides_the_plaintext() {
        let b = SecretBox::new(&Secret::new("a-local-secret-key"));
        let sealed = b.seal(b"api_key=cls_secret");
        assert!(!sealed.windows(10).any(|w| w == b"cls_secret"));
        assert_eq!(b.open(&sealed).unwrap(), b"api_key=cls_secret");
    }

    #[test]
    fn a_digest_matches_only_its_secret() {
        let digest = SecretDigest::of(b"internal-token-0123456789");
        assert!(digest.matches(b"internal-token-0123456789"));
        assert!(!digest.matches(b"internal-token-012345678"));
        assert!(!digest.matches(b""));
        assert!(same_secret(b"abc", b"abc") && !same_secret(b"abc", b"abd"));
    }

    #[test]
    fn another_key_cannot_open() {
        let sealed = SecretBox::new(&Secret::new("a-local-secret-key")).seal(b"x");
        assert!(SecretBox::new(&Secret::new("another-secret-key")).open(&sealed).is_err());
    }
}
