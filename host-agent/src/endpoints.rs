//! Where the control plane can be reached: each configured URL resolved
//! into its addresses (a name with several is several endpoints, resolved
//! again at every round), and the order one round tries them in.
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::ControlPlaneUrl;

/// Longest one URL's name lookup may take before the round goes on without it.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// One address of one control plane URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its host is the name TLS checks, whatever address is dialled.
    pub url: ControlPlaneUrl,
    pub addr: SocketAddr,
}

impl Endpoint {
    /// A lazily connecting channel to this address, for this URL's name.
    pub fn channel(&self, config: rustls::ClientConfig) -> anyhow::Result<tonic::transport::Channel> {
        clawplane_tls::channel_at(&self.url.to_string(), self.addr, config)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.url.host().parse::<std::net::IpAddr>() {
            Ok(_) => write!(f, "{}", self.url),
            Err(_) => write!(f, "{} ({})", self.url, self.addr),
        }
    }
}

/// Every endpoint of `urls`, in their order (each name's addresses in the
/// resolver's order), and a line per URL that did not resolve.
pub async fn resolve(urls: &[ControlPlaneUrl]) -> (Vec<Endpoint>, Vec<String>) {
    let (mut endpoints, mut failures) = (Vec::new(), Vec::new());
    for url in urls {
        let addrs = match url.host().parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(vec![SocketAddr::new(ip, url.port())]),
            Err(_) => lookup(url).await,
        };
        match addrs {
            Ok(addrs) if addrs.is_empty() => failures.push(format!("{url}: the name has no address")),
            Ok(addrs) => {
                for addr in addrs {
                    let endpoint = Endpoint { url: url.clone(), addr };
                    if !endpoints.contains(&endpoint) {
                        endpoints.push(endpoint);
                    }
                }
            }
            Err(reason) => failures.push(format!("{url}: {reason}")),
        }
    }
    (endpoints, failures)
}

async fn lookup(url: &ControlPlaneUrl) -> Result<Vec<SocketAddr>, String> {
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((url.host(), url.port()))).await {
        Ok(Ok(addrs)) => Ok(addrs.collect()),
        Ok(Err(err)) => Err(format!("cannot resolve {}: {err}", url.host())),
        Err(_) => Err(format!("resolving {} took longer than {RESOLVE_TIMEOUT:?}", url.host())),
    }
}

/// The order of one round: the endpoints as configured, except that a
/// session that was just lost is retried on its own endpoint first (a
/// blip), and the round then goes on from the endpoint after it.
pub fn round(endpoints: &[Endpoint], lost_on: Option<&Endpoint>) -> Vec<Endpoint> {
    let start = lost_on.and_then(|lost| endpoints.iter().position(|e| e == lost)).unwrap_or(0);
    endpoints[start..].iter().chain(&endpoints[..start]).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str, addr: &str) -> Endpoint {
        Endpoint { url: ControlPlaneUrl::parse(url).unwrap(), addr: addr.parse().unwrap() }
    }

    #[test]
    fn a_round_starts_on_the_lost_endpoint_then_rotates() {
        let a = endpoint("https://a.test:1", "10.0.0.1:1");
        let b1 = endpoint("https://b.test:2", "10.0.0.2:2");
        let b2 = endpoint("https://b.test:2", "10.0.0.3:2");
        let c = endpoint("https://c.test:3", "10.0.0.4:3");
        let gone = endpoint("https://b.test:2", "10.0.0.9:2");
        let all = [a.clone(), b1.clone(), b2.clone(), c.clone()];
        let cases: &[(&str, Option<&Endpoint>, Vec<&Endpoint>)] = &[
            ("nothing lost: configured order", None, vec![&a, &b1, &b2, &c]),
            ("lost on the first", Some(&a), vec![&a, &b1, &b2, &c]),
            ("lost on a later one: it, then the next, wrapping", Some(&b2), vec![&b2, &c, &a, &b1]),
            ("lost on the last", Some(&c), vec![&c, &a, &b1, &b2]),
            ("its address no longer resolves: configured order", Some(&gone), vec![&a, &b1, &b2, &c]),
        ];
        for (name, lost, expected) in cases {
            let order = round(&all, *lost);
            assert_eq!(order.iter().collect::<Vec<_>>(), *expected, "{name}");
        }
        assert!(round(&[], Some(&a)).is_empty(), "nothing resolved: an empty round");
    }

    #[tokio::test]
    async fn names_resolve_to_one_endpoint_per_address_keeping_the_name() {
        let urls = [
            ControlPlaneUrl::parse("https://10.1.2.3:7701").unwrap(),
            ControlPlaneUrl::parse("https://localhost:7702").unwrap(),
            ControlPlaneUrl::parse("https://no-such-host.invalid:7703").unwrap(),
        ];
        let (endpoints, failures) = resolve(&urls).await;
        assert_eq!(endpoints[0], endpoint("https://10.1.2.3:7701", "10.1.2.3:7701"), "an address needs no lookup");
        assert_eq!(endpoints[0].to_string(), "https://10.1.2.3:7701");
        let local = &endpoints[1..];
        assert!(!local.is_empty() && local.iter().all(|e| e.url.host() == "localhost" && e.addr.ip().is_loopback()));
        assert!(local.iter().all(|e| e.addr.port() == 7702));
        assert!(local[0].to_string().starts_with("https://localhost:7702 ("), "{}", local[0]);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].starts_with("https://no-such-host.invalid:7703: "), "{failures:?}");
    }
}
