use std::path::Path;

use secrecy::ExposeSecret;

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn file(text: &str) -> Option<(&Path, &str)> {
    Some((Path::new("RoomsAppSettings.config"), text))
}

fn app_settings(entries: &[(&str, &str)]) -> String {
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<appSettings>\n");
    for (k, v) in entries {
        xml.push_str(&format!("  <add key=\"{k}\" value=\"{v}\" />\n"));
    }
    xml.push_str("</appSettings>\n");
    xml
}

fn callback(file_text: Option<&str>, env_pairs: &[(&str, &str)]) -> String {
    load_from(file_text.and_then(file), &env(env_pairs))
        .expect("valid settings")
        .settings
        .callback_url
}

fn problems(file_text: Option<&str>, env_pairs: &[(&str, &str)]) -> Vec<String> {
    load_from(file_text.and_then(file), &env(env_pairs))
        .expect_err("invalid settings")
        .problems
}

#[test]
fn the_override_url_is_registered_exactly_as_written() {
    let url = callback(
        None,
        &[
            ("IdpRootUrl", "https://rooms.example.com"),
            (
                "ExchangePushNotificationEndpointUrl",
                "https://hooks.example.net:8443/x/y?tenant=a&b=c",
            ),
            ("ExchangePushNotificationUseLegacyEndpoint", "true"),
            ("Tenant", "acme"),
        ],
    );
    assert_eq!(url, "https://hooks.example.net:8443/x/y?tenant=a&b=c");
}

#[test]
fn the_override_url_is_kept_one_to_one_even_without_a_path() {
    // A parsed URL would gain a trailing slash; the contract says the string is used 1:1.
    let url = callback(
        None,
        &[("ExchangePushNotificationEndpointUrl", "https://h.example")],
    );
    assert_eq!(url, "https://h.example");
}

#[test]
fn the_legacy_flag_gives_the_wcf_endpoint_with_the_tenant_as_query() {
    let url = callback(
        None,
        &[
            ("IdpRootUrl", "https://rooms.example.com/"),
            ("ExchangePushNotificationUseLegacyEndpoint", "TRUE"),
            ("Tenant", "acme"),
        ],
    );
    assert_eq!(
        url,
        "https://rooms.example.com/WebServices/SyncNotification.svc?acme"
    );
}

#[test]
fn the_legacy_endpoint_without_a_tenant_is_refused_by_name() {
    let p = problems(
        None,
        &[
            ("IdpRootUrl", "https://rooms.example.com"),
            ("ExchangePushNotificationUseLegacyEndpoint", "true"),
        ],
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("Tenant:"), "{p:?}");
}

#[test]
fn the_default_callback_joins_with_exactly_one_slash() {
    for (root, expected) in [
        (
            "https://h.example",
            "https://h.example/api/webhooks/exchange",
        ),
        (
            "https://h.example/",
            "https://h.example/api/webhooks/exchange",
        ),
        (
            "https://h.example/rooms",
            "https://h.example/rooms/api/webhooks/exchange",
        ),
        (
            "https://h.example/rooms/",
            "https://h.example/rooms/api/webhooks/exchange",
        ),
        (
            "http://h.example:8080/a/b//",
            "http://h.example:8080/a/b/api/webhooks/exchange",
        ),
    ] {
        assert_eq!(
            callback(None, &[("IdpRootUrl", root)]),
            expected,
            "root {root}"
        );
    }
}

#[test]
fn the_environment_beats_the_file() {
    let text = app_settings(&[
        ("IdpRootUrl", "https://from-file.example"),
        ("EwsStatusFrequencyMinutes", "30"),
    ]);
    let loaded = load_from(
        file(&text),
        &env(&[("IdpRootUrl", "https://from-env.example")]),
    )
    .unwrap();
    assert_eq!(
        loaded.settings.callback_url,
        "https://from-env.example/api/webhooks/exchange"
    );
    assert_eq!(loaded.settings.exchange.ews.status_frequency_minutes, 30);
    assert_eq!(
        loaded.effective.get("IdpRootUrl"),
        Some(("https://from-env.example", Origin::Environment))
    );
    assert_eq!(
        loaded.effective.get("EwsStatusFrequencyMinutes"),
        Some(("30", Origin::File))
    );
    assert_eq!(
        loaded.effective.get("LogFormat"),
        Some(("text", Origin::Default))
    );
}

#[test]
fn environment_names_match_keys_in_any_case() {
    let loaded = load_from(
        None,
        &env(&[
            ("IDPROOTURL", "https://upper.example"),
            ("ewsstatusfrequencyminutes", "5"),
            ("logFORMAT", "json"),
        ]),
    )
    .unwrap();
    assert_eq!(
        loaded.settings.callback_url,
        "https://upper.example/api/webhooks/exchange"
    );
    assert_eq!(loaded.settings.exchange.ews.status_frequency_minutes, 5);
    assert_eq!(loaded.settings.log_format, LogFormat::Json);
}

