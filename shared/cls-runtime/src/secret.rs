//! Sealing of secrets at rest: a stored command outcome that contains a new API key or license
//! key is encrypted (ChaCha20-Poly1305) with a key derived from `CLS_SECRET_KEY`.
//!
//! Rotating that key: set the new one as `CLS_SECRET_KEY` and the old one as
//! `CLS_SECRET_KEY_PREVIOUS`. Everything is sealed with the new key from then on; outcomes sealed
//! before still open (a retried request replays its first answer, secret included) until the
//! retention purge has removed them (7 days, `cls_worker::retention`), after which the previous
//! key can go.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::settings::Secret;

const NONCE_LEN: usize = 12;

/// Seals with the configured secret key; opens with it or with the previous one.
#[derive(Clone)]
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
    previous: Option<ChaCha20Poly1305>,
}

#[derive(Debug, thiserror::Error)]
#[error("the sealed value cannot be opened with CLS_SECRET_KEY (nor CLS_SECRET_KEY_PREVIOUS)")]
pub struct OpenError;

impl SecretBox {
    pub fn new(secret_key: &Secret) -> Self {
        SecretBox { cipher: cipher(secret_key), previous: None }
    }

    /// The box of a process: `CLS_SECRET_KEY`, and `CLS_SECRET_KEY_PREVIOUS` for opening only.
    /// Fails if the settings have no `CLS_SECRET_KEY` (only the gateway runs without one).
    pub fn for_settings(settings: &crate::Settings) -> anyhow::Result<Self> {
        let key = settings.secret_key.as_ref().ok_or_else(|| anyhow::anyhow!("CLS_SECRET_KEY is not set"))?;
        Ok(SecretBox { previous: settings.secret_key_previous.as_ref().map(cipher), ..SecretBox::new(key) })
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
        let nonce = Nonce::from_slice(nonce);
        self.cipher
            .decrypt(nonce, ciphertext)
            .or_else(|e| self.previous.as_ref().map_or(Err(e), |previous| previous.decrypt(nonce, ciphertext)))
            .map_err(|_| OpenError)
    }
}

/// SHA-256 turns any configured string of 16+ characters into a 256-bit key.
fn cipher(secret_key: &Secret) -> ChaCha20Poly1305 {
    let key = Sha256::digest(secret_key.expose().as_bytes());
    ChaCha20Poly1305::new(Key::from_slice(key.as_slice()))
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

    #[test]
    fn after_a_rotation_the_previous_key_still_opens_and_only_the_new_one_seals() {
        let old_key = Secret::new("the-old-secret-key");
        let sealed_before = SecretBox::new(&old_key).seal(b"before");
        let mut settings = crate::Settings::local(crate::ServiceKind::Gateway, Secret::new("the-new-secret-key"), Secret::new("internal-token-0123456789"));
        settings.secret_key_previous = Some(old_key.clone());
        let rotated = SecretBox::for_settings(&settings).unwrap();
        assert_eq!(rotated.open(&sealed_before).unwrap(), b"before");
        let sealed_after = rotated.seal(b"after");
        assert!(SecretBox::new(&old_key).open(&sealed_after).is_err(), "new outcomes are sealed with the new key");
        assert_eq!(SecretBox::new(&Secret::new("the-new-secret-key")).open(&sealed_after).unwrap(), b"after");
        // Without the previous key, what was sealed before stays closed.
        settings.secret_key_previous = None;
        assert!(SecretBox::for_settings(&settings).unwrap().open(&sealed_before).is_err());
    }
}
