//! Tower layer that authenticates every API request once and stores the
//! outcome in the request extensions, where tonic hands it to the service.
//! It does not reject: health checks and reflection need no credentials, and
//! each RPC decides what identity it requires.
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::authenticator::{Authentication, Authenticator};

#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        AuthLayer { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, authenticator: self.authenticator.clone() }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // Identity must come from this layer only, whatever a client sends.
        request.extensions_mut().remove::<Authentication>();
        let outcome = self.authenticator.authenticate(request.headers());
        if let Err(err) = &outcome {
            tracing::debug!(path = %request.uri().path(), reason = %err, "request not authenticated");
        }
        request.extensions_mut().insert(Authentication(outcome));
        self.inner.call(request)
    }
}
