//! Issue 12: `dicomgate schema` and the loader agree. The JSON Schema (for
//! editors) is derived from the loader's serde structs; these tests hold the
//! two together from the outside: the same files pass both, the same broken
//! files fail both, the schema's defaults are the loader's, the committed
//! copy is current and dicomgate.yaml(5) lists every key.
//!
//! The schema side runs `check-jsonschema` (PyPI), an independent validator;
//! it skips locally when missing and fails under CI=true.

use crate::support;
use std::path::{Path, PathBuf};
use std::process::Command;

use dicomgate::config::schema;
use dicomgate::Config;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("read {dir}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .yaml in {dir}");
    files
}

/// The configs that must pass: the example, the packaged one, the valid corpus.
fn valid_files() -> Vec<PathBuf> {
    let mut files = vec![repo().join("config.example.yaml"), repo().join("packaging/config.yaml")];
    files.extend(yaml_files("tests/configs/valid"));
    files
}

fn schema_file() -> PathBuf {
    repo().join("docs/dicomgate.schema.json")
}

fn load(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path).expect("read config");
    Config::from_yaml_str(&text, path.parent().expect("parent")).map_err(|e| e.to_string())
}

/// Runs check-jsonschema on one file: Ok(()) if valid, Err(output) if not.
fn check_jsonschema(file: &Path) -> Result<(), String> {
    let out = Command::new("check-jsonschema")
        .arg("--schemafile")
        .arg(schema_file())
        .arg(file)
        .output()
        .expect("run check-jsonschema");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    match out.status.code() {
        Some(0) => Ok(()),
        // 1: validation failed. Anything else (a bad schema, a crash) is the test's fault.
        Some(1) if text.contains("Schema validation errors") => Err(text),
        _ => panic!("check-jsonschema failed to run on {}: {text}", file.display()),
    }
}

fn have_check_jsonschema() -> bool {
    support::tools::present(&["check-jsonschema"])
}

#[test]
fn schema_command_prints_the_committed_schema() {
    let out = Command::new(env!("CARGO_BIN_EXE_dicomgate")).arg("schema").output().expect("run dicomgate schema");
    assert!(out.status.success(), "dicomgate schema failed: {}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    let committed = std::fs::read_to_string(schema_file()).expect("read docs/dicomgate.schema.json");
    assert!(
        printed == committed,
        "docs/dicomgate.schema.json is stale (config.example.yaml's modeline points at it): \
         cargo run -- schema > docs/dicomgate.schema.json"
    );
    let schema: Value = serde_json::from_str(&printed).expect("schema is JSON");
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(schema["additionalProperties"], false, "unknown top-level keys must be refused");
}

#[test]
fn values_that_need_checking_have_patterns_not_just_string() {
    let keys = schema::keys();
    let kind = |path: &str| {
        keys.iter().find(|k| k.path == path).unwrap_or_else(|| panic!("{path} not in the schema")).kind.clone()
    };
    assert_eq!(kind("listeners.NAME.listen"), "ip:port");
    assert_eq!(kind("admin.listen"), "ip:port");
    assert_eq!(kind("listeners.NAME.allow"), "list of cidr");
    assert_eq!(kind("listeners.NAME.proxy_protocol_from"), "list of cidr");
    assert_eq!(kind("listeners.NAME.calling_ae_titles"), "list of dicom-ae-title");
    assert_eq!(kind("backends.NAME.ae_title"), "dicom-ae-title");
    assert_eq!(kind("backends.NAME.servers"), "list of host:port");
    for d in ["shutdown.grace_period", "listeners.NAME.timeouts.acse", "backends.NAME.health_check.interval"] {
        assert_eq!(kind(d), "duration", "{d}");
    }
    for k in &keys {
        assert!(!k.description.is_empty(), "{} has no description", k.path);
    }
}

#[test]
fn valid_configs_pass_the_loader_and_the_schema() {
    for file in valid_files() {
        if let Err(e) = load(&file) {
            panic!("loader refused {}: {e}", file.display());
        }
    }
    if !have_check_jsonschema() {
        return;
    }
    for file in valid_files() {
        if let Err(e) = check_jsonschema(&file) {
            panic!("schema refused {}, which the loader accepts:\n{e}", file.display());
        }
    }
}

#[test]
fn broken_configs_fail_the_loader_and_the_schema() {
    let files = yaml_files("tests/configs/invalid");
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# loader: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# loader: TEXT`", file.display()));
        match load(file) {
            Ok(_) => panic!("loader accepted broken {}", file.display()),
            Err(e) => assert!(e.contains(expect), "{}: loader error does not name {expect:?}:\n{e}", file.display()),
        }
    }
    if !have_check_jsonschema() {
        return;
    }
    for file in &files {
        assert!(check_jsonschema(file).is_err(), "schema accepted broken {}", file.display());
    }
}

