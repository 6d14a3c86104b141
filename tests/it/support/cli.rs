//! One-shot runs of the real `dicomgate` binary (`gen-cert`, `echo`,
//! `check`) to completion, outside any runtime, and what the command tests
//! check of their results (exit code, output, OpenSSL's view of a file,
//! permission bits). Long-running `dicomgate run` is [`super::daemon`].

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::tools::output_text;

/// The binary under test.
pub fn dicomgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dicomgate")).args(args).stdin(Stdio::null()).output().expect("run dicomgate")
}

/// Exit code of a finished process (`-1` when killed by a signal).
pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `openssl args…`; panics with its output when it fails.
pub fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}:\n{}", output_text(&out));
    format!("{}{}", stdout(&out), stderr(&out))
}

/// Unix permission bits of a file.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// Runs `dicomgate gen-cert --dir DIR --cn CN --key-type … [extra…]` and
/// returns (certificate, key) paths.
pub fn gen_cert(dir: &Path, cn: &str, key_type: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let dir_text = dir.display().to_string();
    let mut args = vec!["gen-cert", "--dir", &dir_text, "--cn", cn, "--key-type", key_type];
    args.extend_from_slice(extra);
    let out = dicomgate(&args);
    assert_eq!(code(&out), 0, "gen-cert:\n{}", output_text(&out));
    (dir.join("scp_cert.pem"), dir.join("scp_key.pem"))
}
