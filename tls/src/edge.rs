//! Limits of the client connections of the two proxies on the user path
//! (the gateway bridge and the host agent's tenant proxy), in one place so
//! the two agree: header read, idle and keep-alive timeouts, header size and
//! count, streams per connection, and open connections per client address.
//!
//! The bridge's header limits are stricter than the agent's by a margin
//! larger than what the bridge adds (tenant and X-Forwarded-* headers): a
//! request the bridge lets through never trips the agent's limit, whose
//! HTTP/2 answer would be a GOAWAY on the connection every tenant of that
//! host shares.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

/// What the bridge accepts from users: header fields (names and values,
/// counted as HTTP/2 does, 32 bytes of overhead each, the path included)
/// and their number.
pub const BRIDGE_MAX_HEADER_BYTES: usize = 16 * 1024;
pub const BRIDGE_MAX_HEADERS: usize = 100;
/// What the agent accepts from bridges (and from gateways in answers).
pub const AGENT_MAX_HEADER_BYTES: usize = 32 * 1024;
pub const AGENT_MAX_HEADERS: usize = 128;

/// The limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// A request's head must arrive within this (HTTP/1; slowloris).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 pings at this interval; a peer that does not answer within
    /// the same time is gone.
    pub keep_alive_interval: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams: u32,
}

impl ConnectionLimits {
    pub fn bridge() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            keep_alive_interval: Duration::from_secs(30),
            max_header_bytes: BRIDGE_MAX_HEADER_BYTES,
            max_headers: BRIDGE_MAX_HEADERS,
            max_streams: 256,
        }
    }

    /// Bridges hold a few long-lived multiplexed connections: many streams
    /// each, and idle ones are closed later than users' (the bridge pings
    /// its own every 20 s).
    pub fn agent() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keep_alive_interval: Duration::from_secs(30),
            max_header_bytes: AGENT_MAX_HEADER_BYTES,
            max_headers: AGENT_MAX_HEADERS,
            max_streams: 4096,
        }
    }

    /// An HTTP/1.1 + HTTP/2 server builder with these limits and a timer
    /// (without one hyper silently skips its header-read timeout).
    pub fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_headers(self.max_headers)
            // Bounds the raw head (a longer one is 431); the request line
            // may carry a long path on top of the fields.
            .max_buf_size(self.max_header_bytes + 8 * 1024);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(self.keep_alive_interval)
            .keep_alive_timeout(self.keep_alive_interval)
            .max_concurrent_streams(self.max_streams)
            .max_header_list_size((self.max_header_bytes + 8 * 1024) as u32);
        builder
    }
}

/// The size of a request's or response's head as HTTP/2 counts it
/// (RFC 9113 6.5.2: name + value + 32 per field), and its field count.
pub fn head_size(headers: &HeaderMap, path: &str) -> (usize, usize) {
    let bytes = headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 32).sum::<usize>();
    (bytes + path.len() + 32, headers.len())
}

/// Whether a head is within the limits: `Err` names what is too large.
pub fn check_head(limits: &ConnectionLimits, headers: &HeaderMap, path: &str) -> Result<(), String> {
    let (bytes, count) = head_size(headers, path);
    if count > limits.max_headers {
        return Err(format!("{count} header fields; at most {} are accepted", limits.max_headers));
    }
    if bytes > limits.max_header_bytes {
        return Err(format!("headers of {bytes} bytes; at most {} are accepted", limits.max_header_bytes));
    }
    Ok(())
}

/// Requests in flight on one connection and when the last one began or
/// ended: the idle timer of [`serve`].
#[derive(Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` of the last change.
    last: AtomicU64,
    epoch: OnceInstant,
}

struct OnceInstant(Instant);

impl Default for OnceInstant {
    fn default() -> Self {
        OnceInstant(Instant::now())
    }
}

