//! Issue 3 acceptance for `systemd/`: `systemd-analyze verify` is clean, the
//! sysusers/tmpfiles snippets apply, and `systemd-analyze security` rates the
//! unit's exposure at 1.5 or less. All of it is `scripts/check-systemd.sh`,
//! which developers run by hand too.
//!
//! Without systemd-analyze (Debian: systemd) this is skipped, except under
//! `CI=true`, where that is a failure.

use std::path::Path;
use std::process::Command;

#[test]
fn unit_verifies_and_exposure_is_at_most_1_5() {
    require_tool!("systemd-analyze");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check-systemd.sh");
    let out = Command::new("bash").arg(&script).env_remove("MAX_EXPOSURE").output().expect("run check-systemd.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Shown with --nocapture: the measured exposure for the notes.
    println!("{stdout}");
    assert!(out.status.success(), "check-systemd.sh failed:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("overall exposure"), "no exposure measured:\n{stdout}");
}