/// Every key path in `doc` (a parsed YAML file), map entries as `NAME`.
fn paths_in(doc: &Value, prefix: &str, maps: &[&str], out: &mut Vec<String>) {
    let Some(obj) = doc.as_object() else { return };
    for (key, value) in obj {
        let is_map = maps.contains(&prefix);
        let path = match (prefix.is_empty(), is_map) {
            (_, true) => format!("{prefix}.NAME"),
            (true, false) => key.clone(),
            (false, false) => format!("{prefix}.{key}"),
        };
        if !is_map {
            out.push(path.clone());
        }
        // `routes` is a map of AE titles to names: its keys are data, not keys.
        if !path.ends_with(".routes") {
            paths_in(value, &path, maps, out);
        }
    }
}

#[test]
fn the_valid_corpus_uses_every_key_of_the_schema() {
    let mut used = Vec::new();
    for file in valid_files() {
        let doc: Value = serde_yaml::from_str(&std::fs::read_to_string(&file).expect("read")).expect("yaml");
        paths_in(&doc, "", &["backends", "listeners"], &mut used);
    }
    let keys: Vec<String> = schema::keys().into_iter().map(|k| k.path).collect();
    let unused: Vec<&String> = keys.iter().filter(|k| !used.contains(k)).collect();
    assert!(unused.is_empty(), "no valid corpus file uses {unused:?}: add them to tests/configs/valid/every-key.yaml");
    let unknown: Vec<&String> = used.iter().filter(|u| !keys.contains(u)).collect();
    assert!(unknown.is_empty(), "the corpus uses keys the schema does not know: {unknown:?}");
}

/// Sets `path` (dotted, `NAME` replaced by `name`) in a JSON object tree.
fn set(doc: &mut Value, path: &str, name: &str, value: Value) {
    let parts: Vec<&str> = path.split('.').map(|p| if p == "NAME" { name } else { p }).collect();
    let mut node = doc;
    for part in &parts[..parts.len() - 1] {
        node = node
            .as_object_mut()
            .expect("object")
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    node.as_object_mut().expect("object").insert(parts[parts.len() - 1].to_owned(), value);
}

#[test]
fn schema_defaults_are_the_loaders_defaults() {
    let minimal = r#"
backends:
  pacs: {ae_title: PACS, servers: [10.20.0.15:104], health_check: {}}
listeners:
  store:
    listen: 0.0.0.0:2762
    tls: {certificate: c.pem, private_key: k.pem}
    allow: [34.203.166.92/32]
    routes: {PACS: pacs}
    timeouts: {}
log: {}
shutdown: {}
audit:
  syslog: {address: arr.hospital.local:6514, ca: arr-ca.pem}
"#;
    let mut explicit: Value = serde_yaml::from_str(minimal).expect("yaml");
    let mut count = 0;
    for key in schema::keys() {
        if let Some(default) = key.default {
            let name = if key.path.starts_with("backends.") { "pacs" } else { "store" };
            set(&mut explicit, &key.path, name, default);
            count += 1;
        }
    }
    assert!(count >= 20, "only {count} defaults in the schema");
    let explicit = serde_yaml::to_string(&explicit).expect("to yaml");
    let base = Path::new("/etc/dicomgate");
    let a = Config::from_yaml_str(minimal, base).expect("minimal config");
    let b =
        Config::from_yaml_str(&explicit, base).unwrap_or_else(|e| panic!("schema defaults refused: {e}\n{explicit}"));
    assert_eq!(format!("{a:?}"), format!("{b:?}"), "a schema default differs from the loader's:\n{explicit}");
}

#[test]
fn man_page_lists_every_key_with_its_default() {
    let page = schema::man_page("0.0.0");
    assert!(page.starts_with(".TH DICOMGATE.YAML 5 "));
    for key in schema::keys() {
        let escaped = key.path.replace('-', "\\-");
        assert!(page.contains(&format!(".B {escaped}\n")), "dicomgate.yaml(5) does not document {}", key.path);
    }
    assert!(page.contains("default 30s"), "defaults are shown");
    assert!(page.contains("34.203.166.92/32"), "the example (packaged config) is included");
}
