//! The rolling-restart proof (issue 11, README "Scaling out"): two dicomgate
//! instances behind HAProxy (`mode tcp`, `send-proxy-v2`, health checks on
//! each instance's `/readyz`, `retries` with `option redispatch`), DCMTK
//! `storescu` sending continuously through HAProxy while each instance in
//! turn gets SIGTERM and is started again on the same ports: no association
//! may fail and every object must arrive at `storescp`.
//!
//! The gateways run at defaults (no limit or timeout keys). Loopback only;
//! the senders are bounded in count and time; every child is killed by its
//! own PID on drop.

use crate::support;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::dicom_file::{new_uid, ScImage};
use crate::support::gateway::http_get;
use crate::support::tools::{args, free_port, is_listening, output_text, run_scu, ScpProcess};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// At most this many associations, and this long in all.
const MAX_ASSOCIATIONS: usize = 1000;
const MAX_RUN: Duration = Duration::from_secs(90);
/// Objects per association, and their side in pixels (144 KiB each): long
/// enough that the SIGTERM finds an association in flight.
const PER_ASSOCIATION: usize = 2;
const SIDE: u16 = 384;
/// Distinct object pairs, sent in turn (storescp gives every object it
/// receives a file of its own, `+uf`, so each association is still counted).
const DISTINCT: usize = 60;
/// Associations sent at the same time, and each sender's pause between two:
/// about 15 associations a second in all, so the pool lasts a minute however
/// fast the machine is, and the restarts are done long before.
const SENDERS: usize = 2;
const PAUSE: Duration = Duration::from_millis(50);

