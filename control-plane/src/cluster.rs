//! One cluster identity for every replica on one database. Replicas on one
//! PostgreSQL must share the CA (hosts pin it, any replica signs their
//! certificates), the secrets key (a secret sealed through one replica is
//! opened by another), the admin token, the shared secret and the SSO (JWT)
//! settings (a caller must not be let in by one replica and turned away by
//! the next). The first replica writes their fingerprints to the cluster
//! record; every replica compares at start and refuses to serve, saying
//! what differs, rather than serve beside replicas it disagrees with.
//!
//! Fingerprints: the CA's is the SHA-256 of its certificate; the secrets
//! key's is its key id; the rest are MACs under the cluster's secrets key,
//! so the row neither shows a secret nor lets one be guessed offline.
//!
//! Rotation: a replica whose current key is new but which lists the
//! cluster's key among its previous keys moves the record to its key; the
//! old key is retired, and a replica still on it is refused.
//!
//! On SQLite one replica serves the database (a lock), so its settings are
//! the cluster's: it rewrites what changed, the secrets key excepted (a key
//! that cannot open what is sealed is refused there too).
use std::path::Path;

use anyhow::{bail, Context};
use clawplane_identity::config::{AuthConfig, JwtConfig, JwtKeySource};
use clawplane_tls::secrets::SecretBox;
use subtle::ConstantTimeEq;

use crate::store::{ClusterRecord, Store};

/// Ids of retired keys kept in the record; older ones are forgotten.
const MAX_RETIRED: usize = 32;

/// What this replica would write or must match.
pub struct Replica<'a> {
    /// `sha256:<hex>` of the CA certificate ([`crate::pki::Pki::ca_sha256`]).
    pub ca_sha256: String,
    pub secrets: &'a SecretBox,
    /// Where the current key came from, for messages.
    pub secrets_key_file: &'a Path,
    pub auth: &'a AuthConfig,
    /// One replica only (SQLite): its settings win, the key excepted.
    pub single: bool,
}

/// One thing the record and this replica disagree on.
struct Difference {
    what: &'static str,
    message: String,
}

impl Replica<'_> {
    /// This replica's fingerprints, MACs under the key with `key_id`.
    fn record(&self, key_id: &str, retired_key_ids: Vec<String>) -> anyhow::Result<ClusterRecord> {
        let mac = |label: &str, data: &[u8]| {
            self.secrets
                .mac_with(key_id, label, data)
                .context("cluster: the secrets key to fingerprint with is missing")
        };
        let admin_token = self.auth.admin_token.as_deref().context("cluster: no admin token")?;
        Ok(ClusterRecord {
            ca_sha256: self.ca_sha256.clone(),
            secrets_key_id: key_id.to_string(),
            retired_key_ids,
            admin_token_mac: mac("admin token", admin_token.as_bytes())?,
            shared_secret_mac: mac("shared secret", self.auth.shared_secret.as_deref().unwrap_or_default().as_bytes())?,
            jwt_mac: mac("jwt", &jwt_description(self.auth.jwt.as_ref())?)?,
        })
    }

    /// What differs between `stored` and this replica, but for the key:
    /// the MACs are taken under the stored record's key.
    fn differences(&self, stored: &ClusterRecord) -> anyhow::Result<Vec<Difference>> {
        let mine = self.record(&stored.secrets_key_id, Vec::new())?;
        let same = |a: &str, b: &str| bool::from(a.as_bytes().ct_eq(b.as_bytes()));
        let mut differences = Vec::new();
        if mine.ca_sha256 != stored.ca_sha256 {
            differences.push(Difference {
                what: "the CA",
                message: format!(
                    "the CA ({}) is not the cluster's ({}): give this replica the cluster's [pki] ca_cert_file and \
                     ca_key_file",
                    short(&mine.ca_sha256),
                    short(&stored.ca_sha256)
                ),
            });
        }
        if !same(&mine.admin_token_mac, &stored.admin_token_mac) {
            differences.push(Difference {
                what: "the admin token",
                message: "the admin token is not the cluster's: give this replica the cluster's admin_token \
                          (CLAWPLANE_ADMIN_TOKEN; a generated one is in the first replica's <data_dir>/admin-token)"
                    .into(),
            });
        }
        if !same(&mine.shared_secret_mac, &stored.shared_secret_mac) {
            differences.push(Difference {
                what: "the shared secret",
                message: "the shared secret is not the cluster's: give this replica the cluster's shared_secret \
                          (CLAWPLANE_SHARED_SECRET), or none if the cluster has none"
                    .into(),
            });
        }
        if !same(&mine.jwt_mac, &stored.jwt_mac) {
            differences.push(Difference {
                what: "the JWT settings",
                message: "the JWT settings are not the cluster's: give this replica the cluster's [jwt] section \
                          (issuer, audience, algorithms, the key: hs256_secret, public_key_file's contents or \
                          jwks_file's path, and the claim names)"
                    .into(),
            });
        }
        Ok(differences)
    }

    fn key_refusal(&self, stored: &ClusterRecord) -> String {
        let key_id = self.secrets.key_id();
        let file = self.secrets_key_file.display();
        if stored.retired_key_ids.iter().any(|id| id == key_id) {
            format!(
                "the secrets key (id {key_id}, {file}) was rotated out: the cluster's key is now id {}; give this \
                 replica the cluster's current key as [secrets] key_file, and this one in previous_key_files",
                stored.secrets_key_id
            )
        } else {
            format!(
                "the secrets key (id {key_id}, {file}) is not the cluster's (id {}), and no key in \
                 [secrets] previous_key_files is: give this replica the cluster's [secrets] key_file (or, rotating \
                 keys, the cluster's current key in previous_key_files)",
                stored.secrets_key_id
            )
        }
    }
}

