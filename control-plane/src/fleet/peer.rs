//! What an agent connection proves: its verified client certificate and
//! where it comes from, put into every request's extensions; and the way
//! to its agent.
use std::net::SocketAddr;

use clawplane_proto::v1::ControlMessage;
use tokio::sync::mpsc;
use tonic::Status;

/// Messages to one agent. Boxed: a channel allocates its slots up front,
/// and thousands of idle sessions should not each hold room for 32 full
/// messages.
pub(super) type Outbound = mpsc::Sender<Box<Result<ControlMessage, Status>>>;

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
