//! `listeners.NAME`: address, allow list, AE titles, routes, limits,
//! timeouts, PROXY protocol and TLS.

use super::*;

const DEFAULT_ACSE: Duration = Duration::from_secs(30);
const DEFAULT_DIMSE: Duration = Duration::from_secs(300);
/// A LAN connect takes milliseconds; 4 s covers the first SYN and the two
/// retransmissions Linux sends at 1 s and 3 s, and no more: a server that
/// has not answered by then is treated as gone (and marked down at once,
/// see `backend::health`), not waited on by every association.
const DEFAULT_CONNECT: Duration = Duration::from_secs(4);
const DEFAULT_MAX_CONNECTIONS: u32 = 256;
/// 64 KiB: a storescu request proposing ~100 SOP classes is under 10 KiB.
const DEFAULT_MAX_RQ_LENGTH: u32 = 64 * 1024;
/// Lower bound for `max_associate_rq_length`: the fixed part of an RQ is 68 bytes
/// and a realistic one with a few presentation contexts needs a few hundred.
const MIN_MAX_RQ_LENGTH: u32 = 1024;
const MAX_MAX_RQ_LENGTH: u32 = 1024 * 1024;
/// 4 MiB: above every common SCU/SCP setting (DCMTK 16 KiB–128 KiB,
/// dcm4che 16 KiB–1 MiB), and the relay streams, so it costs no memory.
const DEFAULT_MAX_PDU_LENGTH: u32 = 4 * 1024 * 1024;
/// PS3.8 D.1: a receiver must accept at least this much... in practice SCUs
/// refuse less than the fixed 4 KiB DCMTK minimum.
const MIN_MAX_PDU_LENGTH: u32 = 4096;