#[test]
fn two_spellings_of_one_key_with_different_values_are_refused() {
    let p = problems(
        None,
        &[
            ("IdpRootUrl", "https://a.example"),
            ("IDPROOTURL", "https://b.example"),
        ],
    );
    assert!(
        p[0].contains("IdpRootUrl") && p[0].contains("several"),
        "{p:?}"
    );
}

#[test]
fn unknown_file_keys_are_ignored_and_reported_for_debug_logging() {
    let text = app_settings(&[
        ("IdpRootUrl", "https://h.example"),
        ("SomeOtherRoomsKey", "whatever: not even valid for us"),
        ("Smtp.Host", "mail.example"),
    ]);
    let loaded = load_from(file(&text), &[]).unwrap();
    assert_eq!(loaded.ignored_keys, vec!["SomeOtherRoomsKey", "Smtp.Host"]);
}

#[test]
fn the_dotnet_configuration_root_is_accepted_and_sibling_sections_are_skipped() {
    let text = r#"<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <connectionStrings><add name="x" connectionString="y" /></connectionStrings>
  <appSettings>
    <!-- ROOMS -->
    <add key="IdpRootUrl" value="https://cfg.example/rooms" />
  </appSettings>
</configuration>"#;
    assert_eq!(
        callback(Some(text), &[]),
        "https://cfg.example/rooms/api/webhooks/exchange"
    );
}

#[test]
fn the_last_duplicate_wins_and_remove_and_clear_work_as_in_dotnet() {
    let text = r#"<appSettings>
  <add key="Tenant" value="first" />
  <add key="IdpRootUrl" value="https://one.example" />
  <add key="IdpRootUrl" value="https://two.example" />
  <remove key="Tenant" />
</appSettings>"#;
    let loaded = load_from(file(text), &[]).unwrap();
    assert_eq!(
        loaded.settings.callback_url,
        "https://two.example/api/webhooks/exchange"
    );
    assert_eq!(loaded.settings.callback.tenant, "");

    let cleared = r#"<appSettings><add key="IdpRootUrl" value="https://gone.example" /><clear /></appSettings>"#;
    assert!(problems(Some(cleared), &[])[0].starts_with("IdpRootUrl:"));
}

#[test]
fn an_empty_value_means_not_set_in_file_and_environment() {
    let text = app_settings(&[("IdpRootUrl", "https://h.example"), ("LogFormat", "")]);
    let loaded = load_from(file(&text), &env(&[("ListenAddress", "  ")])).unwrap();
    assert_eq!(loaded.settings.log_format, LogFormat::Text);
    assert_eq!(
        loaded.settings.http.listen_address,
        "0.0.0.0:8080".parse().unwrap()
    );
}

#[test]
fn a_bad_override_url_from_the_environment_names_key_source_and_expectation() {
    let p = problems(
        None,
        &[("ExchangePushNotificationEndpointUrl", "not a url")],
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("ExchangePushNotificationEndpointUrl"),
        "{p:?}"
    );
    assert!(p[0].contains("environment"), "{p:?}");
    assert!(p[0].contains("\"not a url\""), "{p:?}");
    assert!(p[0].contains("absolute http(s) URL"), "{p:?}");
}

#[test]
fn every_problem_is_reported_at_once_with_its_own_line() {
    let text = app_settings(&[("AutoMigrate", "yes")]);
    let p = problems(
        Some(&text),
        &[
            ("IdpRootUrl", "/relative/path"),
            ("EwsStatusFrequencyMinutes", "0"),
            ("ListenAddress", "localhost"),
        ],
    );
    let find = |key: &str| {
        p.iter()
            .find(|line| line.starts_with(key))
            .unwrap_or_else(|| panic!("no line for {key} in {p:?}"))
    };
    let bool_line = find("AutoMigrate");
    assert!(bool_line.contains("from file") && bool_line.contains("true or false"));
    let range_line = find("EwsStatusFrequencyMinutes");
    assert!(range_line.contains("from environment") && range_line.contains("1 to 1440"));
    let url_line = find("IdpRootUrl");
    assert!(url_line.contains("\"/relative/path\"") && url_line.contains("absolute"));
    find("ListenAddress");
    assert_eq!(p.len(), 4, "{p:?}");
}

