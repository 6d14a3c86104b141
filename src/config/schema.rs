//! The configuration's JSON Schema (`dicomgate schema`) and the
//! dicomgate.yaml(5) man page rendered from it.
//!
//! Both come from the serde structs in `super::raw`, the ones the loader
//! deserializes, so a key cannot be added to the loader and missed here. The
//! schema is a convenience for editors (completion, early red squiggles); the
//! loader stays the authority and says more (cross-key rules, file checks).
//!
//! Draft-07 rather than 2020-12: it is the draft every YAML editor plugin
//! (yaml-language-server, IntelliJ) understands.

use schemars::{json_schema, Schema, SchemaGenerator};
use serde_json::Value;

use super::raw::RawConfig;

/// Where the package installs the schema; the packaged config's modeline points here.
pub const INSTALLED_SCHEMA_PATH: &str = "/usr/share/dicomgate/dicomgate.schema.json";

/// A humantime duration: one or more NUMBER UNIT terms (`30s`, `5m`, `1h 30m`).
const DURATION: &str = r"^ *([0-9]+ *(nsec|ns|usec|us|msec|ms|seconds|second|sec|s|minutes|minute|min|m|hours|hour|hr|h|days|day|d|weeks|week|w|months|month|M|years|year|y) *)+$";
const IPV4: &str = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}";
/// Loose on purpose: the loader parses IPv6 properly; this only catches what is clearly not an address.
const IPV6: &str = r"[0-9A-Fa-f]{0,4}(:[0-9A-Fa-f]{0,4}){2,7}(:(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})?";
const PORT: &str = r"([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])";
/// DICOM AE title (PS3.5 VR AE): 1 to 16 printable ASCII characters, no
/// backslash; leading and trailing spaces are not significant.
const AE_TITLE: &str = r"^ *[!-\[\]-~]([ -\[\]-~]{0,14}[!-\[\]-~])? *$";
/// A route key: an AE title or `*`.
const ROUTE_KEY: &str = r"^ *(\*|[!-\[\]-~]([ -\[\]-~]{0,14}[!-\[\]-~])?) *$";

/// The schema as a JSON value.
pub fn json_schema() -> Value {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let mut schema = generator.into_root_schema_for::<RawConfig>().to_value();
    strip_null_defaults(&mut schema);
    schema
}

/// `#[serde(default)]` on an `Option` (raw.rs: it makes the key optional in
/// the schema) also emits `"default": null`, which would have editors
/// suggest `allow: null`. A missing key says it better.
fn strip_null_defaults(node: &mut Value) {
    match node {
        Value::Object(map) => {
            if map.get("default").is_some_and(Value::is_null) {
                map.remove("default");
            }
            map.values_mut().for_each(strip_null_defaults);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_null_defaults),
        _ => {}
    }
}

/// The schema as printed by `dicomgate schema` (pretty JSON, newline-terminated).
pub fn json_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&json_schema()).unwrap_or_default();
    text.push('\n');
    text
}

// ---- per-field schemas (`#[schemars(schema_with = ...)]` in raw.rs) -------
// Every raw field is an Option the loader also accepts as YAML null, so the
// nullable ones allow null too.

pub(super) fn duration(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": ["string", "null"],
        "pattern": DURATION,
        "examples": ["30s", "5m", "1h 30m"],
        "x-format": "duration"
    })
}

pub(super) fn socket_addr(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": format!("^({IPV4}|\\[{IPV6}\\]):{PORT}$"),
        "x-format": "ip:port"
    })
}

pub(super) fn server_address(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": format!("^({IPV4}|\\[{IPV6}\\]|[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*):{PORT}$"),
        "x-format": "host:port",
        "examples": ["arr.hospital.local:6514", "10.20.0.30:514"]
    })
}

pub(super) fn syslog_transport(_: &mut SchemaGenerator) -> Schema {
    one_of(&["tls", "tcp", "udp"])
}

pub(super) fn server_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "string",
            "pattern": format!("^({IPV4}|\\[{IPV6}\\]|[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*):{PORT}$"),
            "x-format": "host:port",
            "examples": ["10.20.0.15:104", "pacs.hospital.local:104"]
        }
    })
}

pub(super) fn cidr_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": ["array", "null"],
        "minItems": 1,
        "items": {
            "type": "string",
            "pattern": format!("^ *({IPV4}(/(3[0-2]|[12]?[0-9]))?|{IPV6}(/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?) *$"),
            "x-format": "cidr"
        }
    })
}

