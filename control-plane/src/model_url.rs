//! Tenant-chosen model base URLs (SetModel.base_url) are fetched by the
//! tenant's gateway on a host inside the operator's network, so an
//! unchecked URL is a server-side request forgery: the cloud metadata
//! service, the host's loopback services, the internal network. Only
//! http(s) URLs to public addresses pass, unless the operator allows a
//! range by CIDR (`[models] allowed_cidrs`, e.g. a model server on the LAN).
//!
//! Every address the name resolves to is checked; the gateway resolves it
//! again later, so this does not stop DNS rebinding by a hostile DNS
//! server: egress filtering on the hosts is the complete answer, this is
//! the part the control plane can do.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::Semaphore;

/// How long resolving the URL's host may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Lookups in flight at once, process-wide. A name whose DNS answers
/// slowly keeps a blocking thread until the system resolver gives up,
/// whatever our timeout, so callers must not be able to pile them up.
const MAX_LOOKUPS: usize = 16;
static LOOKUPS: Semaphore = Semaphore::const_new(MAX_LOOKUPS);

#[derive(Debug, PartialEq, Eq)]
pub enum UrlError {
    /// Why the URL is refused.
    Refused(String),
    /// Every lookup slot stayed taken; nothing is wrong with the URL.
    Busy,
}

impl From<String> for UrlError {
    fn from(reason: String) -> Self {
        UrlError::Refused(reason)
    }
}

impl From<&str> for UrlError {
    fn from(reason: &str) -> Self {
        UrlError::Refused(reason.into())
    }
}

/// Checks `url`: Ok when it may be used.
pub async fn check(url: &str, allowed: &[IpNet]) -> Result<(), UrlError> {
    let (host, port) = parse(url)?;
    let addresses: Vec<IpAddr> = match host {
        Host::Ip(ip) => vec![ip],
        Host::Name(name) => resolve(name, port).await?,
    };
    for ip in addresses {
        if let Some(class) = refused_class(ip, allowed) {
            return Err(UrlError::Refused(format!(
                "its host resolves to {ip}, a {class} address; only public addresses are allowed \
                 (the operator may allow ranges with models.allowed_cidrs)"
            )));
        }
    }
    Ok(())
}

enum Host {
    Ip(IpAddr),
    Name(String),
}

/// Scheme, host and port. Deliberately narrower than URL syntax: the host
/// must be a DNS name of [A-Za-z0-9.-] or an IP literal, so no percent
/// encoding, backslash or userinfo trick parses differently here than in
/// the gateway's URL parser.
fn parse(url: &str) -> Result<(Host, u16), String> {
    if url.chars().any(|c| c.is_control() || c.is_whitespace() || c == '\\') {
        return Err("it must not contain spaces, control characters or backslashes".into());
    }
    let (scheme, rest) = url.split_once("://").ok_or("it must be an http:// or https:// URL")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return Err("its scheme must be http or https".into()),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err("it must not carry a user name or password".into());
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (ip, after) = bracketed.split_once(']').ok_or("its IPv6 address lacks the closing ']'")?;
        let ip: Ipv6Addr = ip.parse().map_err(|_| "its host is not a valid IPv6 address".to_string())?;
        (Host::Ip(IpAddr::V6(ip)), after)
    } else {
        let (name, after) = match authority.find(':') {
            Some(i) => authority.split_at(i),
            None => (authority, ""),
        };
        let name = name.trim_end_matches('.');
        if name.is_empty() {
            return Err("it has no host".into());
        }
        let name_ok = name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !name_ok {
            return Err("its host must be a DNS name (letters, digits, '-' and '.') or an IP address".into());
        }
        match name.parse::<Ipv4Addr>() {
            Ok(ip) => (Host::Ip(IpAddr::V4(ip)), after),
            Err(_) => (Host::Name(name.to_ascii_lowercase()), after),
        }
    };
    let port = match port {
        "" => default_port,
        port => port
            .strip_prefix(':')
            .filter(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0)
            .ok_or("its port must be a number from 1 to 65535")?,
    };
    Ok((host, port))
}

