//! HTTP forwarding rules shared by the two proxies on the user path: the
//! gateway bridge and the host agent's tenant proxy.
use http::header::{self, HeaderName};
use http::HeaderMap;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Headers that describe one hop and must not be forwarded (RFC 9110 7.6.1).
/// Names, not strings: a string is parsed again on every lookup, and this
/// runs twice per request in each proxy.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Names the tenant to the host agent; only the bridge sets it.
pub const TENANT_HEADER: HeaderName = HeaderName::from_static("x-clawplane-tenant");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The tokens of every `Connection` header, trimmed.
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers.get_all(header::CONNECTION).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim)
}

/// Removes every header in `names`. Most messages carry none of them: one
/// pass over what is there is cheaper than a removal per name.
pub fn remove_all(headers: &mut HeaderMap, names: &[HeaderName]) {
    if headers.keys().any(|name| names.contains(name)) {
        for name in names {
            headers.remove(name);
        }
    }
}

/// Removes the hop-by-hop headers, and those the `Connection` header names
/// as such.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.contains_key(header::CONNECTION) {
        return remove_all(headers, &HOP_BY_HOP);
    }
    let listed: Vec<HeaderName> =
        connection_tokens(headers).filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok()).collect();
    for name in listed.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
}

/// Whether a request asks to switch protocols (WebSocket): its
/// `Connection` and `Upgrade` headers must then be forwarded as they are.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// Once both sides of a switched connection (WebSocket) have upgraded,
/// relays bytes between them until either closes or neither sends anything
/// for `idle`, on a task of its own. `hold` (the request's place in its
/// connection's limits) lives as long as the relay.
pub fn splice<H: Send + 'static>(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: Duration,
    hold: H,
) {
    tokio::spawn(async move {
        let _hold = hold;
        if let (Ok(client), Ok(upstream)) = (client.await, upstream.await) {
            relay(TokioIo::new(client), TokioIo::new(upstream), idle).await;
        }
    });
}

/// Bytes both ways until either side ends or `idle` passes without any.
async fn relay<A, B>(mut a: A, mut b: B, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut from_a, mut from_b) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        tokio::select! {
            read = a.read(&mut from_a) => match read {
                Ok(n) if n > 0 && b.write_all(&from_a[..n]).await.is_ok() => {}
                _ => break,
            },
            read = b.read(&mut from_b) => match read {
                Ok(n) if n > 0 && a.write_all(&from_b[..n]).await.is_ok() => {}
                _ => break,
            },
            _ = tokio::time::sleep(idle) => break,
        }
    }
    let _ = a.shutdown().await;
    let _ = b.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_relay_carries_both_ways_until_a_side_closes() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (upstream, mut upstream_peer) = tokio::io::duplex(1024);
        let relay = tokio::spawn(relay(client, upstream, Duration::from_secs(3600)));
        client_peer.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        upstream_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        upstream_peer.write_all(b"pong").await.unwrap();
        client_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        drop(client_peer);
        tokio::time::timeout(Duration::from_secs(30), relay).await.expect("the relay ends").unwrap();
        assert_eq!(upstream_peer.read(&mut buf).await.unwrap(), 0, "the other side sees the close");
    }

    #[tokio::test]
    async fn a_relay_with_nothing_either_way_ends_at_its_idle_timeout() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (upstream, mut upstream_peer) = tokio::io::duplex(1024);
        let relay = tokio::spawn(relay(client, upstream, Duration::from_millis(100)));
        tokio::time::timeout(Duration::from_secs(30), relay).await.expect("an idle relay ends").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(client_peer.read(&mut buf).await.unwrap(), 0);
        assert_eq!(upstream_peer.read(&mut buf).await.unwrap(), 0);
    }

    #[test]
    fn hop_by_hop_headers_are_removed_and_the_rest_kept() {
        let cases: &[(&[(&str, &str)], &[&str])] = &[
            (&[("host", "a"), ("accept", "*/*")], &["host", "accept"]),
            (&[("host", "a"), ("connection", "keep-alive"), ("keep-alive", "timeout=5")], &["host"]),
            (&[("transfer-encoding", "chunked"), ("te", "trailers"), ("trailer", "x"), ("x-a", "1")], &["x-a"]),
            (&[("proxy-authorization", "Basic x"), ("proxy-connection", "close"), ("upgrade", "h2c")], &[]),
            // Named by Connection: hop-by-hop too, whatever the case.
            (&[("connection", "close, X-Hop"), ("x-hop", "1"), ("x-kept", "2")], &["x-kept"]),
            (&[("connection", "x-one"), ("connection", " x-two ,"), ("x-one", "1"), ("x-two", "2")], &[]),
        ];
        for (given, kept) in cases {
            let mut headers = HeaderMap::new();
            for (name, value) in *given {
                headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
            }
            strip_hop_by_hop(&mut headers);
            let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
            left.sort();
            let mut want = kept.to_vec();
            want.sort();
            assert_eq!(left, want, "{given:?}");
        }
    }
}