pub(super) fn ae_title(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "pattern": AE_TITLE, "x-format": "dicom-ae-title" })
}

pub(super) fn ae_title_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": ["array", "null"],
        "minItems": 1,
        "items": { "type": "string", "pattern": AE_TITLE, "x-format": "dicom-ae-title" },
        "examples": [["BUTTERFLY"]]
    })
}

pub(super) fn routes(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": ["object", "null"],
        "minProperties": 1,
        "propertyNames": { "pattern": ROUTE_KEY },
        "additionalProperties": { "type": "string", "minLength": 1, "description": "name of a backend under backends" },
        "examples": [{"PACS": "pacs"}]
    })
}

pub(super) fn tls_versions(_: &mut SchemaGenerator) -> Schema {
    // YAML reads an unquoted 1.2 as a number; the loader accepts both.
    json_schema!({
        "type": ["array", "null"],
        "minItems": 1,
        "items": { "enum": ["1.2", "1.3", 1.2, 1.3] }
    })
}

fn one_of(values: &[&str]) -> Schema {
    let mut values: Vec<Value> = values.iter().map(|v| Value::from(*v)).collect();
    values.push(Value::Null);
    json_schema!({ "enum": values })
}

pub(super) fn log_format(_: &mut SchemaGenerator) -> Schema {
    one_of(&["text", "json"])
}

pub(super) fn health_mode(_: &mut SchemaGenerator) -> Schema {
    one_of(&["echo", "tcp", "off"])
}

pub(super) fn relay_mode(_: &mut SchemaGenerator) -> Schema {
    // `bytes` is the benchmarks' baseline, accepted only by a bench build.
    if cfg!(feature = "bench-baseline") {
        one_of(&["dicom", "bytes"])
    } else {
        one_of(&["dicom"])
    }
}

pub(super) fn proxy_protocol(_: &mut SchemaGenerator) -> Schema {
    one_of(&["off", "v1", "v2", "any"])
}

// ---- the key reference, for dicomgate.yaml(5) and tests -----------------

/// One documented key of the configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyDoc {
    /// Dotted path; map entries are written `NAME` (`listeners.NAME.listen`).
    pub path: String,
    pub description: String,
    /// Short type, e.g. `duration`, `list of cidr`, `map`.
    pub kind: String,
    pub required: bool,
    pub default: Option<Value>,
    /// Allowed values for enumerations.
    pub choices: Vec<Value>,
}

/// Every key of the file, depth first in declaration order.
pub fn keys() -> Vec<KeyDoc> {
    let schema = json_schema();
    let mut out = Vec::new();
    walk(&schema, &schema, "", &mut out);
    out
}

fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    // Option<Struct> is `anyOf: [{$ref}, {type: null}]`; a field with a
    // description is `allOf: [{$ref}]` in some generators.
    for key in ["anyOf", "allOf", "oneOf"] {
        if let Some(inner) =
            node.get(key).and_then(Value::as_array).and_then(|a| a.iter().find(|v| v.get("$ref").is_some()))
        {
            return resolve(root, inner);
        }
    }
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or_default();
        if let Some(def) = root.get("definitions").and_then(|d| d.get(name)) {
            return def;
        }
    }
    node
}

fn walk(root: &Value, node: &Value, prefix: &str, out: &mut Vec<KeyDoc>) {
    let node = resolve(root, node);
    let Some(props) = node.get("properties").and_then(Value::as_object) else { return };
    let required: Vec<&str> = node
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, prop) in props {
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        let target = resolve(root, prop);
        let is_map = target.get("additionalProperties").is_some_and(|a| resolve(root, a).get("properties").is_some());
        out.push(KeyDoc {
            path: path.clone(),
            description: text(prop, "description").or_else(|| text(target, "description")).unwrap_or_default(),
            kind: kind(root, prop),
            required: required.contains(&name.as_str()),
            // `#[serde(default)]` maps get `default: {}`: not worth documenting.
            default: prop.get("default").filter(|d| !d.is_object()).cloned(),
            choices: choices(prop),
        });
        if is_map {
            if let Some(entry) = target.get("additionalProperties") {
                walk(root, entry, &format!("{path}.NAME"), out);
            }
        } else {
            walk(root, prop, &path, out);
        }
    }
}

fn text(node: &Value, key: &str) -> Option<String> {
    node.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn choices(node: &Value) -> Vec<Value> {
    node.get("enum")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter(|v| !v.is_null()).cloned().collect())
        .unwrap_or_default()
}

