//! The suggested alert rules in `deploy/prometheus/` parse, pass their
//! `promtool test rules` cases, and load from the example configuration
//! (`scripts/check-deploy.sh`, which developers run by hand too).
//!
//! Without promtool (Debian: prometheus) this is skipped, except under
//! `CI=true`, where that is a failure.

use std::path::Path;
use std::process::Command;

#[test]
fn alert_rules_are_valid_and_fire_as_documented() {
    require_tool!("promtool");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check-deploy.sh");
    let out = Command::new("bash").arg(&script).output().expect("run check-deploy.sh");
    assert!(
        out.status.success(),
        "check-deploy.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
