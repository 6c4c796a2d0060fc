//! The control plane's certificate authority: created on first start (or
//! loaded from files the operator supplies), it signs the agent listener's
//! server certificate and each host's client certificate from the host's
//! CSR. The CA key never leaves the data directory (0600 in a 0700 folder)
//! and is never logged.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use clawplane_tls::files::{create_private_dir, write_private};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// Where the CA comes from.
#[derive(Debug, Clone)]
pub struct PkiConfig {
    /// Folder for generated CA and server material (`<data_dir>/pki`).
    pub dir: PathBuf,
    /// Operator-supplied CA certificate and key (both or neither).
    pub ca_cert_file: Option<PathBuf>,
    pub ca_key_file: Option<PathBuf>,
    /// Names (DNS or IP) the agent listener's certificate is valid for.
    pub server_names: Vec<String>,
    /// Lifetime of host certificates.
    pub host_cert_ttl: Duration,
}

/// A certificate issued to a host.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub pem: String,
    pub info: clawplane_tls::CertInfo,
}

pub struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    pin: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key_der: Vec<u8>,
    host_cert_ttl: Duration,
}

const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const SERVER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Tolerated clock skew between control plane and hosts.
const BACKDATE: Duration = Duration::from_secs(60);

impl Pki {
    pub fn load_or_create(config: &PkiConfig) -> anyhow::Result<Arc<Pki>> {
        let (ca_pem, ca_key_pem) = match (&config.ca_cert_file, &config.ca_key_file) {
            (Some(cert), Some(key)) => (read(cert)?, read(key)?),
            (None, None) => load_or_create_ca(&config.dir)?,
            _ => bail!("pki: ca_cert_file and ca_key_file must be given together"),
        };
        let ca_key = KeyPair::from_pem(&ca_key_pem).context("pki: CA key is not a usable PEM private key")?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).context("pki: CA certificate is not valid PEM")?;
        let ca_der = clawplane_tls::certs_from_pem(&ca_pem)?.remove(0);
        let pin = clawplane_tls::cert_info(&ca_der)?.spki_pin;

        // The listener's certificate is cheap to make, so it is fresh at every start.
        let server_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(config.server_names.clone()).context("pki: invalid server name")?;
        params.distinguished_name.push(DnType::CommonName, "clawplane agent listener");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = (SystemTime::now() - BACKDATE).into();
        params.not_after = (SystemTime::now() + SERVER_VALIDITY).into();
        params.serial_number = Some(random_serial());
        let server_cert = params.signed_by(&server_key, &issuer)?;
        Ok(Arc::new(Pki {
            server_chain: vec![server_cert.der().clone(), ca_der.clone()],
            server_key_der: server_key.serialize_der(),
            ca_pem,
            ca_der,
            issuer,
            pin,
            host_cert_ttl: config.host_cert_ttl,
        }))
    }

    /// `sha256:<hex>` of the CA's SubjectPublicKeyInfo.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// `sha256:<hex>` of the CA certificate's DER: the same CA on every
    /// replica of a cluster (see [`crate::cluster`]).
    pub fn ca_sha256(&self) -> String {
        use sha2::{Digest, Sha256};
        format!("sha256:{}", hex::encode(Sha256::digest(self.ca_der.as_ref())))
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Signs a host certificate for `host_id` with the public key of `csr_pem`.
    /// Everything but the key comes from us, not from the CSR: the subject is
    /// the host id the control plane assigned, usage is client auth only.
    pub fn sign_host_csr(&self, csr_pem: &str, host_id: &str) -> anyhow::Result<IssuedCert> {
        if csr_pem.len() > 16 * 1024 {
            bail!("CSR is larger than 16 KiB");
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|err| anyhow::anyhow!("CSR is not a valid, self-signed PEM request: {err}"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host_id);
        // Client for the agent channel; server for its tenant proxy, which
        // the bridge reaches by the host's own name.
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
        params.subject_alt_names = vec![rcgen::SanType::DnsName(clawplane_tls::host_server_name(host_id).try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = (SystemTime::now() - BACKDATE).into();
        params.not_after = (SystemTime::now() + self.host_cert_ttl).into();
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        let info = clawplane_tls::cert_info(cert.der())?;
        Ok(IssuedCert { pem: cert.pem(), info })
    }

    /// A gateway bridge identity: a new key and a client certificate with
    /// subject `bridge:<name>`, which host agents accept on their tenant
    /// proxies. Returns (key PEM, certificate PEM).
    pub fn issue_bridge_identity(&self, name: &str, ttl: Duration) -> anyhow::Result<(String, String)> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            bail!("bridge name {name:?} must be 1-63 characters of a-z, 0-9 and '-'");
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, format!("{}{name}", clawplane_tls::BRIDGE_CN_PREFIX));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = (SystemTime::now() - BACKDATE).into();
        params.not_after = (SystemTime::now() + ttl).into();
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((key.serialize_pem(), cert.pem()))
    }

    /// TLS for the agent listener: our server certificate (chain includes the
    /// CA so joining agents can check the pin); client certificates are
    /// verified against the CA when presented and required by the RPCs that
    /// need an identity (Join has none yet).
    pub fn agent_server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let provider = clawplane_tls::provider();
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()?;
        let key = PrivateKeyDer::try_from(self.server_key_der.clone()).map_err(|err| anyhow::anyhow!(err))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server_chain.clone(), key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("pki: cannot read {}", path.display()))
}

/// The generated CA in `dir`: created once, reused after.
fn load_or_create_ca(dir: &Path) -> anyhow::Result<(String, String)> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    if cert_path.exists() && key_path.exists() {
        return Ok((read(&cert_path)?, read(&key_path)?));
    }
    create_private_dir(dir)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "Clawplane CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = (SystemTime::now() - BACKDATE).into();
    params.not_after = (SystemTime::now() + CA_VALIDITY).into();
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key)?;
    let key_pem = key.serialize_pem();
    write_private(&key_path, key_pem.as_bytes())?;
    std::fs::write(&cert_path, cert.pem()).with_context(|| format!("pki: cannot write {}", cert_path.display()))?;
    tracing::info!(path = %cert_path.display(), "created the Clawplane CA");
    Ok((cert.pem(), key_pem))
}
