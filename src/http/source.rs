//! Who is calling: the peer address, or the client named in `X-Forwarded-For` when the peer is a
//! trusted proxy, and the allow-list check that runs before a webhook body is read.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

use super::ApiError;
use crate::config::HttpSettings;

/// Walks `X-Forwarded-For` right to left from the peer, skipping trusted proxies; the first
/// untrusted hop is the client. Hops a client wrote itself (left of the first untrusted one)
/// are never believed. `None` when a hop that has to be read does not parse; when every hop is
/// trusted, the leftmost. Addresses are compared and returned in canonical form (an
/// IPv4-mapped IPv6 address as IPv4). Public for the fuzz targets (`fuzz/`).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut current = peer.to_canonical();
    if !is_trusted(&current) {
        return Some(current);
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().map_or(vec![""], |s| s.split(',').collect()))
        .collect();
    for hop in hops.iter().rev() {
        current = parse_hop(hop.trim())?;
        if !is_trusted(&current) {
            return Some(current);
        }
    }
    // Every hop is a trusted proxy: the leftmost is as close to the client as we can know.
    Some(current)
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:567`, `2001:db8::1` or `[2001:db8::1]:567`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// Refuses callers outside `WebhookAllowedIpRanges` with 403; the webhook calls it before
/// anything else, so a refused caller's body is never read. A request whose peer is unknown
/// (not from a listener) is refused when an allow-list is set.
pub(super) fn check(
    http: &HttpSettings,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    if http.webhook_allowed_ip_ranges.is_empty() {
        return Ok(());
    }
    let Some(peer) = peer else {
        return Err(ApiError::Forbidden);
    };
    let client = client_ip(peer.ip(), headers, &http.trusted_proxy_ranges);
    if client.is_some_and(|ip| {
        http.webhook_allowed_ip_ranges
            .iter()
            .any(|n| n.contains(&ip))
    }) {
        return Ok(());
    }
    tracing::warn!(peer = %peer.ip(), client = ?client, "webhook call from a source outside WebhookAllowedIpRanges");
    Err(ApiError::Forbidden)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let ip = client_ip(
            "203.0.113.9".parse().unwrap(),
            &xff(&["52.96.1.1"]),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, Some("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn a_trusted_proxy_chain_is_read_right_to_left_to_the_first_untrusted_hop() {
        let ip = client_ip(
            "10.0.0.2".parse().unwrap(),
            &xff(&["1.1.1.1, 52.96.1.1", "10.0.0.7"]),
            &nets(&["10.0.0.0/8"]),
        );
        // 1.1.1.1 was written by the client itself and is not believed.
        assert_eq!(ip, Some("52.96.1.1".parse().unwrap()));
    }

    #[test]
    fn hops_with_ports_and_brackets_and_mapped_addresses_parse() {
        let trusted = nets(&["10.0.0.0/8", "::1/128"]);
        let headers = xff(&["[2603:1026::5]:443"]);
        assert_eq!(
            client_ip("::1".parse().unwrap(), &headers, &trusted),
            Some("2603:1026::5".parse().unwrap())
        );
        let headers = xff(&["52.96.1.1:5555"]);
        assert_eq!(
            client_ip("::ffff:10.0.0.2".parse().unwrap(), &headers, &trusted),
            Some("52.96.1.1".parse().unwrap())
        );
    }

    #[test]
    fn garbage_from_a_trusted_proxy_leaves_the_client_unknown() {
        let ip = client_ip(
            "10.0.0.2".parse().unwrap(),
            &xff(&["unknown"]),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, None);
    }

    #[test]
    fn a_trusted_peer_without_forwarding_is_the_client() {
        let ip = client_ip(
            "10.0.0.2".parse().unwrap(),
            &HeaderMap::new(),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, Some("10.0.0.2".parse().unwrap()));
    }
}