/// Checks this replica against the cluster record, writing it if it is
/// the first, and moving it to this replica's key when that is a rotation.
pub async fn join(store: &Store, replica: &Replica<'_>) -> anyhow::Result<()> {
    let key_id = replica.secrets.key_id();
    // A lost race (another replica rotated or rewrote the record in
    // between) is looked at again.
    for _ in 0..5 {
        let candidate = replica.record(key_id, Vec::new())?;
        let (stored, inserted) = store.claim_cluster(&candidate).await.context("cluster: cannot read the record")?;
        if inserted {
            tracing::info!(
                ca = %candidate.ca_sha256,
                secrets_key_id = key_id,
                "wrote the cluster record: every replica on this database must share this CA, secrets key, admin \
                 token, shared secret and JWT settings"
            );
            return Ok(());
        }
        let retired = stored.retired_key_ids.iter().any(|id| id == key_id);
        let key_known = replica.secrets.key_ids().any(|id| id == stored.secrets_key_id);
        if retired || !key_known {
            let mut messages = vec![replica.key_refusal(&stored)];
            // Without the cluster's key the rest cannot be compared, but the CA can.
            if candidate.ca_sha256 != stored.ca_sha256 {
                messages.push(format!(
                    "the CA ({}) is not the cluster's ({}): give this replica the cluster's [pki] ca_cert_file and \
                     ca_key_file",
                    short(&candidate.ca_sha256),
                    short(&stored.ca_sha256)
                ));
            }
            bail!(refusal(&messages));
        }
        let differences = replica.differences(&stored)?;
        let rotating = stored.secrets_key_id != key_id;
        if !differences.is_empty() && !replica.single {
            let messages: Vec<String> = differences.into_iter().map(|d| d.message).collect();
            bail!(refusal(&messages));
        }
        if differences.is_empty() && !rotating {
            tracing::info!(secrets_key_id = key_id, "this replica matches the cluster record");
            return Ok(());
        }
        let mut retired_key_ids = stored.retired_key_ids.clone();
        if rotating {
            retired_key_ids.push(stored.secrets_key_id.clone());
            let excess = retired_key_ids.len().saturating_sub(MAX_RETIRED);
            retired_key_ids.drain(..excess);
        }
        let next = replica.record(key_id, retired_key_ids)?;
        if store.replace_cluster(&stored.secrets_key_id, &next).await.context("cluster: cannot update the record")? {
            if rotating {
                tracing::info!(
                    from = %stored.secrets_key_id,
                    to = key_id,
                    "rotated the cluster's secrets key: replicas now need this key as [secrets] key_file (the old \
                     one stays readable through previous_key_files)"
                );
            }
            if !differences.is_empty() {
                let changed: Vec<&str> = differences.iter().map(|d| d.what).collect();
                tracing::warn!(changed = %changed.join(", "), "the only replica (SQLite): updated the cluster record");
            }
            return Ok(());
        }
    }
    bail!("cluster: the cluster record kept changing while this replica started; start it again")
}

fn refusal(messages: &[String]) -> String {
    format!(
        "cluster: this replica does not match the others on this database: {}. (To change this for the whole \
         cluster instead, stop every replica, run `clawplane cluster forget`, and start them with the new settings.)",
        messages.join("; ")
    )
}

/// `sha256:ab12…`: enough to compare by eye.
fn short(fingerprint: &str) -> String {
    match fingerprint.get(..19) {
        Some(head) if head.len() < fingerprint.len() => format!("{head}…"),
        _ => fingerprint.to_string(),
    }
}

/// The JWT settings that decide who a token is, as stable bytes: the
/// HS256 secret itself (only ever MACed), a public key file's contents (the
/// same key may live at different paths), a JWKS file's path (its keys
/// change with the identity provider's rotation, at different moments on
/// different replicas).
fn jwt_description(jwt: Option<&JwtConfig>) -> anyhow::Result<Vec<u8>> {
    let Some(jwt) = jwt else { return Ok(b"none".to_vec()) };
    let key = match &jwt.key_source {
        JwtKeySource::Hs256Secret(secret) => format!("hs256:{secret}"),
        JwtKeySource::PublicKeyPem(path) => {
            use sha2::{Digest, Sha256};
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("jwt.public_key_file: cannot read {}", path.display()))?;
            format!("pem:{}", hex::encode(Sha256::digest(pem.trim().as_bytes())))
        }
        JwtKeySource::Jwks(path) => format!("jwks:{}", path.display()),
    };
    let mut algorithms = jwt.algorithms.clone();
    algorithms.sort();
    let description = serde_json::json!({
        "key": key,
        "issuer": jwt.issuer,
        "audience": jwt.audience,
        "algorithms": algorithms,
        "email_claim": jwt.email_claim,
        "teams_claim": jwt.teams_claim,
        "roles_claim": jwt.roles_claim,
        "admin_role": jwt.admin_role,
    });
    Ok(serde_json::to_vec(&description)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_shortened_for_messages() {
        assert_eq!(short("sha256:0123456789abcdef0123"), "sha256:0123456789ab…");
        assert_eq!(short("sha256:0123"), "sha256:0123");
    }
}
