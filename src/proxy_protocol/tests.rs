use super::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    h.extend_from_slice(body);
    h
}

fn v2_tcp4(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut body = src.to_vec();
    body.extend_from_slice(&[10, 0, 0, 1]);
    body.extend_from_slice(&sport.to_be_bytes());
    body.extend_from_slice(&2762u16.to_be_bytes());
    v2(0x1, 0x11, &body)
}

/// Feeds `input` as [`read_header`] would if every read returned a
/// single byte (the worst fragmentation), and returns the result with
/// how many bytes were consumed.
fn frame(input: &[u8], accepted: ProxyVersions) -> (Result<ProxyHeader, ProxyError>, usize) {
    let mut buf = Vec::new();
    loop {
        match needed(&buf, accepted) {
            Err(e) => return (Err(e), buf.len()),
            Ok(Need::Complete) => return (parse(&buf), buf.len()),
            Ok(Need::More(n)) => {
                assert!(n >= 1);
                let Some(&next) = input.get(buf.len()) else { return (Err(ProxyError::Truncated), buf.len()) };
                buf.push(next);
            }
        }
    }
}

#[test]
fn v1_tcp4_and_tcp6_are_read_to_the_crlf_and_no_further() {
    let mut input = b"PROXY TCP4 34.203.166.92 10.0.0.1 51234 2762\r\n".to_vec();
    let len = input.len();
    input.extend_from_slice(&[0x16, 0x03, 0x01]);
    let (r, used) = frame(&input, ProxyVersions::Any);
    assert_eq!(used, len);
    let h = r.unwrap();
    assert_eq!(h.carried, Carried::Client("34.203.166.92:51234".parse().unwrap()));
    assert_eq!(h.version, 1);

    let input = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 2762\r\n\x01\x00";
    let (r, used) = frame(input, ProxyVersions::V1);
    assert_eq!(used, input.len() - 2);
    let expected = SocketAddr::new(IpAddr::V6("2001:db8::1".parse::<Ipv6Addr>().unwrap()), 4000);
    assert_eq!(r.unwrap().carried, Carried::Client(expected));
}

#[test]
fn v1_unknown_is_the_shortest_header_and_carries_no_client() {
    let input = b"PROXY UNKNOWN\r\n\x16";
    let (r, used) = frame(input, ProxyVersions::Any);
    assert_eq!(used, 15);
    let h = r.unwrap();
    assert_eq!(h.carried, Carried::Unknown);
    let lb: SocketAddr = "10.0.0.5:40000".parse().unwrap();
    assert_eq!(h.client_or(lb), lb);
    assert_eq!(h.describe(), "v1 UNKNOWN");
    // §2.1: anything between UNKNOWN and CRLF is ignored.
    let (r, _) = frame(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ProxyVersions::Any);
    assert_eq!(r.unwrap().carried, Carried::Unknown);
}

#[test]
fn v2_proxy_local_and_unspec() {
    let mut input = v2_tcp4([34, 203, 166, 92], 51234);
    let len = input.len();
    input.extend_from_slice(b"\x16\x03\x01");
    let (r, used) = frame(&input, ProxyVersions::V2);
    assert_eq!(used, len);
    assert_eq!(r.unwrap().carried, Carried::Client(SocketAddr::from((Ipv4Addr::new(34, 203, 166, 92), 51234))));

    let (r, used) = frame(&v2(0x0, 0x00, &[]), ProxyVersions::Any);
    assert_eq!(used, 16);
    let h = r.unwrap();
    assert_eq!(h.carried, Carried::Local);
    assert_eq!(h.describe(), "v2 LOCAL");

    let (r, _) = frame(&v2(0x1, 0x00, &[]), ProxyVersions::Any);
    assert_eq!(r.unwrap().carried, Carried::Unknown);
}

#[test]
fn v2_ipv6_with_tlvs() {
    let mut body = Vec::new();
    body.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
    body.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    body.extend_from_slice(&1234u16.to_be_bytes());
    body.extend_from_slice(&2762u16.to_be_bytes());
    body.extend_from_slice(&[0x05, 0x00, 0x04, b'a', b'b', b'c', b'd']); // PP2_TYPE_UNIQUE_ID
    let (r, used) = frame(&v2(0x1, 0x21, &body), ProxyVersions::Any);
    assert_eq!(used, 16 + body.len());
    assert_eq!(r.unwrap().carried, Carried::Client("[2001:db8::7]:1234".parse().unwrap()));
}

#[test]
fn the_wrong_version_is_refused_once_its_signature_is_complete() {
    let v1 = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
    let (r, used) = frame(v1, ProxyVersions::V2);
    assert!(matches!(r, Err(ProxyError::WrongVersion { got: 1, .. })), "{r:?}");
    assert_eq!(used, 6);
    let (r, used) = frame(&v2_tcp4([1, 2, 3, 4], 1), ProxyVersions::V1);
    assert!(matches!(r, Err(ProxyError::WrongVersion { got: 2, .. })), "{r:?}");
    assert_eq!(used, 12);
    // Something else starting with "P" is no header at all.
    let (r, _) = frame(b"PUT / HTTP/1.1\r\n", ProxyVersions::V2);
    assert!(matches!(r, Err(ProxyError::Missing(b'P'))), "{r:?}");
}

