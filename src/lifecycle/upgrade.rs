//! Hitless binary upgrade (SIGUSR2), as nginx does it: start the binary at
//! the path we were started from (the one the package has just replaced)
//! with the same arguments, hand it every listening socket, and wait —
//! bounded — until it reports ready. Only then does the caller stop
//! accepting and drain. If the new process fails (bad configuration,
//! missing file, crash, no report in time) it is killed if still there and
//! we keep serving.
//!
//! The sockets go at fd 3.. with the systemd variables (see
//! [`super::sockets`]); one more fd, a datagram socket, carries the
//! conversation of [`super::handshake`]. Under systemd the new process
//! sends MAINPID=/READY=1 to the service manager itself (the unit needs
//! NotifyAccess=all), so it becomes the service's main process before we
//! exit.
//!
//! The successor is started through `/bin/sh -c '"$0" "$@" &'`: the shell
//! exits at once, so the successor is re-parented to the service manager
//! (PID 1) before it says MAINPID=. systemd treats a main process that is not
//! its child as "alien": it would SIGKILL it right after SIGTERM on stop (no
//! drain) and log "Supervising process … which is not our child". Not being
//! our child, the successor is watched through /proc and, on failure, killed
//! with its process group (the shell's, which it keeps).

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use super::handshake::report_ready;
use super::handshake::Message;
use super::sockets::{READY_FD_NAME, UPGRADE_PARENT_VAR};

