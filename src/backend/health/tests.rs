use super::*;

#[test]
fn the_first_probe_decides_then_thresholds_apply() {
    let mut v = Verdicts::default();
    assert_eq!(v.observe(true, 2, 3), Some(ServerState::Up));
    assert_eq!(v.observe(false, 2, 3), None);
    assert_eq!(v.observe(false, 2, 3), None);
    assert_eq!(v.observe(false, 2, 3), Some(ServerState::Down));
    assert_eq!(v.observe(false, 2, 3), None);
    assert_eq!(v.observe(true, 2, 3), None);
    assert_eq!(v.observe(true, 2, 3), Some(ServerState::Up));

    let mut v = Verdicts::default();
    assert_eq!(v.observe(false, 2, 3), Some(ServerState::Down));
    assert_eq!(v.state(), ServerState::Down);
}

#[test]
fn a_success_resets_the_failure_count_and_vice_versa() {
    let mut v = Verdicts::default();
    v.observe(true, 2, 2);
    for _ in 0..10 {
        assert_eq!(v.observe(false, 2, 2), None);
        assert_eq!(v.observe(true, 2, 2), None);
    }
    assert_eq!(v.state(), ServerState::Up);
    assert_eq!(v.observe(false, 2, 2), None);
    assert_eq!(v.observe(false, 2, 2), Some(ServerState::Down));
    for _ in 0..10 {
        assert_eq!(v.observe(true, 2, 2), None);
        assert_eq!(v.observe(false, 2, 2), None);
    }
    assert_eq!(v.state(), ServerState::Down);
}

fn config(yaml_backend: &str) -> Arc<BackendConfig> {
    let yaml = format!(
        "backends:\n  pacs:\n{yaml_backend}listeners:\n  store:\n    listen: 127.0.0.1:0\n    \
             insecure_plaintext: true\n    allow: [127.0.0.1/32]\n    routes: {{PACS: pacs}}\n"
    );
    let c = crate::config::Config::from_yaml_str(&yaml, std::path::Path::new("/")).expect("valid");
    c.backends["pacs"].clone()
}

fn runtime(registry: &HealthRegistry, config: Arc<BackendConfig>) -> Arc<BackendRuntime> {
    let health = registry.health_for(&config);
    Arc::new(BackendRuntime { config, tls: None, health })
}

fn probe(ok: bool, text: &str) -> ProbeResult {
    ProbeResult { ok, text: text.to_owned(), latency: Duration::from_micros(1500), at: SystemTime::UNIX_EPOCH }
}

#[test]
fn state_survives_a_reload_only_while_the_probe_is_the_same() {
    let registry = HealthRegistry::new();
    let metrics = Metrics::new();
    let v1 = config("    ae_title: PACS\n    servers: [\"10.0.0.1:104\", \"10.0.0.2:104\"]\n");
    let first = runtime(&registry, v1.clone());
    registry.publish(&BTreeMap::from([("pacs".to_owned(), first.clone())]), &metrics);
    first.health.servers[0].record(probe(false, "refused"), 2, 3);
    assert_eq!(metrics.backend_up("pacs", "10.0.0.1:104"), None, "only set by the monitor");

    // Same probe, one server more: the known server keeps its state.
    let v2 = config("    ae_title: PACS\n    servers: [\"10.0.0.3:104\", \"10.0.0.1:104\"]\n");
    let second = runtime(&registry, v2);
    assert_eq!(second.health.servers[0].state(), ServerState::Unchecked);
    assert_eq!(second.health.servers[1].state(), ServerState::Down);
    assert!(Arc::ptr_eq(&second.health.servers[1], &first.health.servers[0]));
    registry.publish(&BTreeMap::from([("pacs".to_owned(), second.clone())]), &metrics);
    assert_eq!(metrics.backend_up("pacs", "10.0.0.1:104"), Some(false));

    // A different probe (the called AE title): judged afresh.
    let v3 = config("    ae_title: PACS2\n    servers: [\"10.0.0.1:104\"]\n");
    let third = runtime(&registry, v3);
    assert_eq!(third.health.servers[0].state(), ServerState::Unchecked);
    registry.publish(&BTreeMap::from([("pacs".to_owned(), third)]), &metrics);
    assert_eq!(metrics.backend_up("pacs", "10.0.0.1:104"), None, "stale series removed");
}

#[test]
fn status_json_shows_state_last_probe_and_change() {
    let registry = HealthRegistry::new();
    let rt = runtime(&registry, config("    ae_title: PACS\n    servers: [\"10.0.0.1:104\"]\n"));
    registry.publish(&BTreeMap::from([("pacs".to_owned(), rt.clone())]), &Metrics::new());
    let unchecked: serde_json::Value = serde_json::from_str(&registry.status_json()).expect("JSON");
    assert_eq!(unchecked["backends"]["pacs"]["servers"][0]["state"], "unchecked");
    assert!(unchecked["backends"]["pacs"]["servers"][0]["last_probe"].is_null());

    rt.health.servers[0].record(probe(false, "association rejected: \"quoted\" 1/1/7"), 2, 3);
    let v: serde_json::Value = serde_json::from_str(&registry.status_json()).expect("JSON");
    let pacs = &v["backends"]["pacs"];
    assert_eq!(pacs["ae_title"], "PACS");
    assert_eq!(pacs["health_check"]["mode"], "echo");
    assert_eq!(pacs["health_check"]["fall"], 3);
    let server = &pacs["servers"][0];
    assert_eq!(server["server"], "10.0.0.1:104");
    assert_eq!(server["state"], "down");
    assert_eq!(server["consecutive_failures"], 1);
    assert_eq!(server["last_change"], "1970-01-01T00:00:00.000Z");
    assert_eq!(server["last_probe"]["ok"], false);
    assert_eq!(server["last_probe"]["result"], "association rejected: \"quoted\" 1/1/7");
    assert_eq!(server["last_probe"]["latency_ms"], 1.5);
}

#[test]
fn thresholds_of_one_flip_on_every_change() {
    let mut v = Verdicts::default();
    assert_eq!(v.observe(true, 1, 1), Some(ServerState::Up));
    assert_eq!(v.observe(false, 1, 1), Some(ServerState::Down));
    assert_eq!(v.observe(true, 1, 1), Some(ServerState::Up));
}

#[test]
fn a_failed_connect_marks_down_at_once_whatever_fall_says() {
    let mut v = Verdicts::default();
    assert_eq!(v.observe(true, 2, 3), Some(ServerState::Up));
    assert_eq!(v.observe(true, 2, 3), None);
    assert_eq!(v.observe_failed_connect(), Some(ServerState::Down));
    assert_eq!(v.observe_failed_connect(), None, "already down");
    // The probes' rise counts from zero again.
    assert_eq!(v.observe(true, 2, 3), None);
    assert_eq!(v.observe(true, 2, 3), Some(ServerState::Up));

    let mut unchecked = Verdicts::default();
    assert_eq!(unchecked.observe_failed_connect(), Some(ServerState::Down));
}
