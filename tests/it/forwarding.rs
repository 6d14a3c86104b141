//! "Forward the original A-ASSOCIATE-RQ bytes" and "the SCP's AC/RJ goes back
//! unchanged" (docs/architecture.md), checked against a fake backend that records the
//! exact bytes it receives. The requests carry what dicom-ul would not
//! re-encode faithfully: 0xFF in reserved bytes (as DCMTK writes them) and a
//! user-information sub-item dicom-ul does not know.

use crate::support;
use std::net::SocketAddr;

use crate::support::gateway::GatewaySpec;
use crate::support::pki::pki;
use crate::support::raw::{self, ae, Next};
use crate::support::{dimse, wait_for_count, CLOUD_AE, PACS_AE, PROMPT};
use dicomgate::report::Outcome;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

fn item(out: &mut Vec<u8>, item_type: u8, reserved: u8, body: &[u8]) {
    out.push(item_type);
    out.push(reserved);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
}

fn user_info(max_lengths: &[u32]) -> Vec<u8> {
    let mut user = Vec::new();
    for max_length in max_lengths {
        item(&mut user, 0x51, 0x00, &max_length.to_be_bytes());
    }
    item(&mut user, 0x52, 0x00, b"1.2.826.0.1.3680043.10.2");
    // A sub-item type no edition defines: PS3.8 §9.3 says skip it.
    item(&mut user, 0x77, 0x00, b"vendor-private");
    user
}

/// A-ASSOCIATE-RQ (`pdu_type` 0x01) or -AC (0x02) with DCMTK-style 0xFF
/// reserved bytes in the presentation context item.
fn associate_pdu(pdu_type: u8, max_length: u32) -> Vec<u8> {
    associate_pdu_with(pdu_type, &[max_length])
}

/// [`associate_pdu`] with any number of Maximum Length sub-items.
fn associate_pdu_with(pdu_type: u8, max_lengths: &[u32]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0x00, 0x01, 0x00, 0x00]);
    body.extend_from_slice(&ae(PACS_AE));
    body.extend_from_slice(&ae(CLOUD_AE));
    body.extend_from_slice(&[0; 32]);
    item(&mut body, 0x10, 0x00, b"1.2.840.10008.3.1.1.1");
    let mut pc = Vec::new();
    if pdu_type == 0x01 {
        pc.extend_from_slice(&[0x01, 0xFF, 0x00, 0xFF]);
        item(&mut pc, 0x30, 0x00, dimse::VERIFICATION.as_bytes());
        item(&mut pc, 0x40, 0x00, dimse::IMPLICIT_VR_LE.as_bytes());
        item(&mut body, 0x20, 0xFF, &pc);
    } else {
        pc.extend_from_slice(&[0x01, 0xFF, 0x00, 0xFF]); // id, reserved, result 0 (acceptance), reserved
        item(&mut pc, 0x40, 0x00, dimse::IMPLICIT_VR_LE.as_bytes());
        item(&mut body, 0x21, 0xFF, &pc);
    }
    item(&mut body, 0x50, 0x00, &user_info(max_lengths));
    let mut pdu = vec![pdu_type, 0x00];
    pdu.extend_from_slice(&(body.len() as u32).to_be_bytes());
    pdu.extend_from_slice(&body);
    pdu
}

fn wire(pdu: &raw::RawPdu) -> Vec<u8> {
    let mut out = vec![pdu.pdu_type, 0x00];
    out.extend_from_slice(&(pdu.body.len() as u32).to_be_bytes());
    out.extend_from_slice(&pdu.body);
    out
}

/// A backend that accepts one connection, reports the first PDU's bytes,
/// answers with `answer` and then holds the connection until the peer closes.
async fn recording_backend(answer: Vec<u8>) -> (SocketAddr, oneshot::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else { return };
        let Next::Pdu(rq) = raw::read_pdu(&mut s, PROMPT).await else { return };
        let _ = tx.send(wire(&rq));
        let _ = raw::send(&mut s, &answer).await;
        let _ = raw::read_pdu(&mut s, PROMPT).await;
    });
    (addr, rx)
}