/// The system resolver's answer (as the gateway will get it), on a blocking
/// thread that keeps its lookup slot until the resolver returns.
async fn resolve(name: String, port: u16) -> Result<Vec<IpAddr>, UrlError> {
    let deadline = tokio::time::Instant::now() + RESOLVE_TIMEOUT;
    let permit = match tokio::time::timeout_at(deadline, LOOKUPS.acquire()).await {
        Ok(Ok(permit)) => permit,
        _ => return Err(UrlError::Busy),
    };
    let lookup = tokio::task::spawn_blocking(move || {
        let _slot = permit;
        (name.as_str(), port).to_socket_addrs().map(|found| found.map(|a| a.ip()).collect::<Vec<_>>())
    });
    match tokio::time::timeout_at(deadline, lookup).await {
        Err(_) => Err(format!("its host did not resolve within {}s", RESOLVE_TIMEOUT.as_secs()).into()),
        Ok(Err(join)) => Err(format!("its host could not be resolved ({join})").into()),
        Ok(Ok(Err(err))) => Err(format!("its host does not resolve ({err})").into()),
        Ok(Ok(Ok(addresses))) if addresses.is_empty() => Err("its host does not resolve to any address".into()),
        Ok(Ok(Ok(addresses))) => Ok(addresses),
    }
}

/// Why `ip` is refused, or None when it may be used.
pub fn refused_class(ip: IpAddr, allowed: &[IpNet]) -> Option<&'static str> {
    let embedded = embedded_v4(ip);
    let is_allowed = |ip: IpAddr| allowed.iter().any(|net| net.contains(&ip));
    if is_allowed(ip) || embedded.is_some_and(|v4| is_allowed(IpAddr::V4(v4))) {
        return None;
    }
    match (ip, embedded) {
        (_, Some(v4)) => v4_class(v4),
        (IpAddr::V4(v4), None) => v4_class(v4),
        (IpAddr::V6(v6), None) => v6_class(v6),
    }
}

/// The IPv4 address inside IPv6 forms that reach it: IPv4-mapped
/// (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::/96)
/// and 6to4 (2002:AABB:CCDD::/48).
fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        // :: and ::1 are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, _, _] if !(s[6] == 0 && s[7] <= 1) => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, a, b, ..] => Some(Ipv4Addr::new((a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8)),
        _ => None,
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if ip.is_private() {
        Some("private")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (CGNAT)")
    } else if a == 0 || (a == 192 && b == 0 && c == 0) || (a == 198 && (b == 18 || b == 19)) || a >= 240 {
        Some("reserved")
    } else {
        None
    }
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if first & 0xfe00 == 0xfc00 {
        Some("private (unique local)")
    } else if first & 0xffc0 == 0xfec0 {
        Some("site-local")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(text: &str) -> Option<&'static str> {
        refused_class(text.parse().unwrap(), &[])
    }

    #[test]
    fn internal_addresses_are_refused_in_every_form() {
        for (ip, expected) in [
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("fd00::1", "private (unique local)"),
            ("0.1.2.3", "reserved"),
            ("192.0.0.8", "reserved"),
            ("198.18.0.1", "reserved"),
            ("240.0.0.1", "reserved"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:10.0.0.1", "private"),
            ("::127.0.0.1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:7f00:1::", "loopback"),
        ] {
            assert_eq!(class(ip), Some(expected), "{ip}");
        }
        for public in ["93.184.215.14", "2606:4700::1111", "100.128.0.1", "172.32.0.1"] {
            assert_eq!(class(public), None, "{public}");
        }
    }

    #[test]
    fn allowed_ranges_win_over_the_class() {
        let allowed: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        for ip in ["127.0.0.1", "::ffff:127.0.0.1", "fd00::5"] {
            assert_eq!(refused_class(ip.parse().unwrap(), &allowed), None, "{ip}");
        }
        assert_eq!(refused_class("10.0.0.1".parse().unwrap(), &allowed), Some("private"));
    }

    #[tokio::test]
    async fn urls_are_parsed_narrowly() {
        for (url, expected) in [
            ("ftp://x", "scheme"),
            ("http://user:pw@example.com/", "user name"),
            ("http://example.com\\@127.0.0.1/", "backslash"),
            ("http://%31%32%37.0.0.1/", "DNS name"),
            ("http:///v1", "no host"),
            ("http://[::1/", "closing"),
            ("http://example.com:0/", "port"),
            ("http://example.com:99999/", "port"),
            ("example.com", "http://"),
            ("http://127.0.0.1:9/v1", "loopback"),
            ("http://[::ffff:127.0.0.1]/", "loopback"),
            ("http://localhost/", "loopback"),
            ("http://name.invalid/", "resolve"),
        ] {
            let Err(UrlError::Refused(err)) = check(url, &[]).await else { panic!("{url}: not refused") };
            assert!(err.contains(expected), "{url}: {err}");
        }
        check("https://93.184.215.14:8443/v1", &[]).await.unwrap();
        check("HTTP://[2606:4700::1111]/v1?x=1#y", &[]).await.unwrap();
    }
}
