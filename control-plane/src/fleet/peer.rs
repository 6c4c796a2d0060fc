//! What an agent connection proves: its verified client certificate and
//! where it comes from, put into every request's extensions.
use std::net::SocketAddr;

/// The verified client certificate of a connection.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    pub common_name: String,
    pub fingerprint: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// Per-connection facts tonic puts into every request's extensions.
#[derive(Debug, Clone)]
pub struct AgentConnectInfo {
    pub remote_addr: SocketAddr,
    pub peer: Option<PeerCertificate>,
}