fn kind(root: &Value, node: &Value) -> String {
    if let Some(format) = node.get("x-format").and_then(Value::as_str) {
        return format.to_owned();
    }
    if node.get("enum").is_some() {
        return "one of".to_owned();
    }
    let target = resolve(root, node);
    if target.get("properties").is_some() {
        return "section".to_owned();
    }
    let types: Vec<&str> = match target.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect(),
        _ => Vec::new(),
    };
    match types.first().copied() {
        Some("array") => {
            let item = target.get("items").map(|i| kind(root, i)).unwrap_or_else(|| "value".to_owned());
            format!("list of {item}")
        }
        Some("object")
            if target.get("additionalProperties").is_some_and(|a| resolve(root, a).get("properties").is_some()) =>
        {
            "map of NAME to section".to_owned()
        }
        Some("object") => "map".to_owned(),
        Some(t) => t.to_owned(),
        None => "value".to_owned(),
    }
}

// ---- dicomgate.yaml(5) ---------------------------------------------------

/// The production-shaped configuration the package installs; the man page's example.
const PACKAGED_CONFIG: &str = include_str!("../../packaging/config.yaml");

/// dicomgate.yaml(5) in roff, generated from [`keys`] so it lists exactly
/// the keys the loader reads.
pub fn man_page(version: &str) -> String {
    let mut m = String::new();
    m.push_str(&format!(".TH DICOMGATE.YAML 5 \"\" \"dicomgate {}\" \"File Formats\"\n", roff(version)));
    m.push_str(".SH NAME\ndicomgate.yaml \\- configuration file of the dicomgate DICOM\\-TLS gateway\n");
    m.push_str(".SH SYNOPSIS\n.B /etc/dicomgate/config.yaml\n");
    m.push_str(".SH DESCRIPTION\n");
    for para in [
        "One YAML file configures dicomgate: the internet-facing listeners (one per port opened on the \
         firewall), the internal backends (PACS, worklist) they route to, the admin endpoint, logging and shutdown.",
        "Unknown keys are errors. A listener has exactly one of tls or insecure_plaintext: true; every route names \
         an existing backend; AE titles are 1 to 16 characters, no backslash, no control characters, compared exactly \
         (case sensitive) after trimming spaces. Durations are written with a unit: 30s, 5m, 1h. Relative file paths \
         are relative to the configuration file's own directory.",
        "An error names the key path, the value and what would be right. Check a file without starting the daemon \
         with dicomgate check --config FILE. The same rules, minus the cross-key and file checks, are \
         available as a JSON Schema for editors: dicomgate schema, installed as ",
    ] {
        m.push_str(".PP\n");
        m.push_str(&roff(para));
        m.push('\n');
    }
    m.push_str(&format!("{}\n", roff(INSTALLED_SCHEMA_PATH)));
    m.push_str(
        ".PP\nDefaults are the product: most sites never set the limits and timeouts; the defaults below \
                are the tested configuration.\n",
    );
    m.push_str(".SH KEYS\n");
    for key in keys() {
        m.push_str(&format!(".TP\n.B {}\n", roff(&key.path)));
        let mut facts = vec![key.kind.clone()];
        if key.required {
            facts.push("required".to_owned());
        }
        if !key.choices.is_empty() {
            let list: Vec<String> = key.choices.iter().map(show).collect();
            facts.push(list.join(", "));
        }
        if let Some(d) = &key.default {
            facts.push(format!("default {}", show(d)));
        }
        m.push_str(&format!("{}\n.br\n({})\n", roff(&key.description), roff(&facts.join("; "))));
    }
    m.push_str(".SH EXAMPLE\nThe configuration the Debian package installs:\n.PP\n.nf\n");
    for line in PACKAGED_CONFIG.lines() {
        m.push_str(&roff(line));
        m.push('\n');
    }
    m.push_str(".fi\n");
    m.push_str(".SH FILES\n.TP\n.B /etc/dicomgate/config.yaml\nthe configuration (a conffile of the package)\n");
    m.push_str(".TP\n.B /var/lib/dicomgate\nstate: certificates created by generate_if_missing (mode 0700)\n");
    m.push_str(".SH SEE ALSO\n.BR dicomgate (1),\n/usr/share/doc/dicomgate/configuration.md\n");
    m
}

/// Shows a JSON value as an admin would write it in YAML.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => format!("[{}]", a.iter().map(show).collect::<Vec<_>>().join(", ")),
        other => other.to_string(),
    }
}

/// Escapes text for roff: backslashes, and a leading `.` or `'` that would
/// read as a request.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}
