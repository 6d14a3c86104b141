//! Issue 16: listening sockets passed by the service manager.
//!
//! - `systemd-socket-activate` (Debian: systemd) holds the store and
//!   worklist sockets, starts the gateway on the first connection with
//!   `LISTEN_FDNAMES=store:worklist`, and `echoscu` over TLS succeeds through
//!   both; a socket whose address differs from the listener's `listen`, or
//!   whose name no listener has, stops the start with a clear error (exit 64).
//!   A reload then adds a listener (it binds itself) and removes one, and a
//!   SIGUSR2 hands both kinds of socket to a new process.
//! - A restart as systemd does it with a .socket unit, without systemd as
//!   PID 1: this test holds the listening socket (the .socket unit's role)
//!   and starts each gateway process with it at fd 3 (`LISTEN_PID` set by a
//!   shell that then execs the gateway, as systemd sets it between fork and
//!   exec), while `storescu` sends associations back to back: stopping one
//!   process and starting the next refuses no connection.

use crate::support;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::pki::pki;
use crate::support::tools::{args, free_port, is_listening, output_text, run_scu, ScpProcess};
use command_fds::{CommandFdExt, FdMapping};
use tokio::time::Instant;

const START: Duration = Duration::from_secs(30);
const EXIT: Duration = Duration::from_secs(90);
const ECHO: [&str; 4] = ["+tla", "-ic", "-aet", "BUTTERFLY"];

/// A child killed (by its own handle) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Proc {
    async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "still running after {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill").args(["-s", name, &self.0.id().to_string()]).status().expect("kill");
        assert!(status.success());
    }
}

fn require_socket_activate() -> bool {
    support::tools::present(&["systemd-socket-activate"])
}

struct Setup {
    dir: tempfile::TempDir,
    pacs: ScpProcess,
}