#[test]
fn secrets_never_appear_in_problems_or_the_report() {
    let secret = "s3cr3t-Value-That-Must-Not-Leak";
    let p = problems(
        None,
        &[
            ("IdpRootUrl", "https://h.example"),
            ("AzureClientSecret", secret),
            ("DatabaseUrl", &format!("mysql://u:{secret}@h/db")),
            ("ExchangeRoomMailboxes", "graph:room1@example.com"),
        ],
    );
    assert!(
        p.iter().any(|line| line.starts_with("DatabaseUrl")),
        "{p:?}"
    );
    assert!(p.iter().all(|line| !line.contains(secret)), "{p:?}");

    let loaded = load_from(
        None,
        &env(&[
            ("IdpRootUrl", "https://h.example"),
            ("AzureClientSecret", secret),
            ("EwsPassword", secret),
            (
                "DatabaseUrl",
                &format!("postgres://svc:{secret}@db.example:5432/rooms"),
            ),
        ]),
    )
    .unwrap();
    let report = report(&loaded).to_string();
    assert!(!report.contains(secret), "{report}");
    let json = super::report(&loaded);
    assert_eq!(json["AzureClientSecret"], "***");
    assert_eq!(json["EwsPassword"], "***");
    assert_eq!(
        json["DatabaseUrl"],
        "postgres://svc:***@db.example:5432/rooms"
    );
    assert!(!format!("{:?}", loaded.settings).contains(secret));
    assert_eq!(
        loaded.settings.database.url.expose_secret(),
        format!("postgres://svc:{secret}@db.example:5432/rooms")
    );
}

#[test]
fn the_report_names_every_key_and_the_callback_url() {
    let loaded = load_from(None, &env(&[("IdpRootUrl", "https://h.example")])).unwrap();
    let json = report(&loaded);
    for spec in KEYS {
        assert!(json.get(spec.name).is_some(), "{} missing", spec.name);
    }
    assert_eq!(
        json["CallbackUrl"],
        "https://h.example/api/webhooks/exchange"
    );
    assert_eq!(json["Tenant"], serde_json::Value::Null);
    assert_eq!(json["ExchangeBackend"], "graph");
}

#[test]
fn database_url_falls_back_to_the_usual_variable_only_when_unset() {
    let fallback = "postgres://postgres@10.1.2.3:5432/other";
    let loaded = load_from(
        None,
        &env(&[
            ("IdpRootUrl", "https://h.example"),
            ("DATABASE_URL", fallback),
        ]),
    )
    .unwrap();
    assert_eq!(loaded.settings.database.url.expose_secret(), fallback);

    let text = app_settings(&[
        ("IdpRootUrl", "https://h.example"),
        ("DatabaseUrl", "postgres://postgres@file.example/db"),
    ]);
    let loaded = load_from(file(&text), &env(&[("DATABASE_URL", fallback)])).unwrap();
    assert_eq!(
        loaded.settings.database.url.expose_secret(),
        "postgres://postgres@file.example/db"
    );
}

#[test]
fn lists_take_commas_or_semicolons_and_mailboxes_take_backend_prefixes() {
    let loaded = load_from(
        None,
        &env(&[
            ("IdpRootUrl", "https://h.example"),
            ("ExchangeBackend", "ews"),
            ("EwsAuth", "basic"),
            ("EwsUsername", "svc"),
            ("EwsPassword", "pw"),
            ("AzureTenantId", "t"),
            ("AzureClientId", "c"),
            ("AzureClientSecret", "s"),
            (
                "ExchangeRoomMailboxes",
                " Room.A@Example.com ; graph:room-b@example.com,ews: room-c@example.com ",
            ),
            (
                "WebhookAllowedIpRanges",
                "10.0.0.0/8; 2603:1000::/24, 192.0.2.7",
            ),
            ("ServiceRoles", "web"),
        ]),
    )
    .unwrap();
    let s = loaded.settings;
    let boxes: Vec<(String, Backend)> = s
        .exchange
        .mailboxes
        .iter()
        .map(|m| (m.address.clone(), m.backend))
        .collect();
    assert_eq!(
        boxes,
        vec![
            ("room.a@example.com".to_owned(), Backend::Ews),
            ("room-b@example.com".to_owned(), Backend::Graph),
            ("room-c@example.com".to_owned(), Backend::Ews),
        ]
    );
    assert_eq!(s.http.webhook_allowed_ip_ranges.len(), 3);
    assert_eq!(
        s.http.webhook_allowed_ip_ranges[2],
        "192.0.2.7/32".parse::<IpNet>().unwrap()
    );
    assert_eq!(
        s.roles,
        ServiceRoles {
            web: true,
            worker: false
        }
    );
}

#[test]
fn graph_mailboxes_without_app_credentials_are_refused_naming_each_missing_key() {
    let p = problems(
        None,
        &[
            ("IdpRootUrl", "https://h.example"),
            ("ExchangeRoomMailboxes", "room@example.com"),
            ("AzureTenantId", "tenant"),
        ],
    );
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].starts_with("AzureClientId:"));
    assert!(p[1].starts_with("AzureClientSecret:"));
}

