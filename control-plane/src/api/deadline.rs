//! One deadline per API request. A client may ask for its own with gRPC's
//! `grpc-timeout` header, up to `limits.max_request_timeout`; without it the
//! request gets `limits.request_timeout`. Calls that wait on a host (restart,
//! config apply, ping) bound their wait by what is left, so they answer with
//! their own DEADLINE_EXCEEDED saying the command stays queued, instead of
//! being cut off mid-wait; the layer's timer is the backstop for the rest.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::Status;
use tower::{Layer, Service};

/// Time a waiting call keeps to write its own answer before the deadline.
const ANSWER_MARGIN: Duration = Duration::from_secs(1);

/// When the request must have been answered; in the request extensions.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(pub Instant);

/// How long a call may wait on a host: its own bound, or less when the
/// request's deadline comes first.
pub fn wait_within<T>(request: &tonic::Request<T>, bound: Duration) -> Duration {
    match request.extensions().get::<Deadline>() {
        Some(Deadline(at)) => bound.min(at.saturating_duration_since(Instant::now()).saturating_sub(ANSWER_MARGIN)),
        None => bound,
    }
}

#[derive(Clone, Copy)]
pub struct DeadlineLayer {
    default: Duration,
    max: Duration,
}

impl DeadlineLayer {
    pub fn new(default: Duration, max: Duration) -> Self {
        DeadlineLayer { default, max }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService { inner, limits: *self }
    }
}

#[derive(Clone)]
pub struct DeadlineService<S> {
    inner: S,
    limits: DeadlineLayer,
}

impl<S, B, ResBody> Service<http::Request<B>> for DeadlineService<S>
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

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let budget = match request.headers().get("grpc-timeout").map(parse_grpc_timeout) {
            None => self.limits.default,
            Some(Ok(asked)) => asked.min(self.limits.max),
            Some(Err(problem)) => {
                let status = Status::invalid_argument(format!("grpc-timeout header: {problem}"));
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
        };
        request.extensions_mut().insert(Deadline(Instant::now() + budget));
        let method = request.uri().path().to_owned();
        let answer = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(budget, answer).await {
                Ok(answered) => answered,
                Err(_) => {
                    tracing::warn!(%method, ?budget, "request deadline passed");
                    let status = Status::deadline_exceeded(format!(
                        "{method} did not finish within {:.1}s (the request's deadline)",
                        budget.as_secs_f64()
                    ));
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// gRPC's `grpc-timeout`: 1 to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &http::HeaderValue) -> Result<Duration, String> {
    let text = value.to_str().map_err(|_| "not ASCII".to_string())?;
    let problem = || format!("{text:?} is not 1 to 8 digits followed by H, M, S, m, u or n");
    let (digits, unit) = text.split_at(text.len().saturating_sub(1));
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(problem());
    }
    let n: u64 = digits.parse().map_err(|_| problem())?;
    Ok(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(problem()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("5S", Some(Duration::from_secs(5))),
            ("2M", Some(Duration::from_secs(120))),
            ("1H", Some(Duration::from_secs(3600))),
            ("250m", Some(Duration::from_millis(250))),
            ("99999999u", Some(Duration::from_micros(99_999_999))),
            ("7n", Some(Duration::from_nanos(7))),
            ("", None),
            ("S", None),
            ("5", None),
            ("123456789S", None),
            ("-5S", None),
            ("5s", None),
            ("5 S", None),
            ("1.5S", None),
        ];
        for (text, want) in cases {
            let got = parse_grpc_timeout(&http::HeaderValue::from_str(text).unwrap()).ok();
            assert_eq!(got, *want, "grpc-timeout {text:?}");
        }
    }
}
