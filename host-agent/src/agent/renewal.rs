//! Certificate renewal: a new key and certificate at about two thirds of
//! the current one's life, swapped in without a restart; failed attempts
//! retry well before expiry.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail};
use clawplane_proto::v1::enrollment_service_client::EnrollmentServiceClient;
use clawplane_proto::v1::RenewCertificateRequest;

use super::link::Link;
use crate::join::key_and_csr;
use crate::rpc::transport_detail;
use crate::state::StateDir;
use clawplane_edge::shutdown::Shutdown;

pub struct Renewal {
    link: Arc<Link>,
    state: StateDir,
    /// The tenant proxy is on: bridges check the certificate names the host.
    names_host: bool,
    /// Set once the certificate was renewed early for lacking the host name.
    renewed_for_name: AtomicBool,
}

impl Renewal {
    pub fn new(link: Arc<Link>, state: StateDir, names_host: bool) -> Self {
        Renewal { link, state, names_host, renewed_for_name: AtomicBool::new(false) }
    }

    /// Renews until shutdown.
    pub async fn run(self, mut shutdown: Shutdown) {
        loop {
            let wait = match self.time_to_renewal() {
                Ok(wait) => wait,
                Err(err) => {
                    tracing::error!(error = %err, "cannot read the current certificate");
                    Duration::from_secs(30)
                }
            };
            let renewed = tokio::select! {
                renewed = async {
                    tokio::time::sleep(wait).await;
                    self.renew_once().await
                } => renewed,
                _ = shutdown.requested() => return,
            };
            match renewed {
                Ok(expires) => tracing::info!(expires_in_s = expires.as_secs(), "certificate renewed"),
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "certificate renewal failed; retrying");
                    let retry = self.remaining_life().unwrap_or_default() / 10;
                    tokio::select! {
                        _ = tokio::time::sleep(retry.clamp(Duration::from_millis(200), Duration::from_secs(60))) => {}
                        _ = shutdown.requested() => return,
                    }
                }
            }
        }
    }

    fn current_cert(&self) -> anyhow::Result<clawplane_tls::CertInfo> {
        let pem = self.state.read("cert.pem")?;
        clawplane_tls::cert_info(&clawplane_tls::certs_from_pem(&pem)?[0])
    }

    fn remaining_life(&self) -> anyhow::Result<Duration> {
        let cert = self.current_cert()?;
        Ok(cert.not_after.duration_since(SystemTime::now()).unwrap_or_default())
    }

    fn time_to_renewal(&self) -> anyhow::Result<Duration> {
        let cert = self.current_cert()?;
        // Bridges verify the tenant proxy by the host's name, which host
        // certificates issued before the proxy existed lack: renew those at
        // once (once per run, in case the control plane still omits it).
        let name = clawplane_tls::host_server_name(&self.link.identity.host_id);
        if self.names_host && !cert.dns_names.contains(&name) && !self.renewed_for_name.swap(true, Ordering::Relaxed) {
            tracing::info!(%name, "the certificate does not name this host for the tenant proxy; renewing it now");
            return Ok(Duration::ZERO);
        }
        // The certificate is backdated for clock skew; two thirds are counted
        // from when it was issued to us, a minute after not_before.
        let issued = cert.not_before + Duration::from_secs(60);
        let life = cert.not_after.duration_since(issued).unwrap_or_default();
        let renew_at = issued + life * 2 / 3;
        Ok(renew_at.duration_since(SystemTime::now()).unwrap_or_default())
    }

    async fn renew_once(&self) -> anyhow::Result<Duration> {
        let (key_pem, csr_pem) = key_and_csr()?;
        let response = EnrollmentServiceClient::new(self.link.channel()?)
            .renew_certificate(RenewCertificateRequest { csr_pem })
            .await
            .map_err(|status| anyhow!("{:?}: {}", status.code(), transport_detail(&status)))?
            .into_inner();
        let cert_pem = response.certificate_pem;
        // Check the pair loads before it replaces the working one.
        self.link.tls_identity.replace(&cert_pem, &key_pem)?;
        self.state.save_renewal(&key_pem, &cert_pem)?;
        let info = clawplane_tls::cert_info(&clawplane_tls::certs_from_pem(&cert_pem)?[0])?;
        if info.common_name != self.link.identity.host_id {
            bail!("renewed certificate names {} instead of this host", info.common_name);
        }
        Ok(info.not_after.duration_since(SystemTime::now()).unwrap_or_default())
    }
}