/// Sends `rq` through a gateway in front of a recording backend that answers
/// `ac`; returns (bytes the backend got, bytes the client got back).
async fn through_gateway(rq: &[u8], ac: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
    let (backend, recorded) = recording_backend(ac).await;
    let gw = GatewaySpec::store(&[backend]).start().await;
    let mut s = raw::tls_connect(gw.addr(), pki().client_config(None)).await.expect("TLS");
    raw::send(&mut s, rq).await.expect("send RQ");
    let answer = match raw::read_pdu(&mut s, PROMPT).await {
        Next::Pdu(p) => wire(&p),
        other => panic!("expected the SCP's answer, got {other:?}"),
    };
    let got = support::within(PROMPT, "the RQ at the backend", recorded).await.expect("backend saw no PDU");
    drop(s);
    wait_for_count(&gw.metrics, "store", Outcome::Forwarded, 1).await;
    (got, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn associate_rq_and_ac_are_relayed_byte_for_byte() {
    let rq = associate_pdu(0x01, 16384);
    let ac = associate_pdu(0x02, 32768);
    let (at_backend, at_client) = through_gateway(&rq, ac.clone()).await;
    assert_eq!(at_backend, rq, "the A-ASSOCIATE-RQ was altered on the way to the SCP");
    assert_eq!(at_client, ac, "the A-ASSOCIATE-AC was altered on the way back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scp_rejection_is_relayed_unchanged() {
    let rq = associate_pdu(0x01, 16384);
    let rj = vec![0x03, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x01, 0x01, 0x07];
    let (at_backend, at_client) = through_gateway(&rq, rj.clone()).await;
    assert_eq!(at_backend, rq);
    assert_eq!(at_client, rj, "the SCP's A-ASSOCIATE-RJ was altered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlimited_max_length_is_clamped_in_place_and_nothing_else_changes() {
    // "Clamp what you enforce": a Maximum Length of 0 (unlimited) must not
    // reach the other side, which would then send PDUs the relay refuses.
    let rq = associate_pdu(0x01, 0);
    let ac = associate_pdu(0x02, 0);
    let (at_backend, at_client) = through_gateway(&rq, ac.clone()).await;
    for (what, sent, got) in [("RQ", &rq, &at_backend), ("AC", &ac, &at_client)] {
        assert_eq!(got.len(), sent.len(), "{what}: length changed");
        let offset = max_length_offset(sent);
        let clamped = u32::from_be_bytes([got[offset], got[offset + 1], got[offset + 2], got[offset + 3]]);
        assert!(clamped >= 4096, "{what}: Maximum Length forwarded as {clamped}");
        let mut expected = sent.clone();
        expected[offset..offset + 4].copy_from_slice(&clamped.to_be_bytes());
        assert_eq!(got, &expected, "{what}: bytes other than Maximum Length changed");
    }
}

/// Offset of the Maximum Length value (the 4 bytes after `51 00 00 04`).
fn max_length_offset(pdu: &[u8]) -> usize {
    pdu.windows(4).position(|w| w == [0x51, 0x00, 0x00, 0x04]).expect("max length sub-item") + 4
}

/// The values of every Maximum Length sub-item, in order.
fn max_lengths(pdu: &[u8]) -> Vec<u32> {
    let at: Vec<usize> =
        pdu.windows(4).enumerate().filter(|(_, w)| *w == [0x51, 0x00, 0x00, 0x04]).map(|(i, _)| i + 4).collect();
    at.iter().map(|&o| u32::from_be_bytes([pdu[o], pdu[o + 1], pdu[o + 2], pdu[o + 3]])).collect()
}

/// Issue 20, finding 5, on the real daemon at defaults (max_pdu_length 4 MiB):
/// with two Maximum Length sub-items, neither reaches the other side
/// unclamped; both say the limit the relay enforces, and nothing else changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_maximum_length_sub_item_is_clamped_on_the_real_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    support::daemon::gen_cert(dir.path(), 365).await;
    for (rq_values, ac_values) in [([0x7FFF_FFFF, 16384], [0, 16384]), ([0, 16384], [0x7FFF_FFFF, 16384])] {
        let (rq, ac) = (associate_pdu_with(0x01, &rq_values), associate_pdu_with(0x02, &ac_values));
        let (backend, recorded) = recording_backend(ac.clone()).await;
        let yaml = format!(
            "log: {{level: info}}\nbackends:\n  pacs:\n    ae_title: PACS\n    servers: [\"{backend}\"]\n    \
             health_check: {{mode: \"off\"}}\nlisteners:\n  store:\n    listen: 127.0.0.1:0\n    \
             tls: {{certificate: scp_cert.pem, private_key: scp_key.pem}}\n    allow: [127.0.0.1/32]\n    \
             routes: {{PACS: pacs}}\n"
        );
        let path = dir.path().join("dicomgate.yaml");
        std::fs::write(&path, yaml).expect("write config");
        let daemon = support::daemon::Daemon::start(&path).await;
        let mut s = raw::tls_connect(daemon.addr("store"), support::wire::insecure_client()).await.expect("TLS");
        raw::send(&mut s, &rq).await.expect("send RQ");
        let at_client = match raw::read_pdu(&mut s, PROMPT).await {
            Next::Pdu(p) => wire(&p),
            other => panic!("expected the A-ASSOCIATE-AC, got {other:?}"),
        };
        let at_backend = support::within(PROMPT, "the RQ at the backend", recorded).await.expect("backend saw no PDU");
        eprintln!(
            "Maximum Length: RQ {rq_values:?} reached the SCP as {:?}; AC {ac_values:?} reached the client as {:?}",
            max_lengths(&at_backend),
            max_lengths(&at_client)
        );
        assert_eq!(max_lengths(&at_backend), [16384, 16384], "RQ {rq_values:?}");
        assert_eq!(max_lengths(&at_client), [16384, 16384], "AC {ac_values:?}");
        for (sent, got) in [(&rq, &at_backend), (&ac, &at_client)] {
            let mut expected = sent.clone();
            for o in [max_length_offset(sent), max_length_offset(sent) + 8] {
                expected[o..o + 4].copy_from_slice(&16384u32.to_be_bytes());
            }
            assert_eq!(got, &expected, "bytes other than Maximum Length changed");
        }
    }
}
