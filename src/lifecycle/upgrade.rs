//! Hitless binary upgrade (SIGUSR2), as nginx does it: start the binary at
//! the path we were started from (the one the package has just replaced)
//! with the same arguments, hand it every listening socket, and wait —
//! bounded — until it reports ready. Only then does the caller stop
//! accepting and drain. If the new process fails (bad configuration,
//! missing file, crash, no report in time) it is killed if still there and
//! we keep serving.
//!
//! The sockets go at fd 3.. with the systemd variables (see
//! [`super::sockets`]); one more fd, a datagram socket, carries the new
//! process's `READY=1\nMAINPID=<pid>` back to us. Under systemd the new
//! process also sends MAINPID=/READY=1 to the service manager itself
//! (the unit needs NotifyAccess=all), so it becomes the service's main
//! process before we exit.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::sockets::{READY_FD_NAME, UPGRADE_PARENT_VAR};

/// How long the new process may take to load its configuration and
/// certificates and start serving.
pub const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How often we look whether the new process has exited while waiting.
const EXIT_POLL: Duration = Duration::from_millis(100);
/// The first fd number of passed sockets (systemd's SD_LISTEN_FDS_START).
const FIRST_FD: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot start {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prepare the sockets for the new process: {0}")]
    Prepare(#[source] std::io::Error),
    #[error("the new process (pid {pid}) exited with {status} before it was ready (its own log says why)")]
    Exited { pid: u32, status: ExitStatus },
    #[error("the new process (pid {pid}) was not ready within {deadline:?}; killed it")]
    Timeout { pid: u32, deadline: Duration },
    #[error("lost the readiness channel to the new process (pid {pid}): {source}")]
    Channel {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
}

/// How to start our successor: recorded at startup, before a package
/// upgrade can replace (and so unlink) the file we run from.
#[derive(Debug, Clone)]
pub struct Relauncher {
    pub path: PathBuf,
    pub args: Vec<OsString>,
    pub deadline: Duration,
}

impl Relauncher {
    /// The path we were started from and our arguments. `argv[0]` with a
    /// '/' is that path (made absolute against the start directory; symlinks
    /// are kept, so /usr/bin/dicomgate → a versioned file follows the link
    /// again). Found through PATH, it is /proc/self/exe now, which after a
    /// replacement would read "/usr/bin/dicomgate (deleted)".
    pub fn from_startup() -> Relauncher {
        let mut argv = std::env::args_os();
        let argv0 = argv.next().map(PathBuf::from);
        let args = argv.collect();
        let path = match argv0 {
            Some(p) if p.is_absolute() => p,
            Some(p) if p.components().count() > 1 => std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p),
            _ => std::env::current_exe().map(|p| strip_deleted(&p)).unwrap_or_else(|_| PathBuf::from("dicomgate")),
        };
        Relauncher { path, args, deadline: READY_DEADLINE }
    }

    /// Starts the successor with `sockets` (name, fd) and waits until it is
    /// ready; returns its pid. The child is killed if this future is
    /// dropped or fails before the child reported ready.
    pub async fn launch(&self, sockets: Vec<(String, OwnedFd)>) -> Result<u32, UpgradeError> {
        let (ours, theirs) = UnixDatagram::pair().map_err(UpgradeError::Prepare)?;
        let mut names = Vec::new();
        let mut mappings = Vec::new();
        for (i, (name, fd)) in sockets.into_iter().enumerate() {
            mappings.push(FdMapping { parent_fd: fd, child_fd: FIRST_FD + i as i32 });
            names.push(name);
        }
        mappings.push(FdMapping { parent_fd: OwnedFd::from(theirs), child_fd: FIRST_FD + names.len() as i32 });
        names.push(READY_FD_NAME.to_owned());

        let mut cmd = Command::new(&self.path);
        cmd.args(&self.args)
            .env("LISTEN_FDS", names.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"))
            .env_remove("LISTEN_PID")
            .env(UPGRADE_PARENT_VAR, std::process::id().to_string())
            .stdin(Stdio::null());
        cmd.fd_mappings(mappings).map_err(|e| UpgradeError::Prepare(std::io::Error::other(e)))?;
        let child = cmd.spawn().map_err(|source| UpgradeError::Spawn { path: self.path.clone(), source })?;
        // The command holds the parent's copies of the fds: close them now.
        drop(cmd);
        let mut guard = KillUnlessReady(Some(child));
        let pid = guard.pid();
        tracing::info!(pid, path = %self.path.display(), "upgrade: started the new process; waiting until it is ready");

        ours.set_nonblocking(true).map_err(|source| UpgradeError::Channel { pid, source })?;
        let ours = tokio::net::UnixDatagram::from_std(ours).map_err(|source| UpgradeError::Channel { pid, source })?;
        let deadline = tokio::time::Instant::now() + self.deadline;
        let mut poll = tokio::time::interval(EXIT_POLL);
        let mut buf = [0u8; 256];
        loop {
            tokio::select! {
                got = ours.recv(&mut buf) => {
                    let n = got.map_err(|source| UpgradeError::Channel { pid, source })?;
                    if is_ready_report(&buf[..n], pid) {
                        guard.disarm();
                        return Ok(pid);
                    }
                    tracing::warn!(pid, "upgrade: ignored an unexpected message on the readiness channel");
                }
                _ = poll.tick() => {
                    if let Some(status) = guard.try_wait() {
                        return Err(UpgradeError::Exited { pid, status });
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(UpgradeError::Timeout { pid, deadline: self.deadline });
                }
            }
        }
    }
}

/// An upgrade in progress: the new process's pid once it is ready.
pub type Launch = JoinHandle<Result<u32, UpgradeError>>;

/// The next SIGUSR2 (never, without upgrade support).
pub async fn next_request(requests: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match requests {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Starts an upgrade with duplicates of `sockets` (name, fd), unless one is
/// already in progress (then the request is logged and ignored).
pub fn start<'a>(
    task: &mut Option<Launch>,
    relauncher: Option<&Arc<Relauncher>>,
    sockets: impl Iterator<Item = (&'a str, &'a OwnedFd)>,
) {
    if task.is_some() {
        tracing::warn!("an upgrade is already in progress; SIGUSR2 ignored");
        return;
    }
    let Some(relauncher) = relauncher.cloned() else { return };
    let mut passed = Vec::new();
    for (name, fd) in sockets {
        match fd.try_clone() {
            Ok(fd) => passed.push((name.to_owned(), fd)),
            Err(e) => {
                tracing::error!(listener = name, "upgrade failed, still serving: cannot duplicate the socket: {e}");
                return;
            }
        }
    }
    let names: Vec<&str> = passed.iter().map(|(n, _)| n.as_str()).collect();
    tracing::info!(path = %relauncher.path.display(), sockets = %names.join(","), "upgrade requested (SIGUSR2)");
    *task = Some(tokio::spawn(async move { relauncher.launch(passed).await }));
}

/// Completes when the upgrade in progress ends: the new process's pid if it
/// is ready, `None` (logged) if it failed and we keep serving.
pub async fn finished(task: &mut Option<Launch>) -> Option<u32> {
    let Some(handle) = task.as_mut() else { return std::future::pending().await };
    let result = handle.await;
    *task = None;
    match result {
        Ok(Ok(pid)) => Some(pid),
        Ok(Err(e)) => {
            tracing::error!("upgrade failed, still serving: {e}");
            None
        }
        Err(e) => {
            tracing::error!("upgrade failed, still serving: {e}");
            None
        }
    }
}

/// The new process's side: tell systemd we are now the main process (no-op
/// without NOTIFY_SOCKET), then tell the previous process we are ready.
pub fn report_ready(channel: &UnixDatagram) {
    let pid = std::process::id();
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        use sd_notify::NotifyState as N;
        if let Err(e) = sd_notify::notify(&[N::MainPid(pid), N::Ready]) {
            tracing::warn!(error = %e, "cannot tell systemd that this process is the new main process");
        }
    }
    if let Err(e) = channel.send(ready_report(pid).as_bytes()) {
        tracing::warn!(error = %e, "cannot report readiness to the previous process; it keeps serving");
    }
}

fn ready_report(pid: u32) -> String {
    format!("READY=1\nMAINPID={pid}\n")
}

fn is_ready_report(msg: &[u8], pid: u32) -> bool {
    msg == ready_report(pid).as_bytes()
}

/// "/usr/bin/dicomgate (deleted)" → "/usr/bin/dicomgate": the kernel's
/// suffix for an unlinked executable, i.e. the path the new file now has.
pub fn strip_deleted(path: &Path) -> PathBuf {
    match path.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(s) => PathBuf::from(s),
        None => path.to_owned(),
    }
}

/// Kills (by its own handle) and reaps the child unless it reported ready.
struct KillUnlessReady(Option<Child>);

impl KillUnlessReady {
    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        let status = self.0.as_mut().and_then(|c| c.try_wait().ok().flatten());
        if status.is_some() {
            self.0 = None;
        }
        status
    }

    /// The child lives on (and outlives us).
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for KillUnlessReady {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleted_suffix_is_stripped() {
        assert_eq!(strip_deleted(Path::new("/usr/bin/dicomgate (deleted)")), PathBuf::from("/usr/bin/dicomgate"));
        assert_eq!(strip_deleted(Path::new("/usr/bin/dicomgate")), PathBuf::from("/usr/bin/dicomgate"));
    }

    #[test]
    fn only_the_childs_own_report_counts() {
        assert!(is_ready_report(b"READY=1\nMAINPID=42\n", 42));
        assert!(!is_ready_report(b"READY=1\nMAINPID=43\n", 42));
        assert!(!is_ready_report(b"READY=1\n", 42));
    }

    #[tokio::test]
    async fn a_successor_that_exits_is_reported_and_we_keep_going() {
        let r = Relauncher { path: "/bin/false".into(), args: vec![], deadline: Duration::from_secs(20) };
        match r.launch(Vec::new()).await {
            Err(UpgradeError::Exited { status, .. }) => assert!(!status.success()),
            other => panic!("expected Exited, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_successor_that_never_reports_is_killed_at_the_deadline() {
        let r = Relauncher { path: "/bin/sleep".into(), args: vec!["30".into()], deadline: Duration::from_millis(300) };
        assert!(matches!(r.launch(Vec::new()).await, Err(UpgradeError::Timeout { .. })));
    }

    #[tokio::test]
    async fn a_second_request_during_an_upgrade_is_ignored() {
        let r = Arc::new(Relauncher { path: "/bin/sleep".into(), args: vec!["30".into()], deadline: READY_DEADLINE });
        let mut task = None;
        start(&mut task, Some(&r), std::iter::empty());
        let first = task.as_ref().map(|t| t.id()).expect("an upgrade started");
        start(&mut task, Some(&r), std::iter::empty());
        assert_eq!(task.as_ref().map(|t| t.id()), Some(first), "still the first upgrade");
        // Aborting drops the launch, which kills the sleeping successor.
        task.take().expect("task").abort();
    }

    #[tokio::test]
    async fn a_missing_binary_is_a_spawn_error_naming_the_path() {
        let r = Relauncher { path: "/nonexistent/dicomgate".into(), args: vec![], deadline: Duration::from_secs(1) };
        let e = r.launch(Vec::new()).await.unwrap_err().to_string();
        assert!(e.contains("/nonexistent/dicomgate"), "{e}");
    }
}
