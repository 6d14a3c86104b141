// TEMPORARY: validates the harness without the gateway. Deleted before hand-off.
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::dcmtk::{self, args, output_text, run_scu, ScpProcess};
use support::dicom_file::{new_uid, read_part10, ScImage};
use support::gateway::{GatewaySpec, ListenerSpec, Security};
use support::raw;
use support::scp::{ScpEvent, TestScp};
use support::{scu, PROMPT};

#[test]
fn yaml_variants_parse() {
    let dir = tempfile::tempdir().unwrap();
    support::pki::pki().write_to(dir.path());
    let a: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut specs = vec![
        GatewaySpec::store(&[a]),
        GatewaySpec::store(&[a]).listener(|l| *l = ListenerSpec::plaintext("store")),
        GatewaySpec::store(&[a]).listener(|l| {
            l.security = Security::Tls {
                client_ca: Some("ca.pem".into()),
                client_certificates: vec!["cloud.pem".into()],
            };
            l.calling_ae_titles = None;
            l.routes = vec![("*".into(), "pacs".into())];
            l.max_connections = Some(1);
            l.allow = vec!["127.0.0.1/32".into(), "127.0.0.64/26".into()];
        }),
        GatewaySpec::store(&[a]).listener(|l| {
            l.security = Security::Generate {
                certificate: "x.pem".into(),
                private_key: "x.key".into(),
            }
        }),
    ];
    let mut two = GatewaySpec::store(&[a]);
    two.backends.push(support::gateway::BackendSpec {
        name: "worklist".into(),
        ae_title: "MWL".into(),
        servers: vec![a],
    });
    two.listeners
        .push(ListenerSpec::tls("worklist").route("MWL", "worklist"));
    specs.push(two);
    for s in specs {
        let y = s.to_yaml();
        if let Err(e) = dicomgate::Config::from_yaml_str(&y, dir.path()) {
            panic!("{e}\n{y}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scu_scp_direct() {
    let mut scp = TestScp::spawn("PACS").await;
    scu::echo_plain(scp.addr, "CLOUD", "PACS").await.unwrap();
    assert_eq!(scp.next_event(PROMPT).await, ScpEvent::Connected);
    assert!(matches!(
        scp.next_event(PROMPT).await,
        ScpEvent::Associated { .. }
    ));
    assert_eq!(scp.next_event(PROMPT).await, ScpEvent::Echo);
    assert_eq!(scp.next_event(PROMPT).await, ScpEvent::Released);
    let mut s = tokio::net::TcpStream::connect(scp.addr).await.unwrap();
    raw::send(&mut s, &raw::associate_rq("PACS", "CLOUD"))
        .await
        .unwrap();
    match raw::read_pdu(&mut s, PROMPT).await {
        raw::Next::Pdu(p) => assert_eq!(p.pdu_type, 2, "{p:?}"),
        o => panic!("{o:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dcmtk_direct() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let files = support::pki::pki().write_to(dir);
    std::fs::create_dir_all(dir.join("received")).unwrap();
    let port = dcmtk::free_port();
    let mut scp = ScpProcess::spawn(
        "storescp",
        &args(&[
            "-aet",
            "PACS",
            "+B",
            "-od",
            "received",
            "-ta",
            "10",
            "-td",
            "20",
            "-dhl",
            "+tls",
            &files.key("server").display().to_string(),
            &files.cert("server").display().to_string(),
            "-ic",
            &port.to_string(),
        ]),
        port,
        dir,
    )
    .await;
    let tls = args(&["+tla", "+cf", &files.cert("ca").display().to_string()]);
    let mut a = tls.clone();
    a.extend(args(&[
        "-to",
        "10",
        "-ta",
        "10",
        "-td",
        "20",
        "-aet",
        "CLOUD",
        "-aec",
        "PACS",
        "127.0.0.1",
        &port.to_string(),
    ]));
    let out = run_scu("echoscu", &a, dir, Duration::from_secs(30)).await;
    assert!(
        out.status.success(),
        "{}\n{}",
        output_text(&out),
        scp.log_text()
    );
    // pinned-style identity
    let mut a = args(&[
        "+tls",
        &files.key("cloud").display().to_string(),
        &files.cert("cloud").display().to_string(),
        "+cf",
        &files.cert("ca").display().to_string(),
    ]);
    a.extend(args(&[
        "-to",
        "10",
        "-ta",
        "10",
        "-td",
        "20",
        "-aet",
        "CLOUD",
        "-aec",
        "PACS",
        "127.0.0.1",
        &port.to_string(),
    ]));
    let out = run_scu("echoscu", &a, dir, Duration::from_secs(30)).await;
    assert!(
        out.status.success(),
        "{}\n{}",
        output_text(&out),
        scp.log_text()
    );

    std::fs::create_dir_all(dir.join("send")).unwrap();
    let (st, se) = (new_uid(), new_uid());
    let mut sent = BTreeMap::new();
    let mut paths = vec![];
    for n in 1..=3 {
        let im = ScImage::numbered(&st, &se, n);
        let p = dir.join("send").join(format!("{n}.dcm"));
        im.write(&p);
        sent.insert(im.sop_instance_uid.clone(), im.dataset());
        paths.push(p.display().to_string());
    }
    let mut a = tls.clone();
    a.extend(args(&[
        "-to",
        "10",
        "-ta",
        "10",
        "-td",
        "20",
        "-aet",
        "CLOUD",
        "-aec",
        "PACS",
        "127.0.0.1",
        &port.to_string(),
    ]));
    a.extend(paths);
    let out = run_scu("storescu", &a, dir, Duration::from_secs(30)).await;
    assert!(
        out.status.success(),
        "{}\n{}",
        output_text(&out),
        scp.log_text()
    );
    for e in std::fs::read_dir(dir.join("received")).unwrap() {
        let p = e.unwrap().path();
        let r = read_part10(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(
            sent.get(&r.media_storage_sop_instance_uid),
            Some(&r.dataset),
            "{}",
            p.display()
        );
        sent.remove(&r.media_storage_sop_instance_uid);
    }
    assert!(sent.is_empty());
    scp.assert_running();
    eprintln!("{}", scp.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worklist_direct() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let ae_dir = dir.join("worklist/MWL");
    std::fs::create_dir_all(&ae_dir).unwrap();
    std::fs::write(ae_dir.join("lockfile"), b"").unwrap();
    let dump = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop_dcmtk.rs"
    ))
    .unwrap();
    let start = dump.find("const WORKLIST_DUMP: &str = r#\"").unwrap()
        + "const WORKLIST_DUMP: &str = r#\"".len();
    let end = start + dump[start..].find("\"#;").unwrap();
    dcmtk::dump2dcm(&dump[start..end], &ae_dir.join("item1.wl"), dir).await;
    let port = dcmtk::free_port();
    let mut scp = ScpProcess::spawn(
        "wlmscpfs",
        &args(&[
            "-s",
            "-dfp",
            "worklist",
            "-ta",
            "10",
            "-td",
            "20",
            "-dhl",
            &port.to_string(),
        ]),
        port,
        dir,
    )
    .await;
    std::fs::create_dir_all(dir.join("responses")).unwrap();
    let a = args(&[
        "-W",
        "-to",
        "10",
        "-ta",
        "10",
        "-td",
        "20",
        "-aet",
        "CLOUD",
        "-aec",
        "MWL",
        "-X",
        "-od",
        "responses",
        "-k",
        "(0010,0010)",
        "-k",
        "(0010,0020)",
        "-k",
        "(0040,0100)[0].(0008,0060)=US",
        "-k",
        "(0040,0100)[0].(0040,0001)",
        "127.0.0.1",
        &port.to_string(),
    ]);
    let out = run_scu("findscu", &a, dir, Duration::from_secs(30)).await;
    assert!(
        out.status.success(),
        "{}\n{}",
        output_text(&out),
        scp.log_text()
    );
    let n: Vec<_> = std::fs::read_dir(dir.join("responses")).unwrap().collect();
    assert_eq!(n.len(), 1, "{}\n{}", output_text(&out), scp.log_text());
    scp.assert_running();
}
