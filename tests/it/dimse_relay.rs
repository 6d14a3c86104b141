//! The DICOM-aware relay (issue 6) against real traffic: DIMSE statuses
//! counted from what SCPs answer, the Maximum Length limit enforced mid-
//! association, and the framer fed a recorded DCMTK session in random
//! chunkings.

use crate::support;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::dicom_file::{new_uid, ScImage};
use crate::support::raw::{self, Next};
use crate::support::tools::{args, free_port, output_text, run_scu, ScpProcess};
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::{Pdu, ServerAssociationOptions};
use dicomgate::relay::framer::{FrameEvent, Framer};
use dicomgate::{Config, Gateway, Metrics};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
const DEADLINE: Duration = Duration::from_secs(60);

/// A plaintext gateway in front of `backend`, with extra listener YAML.
async fn gateway(backend: SocketAddr, extra: &str) -> (SocketAddr, Metrics, tokio::sync::oneshot::Sender<()>) {
    support::init();
    let yaml = format!(
        "backends:\n  pacs: {{ae_title: STORESCP, servers: [\"{backend}\"], health_check: {{mode: \"off\"}}}}\n\
         listeners:\n  store:\n    listen: 127.0.0.1:0\n    insecure_plaintext: true\n    allow: [127.0.0.0/8]\n\
         \x20   routes: {{\"*\": pacs}}\n    timeouts: {{acse: 5s, dimse: 30s, connect: 5s}}\n{extra}"
    );
    let config = Config::from_yaml_str(&yaml, Path::new(".")).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let metrics = Metrics::new();
    let gw = Gateway::bind(config, metrics.clone()).await.expect("bind");
    let addr = gw.listener_addr("store").expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(gw.run(async move {
        let _ = rx.await;
    }));
    (addr, metrics, tx)
}

fn images(dir: &Path, n: u32) -> Vec<String> {
    let (study, series) = (new_uid(), new_uid());
    (0..n)
        .map(|i| {
            let path = dir.join(format!("img{i}.dcm"));
            ScImage::numbered(&study, &series, i + 1).write(&path);
            path.display().to_string()
        })
        .collect()
}

fn storescu_args(addr: SocketAddr, files: &[String]) -> Vec<String> {
    let mut a = args(&["-aet", "BUTTERFLY", "-aec", "STORESCP", "-to", "10", "-ta", "10", "-td", "30"]);
    a.extend([addr.ip().to_string(), addr.port().to_string()]);
    a.extend(files.iter().cloned());
    a
}

fn dimse_count(metrics: &Metrics, operation: &str, status: &str) -> u64 {
    let needle = format!(
        "dicomgate_dimse_operations_total{{listener=\"store\",operation=\"{operation}\",status=\"{status}\"}} "
    );
    metrics.render().lines().find_map(|l| l.strip_prefix(&needle).and_then(|v| v.parse().ok())).unwrap_or(0)
}

/// A dicom-ul SCP that accepts Secondary Capture and answers every C-STORE
/// with `status` (e.g. 0xA700 "out of resources").
async fn storing_scp(status: u16) -> SocketAddr {
    support::init();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let options = ServerAssociationOptions::new()
                    .accept_any()
                    .ae_title("STORESCP")
                    .with_abstract_syntax(SECONDARY_CAPTURE)
                    .with_transfer_syntax(EXPLICIT_VR_LE);
                let Ok(mut association) = options.establish_async(stream).await else { return };
                let mut pending: Option<(u8, u16)> = None;
                loop {
                    match association.receive().await {
                        Ok(Pdu::PData { data }) => {
                            for pdv in data {
                                if pdv.value_type == PDataValueType::Command {
                                    let cmd = support::dimse::Command::parse(&pdv.data).expect("command");
                                    pending = Some((pdv.presentation_context_id, cmd.message_id().unwrap_or(0)));
                                } else if pdv.is_last {
                                    if let Some((pc, id)) = pending.take() {
                                        let rsp = store_rsp(id, status);
                                        let pdu = Pdu::PData {
                                            data: vec![PDataValue {
                                                presentation_context_id: pc,
                                                value_type: PDataValueType::Command,
                                                is_last: true,
                                                data: rsp,
                                            }],
                                        };
                                        if association.send(&pdu).await.is_err() {
                                            return;
                                        }
                                    }
                                }
                            }
                        }
                        Ok(Pdu::ReleaseRQ) => {
                            let _ = association.send(&Pdu::ReleaseRP).await;
                            return;
                        }
                        _ => return,
                    }
                }
            });
        }
    });
    addr
}

