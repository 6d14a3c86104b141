use super::*;

const BASE: &str = r#"
backends:
  pacs:
    ae_title: PACS
    servers: [127.0.0.1:11112, "pacs.hospital.local:104"]
listeners:
  store:
    listen: 127.0.0.1:2762
    tls: {certificate: certs/scp_cert.pem, private_key: /etc/dicomgate/scp_key.pem}
    allow: [34.203.166.92/32, 127.0.0.1]
    calling_ae_titles: [BUTTERFLY]
    routes: {PACS: pacs, "*": pacs}
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_yaml_str(text, Path::new("/srv/gw"))
}

fn issue_paths(err: &ConfigError) -> Vec<String> {
    err.issues().into_iter().map(|i| i.path).collect()
}

#[test]
fn minimal_config_gets_defaults_and_resolved_paths() {
    let c = parse(BASE).expect("valid");
    let l = &c.listeners["store"];
    assert_eq!(l.timeouts.acse, Duration::from_secs(30));
    assert_eq!(l.timeouts.dimse, Duration::from_secs(300));
    assert_eq!(l.timeouts.connect, Duration::from_secs(4));
    assert_eq!(l.max_connections, 256);
    assert_eq!(l.max_associate_rq_length, 65536);
    let Security::Tls(tls) = &l.security else { panic!("tls expected") };
    assert_eq!(tls.certificate, Path::new("/srv/gw/certs/scp_cert.pem"));
    assert_eq!(tls.private_key, Path::new("/etc/dicomgate/scp_key.pem"));
    assert_eq!(tls.versions, vec![TlsVersion::Tls12, TlsVersion::Tls13]);
    assert!(!tls.client_auth.required());
    assert_eq!(c.backends["pacs"].servers[1].to_string(), "pacs.hospital.local:104");
    assert!(l.allows("127.0.0.1".parse().unwrap()));
    assert!(l.allows("::ffff:127.0.0.1".parse().unwrap()));
    assert!(!l.allows("127.0.0.2".parse().unwrap()));
    assert_eq!(l.routes.lookup(&AeTitle::parse("PACS").unwrap()), Some("pacs"));
    assert_eq!(l.routes.lookup(&AeTitle::parse("OTHER").unwrap()), Some("pacs"));
}

#[test]
fn unknown_key_names_its_path() {
    let text = BASE.replace("allow:", "alow:");
    let err = parse(&text).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("listeners.store"), "{msg}");
    assert!(msg.contains("unknown field `alow`"), "{msg}");
}