/// How long the new process may take to load its configuration and
/// certificates and start serving.
pub const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long the new process may take to run at all (exec, dynamic loading)
/// and say so: until then we cannot tell whether it has exited.
const START_DEADLINE: Duration = Duration::from_secs(15);
/// How often we look whether the new process has exited while waiting.
const EXIT_POLL: Duration = Duration::from_millis(100);
/// The first fd number of passed sockets (systemd's SD_LISTEN_FDS_START).
const FIRST_FD: i32 = 3;
/// Starts "$0" with the arguments in the background and exits: the started
/// process is then nobody's child but the reaper's (the service manager).
const SHELL: &str = "/bin/sh";
const DETACH: &str = "\"$0\" \"$@\" &";

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
    #[error("the new process (pid {pid}) exited before it was ready (its own log says why)")]
    Exited { pid: u32 },
    #[error("the new process did not start within {deadline:?} (no word from it; its own log may say why); killed it")]
    NoStart { deadline: Duration },
    #[error("the new process (pid {pid}) was not ready within {deadline:?}; killed it")]
    Timeout { pid: u32, deadline: Duration },
    #[error("lost the readiness channel to the new process: {0}")]
    Channel(#[source] std::io::Error),
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
    /// ready; returns its pid. The successor is killed if this future is
    /// dropped or fails before it reported ready.
    pub async fn launch(&self, sockets: Vec<(String, OwnedFd)>) -> Result<u32, UpgradeError> {
        // The shell would start a missing file without complaint (in its
        // background child): check here, so that the error names the path.
        match std::fs::metadata(&self.path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                let source = std::io::Error::other("not a regular file");
                return Err(UpgradeError::Spawn { path: self.path.clone(), source });
            }
            Err(source) => return Err(UpgradeError::Spawn { path: self.path.clone(), source }),
        }
        let (ours, theirs) = UnixDatagram::pair().map_err(UpgradeError::Prepare)?;
        let mut names = Vec::new();
        let mut mappings = Vec::new();
        for (i, (name, fd)) in sockets.into_iter().enumerate() {
            mappings.push(FdMapping { parent_fd: fd, child_fd: FIRST_FD + i as i32 });
            names.push(name);
        }
        mappings.push(FdMapping { parent_fd: OwnedFd::from(theirs), child_fd: FIRST_FD + names.len() as i32 });
        names.push(READY_FD_NAME.to_owned());

        let mut cmd = Command::new(SHELL);
        cmd.arg("-c")
            .arg(DETACH)
            .arg(&self.path)
            .args(&self.args)
            .env("LISTEN_FDS", names.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"))
            .env_remove("LISTEN_PID")
            .env(UPGRADE_PARENT_VAR, std::process::id().to_string())
            // Its own process group, which the successor inherits: what
            // we kill if it fails, even before we know its pid.
            .process_group(0)
            .stdin(Stdio::null());
        cmd.fd_mappings(mappings).map_err(|e| UpgradeError::Prepare(std::io::Error::other(e)))?;
        let shell = cmd.spawn().map_err(|source| UpgradeError::Spawn { path: SHELL.into(), source })?;
        // The command holds the parent's copies of the fds: close them now.
        drop(cmd);
        let mut guard = KillUnlessReady::new(shell);
        tracing::info!(path = %self.path.display(), "upgrade: starting the new process; waiting until it is ready");

        ours.set_nonblocking(true).map_err(UpgradeError::Channel)?;
        let ours = tokio::net::UnixDatagram::from_std(ours).map_err(UpgradeError::Channel)?;
        let start = tokio::time::Instant::now();
        let deadline = start + self.deadline;
        let mut poll = tokio::time::interval(EXIT_POLL);
        let mut buf = [0u8; 256];
        let mut pid = None;
        let mut detached_sent = false;
        loop {
            tokio::select! {
                got = ours.recv(&mut buf) => {
                    match (Message::parse(&buf[..got.map_err(UpgradeError::Channel)?]), pid) {
                        (Some(Message::Started { pid: p }), None) => pid = Some(p),
                        (Some(Message::Ready { pid: p }), Some(known)) if p == known => {
                            guard.disarm();
                            return Ok(p);
                        }
                        _ => tracing::warn!(?pid, "upgrade: ignored an unexpected message on the readiness channel"),
                    }
                }
                _ = poll.tick() => {
                    guard.reap_shell();
                    match pid {
                        Some(p) if !alive(p) => return Err(UpgradeError::Exited { pid: p }),
                        None if start.elapsed() > START_DEADLINE.min(self.deadline) => {
                            return Err(UpgradeError::NoStart { deadline: START_DEADLINE.min(self.deadline) });
                        }
                        _ => {}
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(match pid {
                        Some(pid) => UpgradeError::Timeout { pid, deadline: self.deadline },
                        None => UpgradeError::NoStart { deadline: self.deadline },
                    });
                }
            }
            // Once the shell is gone, the successor's parent is the reaper:
            // only now may it tell systemd MAINPID=.
            if !detached_sent && pid.is_some() && guard.shell_gone() {
                ours.send(Message::Detached.encode().as_bytes()).await.map_err(UpgradeError::Channel)?;
                detached_sent = true;
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

/// "/usr/bin/dicomgate (deleted)" → "/usr/bin/dicomgate": the kernel's
/// suffix for an unlinked executable, i.e. the path the new file now has.
pub fn strip_deleted(path: &Path) -> PathBuf {
    match path.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(s) => PathBuf::from(s),
        None => path.to_owned(),
    }
}

/// Whether `pid` runs (a zombie has exited; its reaper has not yet waited).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Reaps the intermediate shell, and kills its process group (the
/// successor) unless the successor reported ready.
struct KillUnlessReady {
    shell: Option<Child>,
    group: u32,
    armed: bool,
}

impl KillUnlessReady {
    fn new(shell: Child) -> KillUnlessReady {
        KillUnlessReady { group: shell.id(), shell: Some(shell), armed: true }
    }

    fn reap_shell(&mut self) {
        if let Some(shell) = self.shell.as_mut() {
            if let Ok(Some(status)) = shell.try_wait() {
                if !status.success() {
                    tracing::warn!(%status, "upgrade: the shell that starts the new process failed");
                }
                self.shell = None;
            }
        }
    }

    fn shell_gone(&self) -> bool {
        self.shell.is_none()
    }

    /// The successor lives on (and outlives us).
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for KillUnlessReady {
    fn drop(&mut self) {
        if self.armed {
            // The group outlives the shell while the successor runs in it.
            let _ = killpg(Pid::from_raw(self.group as i32), Signal::SIGKILL);
        }
        if let Some(mut shell) = self.shell.take() {
            let _ = shell.kill();
            let _ = shell.wait();
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
    fn we_run_and_pid_one_is_no_zombie() {
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX));
    }

    #[tokio::test]
    async fn a_successor_that_never_speaks_is_a_failed_start() {
        // /bin/false never sends Started: we cannot see it exit, only the deadline.
        let r = Relauncher { path: "/bin/false".into(), args: vec![], deadline: Duration::from_millis(500) };
        assert!(matches!(r.launch(Vec::new()).await, Err(UpgradeError::NoStart { .. })));
    }

    #[tokio::test]
    async fn a_successor_that_never_reports_is_killed_with_its_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("still-running");
        // A stand-in that runs without a word; the kill must reach it even
        // though it is not our child.
        let script = format!("sleep 0.8; touch {}", marker.display());
        let r = Relauncher {
            path: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            deadline: Duration::from_millis(300),
        };
        assert!(matches!(r.launch(Vec::new()).await, Err(UpgradeError::NoStart { .. })));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "the successor survived the failed upgrade");
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
