//! The proxy's loopback listener: bounded connections served through the
//! edge crate's connection rules, stopped by the process's shutdown.
use std::sync::Arc;

use clawplane_edge::connections::{self as edge, Activity, ConnectionLimits};
use clawplane_edge::shutdown::Shutdown;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::proxy::Proxy;

/// Open connections at once (gateways keep a few each).
const MAX_CONNECTIONS: usize = 2048;

pub(crate) async fn serve(listener: TcpListener, proxy: Arc<Proxy>, mut shutdown: Shutdown) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let limits = ConnectionLimits::agent();
    while let Some((tcp, peer, permit)) = edge::next_connection(&listener, &permits, &mut shutdown, "model proxy").await
    {
        let proxy = proxy.clone();
        // Each connection holds a handle: shutdown lets calls in flight end.
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let activity = Arc::new(Activity::holding(permit));
            let requests = activity.clone();
            let service = hyper::service::service_fn(move |request| {
                let (proxy, in_flight) = (proxy.clone(), requests.begin());
                async move { Ok::<_, std::convert::Infallible>(proxy.handle(request, in_flight).await) }
            });
            let stopped = async move { stop.requested().await };
            if let Err(err) = edge::serve(&limits, TokioIo::new(tcp), &activity, stopped, service).await {
                tracing::debug!(%peer, error = %err, "model proxy connection ended");
            }
        });
    }
    tracing::info!("model proxy stopped accepting");
}