#[test]
fn long_calling_ae_title_message_matches_design() {
    let text = BASE.replace("[BUTTERFLY]", "[\"BUTTERFLY CLOUD ONE\"]");
    let err = parse(&text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "listeners.store.calling_ae_titles[0]: \"BUTTERFLY CLOUD ONE\" is longer than 16 characters"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = BASE
        .replace("34.203.166.92/32", "34.203.166.92/33")
        .replace("{PACS: pacs,", "{PACS: nowhere,")
        .replace("tls: {", "timeouts: {acse: 30, dimse: forever}\n    tls: {");
    let err = parse(&text).unwrap_err();
    let paths = issue_paths(&err);
    assert!(paths.contains(&"listeners.store.allow[0]".to_owned()), "{paths:?}");
    assert!(paths.contains(&"listeners.store.routes.PACS".to_owned()), "{paths:?}");
    assert!(paths.contains(&"listeners.store.timeouts.acse".to_owned()), "{paths:?}");
    assert!(paths.contains(&"listeners.store.timeouts.dimse".to_owned()), "{paths:?}");
    assert!(err.to_string().contains("30 has no unit"), "{err}");
}

#[test]
fn tls_and_plaintext_are_exclusive_and_one_is_required() {
    let both = BASE.replace("allow:", "insecure_plaintext: true\n    allow:");
    assert_eq!(issue_paths(&parse(&both).unwrap_err()), vec!["listeners.store.insecure_plaintext"]);
    let neither =
        BASE.replace("    tls: {certificate: certs/scp_cert.pem, private_key: /etc/dicomgate/scp_key.pem}\n", "");
    assert_eq!(issue_paths(&parse(&neither).unwrap_err()), vec!["listeners.store.tls"]);
    let plain = neither.replace("allow:", "insecure_plaintext: true\n    allow:");
    assert!(matches!(parse(&plain).unwrap().listeners["store"].security, Security::Plaintext));
}

#[test]
fn allow_list_is_required_and_never_defaults() {
    let text = BASE.replace("    allow: [34.203.166.92/32, 127.0.0.1]\n", "");
    assert_eq!(issue_paths(&parse(&text).unwrap_err()), vec!["listeners.store.allow"]);
    let empty = BASE.replace("[34.203.166.92/32, 127.0.0.1]", "[]");
    assert_eq!(issue_paths(&parse(&empty).unwrap_err()), vec!["listeners.store.allow"]);
}

#[test]
fn tls_versions_below_1_2_are_refused_and_unquoted_versions_work() {
    let old = BASE.replace("private_key: /etc/dicomgate/scp_key.pem}", "private_key: k.pem, versions: [\"1.1\"]}");
    let err = parse(&old).unwrap_err();
    assert_eq!(issue_paths(&err), vec!["listeners.store.tls.versions[0]"]);
    assert!(err.to_string().contains("RFC 8996"), "{err}");
    let pinned = BASE.replace("private_key: /etc/dicomgate/scp_key.pem}", "private_key: k.pem, versions: [1.2]}");
    let c = parse(&pinned).unwrap();
    let Security::Tls(tls) = &c.listeners["store"].security else { panic!() };
    assert_eq!(tls.versions, vec![TlsVersion::Tls12]);
}

#[test]
fn ae_titles_with_forbidden_characters_are_refused() {
    for bad in ["\"A\\\\B\"", "\"\"", "\"   \"", "\"TAB\\tX\""] {
        let text = BASE.replace("[BUTTERFLY]", &format!("[{bad}]"));
        let err = parse(&text).unwrap_err();
        assert_eq!(issue_paths(&err), vec!["listeners.store.calling_ae_titles[0]"], "{bad}: {err}");
    }
}

#[test]
fn server_addresses() {
    use super::validate::parse_server_address as p;
    assert_eq!(p("10.20.0.15:104").unwrap().to_string(), "10.20.0.15:104");
    assert_eq!(p("[::1]:104").unwrap().to_string(), "[::1]:104");
    assert_eq!(p("pacs.local:11112").unwrap().host, "pacs.local");
    for bad in ["pacs.local", "pacs:0", "pacs:99999", ":104", "a b:104"] {
        assert!(p(bad).is_none(), "{bad}");
    }
}

#[test]
fn backend_tls_needs_ca_and_key_with_certificate() {
    let text = BASE.replace(
        "    servers: [127.0.0.1:11112, \"pacs.hospital.local:104\"]\n",
        "    servers: [127.0.0.1:11112]\n    tls: {certificate: c.pem}\n",
    );
    let mut paths = issue_paths(&parse(&text).unwrap_err());
    paths.sort();
    assert_eq!(paths[0], "backends.pacs.tls.ca");
    assert_eq!(paths[1], "backends.pacs.tls.private_key");
}

#[test]
fn duplicate_listen_addresses_are_refused() {
    let text = format!(
        "{BASE}  worklist:\n    listen: 127.0.0.1:2762\n    insecure_plaintext: true\n    allow: [127.0.0.1/32]\n    routes: {{MWL: pacs}}\n"
    );
    assert_eq!(issue_paths(&parse(&text).unwrap_err()), vec!["listeners.worklist.listen"]);
}

#[test]
fn health_check_thresholds_and_timeout_have_defaults_and_bounds() {
    let c = parse(BASE).expect("valid");
    let hc = &c.backends["pacs"].health_check;
    assert_eq!(
        (hc.mode, hc.interval, hc.timeout, hc.fall, hc.rise),
        (HealthCheckMode::Echo, Duration::from_secs(10), Duration::from_secs(5), 3, 2)
    );

    let short =
        BASE.replace("    ae_title: PACS\n", "    ae_title: PACS\n    health_check: {mode: tcp, interval: 2s}\n");
    let hc = parse(&short).expect("valid").backends["pacs"].health_check.clone();
    assert_eq!((hc.mode, hc.timeout), (HealthCheckMode::Tcp, Duration::from_secs(2)), "timeout capped at the interval");

    let bad = BASE.replace(
        "    ae_title: PACS\n",
        "    ae_title: PACS\n    health_check: {interval: 5s, timeout: 6s, fall: 0, rise: 101}\n",
    );
    let err = parse(&bad).unwrap_err();
    assert_eq!(
        issue_paths(&err)[..3],
        ["backends.pacs.health_check.timeout", "backends.pacs.health_check.fall", "backends.pacs.health_check.rise"]
    );
    let msg = err.to_string();
    assert!(msg.contains("6s is longer than health_check.interval (5s)"), "{msg}");
    assert!(msg.contains("0 is out of range: expected 1 to 100"), "{msg}");
}

#[test]
fn a_backend_server_listed_twice_is_refused() {
    let text = BASE.replace("[127.0.0.1:11112, ", "[127.0.0.1:11112, \"127.0.0.1:11112\", ");
    let err = parse(&text).unwrap_err();
    assert_eq!(issue_paths(&err)[0], "backends.pacs.servers[1]");
    assert!(err.to_string().contains("is listed twice"), "{err}");
}

#[test]
fn proxy_protocol_needs_its_sources_and_is_off_by_default() {
    let c = parse(BASE).expect("valid");
    assert!(c.listeners["store"].proxy_protocol.is_none());

    let on = BASE
        .replace("    routes:", "    proxy_protocol: v2\n    proxy_protocol_from: [10.0.0.5/32, \"::1\"]\n    routes:");
    let c = parse(&on).expect("valid");
    let p = c.listeners["store"].proxy_protocol.clone().expect("on");
    assert_eq!(p.versions, ProxyVersions::V2);
    assert!(p.trusts("10.0.0.5".parse().unwrap()));
    assert!(p.trusts("::ffff:10.0.0.5".parse().unwrap()));
    assert!(!p.trusts("10.0.0.6".parse().unwrap()));

    let cases = [
        ("    proxy_protocol: v1\n", "listeners.store.proxy_protocol_from", "is missing"),
        ("    proxy_protocol: any\n    proxy_protocol_from: []\n", "listeners.store.proxy_protocol_from", "is empty"),
        ("    proxy_protocol_from: [10.0.0.5/32]\n", "listeners.store.proxy_protocol_from", "proxy_protocol is off"),
        ("    proxy_protocol: v3\n", "listeners.store.proxy_protocol", "expected off (default), v1, v2 or any"),
        (
            "    proxy_protocol: any\n    proxy_protocol_from: [10.0.0.5/33]\n",
            "listeners.store.proxy_protocol_from[0]",
            "is not an IP network",
        ),
    ];
    for (extra, path, message) in cases {
        let text = BASE.replace("    routes:", &format!("{extra}    routes:"));
        let err = parse(&text).unwrap_err();
        assert_eq!(issue_paths(&err), vec![path], "{extra}");
        assert!(err.to_string().contains(message), "{err}");
    }
}

#[test]
fn the_shipped_example_configuration_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.yaml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listeners["store"].listen.port(), 2762);
    assert_eq!(c.listeners["worklist"].listen.port(), 2761);
    let Security::Tls(tls) = &c.listeners["store"].security else { panic!("the example is Secured") };
    assert!(tls.generate_if_missing, "works out of the box on a fresh machine");
}

