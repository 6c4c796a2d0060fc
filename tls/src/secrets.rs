//! Secrets at rest: sealed with ChaCha20-Poly1305 under a key kept in a
//! 0600 file, bound to what they belong to (the AAD: a tenant's row, a
//! bridge session's host name), so a ciphertext copied elsewhere does not
//! open. The control plane seals tenant secrets with it, the bridge its
//! session cookies.
//!
//! Rotation: a box holds the current key and any previous ones. It seals
//! with the current key and opens with whichever key fits; ciphertexts
//! carry no key id (the wire format predates rotation), so opening tries
//! the keys in order, current first.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Length of a secrets key, in bytes.
pub const KEY_LEN: usize = 32;

/// What a key id is the HMAC of, under the key itself.
const KEY_ID_LABEL: &[u8] = b"clawplane secrets key id";

struct Key {
    aead: LessSafeKey,
    mac: hmac::Key,
    id: String,
}

impl Key {
    fn new(bytes: &[u8]) -> anyhow::Result<Key> {
        if bytes.len() != KEY_LEN {
            bail!("a secrets key must be exactly {KEY_LEN} bytes");
        }
        let aead = UnboundKey::new(&CHACHA20_POLY1305, bytes).map_err(|_| anyhow::anyhow!("invalid secrets key"))?;
        let mac = hmac::Key::new(hmac::HMAC_SHA256, bytes);
        // 16 bytes: enough to tell keys apart, useless for finding one.
        let id = hex::encode(&hmac::sign(&mac, KEY_ID_LABEL).as_ref()[..16]);
        Ok(Key { aead: LessSafeKey::new(aead), mac, id })
    }
}

pub struct SecretBox {
    /// The current key first, then the previous ones in the order given.
    keys: Vec<Key>,
    rng: SystemRandom,
}

/// Key ids only: never key material.
impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBox").field("key_ids", &self.key_ids().collect::<Vec<_>>()).finish()
    }
}

/// Reads a key file, refusing one that is not exactly [`KEY_LEN`] bytes or
/// that group or others may access; errors name the file.
pub fn read_key_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let metadata =
        std::fs::metadata(path).with_context(|| format!("{}: cannot read the secrets key", path.display()))?;
    if !metadata.is_file() {
        bail!("{}: the secrets key is not a regular file", path.display());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!("{}: the secrets key is open to group or others (mode {mode:o}); chmod 600 it", path.display());
        }
    }
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read the secrets key", path.display()))?;
    if bytes.len() != KEY_LEN {
        bail!(
            "{}: the secrets key must be exactly {KEY_LEN} bytes, not {} (make one with `clawplane secrets new-key`)",
            path.display(),
            bytes.len()
        );
    }
    Ok(bytes)
}

/// Writes a fresh random key to `path` (0600); refuses to replace a file.
pub fn create_key_file(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        bail!("{}: already exists; a key file is never overwritten", path.display());
    }
    let mut fresh = [0u8; KEY_LEN];
    SystemRandom::new().fill(&mut fresh).map_err(|_| anyhow::anyhow!("no randomness"))?;
    crate::files::write_private(path, &fresh)
}

impl SecretBox {
    /// The key in `path`, created (32 random bytes, 0600) if absent.
    pub fn load_or_create(path: &Path) -> anyhow::Result<SecretBox> {
        match std::fs::symlink_metadata(path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => create_key_file(path)?,
            _ => {}
        }
        Self::from_files(path, &[])
    }

    /// The current key from `current`, older ones from `previous`; every
    /// file must exist and pass [`read_key_file`].
    pub fn from_files(current: &Path, previous: &[PathBuf]) -> anyhow::Result<SecretBox> {
        let current = read_key_file(current)?;
        let previous = previous.iter().map(|p| read_key_file(p)).collect::<anyhow::Result<Vec<_>>>()?;
        Self::from_keys(&current, &previous)
    }

    pub fn from_key(bytes: &[u8]) -> anyhow::Result<SecretBox> {
        Self::from_keys(bytes, &[] as &[&[u8]])
    }

    pub fn from_keys(current: &[u8], previous: &[impl AsRef<[u8]>]) -> anyhow::Result<SecretBox> {
        let mut keys = vec![Key::new(current)?];
        for bytes in previous {
            let key = Key::new(bytes.as_ref())?;
            // The same key twice would only cost a failed open.
            if !keys.iter().any(|k| k.id == key.id) {
                keys.push(key);
            }
        }
        Ok(SecretBox { keys, rng: SystemRandom::new() })
    }

    /// The current key's id: HMAC-SHA256(key, "clawplane secrets key id"),
    /// truncated; it names the key without revealing it.
    pub fn key_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Every key's id, the current one first.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    /// HMAC-SHA256 of `data` (after `label`, so one MAC cannot stand for
    /// another) under the key with id `key_id`, if this box holds it: a
    /// fingerprint of a secret that cannot be searched without the key.
    pub fn mac_with(&self, key_id: &str, label: &str, data: &[u8]) -> Option<String> {
        let key = self.keys.iter().find(|k| k.id == key_id)?;
        let mut context = hmac::Context::with_key(&key.mac);
        context.update(label.as_bytes());
        context.update(&[0]);
        context.update(data);
        Some(hex::encode(context.sign().as_ref()))
    }