impl Activity {
    fn touch(&self) {
        self.last.store(self.epoch.0.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// A request began; it counts until the guard is dropped (keep it with
    /// the response body so a long stream is not idle).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(self.clone())
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        Some(self.epoch.0.elapsed().saturating_sub(last))
    }
}

/// One request in flight (see [`Activity::begin`]).
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a connection asked to finish may take before it is dropped,
/// unless a request is still in flight on it.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Completes once no request has been in flight on the connection for
/// `timeout`, counting from `since` at the earliest.
async fn idle(activity: &Activity, timeout: Duration, since: Instant) {
    let tick = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        tokio::time::sleep(tick).await;
        if let Some(idle) = activity.idle_for() {
            if idle >= timeout && since.elapsed() >= timeout {
                return;
            }
        }
    }
}

/// Serves one client connection (HTTP/1.1 with upgrades, or HTTP/2) until
/// it ends; once no request has been in flight on it for the idle timeout
/// it is asked to finish, and dropped after [`SHUTDOWN_GRACE`] if it does
/// not (an HTTP/2 peer holding a half-sent stream open, say). Upgraded
/// connections (WebSocket) leave this once switched.
pub async fn serve<I, S, B>(limits: &ConnectionLimits, io: I, activity: &Activity, service: S) -> Result<(), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>,
    S::Future: 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: auto::HttpServerConnExec<S::Future, B>,
{
    let builder = limits.builder();
    let mut connection = std::pin::pin!(builder.serve_connection_with_upgrades(io, service));
    let opened = Instant::now();
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        _ = idle(activity, limits.idle_timeout, opened) => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                ended = connection.as_mut() => ended,
                _ = idle(activity, SHUTDOWN_GRACE, Instant::now()) => return Err("idle; dropped".into()),
            }
        }
    };
    ended.map_err(|err| err.to_string())
}

/// Open connections per client address, each at most `per_address`.
pub struct AddressCaps {
    per_address: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection of an address; released on drop.
pub struct AddressPermit {
    caps: Arc<AddressCaps>,
    address: IpAddr,
}

impl AddressCaps {
    pub fn new(per_address: usize) -> Arc<Self> {
        Arc::new(AddressCaps { per_address, open: Mutex::default() })
    }

    /// A permit, or None when the address already holds its share.
    pub fn try_acquire(self: &Arc<Self>, address: IpAddr) -> Option<AddressPermit> {
        let mut open = self.open.lock().unwrap();
        let count = open.entry(address).or_default();
        if *count >= self.per_address {
            return None;
        }
        *count += 1;
        Some(AddressPermit { caps: self.clone(), address })
    }

    pub fn open(&self, address: IpAddr) -> usize {
        self.open.lock().unwrap().get(&address).copied().unwrap_or(0)
    }
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().unwrap();
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_caps_count_per_address_and_release_on_drop() {
        let caps = AddressCaps::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = caps.try_acquire(a).unwrap();
        let _second = caps.try_acquire(a).unwrap();
        assert!(caps.try_acquire(a).is_none(), "third from one address");
        assert!(caps.try_acquire(b).is_some(), "another address is not affected");
        drop(first);
        assert!(caps.try_acquire(a).is_some(), "a closed connection frees its place");
    }

    #[test]
    fn heads_are_measured_as_http2_does() {
        let limits = ConnectionLimits::bridge();
        let mut headers = HeaderMap::new();
        headers.insert("x-a", "b".parse().unwrap());
        assert_eq!(head_size(&headers, "/p"), (3 + 1 + 32 + 2 + 32, 1));
        assert!(check_head(&limits, &headers, "/").is_ok());
        headers.insert("x-big", "x".repeat(BRIDGE_MAX_HEADER_BYTES).parse().unwrap());
        assert!(check_head(&limits, &headers, "/").unwrap_err().contains("bytes"));
        let mut many = HeaderMap::new();
        for i in 0..=BRIDGE_MAX_HEADERS {
            many.insert(http::HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(), "v".parse().unwrap());
        }
        assert!(check_head(&limits, &many, "/").unwrap_err().contains("header fields"));
    }

    #[test]
    fn what_the_bridge_passes_the_agent_accepts() {
        let (bridge, agent) = (ConnectionLimits::bridge(), ConnectionLimits::agent());
        // The bridge adds at most a few hundred bytes and five fields.
        assert!(bridge.max_header_bytes + 4096 <= agent.max_header_bytes);
        assert!(bridge.max_headers + 5 <= agent.max_headers);
    }
}
