//! Issue 12: what the Debian package ships, checked without building it
//! (scripts/check-package.sh installs the real .deb in CI): the packaged
//! config is production-shaped and valid, the generated man pages and
//! completions cover every command, the maintainer scripts never start or
//! enable the service on install, every asset the metadata names exists,
//! and the README keeps its promises (size, quick start, install order).

use std::path::{Path, PathBuf};
use std::process::Command;

use dicomgate::config::schema::INSTALLED_SCHEMA_PATH;
use dicomgate::config::Security;
use dicomgate::Config;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

#[test]
fn packaged_config_is_production_shaped() {
    let text = read("packaging/config.yaml");
    assert_eq!(
        text.lines().next(),
        Some(format!("# yaml-language-server: $schema={INSTALLED_SCHEMA_PATH}").as_str()),
        "the first line must be the schema modeline"
    );
    let config = Config::from_yaml_str(&text, Path::new("/etc/dicomgate")).expect("packaged config loads");
    let ports: Vec<u16> = config.listeners.values().map(|l| l.listen.port()).collect();
    assert!(ports.contains(&2762) && ports.contains(&2761), "the guide's ports, got {ports:?}");
    for l in config.listeners.values() {
        let allow: Vec<String> = l.allow.iter().map(ToString::to_string).collect();
        assert_eq!(allow, ["34.203.166.92/32"], "listener {}: only the cloud may connect", l.name);
        let Security::Tls(tls) = &l.security else { panic!("listener {} is not TLS", l.name) };
        assert!(tls.generate_if_missing, "listener {}: a certificate is generated on first start", l.name);
        for f in [&tls.certificate, &tls.private_key] {
            assert!(f.starts_with("/var/lib/dicomgate/"), "{} is not in the state directory", f.display());
        }
    }
    for b in config.backends.values() {
        for s in &b.servers {
            assert!(s.host.ends_with(".invalid"), "backend {} server {s} is not a placeholder", b.name);
        }
    }
    assert!(text.matches("FILL IN").count() >= 4, "the backend lines are marked for the admin");
    let admin = config.admin.expect("admin endpoint");
    assert!(admin.listen.ip().is_loopback(), "the admin endpoint stays on loopback");
}

#[test]
fn packaged_config_passes_dicomgate_check() {
    // check reads no certificate that generate_if_missing would create, so
    // this runs anywhere; CI repeats it as user dicomgate on the installed file.
    let out = Command::new(env!("CARGO_BIN_EXE_dicomgate"))
        .args(["check", "--config"])
        .arg(repo().join("packaging/config.yaml"))
        .output()
        .expect("run dicomgate check");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "dicomgate check failed:\n{text}");
    assert!(text.contains("will be generated at /var/lib/dicomgate/scp_cert.pem"), "{text}");
}

#[test]
fn generated_man_pages_and_completions_cover_every_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_dicomgate"))
        .args(["generate-assets", "--out"])
        .arg(dir.path())
        .output()
        .expect("run generate-assets");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let commands = ["run", "check", "echo", "gen-cert", "schema"];
    let main = std::fs::read_to_string(dir.path().join("man/dicomgate.1")).expect("dicomgate.1");
    assert!(main.starts_with(".ie") || main.contains(".TH dicomgate 1"), "not a man page:\n{main}");
    for c in commands {
        assert!(main.contains(&format!("dicomgate\\-{}(1)", c.replace('-', "\\-"))), "dicomgate(1) does not list {c}");
        let heading = format!(".SH \"DICOMGATE {}\"", c.to_uppercase());
        assert!(main.contains(&heading), "dicomgate(1) has no section for {c}");
        let page = std::fs::read_to_string(dir.path().join(format!("man/dicomgate-{c}.1")))
            .unwrap_or_else(|e| panic!("dicomgate-{c}.1: {e}"));
        assert!(page.contains(".SH NAME"), "dicomgate-{c}.1 has no NAME section");
    }
    assert!(!main.contains("generate\\-assets"), "the hidden generator is not documented");
    assert!(!main.contains("dicomgate\\-help"), "clap's help subcommand is not one of ours");
    assert!(main.contains(".SH \"EXIT STATUS\"") && main.contains("\n64\n"), "exit codes are documented");
    let yaml5 = std::fs::read_to_string(dir.path().join("man/dicomgate.yaml.5")).expect("dicomgate.yaml.5");
    assert!(yaml5.contains(".B listeners.NAME.allow"), "dicomgate.yaml(5) lists the keys");
    for file in ["completions/dicomgate.bash", "completions/_dicomgate", "completions/dicomgate.fish"] {
        let text = std::fs::read_to_string(dir.path().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        for c in commands {
            assert!(text.contains(c), "{file} does not complete {c}");
        }
        assert!(text.contains("--config") || text.contains("-l config"), "{file} does not complete --config");
    }
    let schema = std::fs::read_to_string(dir.path().join("dicomgate.schema.json")).expect("schema");
    assert_eq!(schema, read("docs/dicomgate.schema.json"), "generated schema differs from the committed copy");
}