#[test]
fn admin_allow_defaults_to_loopback_and_names_bad_entries() {
    let with = |admin: &str| format!("admin: {admin}\n{BASE}");
    let c = parse(&with("{listen: 127.0.0.1:9102}")).expect("valid");
    let admin = c.admin.expect("admin");
    assert!(admin.allows("127.0.0.1".parse().unwrap()) && admin.allows("::1".parse().unwrap()));
    assert!(!admin.allows("10.20.0.5".parse().unwrap()), "loopback only by default");

    let c = parse(&with("{listen: \"0.0.0.0:9102\", allow: [10.20.0.5, 127.0.0.0/8]}")).expect("valid");
    let admin = c.admin.expect("admin");
    assert!(admin.allows("10.20.0.5".parse().unwrap()) && !admin.allows("10.20.0.6".parse().unwrap()));

    let err = parse(&with("{listen: 127.0.0.1:9102, allow: [10.0.0.1/8, nowhere]}")).unwrap_err();
    assert_eq!(issue_paths(&err), vec!["admin.allow[0]", "admin.allow[1]"]);
    let err = parse(&with("{listen: 127.0.0.1:9102, allow: []}")).unwrap_err();
    assert_eq!(issue_paths(&err), vec!["admin.allow"]);
}

/// Issue 11: settings that silently meant something else, or panicked, are
/// errors naming their key.
#[test]
fn footguns_are_errors_naming_their_key() {
    let cases = [
        (
            "tls: {certificate: c.pem, private_key: k.pem}",
            "tls: {certificate: c.pem, private_key: k.pem, client_certificates: []}",
            "listeners.store.tls.client_certificates",
            "would admit any TLS client",
        ),
        (
            "    routes:",
            "    timeouts: {acse: 1000000000y}\n    routes:",
            "listeners.store.timeouts.acse",
            "maximum of 24h",
        ),
        ("    routes:", "    timeouts: {dimse: 25h}\n    routes:", "listeners.store.timeouts.dimse", "maximum of 24h"),
        ("    routes:", "    timeouts: {association: 0s}\n    routes:", "listeners.store.timeouts.association", "zero"),
        (
            "    routes:",
            "    proxy_protocol_allow_local: true\n    routes:",
            "listeners.store.proxy_protocol_allow_local",
            "proxy_protocol is off",
        ),
    ];
    let base = BASE.replace(
        "tls: {certificate: certs/scp_cert.pem, private_key: /etc/dicomgate/scp_key.pem}",
        "tls: {certificate: c.pem, private_key: k.pem}",
    );
    for (from, to, path, message) in cases {
        let text = base.replacen(from, to, 1);
        assert_ne!(text, base, "{to}");
        let err = parse(&text).unwrap_err();
        assert_eq!(issue_paths(&err), vec![path], "{to}");
        assert!(err.to_string().contains(message), "{err}");
    }
    let grace = parse(&format!("shutdown: {{grace_period: 2d}}\n{BASE}")).unwrap_err();
    assert_eq!(issue_paths(&grace), vec!["shutdown.grace_period"]);

    // Pinning with a CA, or an empty list next to a CA, stays valid.
    let text = base.replace("private_key: k.pem}", "private_key: k.pem, client_ca: ca.pem, client_certificates: []}");
    assert!(parse(&text).is_ok());
}

