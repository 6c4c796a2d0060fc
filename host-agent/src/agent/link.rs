//! The agent's mutual-TLS link to the control plane: who this host is and
//! the client certificate it presents (swapped in place on renewal).
use std::sync::Arc;

use clawplane_tls::ReloadableIdentity;

use crate::state::Identity;

pub struct Link {
    pub identity: Identity,
    pub tls_identity: Arc<ReloadableIdentity>,
    ca_pem: String,
}

impl Link {
    pub fn new(identity: Identity, tls_identity: Arc<ReloadableIdentity>, ca_pem: String) -> Self {
        Link { identity, tls_identity, ca_pem }
    }

    /// A channel to the control plane, trusting only its CA.
    pub fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        let config = clawplane_tls::mtls_client_config(&self.ca_pem, self.tls_identity.clone())?;
        clawplane_tls::channel(&self.identity.control_plane, config)
    }
}
