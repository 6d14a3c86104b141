//! Issue 16: hitless binary upgrade on SIGUSR2, with the real binary, real
//! signals and DCMTK peers. `storescu` sends one object per association,
//! back to back, for tens of seconds (bounded in count and time) while the
//! gateway is upgraded several times — once after its binary file was
//! replaced the way dpkg does it (a new file renamed over the old), once
//! with a broken configuration file, which must leave the old process
//! serving. Zero failed associations, every object received, a new PID per
//! upgrade, and every old process exits after its drain.
//!
//! Each generation is started by the previous one, so only the first is our
//! child; the others are found from the log ("... is ready ... pid=N") and
//! killed by that PID if the test fails.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::support::dicom_file::{new_uid, ScImage};
use crate::support::gateway::http_get;
use crate::support::pki::pki;
use crate::support::tools::{args, free_port, output_text, run_scu, ScpProcess};
use tokio::process::{Child, Command};

const READY: Duration = Duration::from_secs(30);
/// The default grace period is 60 s; with no association stuck the drain
/// ends as soon as the last one finishes, well before that.
const EXIT: Duration = Duration::from_secs(90);
/// The load runs at least this long and stops at these bounds.
const LOAD_MIN: Duration = Duration::from_secs(20);
const LOAD_MAX: Duration = Duration::from_secs(150);
const LOAD_MAX_ASSOCIATIONS: usize = 2_000;
const READY_LINE: &str = "upgrade: the new process is ready";

/// Every gateway process of the test; those still alive are killed (by PID)
/// when it ends, also on panic.
struct Processes {
    first: Child,
    pids: Vec<u32>,
    log: PathBuf,
    admin: u16,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for pid in &self.pids {
            if alive(*pid) {
                let _ = std::process::Command::new("kill").args(["-s", "KILL", &pid.to_string()]).status();
            }
        }
    }
}

impl Processes {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn current(&self) -> u32 {
        *self.pids.last().expect("a process")
    }