impl Setup {
    async fn new() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let recv = dir.path().join("received");
        std::fs::create_dir_all(&recv).expect("received dir");
        let a = args(&["-aet", "STORESCP", "+uf", "-od", &recv.display().to_string(), &port.to_string()]);
        let pacs = ScpProcess::spawn("storescp", &a, port, dir.path()).await;
        std::fs::write(dir.path().join("scp_cert.pem"), &pki().server.cert_pem).expect("cert");
        std::fs::write(dir.path().join("scp_key.pem"), &pki().server.key_pem).expect("key");
        Setup { dir, pacs }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn log(&self) -> PathBuf {
        self.path().join("dicomgate.log")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// A config with TLS listeners `(name, port)` in front of the storescp.
    fn config(&self, listeners: &[(&str, u16)]) -> PathBuf {
        let mut y = format!(
            "log: {{format: text, level: info}}\nbackends:\n  pacs: {{ae_title: STORESCP, servers: [\"{}\"]}}\nlisteners:\n",
            self.pacs.addr
        );
        for (name, port) in listeners {
            y.push_str(&format!(
                "  {name}:\n    listen: \"127.0.0.1:{port}\"\n    tls: {{certificate: scp_cert.pem, private_key: scp_key.pem}}\n    \
                 allow: [127.0.0.0/8]\n    calling_ae_titles: [BUTTERFLY]\n    routes: {{STORESCP: pacs}}\n"
            ));
        }
        let path = self.path().join("config.yaml");
        std::fs::write(&path, y).expect("config");
        path
    }

    fn log_file(&self) -> std::fs::File {
        std::fs::OpenOptions::new().create(true).append(true).open(self.log()).expect("log")
    }

    /// `systemd-socket-activate -l ADDR… --fdname=a:b dicomgate run`, waiting
    /// until it listens (it starts the gateway on the first connection).
    async fn socket_activate(&self, sockets: &[u16], names: &str, config: &Path) -> Proc {
        let mut cmd = Command::new("systemd-socket-activate");
        for port in sockets {
            cmd.arg(format!("--listen=127.0.0.1:{port}"));
        }
        cmd.arg(format!("--fdname={names}"))
            .arg(env!("CARGO_BIN_EXE_dicomgate"))
            .args(["run", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file());
        let p = Proc(cmd.spawn().expect("spawn systemd-socket-activate"));
        let deadline = Instant::now() + START;
        while !sockets.iter().all(|p| is_listening(*p)) {
            assert!(Instant::now() < deadline, "systemd-socket-activate does not listen:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        p
    }

    async fn echo(&self, port: u16) -> std::process::Output {
        let mut a = args(&ECHO);
        a.extend(args(&["-aec", "STORESCP", "-to", "30", "-ta", "30", "-td", "30", "127.0.0.1", &port.to_string()]));
        run_scu("echoscu", &a, self.path(), Duration::from_secs(60)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_and_worklist_sockets_are_taken_by_name_and_serve_tls() {
    require_tool!(dcmtk);
    if !require_socket_activate() {
        return;
    }
    let s = Setup::new().await;
    let (store, worklist) = (free_port(), free_port());
    let config = s.config(&[("store", store), ("worklist", worklist)]);
    let mut gw = s.socket_activate(&[store, worklist], "store:worklist", &config).await;
    for port in [store, worklist] {
        let o = s.echo(port).await;
        assert!(o.status.success(), "echoscu through {port}:\n{}\n{}", output_text(&o), s.log_text());
    }
    // The audit line is written when the gateway closes, which may be just
    // after echoscu has exited.
    wait_log(&s, "C-ECHO rq=1 success=1", 2).await;
    let log = s.log_text();
    assert!(log.contains("socket activation: sockets passed by systemd sockets=2"), "{log}");
    assert_eq!(log.matches("using the listening socket passed to this process").count(), 2, "{log}");
    assert_eq!(log.matches("C-ECHO rq=1 success=1").count(), 2, "{log}");

    // Reload with passed sockets: an added listener binds itself, a removed
    // one stops accepting, the passed one kept serves on.
    let extra = free_port();
    s.config(&[("store", store), ("extra", extra)]);
    gw.signal("HUP");
    wait_log(&s, "configuration reloaded", 1).await;
    for port in [store, extra] {
        let o = s.echo(port).await;
        assert!(o.status.success(), "echoscu through {port} after reload:\n{}\n{}", output_text(&o), s.log_text());
    }
    assert!(!is_listening(worklist), "the removed listener's socket is closed:\n{}", s.log_text());

    // SIGUSR2 hands the socket systemd passed, and the one the reload bound,
    // to a new process; the old one (our child) exits 0 after its drain.
    gw.signal("USR2");
    wait_log(&s, "upgrade: the new process is ready", 1).await;
    let line = s.log_text().lines().find(|l| l.contains("upgrade: the new process is ready")).map(str::to_owned);
    let successor = line.as_deref().and_then(|l| l.rsplit("pid=").next()).and_then(|p| p.trim().parse::<u32>().ok());
    let successor = successor.unwrap_or_else(|| panic!("no pid in the ready line:\n{}", s.log_text()));
    assert_eq!(gw.wait_exit(EXIT).await, Some(0), "{}", s.log_text());
    for port in [store, extra] {
        let o = s.echo(port).await;
        assert!(o.status.success(), "echoscu through {port} after the upgrade:\n{}\n{}", output_text(&o), s.log_text());
    }
    assert!(s.log_text().contains(&format!("dicomgate ready pid={successor}")), "{}", s.log_text());
    let term = Command::new("kill").args(["-s", "TERM", &successor.to_string()]).status().expect("kill");
    assert!(term.success(), "the successor runs");
    let deadline = Instant::now() + EXIT;
    while std::fs::read_to_string(format!("/proc/{successor}/stat")).is_ok_and(|st| !st.contains(") Z ")) {
        assert!(Instant::now() < deadline, "successor still running:\n{}", s.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts the gateway through `systemd-socket-activate` with one socket
/// (`name`, on `passed`), triggers it, and returns its exit code and log.
async fn start_fails(s: &Setup, passed: u16, name: &str, config: &Path) -> (Option<i32>, String) {
    let mut gw = s.socket_activate(&[passed], name, config).await;
    // The first connection starts the gateway. It may be reset before the
    // connect completes here: the gateway can fail and close the passed
    // socket (with this connection in its backlog) that fast.
    let _conn = tokio::net::TcpStream::connect(("127.0.0.1", passed)).await;
    (gw.wait_exit(START).await, s.log_text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_on_another_address_is_a_clear_configuration_error() {
    if !require_socket_activate() {
        return;
    }
    let s = Setup::new().await;
    let (passed, configured) = (free_port(), free_port());
    let config = s.config(&[("store", configured)]);
    let (code, log) = start_fails(&s, passed, "store", &config).await;
    assert_eq!(code, Some(64), "{log}");
    let expected = format!(
        "listeners.store.listen is 127.0.0.1:{configured}, but the socket passed as \"store\" is bound to 127.0.0.1:{passed}"
    );
    assert!(log.contains(&expected), "want {expected:?} in:\n{log}");
    assert!(!is_listening(configured), "nothing bound the configured address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_named_for_no_listener_is_a_clear_configuration_error() {
    if !require_socket_activate() {
        return;
    }
    let s = Setup::new().await;
    let port = free_port();
    let config = s.config(&[("store", port)]);
    let (code, log) = start_fails(&s, port, "stroe", &config).await;
    assert_eq!(code, Some(64), "{log}");
    assert!(
        log.contains(
            "a socket was passed as \"stroe\" (FileDescriptorName=), but nothing here has that name (expected one of: store;"
        ),
        "{log}"
    );
}

/// One gateway process with `socket` at fd 3, as systemd starts a service
/// whose .socket unit holds it.
fn start_with_socket(s: &Setup, socket: &std::net::TcpListener, config: &Path) -> Proc {
    let fd: OwnedFd = socket.try_clone().expect("dup").into();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_dicomgate"))
        .args(["run", "--config"])
        .arg(config)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "store")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(s.log_file());
    cmd.fd_mappings(vec![FdMapping { parent_fd: fd, child_fd: 3 }]).expect("fd mapping");
    Proc(cmd.spawn().expect("spawn gateway"))
}

async fn wait_log(s: &Setup, needle: &str, count: usize) {
    let deadline = Instant::now() + START;
    while s.log_text().matches(needle).count() < count {
        assert!(Instant::now() < deadline, "no {count}× {needle:?}:\n{}", s.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_behind_a_held_socket_refuses_no_connection() {
    require_tool!(dcmtk);
    let s = Setup::new().await;
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().expect("addr").port();
    let config = s.config(&[("store", port)]);
    let image = s.path().join("image.dcm");
    support::dicom_file::ScImage::numbered(&support::dicom_file::new_uid(), &support::dicom_file::new_uid(), 1)
        .write(&image);

    let mut gw = start_with_socket(&s, &holder, &config);
    wait_log(&s, "dicomgate ready", 1).await;
    let (stop, ok) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let loader = tokio::spawn({
        let (stop, ok, dir) = (stop.clone(), ok.clone(), s.path().to_owned());
        let mut a = args(&ECHO);
        a.extend(args(&["-aec", "STORESCP", "-to", "60", "-ta", "60", "-td", "60", "127.0.0.1", &port.to_string()]));
        a.push(image.display().to_string());
        async move {
            let (started, mut failures, mut longest) = (Instant::now(), Vec::new(), Duration::ZERO);
            while !stop.load(Ordering::SeqCst)
                && started.elapsed() < Duration::from_secs(150)
                && ok.load(Ordering::SeqCst) < 2000
            {
                let t = Instant::now();
                let o = run_scu("storescu", &a, &dir, Duration::from_secs(120)).await;
                longest = longest.max(t.elapsed());
                match o.status.success() {
                    true => ok.fetch_add(1, Ordering::SeqCst),
                    false => {
                        failures.push(output_text(&o));
                        0
                    }
                };
            }
            (failures, longest)
        }
    });
    let started = Instant::now();
    for generation in 2..=4 {
        let target = ok.load(Ordering::SeqCst) + 3;
        while ok.load(Ordering::SeqCst) < target {
            assert!(started.elapsed() < Duration::from_secs(120), "load stalled:\n{}", s.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // systemctl restart: stop (drain), then start; the socket stays open.
        gw.signal("TERM");
        assert_eq!(gw.wait_exit(EXIT).await, Some(0), "{}", s.log_text());
        gw = start_with_socket(&s, &holder, &config);
        wait_log(&s, "dicomgate ready", generation).await;
    }
    let target = ok.load(Ordering::SeqCst) + 3;
    while ok.load(Ordering::SeqCst) < target {
        assert!(started.elapsed() < Duration::from_secs(120), "load stalled:\n{}", s.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (failures, longest) = loader.await.expect("loader");
    let n = ok.load(Ordering::SeqCst);
    println!("{n} associations across 3 restarts in {:?}; longest association {longest:?}", started.elapsed());
    assert!(failures.is_empty(), "{} failed:\n{}", failures.len(), failures.join("\n"));
    let received = std::fs::read_dir(s.path().join("received")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(received, n, "every object received");
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(EXIT).await, Some(0));
}

/// The shipped socket units and the service they point at pass
/// `systemd-analyze verify` together (the service's binary replaced by a
/// stand-in where dicomgate is not installed, as scripts/check-systemd.sh does).
#[test]
fn socket_units_verify_with_the_service() {
    require_tool!("systemd-analyze");
    let dir = tempfile::tempdir().expect("tempdir");
    let stand_in = dir.path().join("dicomgate");
    std::fs::write(&stand_in, "#!/bin/sh\nexit 0\n").expect("stand-in");
    let status = Command::new("chmod").arg("0755").arg(&stand_in).status().expect("chmod");
    assert!(status.success());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let units = ["dicomgate-store.socket", "dicomgate-worklist.socket", "dicomgate.service"];
    for unit in units {
        let text = std::fs::read_to_string(repo.join(unit)).unwrap_or_else(|e| panic!("{unit}: {e}"));
        std::fs::write(dir.path().join(unit), text.replace("/usr/bin/dicomgate", &stand_in.display().to_string()))
            .expect("unit copy");
    }
    for (unit, name, port) in
        [("dicomgate-store.socket", "store", 2762), ("dicomgate-worklist.socket", "worklist", 2761)]
    {
        let text = std::fs::read_to_string(repo.join(unit)).expect("unit");
        assert!(text.contains(&format!("\nFileDescriptorName={name}\n")), "{unit} names its socket {name}");
        assert!(text.contains(&format!("\nListenStream=0.0.0.0:{port}\n")), "{unit} listens like config.example.yaml");
        assert!(text.contains("\nService=dicomgate.service\n"), "{unit} feeds dicomgate.service");
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(units.iter().map(|u| dir.path().join(u)))
        .output()
        .expect("systemd-analyze");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.trim().is_empty(), "systemd-analyze verify:\n{text}");
}