#[test]
fn bad_enums_ranges_lists_and_addresses_are_each_named() {
    let p = problems(
        None,
        &[
            ("IdpRootUrl", "https://h.example"),
            ("ExchangeBackend", "imap"),
            ("GraphSubscriptionLifetimeMinutes", "44"),
            ("ServiceRoles", "web,cron"),
            ("TrustedProxyRanges", "10.0.0.0/33"),
            ("ExchangeRoomMailboxes", "not-an-address"),
            ("EwsUrl", "ftp://ews.example/EWS/Exchange.asmx"),
            ("RUST_LOG", "info,[unclosed"),
        ],
    );
    for key in [
        "ExchangeBackend",
        "GraphSubscriptionLifetimeMinutes",
        "ServiceRoles",
        "TrustedProxyRanges",
        "ExchangeRoomMailboxes",
        "EwsUrl",
        "RUST_LOG",
    ] {
        assert!(
            p.iter().any(|line| line.starts_with(key)),
            "no problem for {key}: {p:?}"
        );
    }
}

#[test]
fn http_max_connections_defaults_to_1024_and_out_of_range_values_name_the_key() {
    let loaded = load_from(None, &env(&[("IdpRootUrl", "https://h.example")])).unwrap();
    assert_eq!(loaded.settings.http.max_connections, 1024);
    for bad in ["0", "65537", "-1", "many"] {
        let p = problems(
            None,
            &[
                ("IdpRootUrl", "https://h.example"),
                ("HttpMaxConnections", bad),
            ],
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("HttpMaxConnections (from environment): invalid value")
                && p[0].contains("an integer from 1 to 65536"),
            "{p:?}"
        );
    }
}

#[test]
fn a_settings_file_with_a_doctype_or_another_root_is_refused() {
    let doctype = r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><appSettings/>"#;
    assert!(problems(Some(doctype), &[])[0].contains("DTD"));
    let wrong = "<settings><add key=\"IdpRootUrl\" value=\"https://h.example\"/></settings>";
    assert!(problems(Some(wrong), &[])[0].contains("<settings>"));
    let broken = "<appSettings><add key=\"IdpRootUrl\" value=\"https://h.example\"></appSettings>";
    assert!(problems(Some(broken), &[])[0].contains("not well-formed"));
}

#[test]
fn the_shipped_example_file_is_valid_and_documents_every_key() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/RoomsAppSettings.config"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let loaded = load_from(file(&text), &[]).unwrap();
    assert!(loaded.ignored_keys.is_empty(), "{:?}", loaded.ignored_keys);
    for spec in KEYS {
        assert!(
            text.contains(&format!("key=\"{}\"", spec.name)),
            "{} is not documented in the example file",
            spec.name
        );
    }
}

#[test]
fn a_malformed_file_is_reported_on_one_short_line_whatever_the_reader_quotes() {
    // The XML reader quotes a whole mismatched end tag, line breaks included (found by the
    // appsettings fuzz target).
    let text = format!(
        "<appSettings></a\n<add key=\"EwsPassword\" value=\"{}\" />\n></appSettings>",
        "p".repeat(1000)
    );
    let problems = problems(Some(&text), &[]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("not well-formed"), "{problems:?}");
    assert!(!problems[0].contains('\n'), "{problems:?}");
    assert!(problems[0].chars().count() < 300, "{problems:?}");
}

#[test]
fn ipv4_mapped_ranges_are_read_as_the_ipv4_ranges_they_map() {
    let loaded = load_from(
        None,
        &env(&[
            ("IdpRootUrl", "https://h.example"),
            (
                "TrustedProxyRanges",
                "::ffff:10.0.0.0/104, ::ffff:192.0.2.7, ::/64",
            ),
            ("WebhookAllowedIpRanges", "::ffff:203.0.113.0/120"),
        ]),
    )
    .unwrap();
    let http = loaded.settings.http;
    let expected: Vec<IpNet> = ["10.0.0.0/8", "192.0.2.7/32", "::/64"]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(http.trusted_proxy_ranges, expected);
    assert_eq!(
        http.webhook_allowed_ip_ranges,
        vec!["203.0.113.0/24".parse::<IpNet>().unwrap()]
    );
    // A dual-stack listener's peer `::ffff:10.1.2.3` is compared as 10.1.2.3.
    let peer: std::net::IpAddr = "::ffff:10.1.2.3".parse().unwrap();
    assert!(
        http.trusted_proxy_ranges
            .iter()
            .any(|n| n.contains(&peer.to_canonical()))
    );
}
