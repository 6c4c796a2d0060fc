//! TLS shared by every Clawplane process that speaks on the agent channel:
//! CA pins (`sha256:<hex of the SubjectPublicKeyInfo>`), PEM helpers,
//! certificate facts, a pin-anchored server verifier for joining, a client
//! identity that can be swapped at runtime (certificate renewal without a
//! restart), and gRPC channels over our own rustls configuration. Beside
//! them, key material at rest: `files` writes owner-only key files, and
//! `secrets` seals values under such a key (the control plane's tenant
//! secrets, the bridge's session cookies).
pub mod files;
pub mod secrets;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// The crypto provider of every Clawplane TLS config (ring: no C toolchain
/// beyond what `ring` needs, and small).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses every certificate in a PEM text.
pub fn certs_from_pem(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| anyhow!("invalid certificate PEM: {err}"))?;
    if certs.is_empty() {
        bail!("no certificate in PEM");
    }
    Ok(certs)
}

/// Parses the private key in a PEM text.
pub fn key_from_pem(pem: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|err| anyhow!("invalid private key PEM: {err}"))
}

/// Facts about a certificate that the control plane and agent act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub common_name: String,
    pub serial_hex: String,
    /// sha256 of the certificate DER, hex.
    pub fingerprint: String,
    /// `sha256:<hex>` of the SubjectPublicKeyInfo.
    pub spki_pin: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The DNS names of the subject alternative names.
    pub dns_names: Vec<String>,
}

pub fn cert_info(der: &[u8]) -> anyhow::Result<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|err| anyhow!("invalid certificate: {err}"))?;
    let common_name =
        cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or_default().to_string();
    let to_time =
        |t: x509_parser::time::ASN1Time| SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64);
    Ok(CertInfo {
        common_name,
        serial_hex: cert.raw_serial_as_string().replace(':', ""),
        fingerprint: hex::encode(Sha256::digest(der)),
        spki_pin: pin_of_spki(cert.public_key().raw),
        not_before: to_time(cert.validity().not_before),
        not_after: to_time(cert.validity().not_after),
        dns_names: cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// `sha256:<hex>` of a DER SubjectPublicKeyInfo.
pub fn pin_of_spki(spki_der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(spki_der)))
}

/// Checks the `sha256:<64 hex>` form of a pin; returns it lowercased.
pub fn parse_pin(pin: &str) -> anyhow::Result<String> {
    let hex_part = pin
        .strip_prefix("sha256:")
        .ok_or_else(|| anyhow!("CA pin must look like sha256:<64 hex digits>, got {pin:?}"))?;
    if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("CA pin must look like sha256:<64 hex digits>, got {pin:?}");
    }
    Ok(format!("sha256:{}", hex_part.to_ascii_lowercase()))
}

/// Verifies a server by a pinned CA instead of system roots: the server
/// sends its chain including the CA; the CA whose key matches the pin
/// becomes the only trust anchor and the chain is then verified normally
/// (signature, validity, server-auth usage, host name).
#[derive(Debug)]
pub struct PinnedServerVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
    /// The pins the server actually presented when none matched, so the
    /// caller can say "pin mismatch" instead of a generic TLS failure.
    mismatch: Mutex<Option<Vec<String>>>,
}

impl PinnedServerVerifier {
    pub fn new(pin: &str) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(PinnedServerVerifier { pin: parse_pin(pin)?, provider: provider(), mismatch: Mutex::new(None) }))
    }

    /// Pins the server offered, if verification failed because none matched.
    pub fn mismatch(&self) -> Option<Vec<String>> {
        self.mismatch.lock().unwrap().clone()
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut seen = Vec::new();
        for candidate in intermediates {
            let Ok(info) = cert_info(candidate) else { continue };
            if info.spki_pin == self.pin {
                let mut roots = RootCertStore::empty();
                roots.add(candidate.clone().into_owned())?;
                let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                    .build()
                    .map_err(|err| rustls::Error::General(err.to_string()))?;
                return verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
            }
            seen.push(info.spki_pin);
        }
        *self.mismatch.lock().unwrap() = Some(seen);
        Err(rustls::Error::General("CA pin mismatch".into()))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client certificate that can be replaced while connections are open:
/// new handshakes use the newest one.
#[derive(Debug)]
pub struct ReloadableIdentity {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableIdentity {
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(ReloadableIdentity { current: RwLock::new(certified_key(cert_pem, key_pem)?) }))
    }

    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        *self.current.write().unwrap() = certified_key(cert_pem, key_pem)?;
        Ok(())
    }
}

