//! Fuzz target: the caller's address as the webhook's allow list sees it (`http::client_ip`).
//!
//! The input is lines of text, so that seeds and reproducers stay readable:
//!
//! ```text
//! peer 10.0.0.2                 the TCP peer (required; the last one counts)
//! trusted 10.0.0.0/8            a TrustedProxyRanges entry, a CIDR or an address (repeatable)
//! xff 1.1.1.1, 52.96.1.1        one X-Forwarded-For header line, raw bytes (repeatable)
//! forwarded for=192.0.2.60      one Forwarded header line (repeatable)
//! client 198.51.100.7           a value a client prepends to X-Forwarded-For itself
//! ```
//!
//! Lines that do not parse are skipped. The properties checked, from the rules in
//! `src/http/source.rs` and the README's reverse-proxy section: an untrusted peer (so also any
//! peer with no trusted ranges) is the client whatever is forwarded; the answer is `None`, the
//! peer, or an address written in `X-Forwarded-For`; a trusted address is the answer only when
//! every hop is trusted, and then it is the leftmost hop; `Forwarded` is not read; and a value a
//! client wrote left of the hops changes nothing unless every hop was trusted.

#![no_main]

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use rooms_sync::http::client_ip;

#[derive(Default)]
struct Case {
    peer: Option<IpAddr>,
    trusted: Vec<IpNet>,
    xff: Vec<HeaderValue>,
    forwarded: Vec<HeaderValue>,
    client: Option<HeaderValue>,
}

fn parse_case(data: &[u8]) -> Case {
    let mut case = Case::default();
    for line in data.split(|&b| b == b'\n') {
        let (word, rest) = match line.iter().position(|&b| b == b' ') {
            Some(at) => (&line[..at], &line[at + 1..]),
            None => (line, &[][..]),
        };
        let text = std::str::from_utf8(rest).ok().map(str::trim);
        match word {
            b"peer" => {
                if let Some(ip) = text.and_then(|t| t.parse().ok()) {
                    case.peer = Some(ip);
                }
            }
            b"trusted" => {
                let net = text.and_then(|t| {
                    t.parse::<IpNet>()
                        .ok()
                        .or_else(|| t.parse::<IpAddr>().ok().map(IpNet::from))
                });
                case.trusted.extend(net);
            }
            b"xff" => case.xff.extend(HeaderValue::from_bytes(rest).ok()),
            b"forwarded" => case.forwarded.extend(HeaderValue::from_bytes(rest).ok()),
            b"client" => case.client = HeaderValue::from_bytes(rest).ok(),
            _ => {}
        }
    }
    case
}

fn headers(xff: &[HeaderValue], forwarded: &[HeaderValue]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for value in xff {
        map.append("x-forwarded-for", value.clone());
    }
    for value in forwarded {
        map.append(HeaderName::from_static("forwarded"), value.clone());
        map.append(HeaderName::from_static("x-real-ip"), value.clone());
    }
    map
}

/// The hops of `X-Forwarded-For`, left to right, each as an address if it reads as one (what a
/// proxy writes: an address, with or without a port).
fn hops(xff: &[HeaderValue]) -> Vec<Option<IpAddr>> {
    xff.iter()
        .flat_map(|value| match value.to_str() {
            Ok(text) => text.split(',').map(read_hop).collect(),
            Err(_) => vec![None],
        })
        .collect()
}

fn read_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

fuzz_target!(|data: &[u8]| {
    let case = parse_case(data);
    let Some(raw_peer) = case.peer else {
        return;
    };
    // Answers are canonical: an IPv4-mapped IPv6 peer is its IPv4 address.
    let peer = raw_peer.to_canonical();
    let is_trusted = |ip: &IpAddr| case.trusted.iter().any(|net| net.contains(ip));
    let plain = headers(&case.xff, &[]);
    let answer = client_ip(raw_peer, &plain, &case.trusted);

    assert_eq!(
        client_ip(raw_peer, &plain, &[]),
        Some(peer),
        "with no trusted proxy the peer is the client"
    );
    if !is_trusted(&peer) {
        assert_eq!(answer, Some(peer), "an untrusted peer is the client");
    }

    let hops = hops(&case.xff);
    if let Some(ip) = answer {
        assert!(
            ip == peer || hops.contains(&Some(ip)),
            "{ip} is neither the peer nor a forwarded address"
        );
        if is_trusted(&ip) {
            assert!(
                hops.iter().all(|h| h.is_some_and(|h| is_trusted(&h))),
                "a trusted {ip} answered while an untrusted or unreadable hop was left"
            );
            assert_eq!(Some(ip), hops.first().copied().flatten().or(Some(peer)));
        }
    }

    // Only X-Forwarded-For is read.
    let with_others = headers(&case.xff, &case.forwarded);
    assert_eq!(client_ip(raw_peer, &with_others, &case.trusted), answer);

    // A value the client wrote left of the hops is never believed: it changes the answer only
    // when the walk ran past every hop (all trusted), where it becomes the new leftmost hop.
    if let Some(client) = &case.client {
        let exhausted = answer.is_some_and(|ip| is_trusted(&ip));
        if !exhausted {
            let mut prefixed = vec![client.clone()];
            prefixed.extend(case.xff.iter().cloned());
            assert_eq!(
                client_ip(raw_peer, &headers(&prefixed, &[]), &case.trusted),
                answer,
                "a client-written hop changed the answer"
            );
        }
    }
});
