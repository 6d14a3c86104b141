//! Listening sockets handed to us instead of bound by us: by systemd (socket
//! activation, sd_listen_fds(3)) or by the previous dicomgate process during
//! a hitless upgrade (see [`super::upgrade`]).
//!
//! The protocol is systemd's: `LISTEN_FDS=n` sockets from fd 3,
//! `LISTEN_FDNAMES=a:b:…` their names (`FileDescriptorName=`), and
//! `LISTEN_PID` the process they are meant for, so that a child that
//! inherited the environment by accident does not take them. The previous
//! dicomgate cannot know its successor's pid before exec, so it leaves
//! `LISTEN_PID` out, names itself in `DICOMGATE_UPGRADE_PARENT` and passes
//! the readiness channel among the sockets; we take upgrade sockets only
//! with that channel. (The successor is deliberately not the previous
//! process's child, see [`super::upgrade`], so the parent pid cannot be the
//! test; the variables are removed as soon as they are read, so no process
//! we start inherits them.)
//!
//! Sockets only change where a listener comes from: the accept loop, and so
//! the allow list before any TLS work, is the same.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixDatagram;

/// The name of the extra socket over which an upgraded process reports
/// readiness to its parent (not a listener; a '.' keeps it apart from the
/// names an admin would give).
pub const READY_FD_NAME: &str = "dicomgate.upgrade-ready";
/// The parent's pid, set by the previous process on SIGUSR2.
pub const UPGRADE_PARENT_VAR: &str = "DICOMGATE_UPGRADE_PARENT";
/// The name under which the admin endpoint's socket is passed.
pub const ADMIN_FD_NAME: &str = "admin";

const VARS: [&str; 4] = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", UPGRADE_PARENT_VAR];

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{var}={value:?} is not valid (systemd socket activation: {why})")]
    BadVariable { var: &'static str, value: String, why: &'static str },
    #[error("passed socket {index} ({name:?}, fd {fd}): {source}")]
    Take {
        index: usize,
        name: String,
        fd: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("two passed sockets are named {name:?}: each listener takes one (ListenStream= of its own .socket unit)")]
    Duplicate { name: String },
    #[error(
        "{key} is {configured}, but the socket passed as {name:?} is bound to {passed}: make the socket unit's \
         ListenStream= and {key} agree"
    )]
    AddressMismatch { key: String, configured: SocketAddr, name: String, passed: SocketAddr },
    #[error(
        "a socket was passed as {name:?} (FileDescriptorName=), but nothing here has that name (expected one of: \
         {known}; a listener's name, or \"admin\" for the admin endpoint)"
    )]
    Unclaimed { name: String, known: String },
}

/// Who passed the sockets (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Systemd,
    Upgrade { parent: u32 },
}

/// What the environment says, before any fd is touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No sockets for us (none passed, or passed to another process).
    None {
        ignored: Option<String>,
    },
    Take {
        source: Source,
        names: Vec<String>,
    },
}

/// Decides from the variables alone (pure, so every case is unit-tested).
/// `get` reads one variable; `pid` is ours.
pub fn plan(get: impl Fn(&str) -> Option<String>, pid: u32) -> Result<Plan, SocketError> {
    let Some(fds) = get("LISTEN_FDS") else { return Ok(Plan::None { ignored: None }) };
    let count: usize = fds.trim().parse().map_err(|_| SocketError::BadVariable {
        var: "LISTEN_FDS",
        value: fds.clone(),
        why: "a count of sockets from fd 3",
    })?;
    let pid_var = get("LISTEN_PID");
    let parent_var = get(UPGRADE_PARENT_VAR);
    let source = match (pid_var.as_deref(), parent_var.as_deref()) {
        (Some(p), _) if p.trim().parse() == Ok(pid) => Source::Systemd,
        (None, Some(p)) => match p.trim().parse() {
            Ok(parent) => Source::Upgrade { parent },
            Err(_) => {
                return Err(SocketError::BadVariable {
                    var: UPGRADE_PARENT_VAR,
                    value: p.to_owned(),
                    why: "the previous process's pid",
                })
            }
        },
        (Some(p), _) => return Ok(Plan::None { ignored: Some(format!("LISTEN_PID={p} is not our pid {pid}")) }),
        (None, None) => return Ok(Plan::None { ignored: Some("LISTEN_FDS without LISTEN_PID".into()) }),
    };
    // Without LISTEN_FDNAMES systemd's sd_listen_fds_with_names() says
    // "unknown" for each: the error then asks for FileDescriptorName=.
    let names: Vec<String> = match get("LISTEN_FDNAMES") {
        Some(n) => n.split(':').map(str::to_owned).collect(),
        None => vec!["unknown".into(); count],
    };
    if names.len() != count {
        return Err(SocketError::BadVariable {
            var: "LISTEN_FDNAMES",
            value: names.join(":"),
            why: "one name per passed socket",
        });
    }
    if matches!(source, Source::Upgrade { .. }) && !names.iter().any(|n| n == READY_FD_NAME) {
        let why = format!("{UPGRADE_PARENT_VAR} without the readiness channel ({READY_FD_NAME})");
        return Ok(Plan::None { ignored: Some(why) });
    }
    Ok(Plan::Take { source, names })
}