fn certified_key(cert_pem: &str, key_pem: &str) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs = certs_from_pem(cert_pem)?;
    let key = key_from_pem(key_pem)?;
    let signing = provider().key_provider.load_private_key(key).context("unsupported private key")?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

impl ResolvesClientCert for ReloadableIdentity {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap().clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for ReloadableIdentity {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap().clone())
    }
}

/// The DNS name every host certificate carries for its tenant proxy
/// listener; the bridge connects to a host by this name.
pub fn host_server_name(host_id: &str) -> String {
    format!("{host_id}.hosts.clawplane.internal")
}

/// Subject CN prefix of gateway bridge identities (`bridge:<name>`).
pub const BRIDGE_CN_PREFIX: &str = "bridge:";

/// The subject CN of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// Server config for a host agent's tenant proxy: the host's own
/// certificate (reloaded on renewal); client certificates are required and
/// must chain to the CA (who they name is checked per connection).
pub fn mtls_server_config(ca_pem: &str, identity: Arc<ReloadableIdentity>) -> anyhow::Result<rustls::ServerConfig> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots.add(cert)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Client config for joining: no client certificate, server pinned.
pub fn pinned_client_config(verifier: Arc<PinnedServerVerifier>) -> anyhow::Result<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Client config for the mTLS agent channel: the CA is the only root, the
/// identity is presented as client certificate.
pub fn mtls_client_config(ca_pem: &str, identity: Arc<ReloadableIdentity>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots.add(cert)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_cert_resolver(identity);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Splits `https://host:port` into host and port.
pub fn host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let uri: http::Uri = url.parse().with_context(|| format!("{url:?} is not a URL like https://host:7701"))?;
    if uri.scheme_str() != Some("https") {
        bail!("{url:?}: the agent channel needs an https:// URL");
    }
    let host = uri.host().ok_or_else(|| anyhow!("{url:?} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    Ok((host, uri.port_u16().unwrap_or(443)))
}

/// A lazily connecting gRPC channel to `url` over our own TLS config.
/// tonic's `http://` scheme is used on purpose: TLS happens in the
/// connector, with settings tonic's built-in TLS cannot express (pins,
/// swappable client identity).
pub fn channel(url: &str, config: rustls::ClientConfig) -> anyhow::Result<Channel> {
    let (host, port) = host_port(url)?;
    lazy_channel(host.clone(), port, authority(&host, port), config)
}

/// As [`channel`], but dialling `address`, one of the URL host's
/// addresses, while TLS still checks the certificate against the host
/// name: a name with several addresses is several endpoints to the agent.
pub fn channel_at(url: &str, address: std::net::SocketAddr, config: rustls::ClientConfig) -> anyhow::Result<Channel> {
    let (host, port) = host_port(url)?;
    lazy_channel(host, port, address.to_string(), config)
}

fn lazy_channel(host: String, port: u16, address: String, config: rustls::ClientConfig) -> anyhow::Result<Channel> {
    let server_name = ServerName::try_from(host.clone()).with_context(|| format!("invalid server name {host:?}"))?;
    let connector = TlsConnector::from(Arc::new(config));
    let endpoint = Endpoint::from_shared(format!("http://{}", authority(&host, port)))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let make = tower::service_fn(move |_uri: http::Uri| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let address = address.clone();
        async move {
            let tcp = TcpStream::connect(&address).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(make))
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
