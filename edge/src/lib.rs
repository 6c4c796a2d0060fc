//! What Clawplane's servers on the user path share, so they agree: the
//! API listener, the gateway bridge and the host agent's tenant proxy.
//!
//! Layout: `agents` connects to host agents' tenant proxies (mutual TLS,
//! one HTTP/2 connection per host); `connections` bounds client connections (timeouts, header
//! limits, open connections per address) and serves one; `forward` holds
//! the proxies' forwarding rules (hop-by-hop headers, upgrades); `rate`
//! limits request rates per key; `shutdown` is one orderly stop for a
//! whole process.
pub mod agents;
pub mod connections;
pub mod forward;
pub mod rate;
pub mod shutdown;