    /// nonce || ciphertext || tag, under the current key.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| anyhow::anyhow!("no randomness"))?;
        let mut buffer = plaintext.to_vec();
        self.keys[0]
            .aead
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context.as_bytes()), &mut buffer)
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buffer);
        Ok(out)
    }

    /// Opens with the first key that fits.
    pub fn open(&self, context: &str, sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            bail!("sealed secret is truncated");
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        for key in &self.keys {
            let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| anyhow::anyhow!("bad nonce"))?;
            // A failed open leaves the buffer unspecified: a fresh copy per key.
            let mut buffer = body.to_vec();
            if let Ok(plain) = key.aead.open_in_place(nonce, Aad::from(context.as_bytes()), &mut buffer) {
                return Ok(plain.to_vec());
            }
        }
        bail!("sealed secret does not open (wrong key or tampered)")
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
    fn rotation_opens_old_secrets_and_seals_with_the_new_key() {
        let (old, new) = ([1u8; 32], [2u8; 32]);
        let before = SecretBox::from_key(&old).unwrap();
        let sealed_old = before.seal("t/model", b"old secret").unwrap();
        let rotated = SecretBox::from_keys(&new, &[old]).unwrap();
        assert_eq!(rotated.open("t/model", &sealed_old).unwrap(), b"old secret", "sealed under the old key");
        assert_eq!(rotated.key_id(), SecretBox::from_key(&new).unwrap().key_id(), "the new key is current");
        assert_eq!(
            rotated.key_ids().collect::<Vec<_>>(),
            [SecretBox::from_key(&new).unwrap().key_id(), before.key_id()]
        );
        let sealed_new = rotated.seal("t/model", b"new secret").unwrap();
        assert_eq!(SecretBox::from_key(&new).unwrap().open("t/model", &sealed_new).unwrap(), b"new secret");
        assert!(before.open("t/model", &sealed_new).is_err(), "the old key alone cannot open new seals");
        assert!(SecretBox::from_keys(&old, &[new]).unwrap().open("t/model", &sealed_new).is_ok(), "both lists");
        assert!(rotated.open("t/other", &sealed_old).is_err(), "context still binds under every key");
        assert!(SecretBox::from_keys(&new, &[[3u8; 32]]).unwrap().open("t/model", &sealed_old).is_err());
    }

    #[test]
    fn key_ids_and_macs_name_keys_without_showing_them() {
        let sealed_box = SecretBox::from_keys(&[5u8; 32], &[[6u8; 32]]).unwrap();
        let ids: Vec<String> = sealed_box.key_ids().map(String::from).collect();
        assert_eq!(ids[0].len(), 32);
        assert_ne!(ids[0], ids[1]);
        assert!(!ids[0].contains(&hex::encode([5u8; 4])), "no key bytes in the id");
        let mac = sealed_box.mac_with(&ids[1], "admin token", b"t").unwrap();
        assert_ne!(Some(mac), sealed_box.mac_with(&ids[0], "admin token", b"t"), "keyed");
        assert_ne!(sealed_box.mac_with(&ids[0], "admin token", b"t"), sealed_box.mac_with(&ids[0], "jwt", b"t"));
        assert!(sealed_box.mac_with("unknown", "admin token", b"t").is_none());
        let shown = format!("{sealed_box:?}");
        assert!(shown.contains(&ids[0]) && !shown.contains("0505"), "{shown}");
    }

    #[cfg(unix)]
    #[test]
    fn bad_key_files_are_refused_by_name() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("clawplane-secrets-test-{}", std::process::id()));
        crate::files::create_private_dir(&dir).unwrap();
        let file = |name: &str, bytes: &[u8], mode: u32| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        };
        let good = file("good.key", &[9u8; 32], 0o600);
        let cases = [
            (file("short.key", &[9u8; 31], 0o600), "exactly 32 bytes, not 31"),
            (file("long.key", &[9u8; 33], 0o600), "exactly 32 bytes, not 33"),
            (file("hex.key", hex::encode([9u8; 32]).as_bytes(), 0o600), "exactly 32 bytes, not 64"),
            (file("empty.key", b"", 0o600), "exactly 32 bytes, not 0"),
            (file("group.key", &[9u8; 32], 0o640), "open to group or others (mode 640)"),
            (file("world.key", &[9u8; 32], 0o604), "open to group or others (mode 604)"),
            (dir.join("missing.key"), "cannot read"),
            (dir.clone(), "not a regular file"),
        ];
        for (path, expected) in &cases {
            let err = format!("{:#}", SecretBox::from_files(path, &[]).unwrap_err());
            assert!(err.contains(&path.display().to_string()) && err.contains(expected), "{}: {err}", path.display());
            let err = format!("{:#}", SecretBox::from_files(&good, std::slice::from_ref(path)).unwrap_err());
            assert!(err.contains(&path.display().to_string()), "previous key {}: {err}", path.display());
        }
        assert!(SecretBox::from_files(&good, std::slice::from_ref(&good)).is_ok());
        let created = dir.join("created.key");
        let made = SecretBox::load_or_create(&created).unwrap();
        assert_eq!(std::fs::metadata(&created).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(SecretBox::load_or_create(&created).unwrap().key_id(), made.key_id(), "created once, then read");
        assert!(format!("{:#}", create_key_file(&created).unwrap_err()).contains("already exists"));
        std::fs::remove_dir_all(&dir).unwrap();
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
