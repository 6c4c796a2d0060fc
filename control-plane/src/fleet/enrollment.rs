//! EnrollmentService: a host trades a join token and a CSR for its first
//! certificate, and later renews it over mutual TLS.
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use chrono::{DateTime, Utc};
use clawplane_proto::v1::enrollment_service_server::EnrollmentService;
use clawplane_proto::v1::{JoinRequest, JoinResponse, RenewCertificateRequest, RenewCertificateResponse};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::error::{FleetError, FleetResult};
use super::peer::{AgentConnectInfo, PeerCertificate};
use super::streams::Fleet;
use crate::pki::IssuedCert;
use crate::store::{inventory_json, Host, HostState, NewHostCert};
use crate::wire::{check_text, timestamp};

pub struct EnrollmentApi {
    fleet: Arc<Fleet>,
}

impl EnrollmentApi {
    pub fn new(fleet: Arc<Fleet>) -> Self {
        EnrollmentApi { fleet }
    }
}

/// Splits `<id>.<secret>`; both parts are lowercase hex of fixed shape.
pub fn parse_join_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (hex(id, 12) && hex(secret, 64)).then_some((id, secret))
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn to_utc(time: std::time::SystemTime) -> DateTime<Utc> {
    DateTime::<Utc>::from(time)
}

fn new_cert(issued: &IssuedCert) -> NewHostCert {
    NewHostCert {
        serial: issued.info.serial_hex.clone(),
        fingerprint: issued.info.fingerprint.clone(),
        not_before: to_utc(issued.info.not_before),
        not_after: to_utc(issued.info.not_after),
    }
}

/// Renew at about two thirds of the certificate's life.
fn renew_after(issued: &IssuedCert) -> DateTime<Utc> {
    let life = issued.info.not_after.duration_since(issued.info.not_before).unwrap_or_default();
    to_utc(issued.info.not_before + life * 2 / 3)
}

impl EnrollmentApi {
    async fn join(&self, req: JoinRequest) -> FleetResult<JoinResponse> {
        let (token_id, secret) = parse_join_token(&req.token).ok_or_else(|| {
            FleetError::Unauthenticated("token_unknown: malformed join token, expected <id>.<secret>".into())
        })?;
        let inventory = req.inventory.unwrap_or_default();
        check_text("inventory.hostname", &inventory.hostname, 253)?;
        for (key, value) in &inventory.labels {
            check_text("inventory label", key, 63)?;
            check_text("inventory label", value, 253)?;
        }
        // Sign before spending the token, so a bad CSR does not burn it.
        let host_id = Uuid::now_v7().to_string();
        let issued = self
            .fleet
            .pki()
            .sign_host_csr(&req.csr_pem, &host_id)
            .map_err(|err| FleetError::InvalidArgument(format!("bad_csr: {err:#}")))?;
        let presented = hash_secret(secret);
        let token = self
            .fleet
            .store
            .consume_join_token(token_id, |stored| bool::from(stored.as_bytes().ct_eq(presented.as_bytes())))
            .await??;

        let mut labels = token.labels.as_object().cloned().unwrap_or_default();
        for (key, value) in &inventory.labels {
            labels.entry(key.clone()).or_insert_with(|| json!(value));
        }
        let now = Utc::now();
        let name = if inventory.hostname.is_empty() { host_id.clone() } else { inventory.hostname.clone() };
        let model = Host {
            id: host_id.clone(),
            name,
            status: HostState::Active,
            labels: serde_json::Value::Object(labels),
            inventory: Some(inventory_json(&inventory)),
            last_heartbeat_at: None,
            lease_expires_at: None,
            created_at: now,
            updated_at: now,
            removed_at: None,
            stream_replica: None,
            stream_generation: 0,
            reported_usage: None,
        };
        self.fleet.store.create_host(model, new_cert(&issued)).await?;
        tracing::info!(host = %host_id, token = %token_id, hostname = %inventory.hostname, "host joined");
        Ok(JoinResponse {
            host_id,
            certificate_pem: issued.pem.clone(),
            ca_chain_pem: self.fleet.pki().ca_pem().to_string(),
            expires_at: Some(timestamp(to_utc(issued.info.not_after))),
            renew_after: Some(timestamp(renew_after(&issued))),
        })
    }

    async fn renew(
        &self,
        peer: Option<&PeerCertificate>,
        req: RenewCertificateRequest,
    ) -> FleetResult<RenewCertificateResponse> {
        let host = self.fleet.authorize(peer).await?;
        let issued = self
            .fleet
            .pki()
            .sign_host_csr(&req.csr_pem, &host.id)
            .map_err(|err| FleetError::InvalidArgument(format!("bad_csr: {err:#}")))?;
        self.fleet.store.add_host_certificate(&host.id, new_cert(&issued)).await?;
        let not_after = issued.info.not_after.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        self.fleet.certificate_renewed(&host.id, not_after);
        tracing::info!(host = %host.id, expires = %to_utc(issued.info.not_after), "host certificate renewed");
        Ok(RenewCertificateResponse {
            certificate_pem: issued.pem.clone(),
            ca_chain_pem: self.fleet.pki().ca_pem().to_string(),
            expires_at: Some(timestamp(to_utc(issued.info.not_after))),
            renew_after: Some(timestamp(renew_after(&issued))),
        })
    }
}

#[tonic::async_trait]
impl EnrollmentService for EnrollmentApi {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        Ok(Response::new(EnrollmentApi::join(self, request.into_inner()).await?))
    }

    async fn renew_certificate(
        &self,
        request: Request<RenewCertificateRequest>,
    ) -> Result<Response<RenewCertificateResponse>, Status> {
        let peer = request.extensions().get::<AgentConnectInfo>().and_then(|info| info.peer.clone());
        Ok(Response::new(self.renew(peer.as_ref(), request.into_inner()).await?))
    }
}
