//! The agent listener: TLS handshakes happen here (so the verified client
//! certificate can travel with the connection), then tonic serves
//! EnrollmentService and AgentService over the established streams.
use std::io;
use std::sync::Arc;
use std::time::Duration;

use clawplane_proto::v1::agent_service_server::AgentServiceServer;
use clawplane_proto::v1::enrollment_service_server::EnrollmentServiceServer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use super::agent::AgentApi;
use super::enrollment::EnrollmentApi;
use super::peer::{AgentConnectInfo, PeerCertificate};
use super::streams::Fleet;
use crate::net::Connection;

/// An established agent connection (TLS done, client certificate known).
pub type AgentConnection = Connection<TlsStream<TcpStream>, AgentConnectInfo>;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the agent listener until the fleet's shutdown is requested. At
/// most `max_connections` connections (handshaking or established) at once.
pub async fn serve_agents(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    fleet: Arc<Fleet>,
    max_connections: usize,
) -> anyhow::Result<()> {
    let shutdown = fleet.shutdown.clone();
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let (tx, rx) = mpsc::channel::<io::Result<AgentConnection>>(256);
    let limit = Arc::new(Semaphore::new(max_connections));
    let accept_stop = shutdown.clone();
    let accept = tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                _ = accept_stop.requested() => return,
                permit = limit.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            };
            let (tcp, remote_addr) = tokio::select! {
                _ = accept_stop.requested() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(error = %err, "agent listener accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            // Handshakes run beside the accept loop so a slow client cannot
            // hold up the others.
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(err)) => {
                        tracing::info!(%remote_addr, error = %err, "agent TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%remote_addr, "agent TLS handshake timed out");
                        return;
                    }
                };
                let peer = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| clawplane_tls::cert_info(leaf).ok())
                    .map(|info| PeerCertificate {
                        common_name: info.common_name,
                        fingerprint: info.fingerprint,
                        not_after: info
                            .not_after
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_secs() as i64)
                            .unwrap_or(0),
                    });
                let info = AgentConnectInfo { remote_addr, peer };
                let _ = tx.send(Ok(Connection::new(stream, info, permit))).await;
            });
        }
    });

    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(EnrollmentServiceServer::new(EnrollmentApi::new(fleet.clone())))
        .add_service(
            AgentServiceServer::new(AgentApi::new(fleet))
                .max_decoding_message_size(crate::ingest::MAX_SYNC_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), async move { shutdown.requested().await })
        .await;
    accept.abort();
    result.map_err(Into::into)
}
