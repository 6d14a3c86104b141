//! The YAML file as written, before validation. Every struct refuses unknown
//! keys: a typo in a security setting must fail the load, not be ignored.
//! Values that need checking stay strings here and become domain types in
//! `super::validate`.
//!
//! The same structs derive the JSON Schema (`dicomgate schema`, see
//! `super::schema`): doc comments on fields become the schema's descriptions
//! (and the dicomgate.yaml(5) man page), `schemars` attributes add defaults
//! and patterns. The defaults written here must match `super::validate`'s
//! constants; `tests/it/schema.rs` loads them back to keep the two honest.
//! `#[serde(default)]` on an `Option` with `schema_with` changes nothing for
//! serde; it tells schemars the key is optional.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::schema as s;

/// dicomgate configuration file (dicomgate.yaml(5)). Unknown keys are errors.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "dicomgate configuration")]
pub struct RawConfig {
    /// The admin HTTP endpoint (status page, /metrics, /healthz, /readyz, /status). Absent: no admin endpoint.
    pub admin: Option<RawAdmin>,
    /// Logging to stderr (the journal under systemd).
    pub log: Option<RawLog>,
    /// The audit trail beyond the log line per association: IHE ATNA messages to a syslog receiver.
    pub audit: Option<super::atna::RawAudit>,
    /// What SIGTERM does to live associations.
    pub shutdown: Option<RawShutdown>,
    /// Internal SCPs (PACS, VNA, worklist) that receive the decrypted traffic, by name.
    #[serde(default)]
    #[schemars(extend("examples" = [{"pacs": {"ae_title": "PACS", "servers": ["10.20.0.15:104"]}}]))]
    pub backends: BTreeMap<String, RawBackend>,
    /// Internet-facing ports, by name: one per port opened on the firewall (the guide's 2762 store, 2761 worklist). At least one.
    #[serde(default)]
    #[schemars(extend("minProperties" = 1))]
    pub listeners: BTreeMap<String, RawListener>,
}

/// The admin HTTP endpoint.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address to serve the admin endpoint on, IP:PORT. Keep it on loopback or a management network.
    #[schemars(schema_with = "s::socket_addr", extend("examples" = ["127.0.0.1:9102"]))]
    pub listen: String,
    /// Source networks that may use the endpoint (CIDR); others are closed at accept, before any HTTP. Absent: loopback only (127.0.0.0/8, ::1).
    #[serde(default)]
    #[schemars(schema_with = "s::cidr_list", extend("examples" = [["127.0.0.1/32", "10.20.0.40/32"]]))]
    pub allow: Option<Vec<String>>,
}

/// Logging.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// Log line format.
    #[serde(default)]
    #[schemars(schema_with = "s::log_format", extend("default" = "text"))]
    pub format: Option<String>,
    /// Log level or tracing filter directive (error, warn, info, debug, trace, or e.g. "info,dicomgate=debug").
    #[schemars(extend("default" = "info"))]
    pub level: Option<String>,
}

/// Shutdown.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    /// How long live associations may run on after SIGTERM before they are aborted.
    #[serde(default)]
    #[schemars(schema_with = "s::duration", extend("default" = "60s"))]
    pub grace_period: Option<Scalar>,
}

/// An internal SCP and the servers that provide it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// The SCP's own AE title (health-check C-ECHO; target of rewrite_called_ae_title).
    #[schemars(schema_with = "s::ae_title")]
    pub ae_title: String,
    /// HOST:PORT of each server, tried in order (failover to the next). At least one.
    #[schemars(schema_with = "s::server_list")]
    pub servers: Vec<String>,
    /// Replace the called AE title of forwarded requests with ae_title (and patch it back in the answer).
    #[schemars(extend("default" = false))]
    pub rewrite_called_ae_title: Option<bool>,
    /// DICOM-TLS from the gateway to the SCP (re-encryption). Absent: plain DICOM to the backend.
    pub tls: Option<RawBackendTls>,
    /// The periodic monitor of each server (the F5 pool monitor, in DICOM).
    pub health_check: Option<RawHealthCheck>,
}

