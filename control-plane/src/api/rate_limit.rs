//! Request rates per caller, after [`crate::auth::AuthLayer`]: a signed-in
//! user (JWT subject or the shared-secret form's `x-user-id`) has an
//! allowance of their own; a request without a valid identity counts
//! against its client address (an IPv6 client by its /64). The bare admin token (operators' CLI, the
//! bridge's route watch) is not limited. Over the allowance the call is
//! RESOURCE_EXHAUSTED before any work, with `retry-after` (seconds) in its
//! metadata.
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::transport::server::TcpConnectInfo;
use tonic::Status;
use tower::{Layer, Service};

use crate::auth::Authentication;
use clawplane_edge::rate::{retry_after_secs, KeyedRate, Rate};

#[derive(Clone)]
pub struct RateLimitLayer {
    callers: Arc<KeyedRate<String>>,
    addresses: Arc<KeyedRate<IpAddr>>,
}

impl RateLimitLayer {
    pub fn new(per_caller: Rate, per_address: Rate) -> Self {
        RateLimitLayer { callers: KeyedRate::new(per_caller), addresses: KeyedRate::new(per_address) }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService { inner, limits: self.clone() }
    }
}

#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    limits: RateLimitLayer,
}

impl RateLimitLayer {
    fn check<B>(&self, request: &http::Request<B>) -> Result<(), Status> {
        let checked = match request.extensions().get::<Authentication>() {
            Some(Authentication(Ok(principal))) if principal.is_admin && !principal.is_user => Ok(()),
            Some(Authentication(Ok(principal))) => self.callers.check(&principal.user_id),
            _ => match request.extensions().get::<TcpConnectInfo>().and_then(|info| info.remote_addr()) {
                Some(peer) => self.addresses.check(&clawplane_edge::connections::client_key(peer.ip())),
                None => Ok(()),
            },
        };
        checked.map_err(|wait| {
            let secs = retry_after_secs(wait);
            let mut status = Status::resource_exhausted(format!("rate limit reached: retry in {secs} s"));
            status.metadata_mut().insert("retry-after", secs.into());
            status
        })
    }
}

impl<S, B, ResBody> Service<http::Request<B>> for RateLimitService<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match self.limits.check(&request) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}