/// Sockets passed to this process, taken once by name.
#[derive(Debug, Default)]
pub struct Inherited {
    pub source: Option<Source>,
    /// Why passed sockets were not for us (logged once logging is up).
    pub ignored: Option<String>,
    /// By name: the position in LISTEN_FDS (for errors) and the socket.
    listeners: BTreeMap<String, (usize, TcpListener)>,
    ready: Option<UnixDatagram>,
}

impl Inherited {
    /// No sockets: every listener binds itself.
    pub fn none() -> Inherited {
        Inherited::default()
    }

    /// Takes the passed sockets and removes the variables, so that a
    /// process we start does not take them by mistake. Call before any
    /// thread is started (it changes the environment).
    pub fn from_env() -> Result<Inherited, SocketError> {
        let plan = plan(|v| std::env::var(v).ok(), std::process::id());
        let taken = match plan {
            Ok(Plan::Take { source, names }) => take(source, names),
            Ok(Plan::None { ignored }) => Ok(Inherited { ignored, ..Inherited::default() }),
            Err(e) => Err(e),
        };
        for var in VARS {
            std::env::remove_var(var);
        }
        taken
    }

    /// The socket passed as `name` for the listener at config key `key`
    /// (its `listen` is `configured`; port 0 accepts any port).
    pub fn take_listener(
        &mut self,
        name: &str,
        key: &str,
        configured: SocketAddr,
    ) -> Result<Option<TcpListener>, SocketError> {
        let Some((index, tcp)) = self.listeners.remove(name) else { return Ok(None) };
        let err = |source| SocketError::Take { index, name: name.into(), fd: 3 + index, source };
        let passed = tcp.local_addr().map_err(err)?;
        if !address_matches(configured, passed) {
            return Err(SocketError::AddressMismatch { key: key.into(), configured, name: name.into(), passed });
        }
        Ok(Some(tcp))
    }

    /// Errors if a passed socket is for none of the `known` names (a typo
    /// in FileDescriptorName= would otherwise leave a port nobody serves).
    /// Checked before anything binds, so the error is this one and not the
    /// bind failing on the port the misnamed socket holds.
    pub fn check_names(&self, known: &[&str]) -> Result<(), SocketError> {
        match self.listeners.keys().find(|n| !known.contains(&n.as_str())) {
            Some(name) => Err(SocketError::Unclaimed { name: name.clone(), known: known.join(", ") }),
            None => Ok(()),
        }
    }

    /// The channel to report readiness to the previous process (upgrade only).
    pub fn take_ready_channel(&mut self) -> Option<UnixDatagram> {
        self.ready.take()
    }

    pub fn len(&self) -> usize {
        self.listeners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }
}

fn take(source: Source, names: Vec<String>) -> Result<Inherited, SocketError> {
    let mut fds = listenfd::ListenFd::from_env();
    let mut out = Inherited { source: Some(source), ..Inherited::default() };
    for (index, name) in names.into_iter().enumerate() {
        let err = |source| SocketError::Take { index, name: name.clone(), fd: 3 + index, source };
        if name == READY_FD_NAME && matches!(source, Source::Upgrade { .. }) {
            out.ready = fds.take_unix_datagram(index).map_err(err)?;
            if let Some(channel) = &out.ready {
                super::handshake::announce(channel);
            }
            continue;
        }
        let tcp = fds.take_tcp_listener(index).map_err(err)?;
        let Some(tcp) = tcp else { continue };
        if out.listeners.insert(name.clone(), (index, tcp)).is_some() {
            return Err(SocketError::Duplicate { name });
        }
    }
    Ok(out)
}

