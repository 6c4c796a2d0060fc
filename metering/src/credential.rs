//! Tenants' proxy credentials: `cpm1.<tenant id>.<mac>` (both parts
//! base64url), the MAC an HMAC-SHA256 of the tenant id under a random key
//! that only the agent can read. The proxy finds the tenant from the
//! credential alone, it is stable across restarts, and a tenant cannot make
//! one for another tenant.
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use clawplane_tls::files::write_private;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

const PREFIX: &str = "cpm1.";
/// Domain separation: the key signs nothing else, but a future use of it
/// must not be able to mint credentials.
const CONTEXT: &[u8] = b"clawplane-meter-credential-v1\0";
/// Longer presented values are refused before any decoding.
const MAX_CREDENTIAL_LEN: usize = 512;

pub(crate) struct Credentials {
    key: [u8; 32],
}

impl Credentials {
    /// Reads `path`, or creates it (0600) with 32 random bytes.
    pub(crate) fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("{}: not a 32-byte meter key", path.display()))?;
                Ok(Credentials { key })
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
                // Written aside and renamed: a crash never leaves a short key
                // that would change every tenant's credential.
                write_private(path, &key)?;
                Ok(Credentials { key })
            }
            Err(err) => Err(anyhow::anyhow!("{}: {err}", path.display())),
        }
    }

    fn mac(&self, tenant_id: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(CONTEXT);
        mac.update(tenant_id.as_bytes());
        mac.finalize().into_bytes().into()
    }

    pub(crate) fn issue(&self, tenant_id: &str) -> String {
        format!("{PREFIX}{}.{}", B64.encode(tenant_id), B64.encode(self.mac(tenant_id)))
    }

    /// The tenant a presented credential was issued to, if it is genuine.
    pub(crate) fn verify(&self, presented: &str) -> Option<String> {
        if presented.len() > MAX_CREDENTIAL_LEN {
            return None;
        }
        let (tenant, mac) = presented.strip_prefix(PREFIX)?.split_once('.')?;
        let tenant = String::from_utf8(B64.decode(tenant).ok()?).ok()?;
        let mac = B64.decode(mac).ok()?;
        let expected = self.mac(&tenant);
        bool::from(expected.as_slice().ct_eq(&mac)).then_some(tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_name_their_tenant_and_cannot_be_forged() {
        let meter = Credentials { key: [7; 32] };
        let other = Credentials { key: [8; 32] };
        let a = meter.issue("tenant-a");
        assert_eq!(meter.verify(&a).as_deref(), Some("tenant-a"));
        assert_eq!(other.verify(&a), None, "another meter's key");
        let b = meter.issue("tenant-b");
        let (a_mac, b_tenant) = (a.rsplit_once('.').unwrap().1, b.split('.').nth(1).unwrap());
        assert_eq!(meter.verify(&format!("cpm1.{b_tenant}.{a_mac}")), None, "a's MAC on b's name");
        for bad in ["", "cpm1.", "cpm1..", "Bearer x", "cpm1.!!.!!", &"x".repeat(4096)] {
            assert_eq!(meter.verify(bad), None, "{bad:.20}");
        }
    }
}