#[test]
fn relay_mode_bytes_is_only_for_the_bench_build() {
    let text = BASE.replace("    routes:", "    relay_mode: bytes\n    routes:");
    if cfg!(feature = "bench-baseline") {
        let c = parse(&text).expect("the bench build takes bytes");
        assert_eq!(c.listeners["store"].relay_mode, crate::config::RelayMode::Bytes);
    } else {
        let err = parse(&text).unwrap_err();
        assert_eq!(issue_paths(&err), vec!["listeners.store.relay_mode"]);
        assert!(err.to_string().contains("--features bench-baseline"), "{err}");
    }
    let dicom = parse(&BASE.replace("    routes:", "    relay_mode: dicom\n    routes:")).expect("valid");
    assert_eq!(dicom.listeners["store"].relay_mode, crate::config::RelayMode::Dicom);
}

#[test]
fn the_association_lifetime_is_off_by_default_and_settable() {
    let c = parse(BASE).expect("valid");
    assert_eq!(c.listeners["store"].timeouts.association, None);
    let c = parse(&BASE.replace("    routes:", "    timeouts: {association: 8h}\n    routes:")).expect("valid");
    assert_eq!(c.listeners["store"].timeouts.association, Some(Duration::from_secs(8 * 3600)));
}

#[test]
fn proxy_protocol_local_headers_are_refused_unless_allowed() {
    let on = "    proxy_protocol: v2\n    proxy_protocol_from: [10.0.0.5/32]\n";
    let c = parse(&BASE.replace("    routes:", &format!("{on}    routes:"))).expect("valid");
    assert!(!c.listeners["store"].proxy_protocol.as_ref().expect("on").allow_local);
    let text = BASE.replace("    routes:", &format!("{on}    proxy_protocol_allow_local: true\n    routes:"));
    assert!(parse(&text).expect("valid").listeners["store"].proxy_protocol.as_ref().expect("on").allow_local);
}
