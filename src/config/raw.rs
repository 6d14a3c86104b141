//! The YAML file as written, before validation. Every struct refuses unknown
//! keys: a typo in a security setting must fail the load, not be ignored.
//! Values that need checking stay strings here and become domain types in
//! `super::validate`.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub admin: Option<RawAdmin>,
    pub log: Option<RawLog>,
    pub audit: Option<super::audit::RawAudit>,
    pub shutdown: Option<RawShutdown>,
    #[serde(default)]
    pub backends: BTreeMap<String, RawBackend>,
    #[serde(default)]
    pub listeners: BTreeMap<String, RawListener>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: String,
    /// Source CIDRs that may use the endpoint; absent means loopback only.
    pub allow: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    pub grace_period: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub ae_title: String,
    pub servers: Vec<String>,
    pub rewrite_called_ae_title: Option<bool>,
    pub tls: Option<RawBackendTls>,
    pub health_check: Option<RawHealthCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackendTls {
    pub ca: Option<String>,
    pub server_name: Option<String>,
    pub certificate: Option<String>,
    pub private_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub mode: Option<String>,
    pub interval: Option<Scalar>,
    pub timeout: Option<Scalar>,
    pub fall: Option<u32>,
    pub rise: Option<u32>,
    pub calling_ae_title: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub listen: String,
    pub tls: Option<RawListenerTls>,
    pub insecure_plaintext: Option<bool>,
    pub allow: Option<Vec<String>>,
    pub calling_ae_titles: Option<Vec<String>>,
    pub routes: Option<BTreeMap<String, String>>,
    pub max_connections: Option<u32>,
    pub max_associate_rq_length: Option<u32>,
    pub max_pdu_length: Option<u32>,
    pub relay_mode: Option<String>,
    pub proxy_protocol: Option<String>,
    pub proxy_protocol_from: Option<Vec<String>>,
    pub proxy_protocol_allow_local: Option<bool>,
    pub timeouts: Option<RawTimeouts>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    pub certificate: String,
    pub private_key: String,
    pub generate_if_missing: Option<bool>,
    pub versions: Option<Vec<Scalar>>,
    pub client_ca: Option<String>,
    pub client_certificates: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub acse: Option<Scalar>,
    pub dimse: Option<Scalar>,
    pub connect: Option<Scalar>,
    /// Optional maximum association lifetime; off when absent.
    pub association: Option<Scalar>,
}

/// A scalar that YAML may type as a number: a duration (`30s`; a bare number
/// is refused with a hint about units) or a TLS version (`1.2` unquoted).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Text(String),
    Number(f64),
}
