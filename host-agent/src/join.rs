//! `clawplane-agent join`: enroll this host with a control plane.
//!
//! The key pair is generated here and only a CSR leaves the host. The
//! control plane is trusted through the CA pin the operator pasted, not
//! through system roots. Given several replicas, the host joins through
//! the first that answers and stores them all for `run`.
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clawplane_proto::v1::enrollment_service_client::EnrollmentServiceClient;
use clawplane_proto::v1::JoinRequest;
use clawplane_tls::PinnedServerVerifier;
use tonic::Code;

use crate::config::{control_plane_urls, HostConfig};
use crate::endpoints::resolve;
use crate::inventory::collect;
use crate::rpc::transport_detail;
use crate::state::{Identity, StateDir};

/// A new key pair and a CSR for it.
pub fn key_and_csr() -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, crate::inventory::hostname());
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key.serialize_pem(), csr))
}

pub async fn run(control_planes: &[String], token: &str, ca_pin: &str, state_dir: &Path) -> anyhow::Result<()> {
    let urls = control_plane_urls("--control-plane", control_planes)?;
    anyhow::ensure!(!urls.is_empty(), "--control-plane names no control plane");
    let state = StateDir::new(state_dir);
    if let Some(identity) = state.identity()? {
        bail!(
            "this host already joined as {} (state in {}); to join again, remove the host on the control plane and delete that directory",
            identity.host_id,
            state_dir.display()
        );
    }
    let verifier = PinnedServerVerifier::new(ca_pin)?;
    let (key_pem, csr_pem) = key_and_csr()?;
    let inventory = collect(
        &HostConfig::default(),
        state_dir.parent().unwrap_or(Path::new("/")),
        "",
        clawplane_proto::v1::Runtime::Process,
    );
    let request = JoinRequest { token: token.to_string(), csr_pem, inventory: Some(inventory) };
    let (endpoints, mut unreachable) = resolve(&urls).await;
    let mut joined = None;
    for endpoint in &endpoints {
        let channel = endpoint.channel(clawplane_tls::pinned_client_config(verifier.clone())?)?;
        let mut client = EnrollmentServiceClient::new(channel);
        // No other replica is tried after this: the request may have landed.
        let answer = tokio::time::timeout(Duration::from_secs(30), client.join(request.clone()))
            .await
            .map_err(|_| anyhow!("control plane at {endpoint} did not answer within 30s"))?;
        match answer {
            Ok(response) => {
                joined = Some((endpoint, response.into_inner()));
                break;
            }
            Err(status) if not_reached(&status) && verifier.mismatch().is_none() => {
                unreachable.push(format!("{endpoint}: {}", transport_detail(&status)));
            }
            Err(status) => return Err(explain(status, &verifier, &endpoint.to_string(), ca_pin)),
        }
    }
    let Some((endpoint, response)) = joined else {
        bail!("cannot reach the control plane at {}", unreachable.join("; "));
    };
    let identity = Identity {
        host_id: response.host_id.clone(),
        control_plane: endpoint.url.to_string(),
        control_planes: urls.iter().map(ToString::to_string).collect(),
    };
    state
        .save_enrollment(&identity, &key_pem, &response.certificate_pem, &response.ca_chain_pem)
        .context("cannot store the enrollment")?;
    println!(
        "joined as host {}; start the agent with: clawplane-agent run --state-dir {}",
        response.host_id,
        state_dir.display()
    );
    Ok(())
}

/// The call failed before reaching a control plane: another may answer.
fn not_reached(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled)
}

/// One distinct, actionable message per way a join fails.
fn explain(status: tonic::Status, verifier: &PinnedServerVerifier, url: &str, pin: &str) -> anyhow::Error {
    if let Some(seen) = verifier.mismatch() {
        return anyhow!(
            "CA pin mismatch: the control plane at {url} presented {}, not {pin}; check the pin with `clawplane ca show` on the control plane",
            if seen.is_empty() { "no CA certificate".to_string() } else { seen.join(", ") }
        );
    }
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument => {
            anyhow!("join refused: {}", status.message())
        }
        Code::Unavailable | Code::Unknown | Code::Cancelled => {
            anyhow!("cannot reach the control plane at {url}: {}", transport_detail(&status))
        }
        _ => anyhow!("join failed: {:?}: {}", status.code(), status.message()),
    }
}