    async fn wait_for(&self, what: &str, count: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let lines: Vec<String> = self.log_text().lines().filter(|l| l.contains(what)).map(str::to_owned).collect();
            if lines.len() >= count {
                return lines;
            }
            assert!(Instant::now() < deadline, "no {count}× {what:?} within {within:?}:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGUSR2 to the current process; returns the new one's PID.
    async fn upgrade(&mut self) -> u32 {
        let done = self.log_text().matches(READY_LINE).count();
        let old = self.current();
        signal(old, "USR2");
        let lines = self.wait_for(READY_LINE, done + 1, READY).await;
        let new = pid_in(&lines[done]);
        assert_ne!(new, old, "the PID changes");
        self.pids.push(new);
        // The admin socket moved too: the new process answers on it.
        let (code, body) = http_get(([127, 0, 0, 1], self.admin).into(), "/readyz").await;
        assert_eq!(code, 200, "/readyz after the upgrade: {body}");
        new
    }

    /// Waits until `pid` has exited (our child: exit status 0).
    async fn wait_exited(&mut self, pid: u32) {
        if Some(pid) == self.first.id() {
            let status =
                tokio::time::timeout(EXIT, self.first.wait()).await.expect("first process exits").expect("wait");
            assert_eq!(status.code(), Some(0), "first process exit\n{}", self.log_text());
            return;
        }
        let deadline = Instant::now() + EXIT;
        while alive(pid) {
            assert!(Instant::now() < deadline, "process {pid} still running after {EXIT:?}:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Running (a zombie has exited; its parent is gone and PID 1 reaps it).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill").args(["-s", name, &pid.to_string()]).status().expect("kill");
    assert!(status.success(), "kill -s {name} {pid}");
}

fn pid_in(line: &str) -> u32 {
    let at = line.rfind("pid=").unwrap_or_else(|| panic!("no pid= in {line:?}"));
    line[at + 4..].split(|c: char| !c.is_ascii_digit()).next().and_then(|p| p.parse().ok()).expect("pid number")
}

fn config_text(store: u16, admin: u16, backend: u16) -> String {
    format!(
        r#"
admin: {{listen: "127.0.0.1:{admin}"}}
log: {{format: text, level: info}}
backends:
  pacs: {{ae_title: STORESCP, servers: ["127.0.0.1:{backend}"]}}
listeners:
  store:
    listen: "127.0.0.1:{store}"
    tls: {{certificate: scp_cert.pem, private_key: scp_key.pem}}
    allow: [127.0.0.0/8]
    calling_ae_titles: [BUTTERFLY]
    routes: {{STORESCP: pacs}}
"#
    )
}

/// Copies the binary the way a package installs it: to a new name, then
/// renamed over the path (the running process keeps the old, now unlinked, file).
fn install_binary(to: &Path) {
    let tmp = to.with_extension("dpkg-new");
    std::fs::copy(env!("CARGO_BIN_EXE_dicomgate"), &tmp).expect("copy binary");
    std::fs::rename(&tmp, to).expect("rename binary");
}

struct Load {
    ok: usize,
    failures: Vec<String>,
    longest: Duration,
}

/// One object per association, back to back, until `stop` (bounded).
async fn load(
    store: u16,
    file: String,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    ok: Arc<std::sync::atomic::AtomicUsize>,
) -> Load {
    let a = {
        let mut a =
            args(&["+tla", "-ic", "-aet", "BUTTERFLY", "-aec", "STORESCP", "-to", "30", "-ta", "30", "-td", "60"]);
        a.extend(["127.0.0.1".to_owned(), store.to_string(), file]);
        a
    };
    let (started, mut out) = (Instant::now(), Load { ok: 0, failures: Vec::new(), longest: Duration::ZERO });
    while !stop.load(Ordering::SeqCst)
        && started.elapsed() < LOAD_MAX
        && out.ok + out.failures.len() < LOAD_MAX_ASSOCIATIONS
    {
        let t = Instant::now();
        let o = run_scu("storescu", &a, &dir, Duration::from_secs(90)).await;
        out.longest = out.longest.max(t.elapsed());
        if o.status.success() {
            out.ok += 1;
            ok.fetch_add(1, Ordering::SeqCst);
        } else {
            out.failures.push(output_text(&o));
        }
    }
    out
}

fn received(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("received")).map(|d| d.count()).unwrap_or(0)
}

async fn wait_more(ok: &std::sync::atomic::AtomicUsize, more: usize) {
    let (target, deadline) = (ok.load(Ordering::SeqCst) + more, Instant::now() + Duration::from_secs(60));
    while ok.load(Ordering::SeqCst) < target {
        assert!(Instant::now() < deadline, "the load stalled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_upgrades_under_load_without_failing_an_association() {
    require_tool!(dcmtk);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let port = free_port();
    std::fs::create_dir_all(d.join("received")).expect("received dir");
    // +uf: a unique file per received object, so resending one file counts.
    let a = args(&["-aet", "STORESCP", "+uf", "-od", &d.join("received").display().to_string(), &port.to_string()]);
    let pacs = ScpProcess::spawn("storescp", &a, port, d).await;
    std::fs::write(d.join("scp_cert.pem"), &pki().server.cert_pem).expect("cert");
    std::fs::write(d.join("scp_key.pem"), &pki().server.key_pem).expect("key");
    let (store, admin) = (free_port(), free_port());
    let config = d.join("config.yaml");
    let good = config_text(store, admin, port);
    std::fs::write(&config, &good).expect("config");
    let image = d.join("image.dcm");
    ScImage::numbered(&new_uid(), &new_uid(), 1).write(&image);
    std::fs::create_dir_all(d.join("bin")).expect("bin dir");
    let binary = d.join("bin/dicomgate");
    install_binary(&binary);

    let log = d.join("dicomgate.log");
    let first = Command::new(&binary)
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn dicomgate");
    let pid = first.id().expect("pid");
    let mut procs = Processes { first, pids: vec![pid], log, admin };
    procs.wait_for("dicomgate ready", 1, READY).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let loader = tokio::spawn(load(store, image.display().to_string(), d.to_owned(), stop.clone(), ok.clone()));
    wait_more(&ok, 3).await;

    // 1: the package replaced the binary; the new process runs from the new file.
    install_binary(&binary);
    let old = procs.current();
    let new = procs.upgrade().await;
    procs.wait_exited(old).await;
    let exe = std::fs::read_link(format!("/proc/{new}/exe")).expect("exe");
    assert_eq!(exe, binary.canonicalize().expect("binary path"), "runs the replaced file, not the deleted one");
    wait_more(&ok, 3).await;

    // A broken configuration: the new process fails, the old one serves on.
    std::fs::write(&config, good.replace("allow: [127.0.0.0/8]", "allow: [127.0.0.0/33]")).expect("broken config");
    let failed = procs.log_text().matches("upgrade failed, still serving").count();
    signal(procs.current(), "USR2");
    procs.wait_for("upgrade failed, still serving", failed + 1, READY).await;
    assert!(alive(procs.current()), "the old process keeps serving");
    assert!(procs.log_text().contains("listeners.store.allow[0]"), "the new process said why:\n{}", procs.log_text());
    assert_eq!(http_get(([127, 0, 0, 1], admin).into(), "/readyz").await.0, 200);
    std::fs::write(&config, &good).expect("config restored");
    wait_more(&ok, 3).await;

    // 2 and 3: plain upgrades.
    for _ in 0..2 {
        let old = procs.current();
        procs.upgrade().await;
        procs.wait_exited(old).await;
        wait_more(&ok, 3).await;
    }
    if let Some(rest) = LOAD_MIN.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    stop.store(true, Ordering::SeqCst);
    let load = loader.await.expect("load task");
    let figures = format!(
        "{} associations in {:?} across 3 upgrades (and one failed); longest association {:?}",
        load.ok,
        started.elapsed(),
        load.longest
    );
    println!("{figures}");
    assert!(
        load.failures.is_empty(),
        "{} failed associations ({figures}):\n{}",
        load.failures.len(),
        load.failures.join("\n")
    );
    assert!(load.ok >= 12, "{figures}");
    assert_eq!(received(d), load.ok, "every object received");
    let pids = procs.pids.clone();
    let mut unique = pids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!((pids.len(), unique.len()), (4, 4), "one new PID per upgrade: {pids:?}");

    let last = procs.current();
    signal(last, "TERM");
    procs.wait_exited(last).await;
    assert_eq!(procs.log_text().matches("dicomgate stopped").count(), 4, "{}", procs.log_text());
    drop(pacs);
}
