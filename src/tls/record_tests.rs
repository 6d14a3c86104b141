//! Record protection round trips and refusals (`tls::record`).

use super::*;
use rustls::crypto::cipher::{AeadKey, Iv};

fn secrets(kind: u8) -> ConnectionTrafficSecrets {
    let iv = Iv::new([7; 12]);
    // AES-128 keys cannot be made outside rustls; tests/it/tls_stream.rs
    // negotiates that suite with a real peer.
    match kind {
        1 => ConnectionTrafficSecrets::Aes256Gcm { key: AeadKey::from([2u8; 32]), iv },
        _ => ConnectionTrafficSecrets::Chacha20Poly1305 { key: AeadKey::from([3u8; 32]), iv },
    }
}

fn pair(version: Version, kind: u8) -> (Sealer, Opener) {
    (Sealer::new(version, (5, secrets(kind)), u64::MAX).unwrap(), Opener::new(version, (5, secrets(kind))).unwrap())
}

#[test]
fn sealed_records_open_to_the_same_bytes_for_every_suite_and_version() {
    for version in [Version::Tls12, Version::Tls13] {
        for kind in 1..3 {
            let (mut sealer, mut opener) = pair(version, kind);
            let mut wire = Vec::new();
            let plain: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
            sealer.seal_into(ContentType::ApplicationData, &plain, &mut wire).unwrap();
            sealer.seal_into(ContentType::Alert, &[1, 0], &mut wire).unwrap();
            let mut got = Vec::new();
            let mut at = 0;
            let mut types = Vec::new();
            while at < wire.len() {
                let len = record_len(version, &wire[at..]).unwrap().unwrap();
                let opened = opener.open(&mut wire[at..at + len]).unwrap();
                types.push(opened.content_type);
                if opened.content_type == ContentType::ApplicationData {
                    got.extend_from_slice(&wire[at..][opened.payload]);
                }
                at += len;
            }
            assert_eq!(got, plain, "{version:?} {kind}");
            assert_eq!(types.last(), Some(&ContentType::Alert));
            assert_eq!(types.len(), 4);
        }
    }
}

#[test]
fn a_flipped_bit_anywhere_is_a_bad_record_mac_or_a_refused_header() {
    for version in [Version::Tls12, Version::Tls13] {
        let (mut sealer, _) = pair(version, 1);
        let mut wire = Vec::new();
        sealer.seal_into(ContentType::ApplicationData, b"some PDU bytes", &mut wire).unwrap();
        for i in 0..wire.len() {
            let mut bad = wire.clone();
            bad[i] ^= 0x01;
            let (_, mut opener) = pair(version, 1);
            let result = match record_len(version, &bad) {
                Some(Ok(len)) if len == bad.len() => opener.open(&mut bad).map(|_| ()),
                Some(Ok(_)) => continue, // the length byte: the record is cut elsewhere
                Some(Err(fatal)) => Err(fatal),
                None => unreachable!(),
            };
            assert!(result.is_err(), "{version:?}: flipping byte {i} went unnoticed");
        }
    }
}

#[test]
fn tls13_the_inner_type_is_the_last_non_zero_byte() {
    let (mut sealer, mut opener) = pair(Version::Tls13, 2);
    // Content that itself ends like a padded handshake record: only the
    // inner type byte after it counts.
    let mut payload = b"abc\x16\0\0\0".to_vec();
    let sealed = sealer.seal_in_place(ContentType::ApplicationData, &mut payload).unwrap();
    let mut wire = sealed.header().to_vec();
    wire.extend_from_slice(&payload);
    wire.extend_from_slice(sealed.trailer());
    let len = u16::from_be_bytes([wire[3], wire[4]]);
    assert_eq!(usize::from(len), wire.len() - HEADER_LEN);
    let opened = opener.open(&mut wire).unwrap();
    assert_eq!(opened.content_type, ContentType::ApplicationData);
    assert_eq!(&wire[opened.payload], b"abc\x16\0\0\0");
}

#[test]
fn oversized_and_foreign_headers_are_refused() {
    assert!(record_len(Version::Tls13, &[0x17, 3, 3]).is_none());
    let too_long = (MAX_CIPHERTEXT_13 + 1) as u16;
    let h = [0x17, 3, 3, (too_long >> 8) as u8, too_long as u8];
    assert_eq!(record_len(Version::Tls13, &h).unwrap().unwrap_err().alert, Some(AlertDescription::RecordOverflow));
    assert!(record_len(Version::Tls12, &h).unwrap().is_ok());
    assert!(record_len(Version::Tls12, &[0x18, 3, 3, 0, 1]).unwrap().is_err());
    assert!(record_len(Version::Tls12, &[0x17, 2, 0, 0, 1]).unwrap().is_err());
}

#[test]
fn the_limit_is_reported_before_it_is_passed() {
    let mut sealer = Sealer::new(Version::Tls13, (0, secrets(1)), 3).unwrap();
    assert!(!sealer.near_limit(3));
    assert!(sealer.near_limit(4));
    sealer.seal_in_place(ContentType::ApplicationData, &mut [0u8; 4]).unwrap();
    assert!(sealer.near_limit(3));
}
