use super::*;

/// The compiled-in defaults with `overlay` (TOML) on top, no files or environment.
fn load(overlay: &str) -> Result<Settings, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("test.toml");
    std::fs::write(&file, overlay).unwrap();
    Settings::load_from(&Sources {
        base_dir: dir.path().to_path_buf(),
        file: Some(file),
        env: false,
    })
}

fn problems(overlay: &str) -> Vec<String> {
    match load(overlay) {
        Ok(_) => panic!("expected the configuration to be refused"),
        Err(e) => e.problems().iter().map(ToString::to_string).collect(),
    }
}

fn secret_file(value: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, value).unwrap();
    let path = path.display().to_string();
    (dir, path)
}

/// Two connectors and a flow between them, secrets read from `secret_path`.
fn valid_config(secret_path: &str) -> String {
    format!(
        r#"
[connectors.jira]
kind = "jira"
base_url = "https://acme.atlassian.net"
auth = {{ method = "basic", email = "sync@acme.test", api_token = {{ file = "{secret_path}" }} }}

[connectors.sf]
kind = "salesforce"
base_url = "https://acme.my.salesforce.com"
auth = {{ method = "client_credentials", client_id = "abc", client_secret = {{ file = "{secret_path}" }} }}

[flows.support]
left = {{ connector = "jira", object = "issue", marker = "customfield_10050" }}
right = {{ connector = "sf", object = "Case", marker = "Jira_Issue_Id__c" }}
mode = {{ scheduled = {{ every = "15m" }} }}

[[flows.support.fields]]
left = "summary"
right = "Subject"

[[flows.support.fields]]
left = "priority.name"
right = "Priority"
map = {{ Highest = "High", High = "High", Medium = "Medium" }}
reverse_map = {{ High = "High", Medium = "Medium" }}
"#
    )
}