#[test]
fn maintainer_scripts_never_start_or_enable_on_install() {
    for script in ["postinst", "prerm", "postrm"] {
        let path = repo().join("packaging/debian").join(script);
        let status = Command::new("sh").arg("-n").arg(&path).status().expect("sh -n");
        assert!(status.success(), "{script} is not valid sh");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("#!/bin/sh\n"), "{script}: #!/bin/sh first");
        // What the scripts run, not what they print or say in comments.
        let code: String = text
            .lines()
            .map(str::trim_start)
            .filter(|l| !l.starts_with('#') && !l.starts_with("echo "))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(text.contains("\nset -e\n"), "{script}: set -e");
        for forbidden in ["systemctl enable", "systemctl start", "invoke start", "helper enable", "restart"] {
            assert!(!code.contains(forbidden), "{script} runs {forbidden:?}");
        }
    }
    let postinst = read("packaging/debian/postinst");
    // Reload only on upgrade ($2 = the old version) and only if it runs.
    assert!(postinst.contains(r#"if [ -n "$2" ] && systemctl is-active --quiet dicomgate.service; then"#));
    let postrm = read("packaging/debian/postrm");
    assert!(postrm.contains("purge)") && postrm.contains("rm -rf /var/lib/dicomgate /etc/dicomgate"));
}

#[test]
fn every_asset_in_the_deb_metadata_exists_or_is_generated() {
    let cargo = read("Cargo.toml");
    let meta = &cargo[cargo.find("[package.metadata.deb]").expect("deb metadata")..];
    let assets = &meta[meta.find("assets = [").expect("assets")..];
    let mut sources = Vec::new();
    for line in assets.lines().skip(1).take_while(|l| l.trim() != "]") {
        let source = line.trim().trim_start_matches("[\"").split('"').next().expect("source").to_owned();
        sources.push(source);
    }
    assert!(sources.len() >= 10, "assets: {sources:?}");
    for s in &sources {
        if s.starts_with("target/release/") {
            continue; // built by scripts/build-package.sh
        }
        let (dir, pattern) = s.rsplit_once('/').unwrap_or((".", s));
        let found = match pattern.strip_prefix('*') {
            Some(suffix) => std::fs::read_dir(repo().join(dir))
                .map(|d| d.filter_map(Result::ok).any(|e| e.file_name().to_string_lossy().ends_with(suffix)))
                .unwrap_or(false),
            None => repo().join(s).is_file(),
        };
        assert!(found, "asset {s} does not exist");
    }
    // The unit's Documentation= file is shipped (docs/*.md → /usr/share/doc/dicomgate/).
    assert!(read("systemd/dicomgate.service").contains("Documentation=file:/usr/share/doc/dicomgate/operations.md"));
    assert!(repo().join("docs/operations.md").is_file());
    assert!(meta.contains(r#"conf-files = ["/etc/dicomgate/config.yaml"]"#));
    // Socket activation ships, one unit per listener (docs/upgrade.md).
    for unit in ["dicomgate-store.socket", "dicomgate-worklist.socket"] {
        assert!(meta.contains(&format!("usr/lib/systemd/system/{unit}")), "{unit} is not packaged");
    }
}

#[test]
fn readme_is_a_short_guide_with_the_two_command_quick_start() {
    let readme = read("README.md");
    assert!(readme.len() <= 25 * 1024, "README is {} bytes; the reference belongs in docs/", readme.len());
    let quick = &readme[readme.find("## Quick start").expect("quick start")..];
    let block = &quick[quick.find("```sh\n").expect("code block") + 6..];
    let block = &block[..block.find("```").expect("end of block")];
    let commands: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(commands.len(), 2, "quick start is two commands: {commands:?}");
    assert!(commands[0].starts_with("cargo run --release -- run --config config.example.yaml"));
    assert!(commands[1].starts_with("scripts/test.sh"));
    let install = readme.find("## Install").expect("Install section");
    let package = readme[install..].find("Debian package").expect("package path");
    let source = readme[install..].find("From source").expect("source path");
    assert!(package < source, "the package path comes first");
    for doc in ["configuration", "operations", "security", "performance", "scaling"] {
        assert!(readme.contains(&format!("docs/{doc}.md")), "README links docs/{doc}.md");
        assert!(repo().join(format!("docs/{doc}.md")).is_file());
    }
}
