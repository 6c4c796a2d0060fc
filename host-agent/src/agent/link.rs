//! The agent's mutual-TLS link to the control plane: who this host is,
//! the client certificate it presents (swapped in place on renewal), the
//! control plane replicas it may use, and the endpoint the command session
//! is on, which sync and renewal follow.
use std::sync::{Arc, Mutex};

use clawplane_tls::ReloadableIdentity;

use crate::config::ControlPlaneUrl;
use crate::endpoints::Endpoint;
use crate::state::Identity;

pub struct Link {
    pub identity: Identity,
    pub tls_identity: Arc<ReloadableIdentity>,
    /// In order of preference; never empty.
    pub control_planes: Vec<ControlPlaneUrl>,
    ca_pem: String,
    /// Where the command session is, or last was.
    current: Mutex<Option<Endpoint>>,
}

impl Link {
    pub fn new(
        identity: Identity,
        tls_identity: Arc<ReloadableIdentity>,
        ca_pem: String,
        control_planes: Vec<ControlPlaneUrl>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!control_planes.is_empty(), "no control plane to connect to");
        Ok(Link { identity, tls_identity, control_planes, ca_pem, current: Mutex::new(None) })
    }

    /// A channel to the endpoint the command session is on (before the
    /// first session: the first control plane, as its name resolves).
    pub fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        let current = self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        match current {
            Some(endpoint) => self.channel_to(&endpoint),
            None => clawplane_tls::channel(&self.control_planes[0].to_string(), self.tls_config()?),
        }
    }

    /// A channel to one endpoint, trusting only the control plane's CA.
    pub fn channel_to(&self, endpoint: &Endpoint) -> anyhow::Result<tonic::transport::Channel> {
        endpoint.channel(self.tls_config()?)
    }

    /// The command session is up on `endpoint`: the other streams follow.
    pub fn follow(&self, endpoint: &Endpoint) {
        *self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(endpoint.clone());
    }

    fn tls_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        clawplane_tls::mtls_client_config(&self.ca_pem, self.tls_identity.clone())
    }
}