/// C-STORE-RSP command set (Implicit VR LE, PS3.7 §9.3.1.2).
fn store_rsp(message_id: u16, status: u16) -> Vec<u8> {
    fn el(out: &mut Vec<u8>, element: u16, value: &[u8]) {
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    let mut body = Vec::new();
    el(&mut body, 0x0002, b"1.2.840.10008.5.1.4.1.1.7\0");
    el(&mut body, 0x0100, &0x8001u16.to_le_bytes());
    el(&mut body, 0x0120, &message_id.to_le_bytes());
    el(&mut body, 0x0800, &0x0101u16.to_le_bytes());
    el(&mut body, 0x0900, &status.to_le_bytes());
    let mut set = Vec::new();
    el(&mut set, 0x0000, &(body.len() as u32).to_le_bytes());
    set.extend(body);
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storescu_files_are_counted_as_c_store_successes() {
    require_tool!(dcmtk);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _pacs =
        ScpProcess::spawn("storescp", &args(&["-aet", "STORESCP", "--ignore", &port.to_string()]), port, dir.path())
            .await;
    let (addr, metrics, _stop) = gateway(SocketAddr::from(([127, 0, 0, 1], port)), "").await;
    let files = images(dir.path(), 12);
    let out = run_scu("storescu", &storescu_args(addr, &files), dir.path(), DEADLINE).await;
    assert!(out.status.success(), "{}", output_text(&out));
    support::within(Duration::from_secs(5), "metrics", async {
        while dimse_count(&metrics, "C-STORE", "success") < 12 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(dimse_count(&metrics, "C-STORE", "success"), 12);
    assert_eq!(dimse_count(&metrics, "C-STORE", "failure"), 0);
    // The association outcome: accepted by the SCP, then released.
    support::wait_for_count(&metrics, "store", dicomgate::report::Outcome::Forwarded, 1).await;
    let text = metrics.render();
    for line in [
        r#"dicomgate_association_results_total{listener="store",result="accepted"} 1"#,
        r#"dicomgate_association_ends_total{end="released",listener="store"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_store_failures_from_the_scp_are_counted_as_failures() {
    require_tool!(dcmtk);
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = storing_scp(0xA700).await;
    let (addr, metrics, _stop) = gateway(backend, "").await;
    let files = images(dir.path(), 3);
    // -nh: storescu reports each failure and goes on (it halts by default).
    let mut a = args(&["-nh"]);
    a.extend(storescu_args(addr, &files));
    let out = run_scu("storescu", &a, dir.path(), DEADLINE).await;
    let text = output_text(&out);
    support::within(Duration::from_secs(5), &text, async {
        while dimse_count(&metrics, "C-STORE", "failure") < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(dimse_count(&metrics, "C-STORE", "failure"), 3);
    assert_eq!(dimse_count(&metrics, "C-STORE", "success"), 0);
}

/// A hand-driven SCP for one association: answers the RQ with an AC whose
/// Maximum Length is `max`, then records what it receives until closed.
async fn limited_scp(max: u32) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let Next::Pdu(rq) = raw::read_pdu(&mut s, Duration::from_secs(5)).await else { panic!("no RQ") };
        assert_eq!(rq.pdu_type, 0x01);
        s.write_all(&associate_ac(max)).await.expect("send AC");
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
        rest
    });
    (addr, task)
}

fn associate_ac(max: u32) -> Vec<u8> {
    fn item(out: &mut Vec<u8>, t: u8, body: &[u8]) {
        out.extend_from_slice(&[t, 0]);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
    }
    let mut body = vec![0, 1, 0, 0];
    body.extend_from_slice(&raw::ae("STORESCP"));
    body.extend_from_slice(&raw::ae("BUTTERFLY"));
    body.extend_from_slice(&[0; 32]);
    item(&mut body, 0x10, b"1.2.840.10008.3.1.1.1");
    let mut pc = vec![1, 0, 0, 0];
    item(&mut pc, 0x40, b"1.2.840.10008.1.2");
    item(&mut body, 0x21, &pc);
    let mut user = Vec::new();
    item(&mut user, 0x51, &max.to_be_bytes());
    item(&mut body, 0x50, &user);
    let mut pdu = vec![0x02, 0];
    pdu.extend_from_slice(&(body.len() as u32).to_be_bytes());
    pdu.extend(body);
    pdu
}

fn pdata(len: usize) -> Vec<u8> {
    let mut pdu = vec![0x04, 0];
    pdu.extend_from_slice(&(len as u32).to_be_bytes());
    pdu.extend_from_slice(&((len - 4) as u32).to_be_bytes());
    pdu.extend_from_slice(&[1, 0x00]);
    pdu.resize(6 + len, 0xAB);
    pdu
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pdu_over_the_negotiated_maximum_aborts_both_sides() {
    let (backend, recorded) = limited_scp(8192).await;
    let (addr, metrics, _stop) = gateway(backend, "").await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client.write_all(&raw::associate_rq("STORESCP", "BUTTERFLY")).await.expect("RQ");
    let Next::Pdu(ac) = raw::read_pdu(&mut client, Duration::from_secs(5)).await else { panic!("no AC") };
    assert_eq!(ac.pdu_type, 0x02);
    let within = pdata(8192);
    client.write_all(&within).await.expect("P-DATA at the limit");
    client.write_all(&pdata(8193)).await.expect("P-DATA over the limit");
    // The client gets our A-ABORT; the backend gets the valid PDU, then A-ABORT.
    raw::expect_provider_abort(&mut client, Duration::from_secs(5)).await;
    let got = recorded.await.expect("backend task");
    assert_eq!(&got[..within.len()], &within[..], "the PDU within the limit passed unchanged");
    assert_eq!(
        &got[within.len()..],
        &[0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0],
        "then our A-ABORT, nothing of the oversized PDU"
    );
    support::wait_for_count(&metrics, "store", dicomgate::report::Outcome::Forwarded, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlimited_maximum_length_is_clamped_before_forwarding() {
    let (backend, _recorded) = limited_scp(0).await;
    let (addr, _metrics, _stop) = gateway(backend, "    max_pdu_length: 65536\n").await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client.write_all(&raw::associate_rq("STORESCP", "BUTTERFLY")).await.expect("RQ");
    let Next::Pdu(ac) = raw::read_pdu(&mut client, Duration::from_secs(5)).await else { panic!("no AC") };
    let mut whole = vec![ac.pdu_type, 0];
    whole.extend_from_slice(&(ac.body.len() as u32).to_be_bytes());
    whole.extend_from_slice(&ac.body);
    let view = dicomgate::dicom::associate::parse(&whole).expect("AC parses");
    let values: Vec<u32> = view.max_lengths.iter().map(|(v, _)| *v).collect();
    assert_eq!(values, [65536], "0 (unlimited) became the relay's limit");
}

/// Accepts one connection, connects to `target`, copies both ways and keeps
/// what went towards `target`.
async fn recorder(target: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = seen.clone();
    tokio::spawn(async move {
        let (inbound, _) = listener.accept().await.expect("accept");
        let outbound = TcpStream::connect(target).await.expect("connect target");
        let (mut ir, mut iw) = inbound.into_split();
        let (mut or, mut ow) = outbound.into_split();
        let up = async {
            let mut buf = vec![0u8; 16384];
            while let Ok(n) = ir.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                // Kept before it is passed on: once the peer answers, it is here.
                keep.lock().expect("lock").extend_from_slice(&buf[..n]);
                if ow.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = ow.shutdown().await;
        };
        let down = async {
            let _ = tokio::io::copy(&mut or, &mut iw).await;
            let _ = iw.shutdown().await;
        };
        tokio::join!(up, down);
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_storescu_session_frames_identically_in_any_chunking() {
    require_tool!(dcmtk);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _pacs =
        ScpProcess::spawn("storescp", &args(&["-aet", "STORESCP", "--ignore", &port.to_string()]), port, dir.path())
            .await;
    // storescu → recorder A → gateway → recorder B → storescp: A holds what
    // the client sent, B what the gateway forwarded.
    let (b_addr, forwarded) = recorder(SocketAddr::from(([127, 0, 0, 1], port))).await;
    let (addr, _metrics, _stop) = gateway(b_addr, "").await;
    let (a_addr, sent) = recorder(addr).await;
    let files = images(dir.path(), 5);
    let out = run_scu("storescu", &storescu_args(a_addr, &files), dir.path(), DEADLINE).await;
    assert!(out.status.success(), "{}", output_text(&out));
    let sent = sent.lock().expect("lock").clone();
    let forwarded = forwarded.lock().expect("lock").clone();
    assert!(sent.len() > 30_000, "a real session was recorded ({} bytes)", sent.len());
    assert_eq!(forwarded, sent, "the gateway forwards the client's bytes unchanged");

    // Skip the A-ASSOCIATE-RQ: the relay frames what follows the AC.
    let rq_len = 6 + u32::from_be_bytes([sent[2], sent[3], sent[4], sent[5]]) as usize;
    let stream = sent[rq_len..].to_vec();
    let reference = frame(&stream, &[stream.len()]);
    let commands = reference.iter().filter(|e| matches!(e, FrameEvent::Command(_))).count();
    assert_eq!(commands, 5, "five C-STORE-RQ command sets seen");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 256, ..ProptestConfig::default() });
    runner
        .run(&proptest::collection::vec(1usize..20_000, 1..64), |chunks| {
            prop_assert_eq!(frame(&stream, &chunks), reference.clone());
            Ok(())
        })
        .expect("every chunking frames the same");
}

/// Feeds `data` to a fresh framer in chunks of the given sizes (cycled);
/// returns the events, asserting every byte was accepted for forwarding.
fn frame(data: &[u8], chunks: &[usize]) -> Vec<FrameEvent> {
    let mut framer = Framer::new(u32::MAX);
    let mut events = Vec::new();
    let (mut pos, mut i) = (0, 0);
    while pos < data.len() {
        let n = chunks[i % chunks.len()].clamp(1, data.len() - pos);
        let accepted = framer.feed(&data[pos..pos + n], &mut events).expect("a valid recorded stream");
        assert_eq!(accepted, n);
        pos += n;
        i += 1;
    }
    assert!(framer.at_boundary());
    events
}