pub(super) fn validate_listener(
    v: &mut Validator<'_>,
    name: &str,
    raw: RawListener,
    backends: &BTreeMap<String, Arc<BackendConfig>>,
) -> Option<ListenerConfig> {
    let key = format!("listeners.{name}");
    let before = v.issues.len();
    let listen = v.socket_addr(&format!("{key}.listen"), &raw.listen);

    let security = match (raw.tls, raw.insecure_plaintext) {
        (Some(_), Some(true)) => {
            v.issue(
                format!("{key}.insecure_plaintext"),
                "is set together with tls: choose one (tls for production, insecure_plaintext only with test data)",
            );
            None
        }
        (Some(t), _) => validate_listener_tls(v, &format!("{key}.tls"), t).map(Security::Tls),
        (None, Some(true)) => Some(Security::Plaintext),
        (None, _) => {
            v.issue(
                format!("{key}.tls"),
                "is missing: give tls.certificate and tls.private_key (or insecure_plaintext: true for test data only)",
            );
            None
        }
    };

    let mut allow = Vec::new();
    match raw.allow {
        None => v.issue(
            format!("{key}.allow"),
            "is missing: list the source networks to admit, e.g. [34.203.166.92/32] (there is no default)",
        ),
        Some(list) if list.is_empty() => {
            v.issue(format!("{key}.allow"), "is empty: list the source networks to admit, e.g. [34.203.166.92/32]")
        }
        Some(list) => {
            for (i, entry) in list.iter().enumerate() {
                match parse_cidr(entry) {
                    Ok(net) => allow.push(net),
                    Err(why) => v.issue(format!("{key}.allow[{i}]"), format!("{entry:?} {why}")),
                }
            }
        }
    }

    let calling_ae_titles = match raw.calling_ae_titles {
        None => None,
        Some(list) if list.is_empty() => {
            v.issue(
                format!("{key}.calling_ae_titles"),
                "is empty, which would refuse everyone: list the cloud's calling AE titles, e.g. [BUTTERFLY], or remove the key to accept any",
            );
            None
        }
        Some(list) => Some(
            list.iter()
                .enumerate()
                .filter_map(|(i, s)| v.ae_title(&format!("{key}.calling_ae_titles[{i}]"), s))
                .collect(),
        ),
    };

    let mut routes = Routes::default();
    match raw.routes {
        None => v.issue(format!("{key}.routes"), "is missing: map called AE titles to backends, e.g. {PACS: pacs}"),
        Some(map) if map.is_empty() => {
            v.issue(format!("{key}.routes"), "is empty: map called AE titles to backends, e.g. {PACS: pacs}")
        }
        Some(map) => {
            for (called, backend) in map {
                let rkey = format!("{key}.routes.{called}");
                if !backends.contains_key(&backend) {
                    let known: Vec<&str> = backends.keys().map(String::as_str).collect();
                    v.issue(
                        rkey.clone(),
                        format!(
                            "names backend {backend:?}, which is not defined (or invalid); defined backends: {known:?}"
                        ),
                    );
                }
                if called.trim() == "*" {
                    routes.fallback = Some(backend);
                } else if let Some(ae) = v.ae_title(&rkey, &called) {
                    if routes.exact.insert(ae, backend).is_some() {
                        v.issue(rkey, "duplicates another route once leading/trailing spaces are removed");
                    }
                }
            }
        }
    }

    let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        v.issue(
            format!("{key}.max_connections"),
            "is 0, which would refuse everyone: expected at least 1 (default 256)",
        );
    }
    let max_rq = raw.max_associate_rq_length.unwrap_or(DEFAULT_MAX_RQ_LENGTH);
    if !(MIN_MAX_RQ_LENGTH..=MAX_MAX_RQ_LENGTH).contains(&max_rq) {
        v.issue(
            format!("{key}.max_associate_rq_length"),
            format!(
                "{max_rq} is out of range: expected {MIN_MAX_RQ_LENGTH} to {MAX_MAX_RQ_LENGTH} bytes (default 65536)"
            ),
        );
    }

    let max_pdu = raw.max_pdu_length.unwrap_or(DEFAULT_MAX_PDU_LENGTH);
    if max_pdu < MIN_MAX_PDU_LENGTH {
        v.issue(
            format!("{key}.max_pdu_length"),
            format!("{max_pdu} is too small: expected at least {MIN_MAX_PDU_LENGTH} bytes (default 4194304)"),
        );
    }
    // `bytes` is the benchmarks' baseline (no PDU checks, no DIMSE metrics):
    // a footgun in a user's configuration, so only a bench build takes it.
    let relay_mode = match raw.relay_mode.as_deref() {
        None | Some("dicom") => crate::config::RelayMode::Dicom,
        Some("bytes") if cfg!(feature = "bench-baseline") => crate::config::RelayMode::Bytes,
        Some("bytes") => {
            v.issue(
                format!("{key}.relay_mode"),
                "bytes is the benchmark baseline (no PDU checks, no DIMSE metrics) and exists only in builds \
                 with --features bench-baseline: remove the key (dicom is the default)",
            );
            crate::config::RelayMode::Dicom
        }
        Some(other) => {
            v.issue(
                format!("{key}.relay_mode"),
                format!("{other:?} is not a relay mode: expected dicom (the default)"),
            );
            crate::config::RelayMode::Dicom
        }
    };

    let proxy_protocol = validate_proxy_protocol(
        v,
        &key,
        raw.proxy_protocol.as_deref(),
        raw.proxy_protocol_from,
        raw.proxy_protocol_allow_local,
    );

    let t = raw.timeouts;
    let timeouts = Timeouts {
        acse: v.duration(&format!("{key}.timeouts.acse"), t.as_ref().and_then(|t| t.acse.as_ref()), DEFAULT_ACSE),
        dimse: v.duration(&format!("{key}.timeouts.dimse"), t.as_ref().and_then(|t| t.dimse.as_ref()), DEFAULT_DIMSE),
        connect: v.duration(
            &format!("{key}.timeouts.connect"),
            t.as_ref().and_then(|t| t.connect.as_ref()),
            DEFAULT_CONNECT,
        ),
        association: t
            .as_ref()
            .and_then(|t| t.association.as_ref())
            .map(|d| v.duration(&format!("{key}.timeouts.association"), Some(d), DEFAULT_ACSE)),
    };

    let guessing = super::guessing::validate_guessing(v, &key, raw.guessing);

    if v.issues.len() != before {
        return None;
    }
    Some(ListenerConfig {
        name: name.to_owned(),
        listen: listen?,
        security: security?,
        allow,
        calling_ae_titles,
        routes,
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        max_associate_rq_length: max_rq,
        max_pdu_length: max_pdu,
        relay_mode,
        proxy_protocol,
        timeouts,
        guessing,
    })
}

/// `proxy_protocol` and `proxy_protocol_from` together: the list is required
/// when the header is expected, and refused when it is not (a list that does
/// nothing would look like protection).
fn validate_proxy_protocol(
    v: &mut Validator<'_>,
    key: &str,
    mode: Option<&str>,
    from: Option<Vec<String>>,
    allow_local: Option<bool>,
) -> Option<ProxyProtocolConfig> {
    let versions = match mode {
        None | Some("off") => None,
        Some("v1") => Some(ProxyVersions::V1),
        Some("v2") => Some(ProxyVersions::V2),
        Some("any") => Some(ProxyVersions::Any),
        Some(other) => {
            v.issue(
                format!("{key}.proxy_protocol"),
                format!("{other:?} is not a PROXY protocol setting: expected off (default), v1, v2 or any"),
            );
            return None;
        }
    };
    let fkey = format!("{key}.proxy_protocol_from");
    let Some(versions) = versions else {
        if from.is_some() {
            v.issue(
                fkey,
                "is set but proxy_protocol is off: set proxy_protocol (v1, v2 or any) or remove proxy_protocol_from",
            );
        }
        // `false` next to `off` is harmless (and what a defaults dump writes).
        if allow_local == Some(true) {
            v.issue(
                format!("{key}.proxy_protocol_allow_local"),
                "is set but proxy_protocol is off: set proxy_protocol (v1, v2 or any) or remove the key",
            );
        }
        return None;
    };
    let list = match from {
        None => {
            v.issue(
                fkey,
                "is missing: list the load balancers' addresses allowed to send the PROXY header, e.g. [10.0.0.5/32]",
            );
            return None;
        }
        Some(list) if list.is_empty() => {
            v.issue(fkey, "is empty: list the load balancers' addresses allowed to send the PROXY header");
            return None;
        }
        Some(list) => list,
    };
    let mut nets = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        match parse_cidr(entry) {
            Ok(net) => nets.push(net),
            Err(why) => v.issue(format!("{fkey}[{i}]"), format!("{entry:?} {why}")),
        }
    }
    let allow_local = allow_local.unwrap_or(false);
    Some(ProxyProtocolConfig { versions, from: nets, allow_local })
}