/// DICOM-TLS to the SCP.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBackendTls {
    /// PEM bundle of the CA(s) that signed the SCP's certificate. Required.
    pub ca: Option<String>,
    /// Name checked against the SCP's certificate. Default: the server's host.
    pub server_name: Option<String>,
    /// Client certificate (PEM) for SCPs that require SCU authentication; needs private_key.
    pub certificate: Option<String>,
    /// Private key (PEM) of the client certificate.
    pub private_key: Option<String>,
    /// CRLs (PEM or DER) of the CA in ca: an SCP whose certificate is listed is refused. Re-read on SIGHUP.
    pub crls: Option<Vec<String>>,
}

/// Backend health check.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// echo: DICOM C-ECHO; tcp: TCP connect only; off: no probes, servers always count as up.
    #[serde(default)]
    #[schemars(schema_with = "s::health_mode", extend("default" = "echo"))]
    pub mode: Option<String>,
    /// Time between two probes of one server.
    #[serde(default)]
    #[schemars(schema_with = "s::duration", extend("default" = "10s"))]
    pub interval: Option<Scalar>,
    /// Deadline of one probe; at most interval. Default: 5s or interval, whichever is shorter.
    #[serde(default)]
    #[schemars(schema_with = "s::duration", extend("default" = "5s"))]
    pub timeout: Option<Scalar>,
    /// Consecutive failed probes before a server is marked down (1 to 100).
    #[schemars(range(min = 1, max = 100), extend("default" = 3))]
    pub fall: Option<u32>,
    /// Consecutive successful probes before a down server is up again (1 to 100).
    #[schemars(range(min = 1, max = 100), extend("default" = 2))]
    pub rise: Option<u32>,
    /// Calling AE title of the C-ECHO probe: declare it on the SCP.
    #[serde(default)]
    #[schemars(schema_with = "s::ae_title", extend("default" = "DICOMGATE"))]
    pub calling_ae_title: Option<String>,
}

/// One internet-facing port. Exactly one of tls or insecure_plaintext: true.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// Address to listen on, IP:PORT (0.0.0.0:2762 for the guide's store port).
    #[schemars(schema_with = "s::socket_addr", extend("examples" = ["0.0.0.0:2762"]))]
    pub listen: String,
    /// DICOM-TLS termination ("Secured" in the guide).
    pub tls: Option<RawListenerTls>,
    /// true: no TLS ("Unsecured"); test data only, logged as UNSECURED at every start.
    pub insecure_plaintext: Option<bool>,
    /// Source networks admitted (CIDR, or a bare address for one host), checked before any TLS work. Required: never defaults to everyone.
    #[serde(default)]
    #[schemars(schema_with = "s::cidr_list", extend("examples" = [["34.203.166.92/32"]]))]
    pub allow: Option<Vec<String>>,
    /// Calling AE titles accepted (the cloud's, e.g. BUTTERFLY). Absent: any calling AE title.
    #[serde(default)]
    #[schemars(schema_with = "s::ae_title_list")]
    pub calling_ae_titles: Option<Vec<String>>,
    /// Called AE title → backend name; "*" matches any called AE title without its own route. Required.
    #[serde(default)]
    #[schemars(schema_with = "s::routes")]
    pub routes: Option<BTreeMap<String, String>>,
    /// Established associations at once; the next complete A-ASSOCIATE-RQ gets A-ASSOCIATE-RJ local-limit-exceeded. Connections that have not yet sent their RQ are counted in a separate pre-association budget of the same size (docs/admission.md).
    #[schemars(range(min = 1), extend("default" = 256))]
    pub max_connections: Option<u32>,
    /// Bound in bytes on the declared length of the first PDU (the A-ASSOCIATE-RQ).
    #[schemars(range(min = 1024, max = 1048576), extend("default" = 65536))]
    pub max_associate_rq_length: Option<u32>,
    /// Largest PDU relayed in either direction, in bytes; forwarded Maximum Length items are clamped to it.
    #[schemars(range(min = 4096), extend("default" = 4194304))]
    pub max_pdu_length: Option<u32>,
    /// dicom: PDU-aware relay (DIMSE metrics, release/abort handling), the only mode of a release build; bytes (blind copy) exists only in builds with --features bench-baseline.
    #[serde(default)]
    #[schemars(schema_with = "s::relay_mode", extend("default" = "dicom"))]
    pub relay_mode: Option<String>,
    /// Accept a PROXY protocol header from an L4 load balancer: off, v1, v2 or any.
    #[serde(default)]
    #[schemars(schema_with = "s::proxy_protocol", extend("default" = "off"))]
    pub proxy_protocol: Option<String>,
    /// The load balancers allowed to send the PROXY header (CIDR). Required with proxy_protocol.
    #[serde(default)]
    #[schemars(schema_with = "s::cidr_list")]
    pub proxy_protocol_from: Option<Vec<String>>,
    /// Accept PROXY v2 LOCAL / v1 UNKNOWN headers (no client address; judged by the balancer's own address). Off: refused, health checks belong on /readyz.
    #[schemars(extend("default" = false))]
    pub proxy_protocol_allow_local: Option<bool>,
    /// Deadlines of the association phases.
    pub timeouts: Option<RawTimeouts>,
    /// AE-title guessing protection: a source refused this often in a row is refused at accept for a while (docs/admission.md).
    pub guessing: Option<RawGuessing>,
}