/// Same IP, and the same port unless `listen` asks for any port (0).
pub fn address_matches(configured: SocketAddr, passed: SocketAddr) -> bool {
    configured.ip() == passed.ip() && (configured.port() == 0 || configured.port() == passed.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn systemd_sockets_are_ours_only_with_our_pid() {
        let vars = [("LISTEN_FDS", "2"), ("LISTEN_PID", "42"), ("LISTEN_FDNAMES", "store:worklist")];
        let names = vec!["store".to_owned(), "worklist".to_owned()];
        assert_eq!(plan(env(&vars), 42).unwrap(), Plan::Take { source: Source::Systemd, names });
        assert!(matches!(plan(env(&vars), 43).unwrap(), Plan::None { ignored: Some(_) }));
    }

    #[test]
    fn upgrade_sockets_come_with_the_readiness_channel() {
        let names = format!("store:{READY_FD_NAME}");
        let vars = [("LISTEN_FDS", "2"), (UPGRADE_PARENT_VAR, "7"), ("LISTEN_FDNAMES", names.as_str())];
        let got = plan(env(&vars), 8).unwrap();
        let want = vec!["store".to_owned(), READY_FD_NAME.to_owned()];
        assert_eq!(got, Plan::Take { source: Source::Upgrade { parent: 7 }, names: want });
        // Without the channel they were not meant for an upgrade.
        let bare = [("LISTEN_FDS", "1"), (UPGRADE_PARENT_VAR, "7"), ("LISTEN_FDNAMES", "store")];
        assert!(matches!(plan(env(&bare), 8).unwrap(), Plan::None { ignored: Some(_) }));
        // LISTEN_PID, when present, wins (it is systemd's).
        let both = [("LISTEN_FDS", "1"), ("LISTEN_PID", "5"), (UPGRADE_PARENT_VAR, "7")];
        assert!(matches!(plan(env(&both), 8).unwrap(), Plan::None { ignored: Some(_) }));
        let bad = [("LISTEN_FDS", "1"), (UPGRADE_PARENT_VAR, "seven")];
        assert!(plan(env(&bad), 8).unwrap_err().to_string().contains(UPGRADE_PARENT_VAR));
    }

    #[test]
    fn nothing_passed_is_nothing_to_take() {
        assert_eq!(plan(env(&[]), 1).unwrap(), Plan::None { ignored: None });
        let orphan = [("LISTEN_FDS", "1")];
        assert!(matches!(plan(env(&orphan), 1).unwrap(), Plan::None { ignored: Some(_) }));
    }

    #[test]
    fn names_default_to_unknown_and_must_match_the_count() {
        let unnamed = [("LISTEN_FDS", "2"), ("LISTEN_PID", "3")];
        let unknown = vec!["unknown".to_owned(); 2];
        assert_eq!(plan(env(&unnamed), 3).unwrap(), Plan::Take { source: Source::Systemd, names: unknown });
        let short = [("LISTEN_FDS", "2"), ("LISTEN_PID", "3"), ("LISTEN_FDNAMES", "store")];
        let e = plan(env(&short), 3).unwrap_err().to_string();
        assert!(e.contains("LISTEN_FDNAMES") && e.contains("one name per passed socket"), "{e}");
        let bad = [("LISTEN_FDS", "two"), ("LISTEN_PID", "3")];
        assert!(plan(env(&bad), 3).unwrap_err().to_string().contains("LISTEN_FDS=\"two\""));
    }

    #[test]
    fn port_zero_accepts_any_port_but_never_another_ip() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(address_matches(a("127.0.0.1:2762"), a("127.0.0.1:2762")));
        assert!(address_matches(a("127.0.0.1:0"), a("127.0.0.1:40000")));
        assert!(!address_matches(a("127.0.0.1:2762"), a("127.0.0.1:2761")));
        assert!(!address_matches(a("0.0.0.0:2762"), a("127.0.0.1:2762")));
        assert!(!address_matches(a("[::]:2762"), a("0.0.0.0:2762")));
    }

    #[test]
    fn mismatch_error_names_both_addresses_and_the_key() {
        let e = SocketError::AddressMismatch {
            key: "listeners.store.listen".into(),
            configured: "0.0.0.0:2762".parse().unwrap(),
            name: "store".into(),
            passed: "127.0.0.1:2761".parse().unwrap(),
        }
        .to_string();
        assert!(e.contains("listeners.store.listen is 0.0.0.0:2762") && e.contains("bound to 127.0.0.1:2761"), "{e}");
    }
}