/// One gateway instance: its ports (kept across restarts) and its process.
struct Instance {
    name: &'static str,
    store: u16,
    admin: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Instance {
    fn new(name: &'static str, dir: &Path, scp_port: u16) -> Instance {
        let (store, admin) = (free_port(), free_port());
        let config = dir.join(format!("{name}.yaml"));
        let yaml = format!(
            "admin: {{listen: \"127.0.0.1:{admin}\"}}\nlog: {{format: text, level: info}}\nbackends:\n  pacs:\n    \
             ae_title: PACS\n    servers: [\"127.0.0.1:{scp_port}\"]\n    health_check: {{mode: \"off\"}}\n\
             listeners:\n  store:\n    listen: \"127.0.0.1:{store}\"\n    insecure_plaintext: true\n    \
             proxy_protocol: v2\n    proxy_protocol_from: [127.0.0.1/32]\n    allow: [127.0.0.1/32]\n    \
             calling_ae_titles: [CLOUD]\n    routes: {{PACS: pacs}}\n"
        );
        assert!(!yaml.contains("max_connections") && !yaml.contains("timeouts"), "defaults only");
        std::fs::write(&config, yaml).expect("write gateway config");
        Instance { name, store, admin, config, log: dir.join(format!("{name}.log")), child: None }
    }

    /// Starts the binary (stderr appended to its log) and waits for `/readyz` 200.
    async fn start(&mut self) {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("gateway log");
        let child = Command::new(env!("CARGO_BIN_EXE_dicomgate"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn dicomgate");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if is_listening(self.admin) && http_get(([127, 0, 0, 1], self.admin).into(), "/readyz").await.0 == 200 {
                return;
            }
            self.assert_running();
            assert!(Instant::now() < deadline, "{} not ready within 30 s:\n{}", self.name, self.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn assert_running(&mut self) {
        if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
            panic!("{} exited ({status}):\n{}", self.name, self.log_text());
        }
    }

    /// SIGTERM, then waits for a clean exit (it drains its live associations).
    async fn terminate(&mut self) -> Duration {
        let mut child = self.child.take().expect("running");
        let pid = child.id().expect("pid").to_string();
        let status = std::process::Command::new("kill").args(["-s", "TERM", &pid]).status().expect("kill");
        assert!(status.success(), "kill -s TERM {pid}");
        let sent = Instant::now();
        let exit = support::within(Duration::from_secs(70), "the gateway to drain and exit", child.wait()).await;
        let exit = exit.expect("wait for the gateway");
        assert!(exit.success(), "{} exited with {exit} after SIGTERM:\n{}", self.name, self.log_text());
        sent.elapsed()
    }

    async fn metric(&self, series: &str) -> u64 {
        let (_, body) = http_get(([127, 0, 0, 1], self.admin).into(), "/metrics").await;
        body.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
    }

    async fn forwarded(&self) -> u64 {
        self.metric(r#"dicomgate_connections_total{listener="store",outcome="forwarded"}"#).await
    }

    /// Waits (bounded) until an association is in flight here, so the
    /// SIGTERM has something to drain; returns whether one was seen.
    async fn busy(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.metric(r#"dicomgate_active_connections{listener="store"}"#).await > 0 {
                return true;
            }
            // Associations last tens of milliseconds: look often.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        false
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `live=N` of the last "draining" line: associations in flight at SIGTERM.
    fn live_at_last_drain(&self) -> String {
        let text = self.log_text();
        let line = text.lines().rev().find(|l| l.contains("draining live associations")).unwrap_or_default();
        line.split_whitespace().find_map(|w| w.strip_prefix("live=")).unwrap_or("?").to_owned()
    }
}

/// HAProxy as deploy/haproxy/haproxy.cfg has it, with checks fast enough for a
/// test: every 200 ms, down after one failure. `timeout check` keeps a check
/// that is merely slow (a loaded CI machine) from counting as a failure: without
/// it HAProxy allows a check only `inter` (200 ms), and a busy moment took both
/// instances out at once, so associations failed with no restart involved.
async fn haproxy(dir: &Path, gateways: &[&Instance]) -> (ScpProcess, u16) {
    let front = free_port();
    let mut cfg = format!(
        "global\n    maxconn 256\n\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    \
         timeout server 60s\n    timeout check 2s\n    retries 3\n    option redispatch 1\n\nfrontend dicom_store\n    \
         bind 127.0.0.1:{front}\n    default_backend dicomgate_store\n\nbackend dicomgate_store\n    \
         balance roundrobin\n    option httpchk GET /readyz\n    http-check expect status 200\n    \
         default-server send-proxy-v2 check inter 200ms fall 1 rise 2\n"
    );
    for g in gateways {
        cfg.push_str(&format!("    server {} 127.0.0.1:{} port {}\n", g.name, g.store, g.admin));
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, &cfg).expect("write haproxy.cfg");
    let check =
        run_scu("haproxy", &args(&["-c", "-f", &path.display().to_string()]), dir, Duration::from_secs(20)).await;
    assert!(check.status.success(), "haproxy -c:\n{}\n{cfg}", output_text(&check));
    let a = args(&["-db", "-f", &path.display().to_string()]);
    (ScpProcess::spawn("haproxy", &a, front, dir).await, front)
}

fn received(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[derive(Default)]
struct Tally {
    next: AtomicUsize,
    ok: AtomicUsize,
    failed: AtomicUsize,
    stop: AtomicBool,
}

/// Sends association after association ([`PER_ASSOCIATION`] objects each,
/// the pairs of `files` in turn) until `stop`, [`MAX_ASSOCIATIONS`] or
/// [`MAX_RUN`]; failures are kept for the report.
async fn sender(files: Arc<Vec<Vec<String>>>, front: u16, dir: PathBuf, tally: Arc<Tally>) -> Vec<String> {
    let started = Instant::now();
    let mut failures = Vec::new();
    while !tally.stop.load(Ordering::SeqCst) && started.elapsed() < MAX_RUN {
        let i = tally.next.fetch_add(1, Ordering::SeqCst);
        if i >= MAX_ASSOCIATIONS {
            break;
        }
        let batch = &files[i % files.len()];
        let mut a = args(&["-aet", "CLOUD", "-aec", "PACS", "-to", "20", "-ta", "20", "-td", "30", "127.0.0.1"]);
        a.push(front.to_string());
        a.extend(batch.iter().cloned());
        let out = run_scu("storescu", &a, &dir, Duration::from_secs(60)).await;
        if out.status.success() {
            tally.ok.fetch_add(1, Ordering::SeqCst);
        } else {
            tally.failed.fetch_add(1, Ordering::SeqCst);
            failures.push(format!("association {i}: {}", output_text(&out)));
        }
        tokio::time::sleep(PAUSE).await;
    }
    failures
}

/// Waits until `n` more associations than `from` succeeded; panics with the
/// logs of every process involved if they do not, or one fails.
async fn wait_sent(tally: &Tally, from: usize, n: usize, what: &str, logs: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tally.ok.load(Ordering::SeqCst) < from + n {
        let failed = tally.failed.load(Ordering::SeqCst);
        let started = tally.next.load(Ordering::SeqCst).min(MAX_ASSOCIATIONS);
        if failed > 0 || Instant::now() >= deadline {
            let ok = tally.ok.load(Ordering::SeqCst) - from;
            panic!(
                "{what}: {ok} of {n} associations within 30 s, {failed} failed, {started} of at most \
                 {MAX_ASSOCIATIONS} started\n{}",
                logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_behind_haproxy_loses_no_association() {
    require_tool!("haproxy", "storescp", "storescu");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("received");
    std::fs::create_dir_all(&out).expect("received dir");
    let scp_port = free_port();
    let a = args(&["-aet", "PACS", "+uf", "-od", &out.display().to_string(), &scp_port.to_string()]);
    let mut scp = ScpProcess::spawn("storescp", &a, scp_port, dir.path()).await;

    let mut gw1 = Instance::new("gw1", dir.path(), scp_port);
    let mut gw2 = Instance::new("gw2", dir.path(), scp_port);
    gw1.start().await;
    gw2.start().await;
    let (mut lb, front) = haproxy(dir.path(), &[&gw1, &gw2]).await;

    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).expect("image dir");
    let (study, series) = (new_uid(), new_uid());
    let files: Arc<Vec<Vec<String>>> = Arc::new(
        (0..DISTINCT)
            .map(|a| {
                (0..PER_ASSOCIATION)
                    .map(|k| {
                        let n = a * PER_ASSOCIATION + k;
                        let path = images.join(format!("{n:05}.dcm"));
                        let mut image = ScImage::numbered(&study, &series, n as u32 + 1);
                        (image.rows, image.columns) = (SIDE, SIDE);
                        image.write(&path);
                        path.display().to_string()
                    })
                    .collect()
            })
            .collect(),
    );

    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| tokio::spawn(sender(files.clone(), front, dir.path().to_owned(), tally.clone())))
        .collect();

    // Traffic first, then each instance in turn: SIGTERM, drain, exit; the
    // other one carries the traffic for a while; start again on the same
    // ports, and serve (seen in its own counter) before the next one goes.
    let log_files = [lb.log.clone(), scp.log.clone(), gw1.log.clone(), gw2.log.clone()];
    let logs = || {
        let text = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        log_files.iter().map(|p| format!("--- {}\n{}", p.display(), text(p))).collect::<String>()
    };
    wait_sent(&tally, 0, 10, "before the restarts", logs).await;
    let mut report = Vec::new();
    for g in [&mut gw1, &mut gw2] {
        let in_flight = g.busy().await;
        let before = tally.ok.load(Ordering::SeqCst);
        let drained = g.terminate().await;
        wait_sent(&tally, tally.ok.load(Ordering::SeqCst), 10, &format!("while {} is down", g.name), logs).await;
        let while_down = tally.ok.load(Ordering::SeqCst) - before;
        let restart = Instant::now();
        g.start().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while g.forwarded().await == 0 {
            assert!(Instant::now() < deadline, "{} restarted but got no association in 30 s", g.name);
            assert_eq!(tally.failed.load(Ordering::SeqCst), 0, "an association failed during {}'s restart", g.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(in_flight, "{} never had an association in flight to drain", g.name);
        report.push(format!(
            "{}: SIGTERM with {} associations in flight → drained and exited in {drained:?}, {while_down} associations from SIGTERM to restart, back in service after {:?}",
            g.name,
            g.live_at_last_drain(),
            restart.elapsed()
        ));
    }
    wait_sent(&tally, tally.ok.load(Ordering::SeqCst), 10, "after the restarts", logs).await;
    tally.stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for s in senders {
        failures.extend(support::within(Duration::from_secs(90), "the senders", s).await.expect("sender"));
    }
    let (ok, failed) = (tally.ok.load(Ordering::SeqCst), tally.failed.load(Ordering::SeqCst));

    // storescp writes each object when it has it all; give the last a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while received(&out) < ok * PER_ASSOCIATION && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "rolling restart: {} associations of {PER_ASSOCIATION} objects ({ok} ok, {failed} failed) by {SENDERS} \
         storescu loops in {:?}; {} objects at storescp\n  {}",
        ok + failed,
        started.elapsed(),
        received(&out),
        report.join("\n  ")
    );
    assert!(
        failures.is_empty(),
        "{failed} associations failed:\n{}\n--- haproxy\n{}\n--- gw1\n{}\n--- gw2\n{}",
        failures.join("\n"),
        lb.log_text(),
        gw1.log_text(),
        gw2.log_text()
    );
    assert!(ok < MAX_ASSOCIATIONS, "the senders reached MAX_ASSOCIATIONS before the restarts were done");
    assert_eq!(received(&out), ok * PER_ASSOCIATION, "objects at storescp vs associations that succeeded");
    lb.assert_running();
    scp.assert_running();
    gw1.assert_running();
    gw2.assert_running();
}