/// AE-title guessing protection. A source is an IPv4 address or an IPv6 /64.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGuessing {
    /// false: never block.
    #[schemars(extend("default" = true))]
    pub enabled: Option<bool>,
    /// Consecutive refused associations (calling or called AE title refused) or failed TLS handshakes, with no forwarded association in between, that block the source (1 to 1000).
    #[schemars(range(min = 1, max = 1000), extend("default" = 10))]
    pub after: Option<u32>,
    /// How long the first block lasts; each further block doubles it.
    #[serde(default)]
    #[schemars(schema_with = "s::duration", extend("default" = "1m"))]
    pub block: Option<Scalar>,
    /// The longest block.
    #[serde(default)]
    #[schemars(schema_with = "s::duration", extend("default" = "10m"))]
    pub max_block: Option<Scalar>,
}

/// TLS termination.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    /// Server certificate (PEM, chain allowed): the public half uploaded to the cloud.
    pub certificate: String,
    /// Its private key (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC); owner dicomgate, mode 0600.
    pub private_key: String,
    /// true: create a self-signed pair on first start if the files are missing, and log its fingerprint.
    #[schemars(extend("default" = false))]
    pub generate_if_missing: Option<bool>,
    /// TLS versions offered; nothing below 1.2 exists.
    #[serde(default)]
    #[schemars(schema_with = "s::tls_versions", extend("default" = ["1.2", "1.3"]))]
    pub versions: Option<Vec<Scalar>>,
    /// PEM bundle: require client certificates chaining to these CAs.
    pub client_ca: Option<String>,
    /// PEM files: require exactly one of these client certificates (pinning; "SCU Authenticated" in the guide).
    pub client_certificates: Option<Vec<String>>,
    /// CRLs (PEM or DER) issued by client_ca or a CA in it: a listed client certificate is refused (TLS alert certificate_revoked). Needs client_ca; pinned certificates are not checked. Re-read on SIGHUP.
    pub client_crls: Option<Vec<String>>,
}

/// Association deadlines.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// Accept → complete A-ASSOCIATE-RQ (TLS included); and request forwarded → the SCP's AC/RJ.
    #[serde(default)]
    #[schemars(schema_with = "s::duration", extend("default" = "30s"))]
    pub acse: Option<Scalar>,
    /// An established association idle in both directions this long is aborted.
    #[serde(default)]
    #[schemars(schema_with = "s::duration", extend("default" = "300s"))]
    pub dimse: Option<Scalar>,
    /// Per backend server: TCP (and TLS) connect. A layer-4 failure (refused, unreachable, this timeout) marks a monitored server down at once.
    #[serde(default)]
    #[schemars(schema_with = "s::duration", extend("default" = "4s"))]
    pub connect: Option<Scalar>,
    /// Maximum association lifetime, from accept: reached, both sides get A-ABORT. Absent: no limit (the DIMSE idle timer restarts on every byte).
    #[serde(default)]
    #[schemars(schema_with = "s::duration")]
    pub association: Option<Scalar>,
}

/// A scalar that YAML may type as a number: a duration (`30s`; a bare number
/// is refused with a hint about units) or a TLS version (`1.2` unquoted).
/// Fields give it a precise schema (`schema_with = "s::duration"`); this
/// generic one only keeps a field added without that compiling.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Text(String),
    Number(f64),
}

impl JsonSchema for Scalar {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Scalar".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": ["string", "number"] })
    }
}
