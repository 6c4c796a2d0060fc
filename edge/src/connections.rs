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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    /// A switched connection (WebSocket) with no bytes either way for this
    /// long is closed.
    pub upgraded_idle_timeout: Duration,
}

impl ConnectionLimits {
    pub fn bridge() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            keep_alive_interval: Duration::from_secs(30),
            max_header_bytes: BRIDGE_MAX_HEADER_BYTES,
            max_headers: BRIDGE_MAX_HEADERS,
            upgraded_idle_timeout: Duration::from_secs(600),
            // Each stream may buffer a window's worth: few per user.
            max_streams: 128,
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
            upgraded_idle_timeout: Duration::from_secs(660),
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
fn head_size(headers: &HeaderMap, path: &str) -> (usize, usize) {
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
/// ended: the idle timer of [`serve`]. It holds the connection's permits
/// (open connections in all, and of its address), so a request that
/// outlives the connection (a WebSocket relay holding its [`InFlight`])
/// still counts against them.
pub struct Activity {
    in_flight: AtomicUsize,
    /// Whether any request has begun.
    began: AtomicBool,
    /// Milliseconds since `epoch` of the last change.
    last: AtomicU64,
    epoch: Instant,
    _permits: Box<dyn Send + Sync>,
}

impl Activity {
    pub fn holding(permits: impl Send + Sync + 'static) -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            began: AtomicBool::new(false),
            last: AtomicU64::new(0),
            epoch: Instant::now(),
            _permits: Box::new(permits),
        }
    }

    fn touch(&self) {
        self.last.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// A request began; it counts until the guard is dropped (keep it with
    /// the response body so a long stream is not idle).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.began.store(true, Ordering::Relaxed);
        self.touch();
        InFlight(self.clone())
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        Some(self.epoch.elapsed().saturating_sub(last))
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

/// Completes if no request has begun within `timeout`; else never.
async fn no_request_within(activity: &Activity, timeout: Duration) {
    tokio::time::sleep(timeout).await;
    if activity.began.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}

/// Serves one client connection (HTTP/1.1 with upgrades, or HTTP/2) until
/// it ends; once no request has been in flight on it for the idle timeout
/// it is asked to finish, and dropped after [`SHUTDOWN_GRACE`] if it does
/// not (an HTTP/2 peer holding a half-sent stream open, say). Once `stop`
/// completes it is asked to finish too: requests in flight run to their
/// end, no new one starts (the caller bounds how long that may take).
/// Upgraded connections (WebSocket) leave this once switched.
pub async fn serve<I, S, B>(
    limits: &ConnectionLimits,
    io: I,
    activity: &Activity,
    stop: impl std::future::Future<Output = ()>,
    service: S,
) -> Result<(), String>
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
        // hyper's header-read timer starts only once it knows the protocol:
        // a client that sends nothing (or half a preface) is dropped here.
        _ = no_request_within(activity, limits.header_read_timeout) => return Err("no request in time; dropped".into()),
        _ = idle(activity, limits.idle_timeout, opened) => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                ended = connection.as_mut() => ended,
                _ = idle(activity, SHUTDOWN_GRACE, Instant::now()) => return Err("idle; dropped".into()),
            }
        }
        _ = stop => {
            connection.as_mut().graceful_shutdown();
            connection.as_mut().await
        }
    };
    ended.map_err(|err| err.to_string())
}

/// The key one client is counted under: its address, or for IPv6 its /64
/// (one subscriber's whole allocation, which it can spread requests over).
pub fn client_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

/// Open connections per client (see [`client_key`]), each at most
/// `per_address`; 0 is no limit.
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

    /// A permit (None inside when there is no limit), or None when the
    /// client already holds its share.
    pub fn try_acquire(self: &Arc<Self>, address: IpAddr) -> Option<Option<AddressPermit>> {
        if self.per_address == 0 {
            return Some(None);
        }
        let address = client_key(address);
        let mut open = self.open.lock().unwrap();
        let count = open.get(&address).copied().unwrap_or(0);
        if count >= self.per_address {
            return None;
        }
        open.insert(address, count + 1);
        Some(Some(AddressPermit { caps: self.clone(), address }))
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
        let ipv6 = AddressCaps::new(1);
        let _held = ipv6.try_acquire("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(ipv6.try_acquire("2001:db8:1:2:ffff::9".parse().unwrap()).is_none(), "one /64 is one client");
        assert!(ipv6.try_acquire("2001:db8:1:3::1".parse().unwrap()).is_some());
        let unlimited = AddressCaps::new(0);
        for _ in 0..1000 {
            assert!(unlimited.try_acquire(a).is_some());
        }
        assert!(unlimited.open.lock().unwrap().is_empty(), "no limit keeps no state");
    }

    #[test]
    fn clients_are_keyed_by_address_or_ipv6_slash_64() {
        let cases = [
            ("192.0.2.7", "192.0.2.7"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
            ("2001:db8:aa:bb:cc:dd:ee:ff", "2001:db8:aa:bb::"),
            ("::1", "::"),
        ];
        for (address, key) in cases {
            assert_eq!(client_key(address.parse().unwrap()), key.parse::<IpAddr>().unwrap(), "{address}");
        }
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

/// The next client connection with its slot of `permits`, until shutdown.
/// A failed accept (e.g. out of file descriptors) is logged and retried
/// after a pause instead of ending the listener or spinning.
pub async fn next_connection(
    listener: &tokio::net::TcpListener,
    permits: &Arc<tokio::sync::Semaphore>,
    shutdown: &mut crate::shutdown::Shutdown,
    name: &str,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr, tokio::sync::OwnedSemaphorePermit)> {
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.ok()?,
            _ = shutdown.requested() => return None,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.requested() => return None,
        };
        match accepted {
            Ok((tcp, peer)) => return Some((tcp, peer, permit)),
            Err(err) => {
                tracing::warn!(listener = name, error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