pub(super) fn parse_cidr(entry: &str) -> Result<IpNet, &'static str> {
    let entry = entry.trim();
    if let Ok(net) = entry.parse::<IpNet>() {
        if net.trunc() != net {
            return Err("has host bits set below its prefix length: write the network address (e.g. 10.0.0.0/8), or /32 for one host");
        }
        return Ok(net);
    }
    if let Ok(ip) = entry.parse::<std::net::IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err("is not an IP network: expected CIDR notation, e.g. 34.203.166.92/32 or 2001:db8::/32")
}

fn validate_listener_tls(v: &mut Validator<'_>, key: &str, raw: RawListenerTls) -> Option<ListenerTlsConfig> {
    let before = v.issues.len();
    let certificate = v.file_path(&format!("{key}.certificate"), &raw.certificate);
    let private_key = v.file_path(&format!("{key}.private_key"), &raw.private_key);
    let mut versions = Vec::new();
    match raw.versions {
        None => versions = vec![TlsVersion::Tls12, TlsVersion::Tls13],
        Some(list) if list.is_empty() => {
            v.issue(format!("{key}.versions"), "is empty: expected [\"1.2\", \"1.3\"], [\"1.2\"] or [\"1.3\"]")
        }
        Some(list) => {
            for (i, s) in list.iter().enumerate() {
                let s = match s {
                    Scalar::Text(t) => t.trim().to_owned(),
                    Scalar::Number(n) => format!("{n}"),
                };
                match s.as_str() {
                    "1.2" => versions.push(TlsVersion::Tls12),
                    "1.3" => versions.push(TlsVersion::Tls13),
                    "1.0" | "1.1" | "1" => v.issue(
                        format!("{key}.versions[{i}]"),
                        format!("TLS {s} is not allowed (RFC 8996 and DICOM PS3.15 B.12 require 1.2 or later): use \"1.2\" and/or \"1.3\""),
                    ),
                    other => v.issue(
                        format!("{key}.versions[{i}]"),
                        format!("{other:?} is not a TLS version: expected \"1.2\" or \"1.3\" (quote them in YAML)"),
                    ),
                }
            }
        }
    }
    versions.sort();
    versions.dedup();
    let ca = raw.client_ca.as_deref().and_then(|p| v.file_path(&format!("{key}.client_ca"), p));
    if raw.client_certificates.as_ref().is_some_and(Vec::is_empty) && raw.client_ca.is_none() {
        // An empty list pins nobody, and without client_ca it silently meant
        // anonymous: the opposite of what writing the key suggests.
        v.issue(
            format!("{key}.client_certificates"),
            "is empty and client_ca is not set, which would admit any TLS client: list the cloud's \
             certificate files, set client_ca, or remove the key for anonymous TLS",
        );
    }
    let pinned = raw
        .client_certificates
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, p)| v.file_path(&format!("{key}.client_certificates[{i}]"), p))
        .collect();
    let crls: Vec<PathBuf> = raw
        .client_crls
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, p)| v.file_path(&format!("{key}.client_crls[{i}]"), p))
        .collect();
    if !crls.is_empty() && raw.client_ca.is_none() {
        // A CRL only ever applies to chain validation: without client_ca it
        // would look like revocation and check nothing.
        v.issue(
            format!("{key}.client_crls"),
            "is set but client_ca is not: CRLs apply to client certificates validated against client_ca; \
             a pinned certificate (client_certificates) is revoked by removing its pin",
        );
    }
    if v.issues.len() != before {
        return None;
    }
    Some(ListenerTlsConfig {
        certificate: certificate?,
        private_key: private_key?,
        generate_if_missing: raw.generate_if_missing.unwrap_or(false),
        versions,
        client_auth: ClientAuth { ca, pinned, crls },
    })
}