#[test]
fn the_defaults_listen_on_loopback_and_store_under_data() {
    let settings = load("").unwrap();
    assert_eq!(settings.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(settings.storage.url, "sqlite://data/tandem.db");
    assert_eq!(settings.storage.synchronous, Synchronous::Full);
    assert!(settings.journal.group_commit);
    assert!(settings.admin.token.is_none());
    assert!(settings.connectors.is_empty());
}

#[test]
fn a_complete_configuration_loads_with_its_secrets_and_value_maps() {
    let (_dir, path) = secret_file("s3cr3t-value\n");
    let settings = load(&valid_config(&path)).unwrap();
    let ConnectorSettings::Jira(jira) = &settings.connectors["jira"] else {
        panic!("jira connector has the wrong kind");
    };
    let JiraAuth::Basic { api_token, .. } = &jira.auth else {
        panic!("expected basic auth");
    };
    assert_eq!(
        api_token.expose(),
        "s3cr3t-value",
        "trailing newline trimmed"
    );
    let flow = &settings.flows["support"];
    assert!(matches!(flow.mode, FlowMode::Scheduled(Schedule::Every(d)) if d.as_secs() == 900));
    assert_eq!(flow.fields[1].map.as_ref().unwrap()["Highest"], "High");
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let (_dir, path) = secret_file("s3cr3t-value");
    let settings = load(&valid_config(&path)).unwrap();
    let debug = format!("{settings:?}");
    assert!(!debug.contains("s3cr3t-value"), "{debug}");
    assert!(debug.contains("Secret(file"), "the source is still shown");
}

#[test]
fn an_unknown_key_is_reported_with_its_path() {
    let found = problems("[server]\nlisen = \"127.0.0.1:9\"\n");
    assert_eq!(found.len(), 1);
    assert!(found[0].starts_with("server"), "{found:?}");
    assert!(found[0].contains("unknown field `lisen`"), "{found:?}");
}

#[test]
fn an_unknown_key_inside_a_connector_is_reported_with_its_full_path() {
    let (_dir, path) = secret_file("x");
    let config = valid_config(&path).replace(
        "kind = \"salesforce\"",
        "kind = \"salesforce\"\nlimits = { request_per_second = 3 }",
    );
    let found = problems(&config);
    assert!(
        found[0].starts_with(
            "connectors.sf.limits.request_per_second: unknown field `request_per_second`"
        ),
        "{found:?}"
    );
}

#[test]
fn a_malformed_duration_is_reported_with_its_path() {
    let found = problems("[server]\nrequest_timeout = \"thirty seconds\"\n");
    assert!(
        found[0].starts_with("server.request_timeout: `thirty seconds` is not a duration"),
        "{found:?}"
    );
}

#[test]
fn a_malformed_cron_is_reported_with_its_path() {
    let (_dir, path) = secret_file("x");
    let config = valid_config(&path).replace("{ every = \"15m\" }", "{ cron = \"0 99 * * *\" }");
    let found = problems(&config);
    assert!(found[0].starts_with("flows.support.mode: "), "{found:?}");
    assert!(
        found[0].contains("`0 99 * * *` is not a cron expression"),
        "{found:?}"
    );
}

#[test]
fn a_valid_cron_is_accepted() {
    let (_dir, path) = secret_file("x");
    let config = valid_config(&path).replace("{ every = \"15m\" }", "{ cron = \"0 2 * * *\" }");
    let settings = load(&config).unwrap();
    assert!(matches!(
        &settings.flows["support"].mode,
        FlowMode::Scheduled(Schedule::Cron { expression, .. }) if expression == "0 2 * * *"
    ));
}

#[test]
fn a_missing_secret_is_reported_with_its_path_and_variable() {
    let (_dir, path) = secret_file("x");
    let config = valid_config(&path).replacen(
        &format!("api_token = {{ file = \"{path}\" }}"),
        "api_token = { env = \"TANDEM_TEST_NEVER_SET_7Q2\" }",
        1,
    );
    let found = problems(&config);
    assert_eq!(
        found,
        vec![
            "connectors.jira.auth.api_token: environment variable TANDEM_TEST_NEVER_SET_7Q2 is not set"
        ]
    );
}

#[test]
fn a_secret_written_inline_is_refused() {
    let (_dir, path) = secret_file("x");
    let config = valid_config(&path).replacen(
        &format!("api_token = {{ file = \"{path}\" }}"),
        "api_token = \"hunter2\"",
        1,
    );
    let found = problems(&config);
    assert!(
        found[0].starts_with("connectors.jira.auth.api_token: "),
        "{found:?}"
    );
    assert!(found[0].contains("never inline"), "{found:?}");
    assert!(!found[0].contains("hunter2"), "the value is not echoed");
}

#[test]
fn an_unknown_connector_kind_is_reported() {
    let found = problems("[connectors.x]\nkind = \"servicenow\"\nbase_url = \"https://x.test\"\n");
    assert!(
        found[0].starts_with("connectors.x.kind: unknown value \"servicenow\""),
        "{found:?}"
    );
}

#[test]
fn every_flow_mistake_is_reported_at_once() {
    let (_dir, path) = secret_file("x");
    let config = valid_config(&path)
        .replace(
            "connector = \"sf\", object = \"Case\"",
            "connector = \"sfdc\", object = \"Case\"",
        )
        .replace(
            "object = \"issue\", marker = \"customfield_10050\"",
            "object = \"story\"",
        )
        .replace(
            "reverse_map = { High = \"High\", Medium = \"Medium\" }\n",
            "",
        );
    let found = problems(&config);
    assert_eq!(
        found,
        vec![
            "flows.support.left.object: `story` is not a Jira object Tandem syncs (use `issue`)",
            "flows.support.left.marker: required: the flow creates records on this side, and each \
             create carries the source id in this field so a retry finds it instead of creating \
             it twice",
            "flows.support.right.connector: no connector named `sfdc` (configured: jira, sf)",
            "flows.support.fields[1].map: `High` comes from both `High` and `Highest`, so it \
             cannot be mapped back; add a reverse_map or narrow the rule to left_to_right",
        ]
    );
}

#[test]
fn a_one_way_flow_needs_no_marker_on_its_source_side() {
    let (_dir, path) = secret_file("x");
    let config = valid_config(&path)
        .replace(
            "object = \"issue\", marker = \"customfield_10050\"",
            "object = \"issue\"",
        )
        .replace(
            "mode = { scheduled = { every = \"15m\" } }",
            "direction = \"left_to_right\"",
        );
    load(&config).unwrap();
}

#[test]
fn a_field_rule_cannot_widen_the_flow_direction() {
    let (_dir, path) = secret_file("x");
    let config = valid_config(&path)
        .replace(
            "mode = { scheduled = { every = \"15m\" } }",
            "direction = \"left_to_right\"",
        )
        .replace(
            "left = \"summary\"\nright = \"Subject\"",
            "left = \"summary\"\nright = \"Subject\"\ndirection = \"right_to_left\"",
        );
    let found = problems(&config);
    assert_eq!(
        found,
        vec!["flows.support.fields[0].direction: `right_to_left` is wider than the flow's direction `left_to_right`"]
    );
}

#[test]
fn a_flow_without_field_rules_is_refused() {
    let (_dir, path) = secret_file("x");
    let config = valid_config(&path);
    let config = &config[..config.find("[[flows.support.fields]]").unwrap()];
    assert_eq!(
        problems(config),
        vec!["flows.support.fields: a flow needs at least one field rule"]
    );
}

#[test]
fn connector_limits_and_versions_are_checked() {
    let (_dir, path) = secret_file("x");
    let config = valid_config(&path).replace(
        "kind = \"salesforce\"",
        "kind = \"salesforce\"\napi_version = \"v60\"\nlimits = { requests_per_second = 0, max_concurrency = 0 }",
    );
    assert_eq!(
        problems(&config),
        vec![
            "connectors.sf.limits.requests_per_second: must be greater than 0",
            "connectors.sf.limits.max_concurrency: must be at least 1",
            "connectors.sf.api_version: `v60` is not an API version like `60.0`",
        ]
    );
}

#[test]
fn a_budget_share_must_be_a_fraction_and_ingest_needs_a_poll_interval() {
    let (_dir, path) = secret_file("x");
    let config = valid_config(&path).replace(
        "kind = \"salesforce\"",
        "kind = \"salesforce\"\nlimits = { daily_budget_share = 1.5 }",
    ) + "\n[ingest]\nsafety_poll_interval = \"0s\"\n";
    assert_eq!(
        problems(&config),
        vec![
            "ingest.safety_poll_interval: must be longer than 0s",
            "connectors.sf.limits.daily_budget_share: 1.5 is not a share in (0, 1]",
        ]
    );
}

#[test]
fn zero_delays_and_a_budget_share_on_jira_are_refused() {
    let (_dir, path) = secret_file("x");
    let config = valid_config(&path).replace(
        "kind = \"jira\"",
        "kind = \"jira\"\nlimits = { daily_budget_share = 0.5, probe_after = \"0s\" }",
    ) + "\n[dispatch]\nidle_wait = \"0s\"\nbase_delay = \"0s\"\n";
    let found = problems(&config);
    for expected in [
        "dispatch.idle_wait: must be longer than 0s",
        "dispatch.base_delay: must be longer than 0s",
        "connectors.jira.limits.probe_after: must be longer than 0s",
        "connectors.jira.limits.daily_budget_share: Jira reports no daily allowance to take a share of; set daily_budget",
    ] {
        assert!(found.iter().any(|p| p == expected), "missing `{expected}` in {found:#?}");
    }
}

#[test]
fn salesforce_webhook_secrets_are_secrets_too() {
    let (_dir, path) = secret_file("hook-secret");
    let config = valid_config(&path).replace(
        "kind = \"salesforce\"",
        &format!("kind = \"salesforce\"\nwebhook_secret = {{ file = \"{path}\" }}"),
    );
    let settings = load(&config).unwrap();
    let ConnectorSettings::Salesforce(sf) = &settings.connectors["sf"] else {
        panic!("not salesforce")
    };
    assert_eq!(sf.webhook_secret.as_ref().unwrap().expose(), "hook-secret");
    assert!(!format!("{settings:?}").contains("hook-secret"));
    assert!(!sf.allow_unauthenticated_webhooks);
}

#[test]
fn a_missing_config_file_is_an_error() {
    let err = Settings::load_from(&Sources {
        base_dir: std::env::temp_dir(),
        file: Some(PathBuf::from("/nonexistent/tandem.toml")),
        env: false,
    })
    .unwrap_err();
    assert!(err
        .to_string()
        .contains("/nonexistent/tandem.toml does not exist"));
}

#[test]
fn local_toml_overrides_default_toml_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/local.toml"),
        "[server]\nlisten = \"127.0.0.1:9999\"\n",
    )
    .unwrap();
    let settings = Settings::load_from(&Sources {
        base_dir: dir.path().to_path_buf(),
        file: None,
        env: false,
    })
    .unwrap();
    assert_eq!(settings.server.listen.port(), 9999);
}