#[test]
fn a_direct_client_is_refused_at_the_first_byte() {
    for (first, hint) in [(0x16u8, "TLS"), (0x01, "A-ASSOCIATE-RQ"), (b'G', "")] {
        let (r, used) = frame(&[first, 0, 0, 0], ProxyVersions::Any);
        let e = r.unwrap_err();
        assert!(matches!(e, ProxyError::Missing(b) if b == first), "{e:?}");
        assert!(e.to_string().contains(hint), "{e}");
        assert_eq!(used, 1);
    }
    // "P…" that is not "PROXY ": refused as soon as it differs.
    let (r, used) = frame(b"POST / HTTP/1.1\r\n", ProxyVersions::Any);
    assert!(matches!(r, Err(ProxyError::Missing(b'P'))), "{r:?}");
    assert_eq!(used, 2);
    // A v2 signature that goes wrong at byte 8.
    let mut bad = V2_SIGNATURE.to_vec();
    bad[7] = b'X';
    let (r, _) = frame(&bad, ProxyVersions::Any);
    assert!(matches!(r, Err(ProxyError::Missing(0x0D))), "{r:?}");
}

#[test]
fn bounds_hold() {
    let long = format!("PROXY TCP4 {} 1 2\r\n", "1".repeat(100));
    let (r, used) = frame(long.as_bytes(), ProxyVersions::Any);
    assert!(matches!(r, Err(ProxyError::V1TooLong)), "{r:?}");
    assert!(used <= V1_MAX);

    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
    let (r, used) = frame(&h, ProxyVersions::Any);
    assert!(matches!(r, Err(ProxyError::V2TooLong(65535))), "{r:?}");
    assert_eq!(used, 16);
}

#[test]
fn malformed_headers_are_errors() {
    for bad in [
        &b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"[..],
        b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",
    ] {
        let (r, _) = frame(bad, ProxyVersions::Any);
        assert!(r.is_err(), "{:?} accepted: {r:?}", String::from_utf8_lossy(bad));
    }
    // v2: version 3; command 0xF; IPv4 family with too short a block; UDP.
    let mut h = v2_tcp4([1, 2, 3, 4], 1);
    h[12] = 0x31;
    assert!(matches!(frame(&h, ProxyVersions::Any).0, Err(ProxyError::Malformed { version: 2, .. })));
    let mut h = v2_tcp4([1, 2, 3, 4], 1);
    h[12] = 0x2F;
    assert!(frame(&h, ProxyVersions::Any).0.is_err());
    assert!(frame(&v2(0x1, 0x11, &[1, 2, 3, 4]), ProxyVersions::Any).0.is_err());
    let mut h = v2_tcp4([1, 2, 3, 4], 1);
    h[13] = 0x12;
    assert!(frame(&h, ProxyVersions::Any).0.is_err());
}

#[test]
fn no_input_panics_or_overreads() {
    // A small deterministic generator: prefixes of valid headers with
    // random tails, and random bytes.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let seeds: [Vec<u8>; 3] =
        [b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(), v2_tcp4([9, 9, 9, 9], 9), V2_SIGNATURE.to_vec()];
    for i in 0..20_000 {
        let base = &seeds[i % 3];
        let keep = (next() as usize) % (base.len() + 1);
        let mut input = base[..keep].to_vec();
        let extra = (next() as usize) % 64;
        input.extend((0..extra).map(|_| next() as u8));
        for accepted in [ProxyVersions::V1, ProxyVersions::V2, ProxyVersions::Any] {
            let (r, used) = frame(&input, accepted);
            assert!(used <= input.len());
            if let Ok(h) = r {
                // A header that parsed was consumed exactly.
                assert_eq!(parse(&input[..used]).ok(), Some(h));
            }
        }
    }
}

#[tokio::test]
async fn read_header_leaves_the_following_bytes_in_the_stream() {
    let (mut client, mut server) = tokio::io::duplex(256);
    let header = v2_tcp4([34, 203, 166, 92], 443);
    tokio::io::AsyncWriteExt::write_all(&mut client, &header).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut client, b"\x01rest").await.unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    let h = read_header(&mut server, ProxyVersions::Any, deadline).await.unwrap();
    assert_eq!(h.carried, Carried::Client("34.203.166.92:443".parse().unwrap()));
    let mut rest = [0u8; 5];
    server.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest, b"\x01rest");
}

#[tokio::test(start_paused = true)]
async fn silence_and_early_close_are_told_apart() {
    let (mut client, mut server) = tokio::io::duplex(256);
    tokio::io::AsyncWriteExt::write_all(&mut client, b"PROXY TCP4").await.unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    let e = read_header(&mut server, ProxyVersions::Any, deadline).await.unwrap_err();
    assert!(matches!(e, ProxyError::Timeout(10)), "{e:?}");
    drop(client);
    let e = read_header(&mut server, ProxyVersions::Any, Instant::now() + std::time::Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(e, ProxyError::ClosedEarly), "{e:?}");
}
