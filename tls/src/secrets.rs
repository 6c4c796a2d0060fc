//! Secrets at rest: sealed with ChaCha20-Poly1305 under a key kept in a
//! 0600 file, bound to what they belong to (the AAD: a tenant's row, a
//! bridge session's host name), so a ciphertext copied elsewhere does not
//! open. The control plane seals tenant secrets with it, the bridge its
//! session cookies.
use std::path::Path;

use anyhow::{bail, Context};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

pub struct SecretBox {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl SecretBox {
    /// The key in `path`, created (32 random bytes, 0600) if absent.
    pub fn load_or_create(path: &Path) -> anyhow::Result<SecretBox> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let mut fresh = [0u8; 32];
                SystemRandom::new().fill(&mut fresh).map_err(|_| anyhow::anyhow!("no randomness"))?;
                crate::files::write_private(path, &fresh)?;
                fresh.to_vec()
            }
            Err(err) => return Err(err).with_context(|| format!("{}: cannot read the secrets key", path.display())),
        };
        if bytes.len() != 32 {
            bail!("{}: the secrets key must be exactly 32 bytes", path.display());
        }
        Self::from_key(&bytes)
    }

    pub fn from_key(bytes: &[u8]) -> anyhow::Result<SecretBox> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes).map_err(|_| anyhow::anyhow!("invalid secrets key"))?;
        Ok(SecretBox { key: LessSafeKey::new(key), rng: SystemRandom::new() })
    }

    /// nonce || ciphertext || tag.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| anyhow::anyhow!("no randomness"))?;
        let mut buffer = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context.as_bytes()), &mut buffer)
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buffer);
        Ok(out)
    }

    pub fn open(&self, context: &str, sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            bail!("sealed secret is truncated");
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| anyhow::anyhow!("bad nonce"))?;
        let mut buffer = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buffer)
            .map_err(|_| anyhow::anyhow!("sealed secret does not open (wrong key or tampered)"))?;
        Ok(plain.to_vec())
    }
}

/// What callers may see of a secret: enough to tell two keys apart, never
/// enough to narrow one down. Under 16 characters nothing; 16-23 the last
/// four; from 24 on also the first three (a provider prefix like "sk-").
pub fn hint(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    let tail = || chars[chars.len() - 4..].iter().collect::<String>();
    match chars.len() {
        0..=15 => "****".into(),
        16..=23 => format!("****{}", tail()),
        _ => format!("{}...{}", chars[..3].iter().collect::<String>(), tail()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_in_their_context() {
        let sealed_box = SecretBox::from_key(&[7u8; 32]).unwrap();
        let sealed = sealed_box.seal("tenant-a/model/default", b"sk-secret").unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"sk-secret"));
        assert_eq!(sealed_box.open("tenant-a/model/default", &sealed).unwrap(), b"sk-secret");
        assert!(sealed_box.open("tenant-b/model/default", &sealed).is_err(), "moved to another row");
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(sealed_box.open("tenant-a/model/default", &tampered).is_err());
        assert!(SecretBox::from_key(&[8u8; 32]).unwrap().open("tenant-a/model/default", &sealed).is_err());
    }

    #[test]
    fn hints_show_less_of_shorter_secrets() {
        assert_eq!(hint(""), "****");
        assert_eq!(hint("short"), "****");
        assert_eq!(hint("abcdefghijkl"), "****", "12 characters");
        assert_eq!(hint("abcdefghijklmno"), "****", "15 characters");
        assert_eq!(hint("abcdefghijkl3456"), "****3456", "16 characters");
        assert_eq!(hint("sk-abcdefghijklmnop1234"), "****1234", "23 characters");
        assert_eq!(hint("sk-abcdefghijklmnopq1234"), "sk-...1234", "24 characters");
        assert_eq!(hint("sk-ééééééééééééééééééé€€€€"), "sk-...€€€€", "characters, not bytes");
    }
}
