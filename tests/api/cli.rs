use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{
    binary, database_exists, drop_database, free_port, server_url, signal_and_wait, stderr, stdout,
    unique_database_name,
};

const SECRET: &str = "Az-Secret-Never-Printed-42";

#[test]
fn config_prints_effective_settings_as_json_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let output = binary(
        dir.path(),
        &[
            ("IdpRootUrl", "https://rooms.example.com/tenant-a/"),
            ("AzureClientSecret", SECRET),
            (
                "DatabaseUrl",
                &format!("postgres://svc:{SECRET}@db.internal/rooms"),
            ),
        ],
    )
    .arg("config")
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let json: Value = serde_json::from_str(&stdout(&output)).expect("stdout is one JSON object");
    assert_eq!(
        json["CallbackUrl"],
        "https://rooms.example.com/tenant-a/api/webhooks/exchange"
    );
    assert_eq!(json["AzureClientSecret"], "***");
    assert_eq!(json["DatabaseUrl"], "postgres://svc:***@db.internal/rooms");
    assert!(!stdout(&output).contains(SECRET));
    assert!(!stderr(&output).contains(SECRET));
}

#[test]
fn config_reads_the_file_named_by_the_flag_before_or_after_the_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("Rooms.config");
    std::fs::write(
        &file,
        r#"<configuration><appSettings>
             <add key="IdpRootUrl" value="https://file.example" />
             <add key="UnrelatedRoomsKey" value="x" />
           </appSettings></configuration>"#,
    )
    .unwrap();
    for args in [
        vec!["--config", file.to_str().unwrap(), "config"],
        vec!["config", "--config", file.to_str().unwrap()],
    ] {
        let output = binary(dir.path(), &[]).args(&args).output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
        assert_eq!(
            json["CallbackUrl"],
            "https://file.example/api/webhooks/exchange"
        );
    }
    // The environment variable names the file too, and the environment beats it.
    let output = binary(
        dir.path(),
        &[
            ("ROOMS_APPSETTINGS", file.to_str().unwrap()),
            ("idprooturl", "https://env.example"),
        ],
    )
    .arg("config")
    .output()
    .unwrap();
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(
        json["CallbackUrl"],
        "https://env.example/api/webhooks/exchange"
    );
}

#[test]
fn invalid_configuration_exits_2_naming_key_and_source_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let output = binary(
        dir.path(),
        &[
            ("ExchangePushNotificationEndpointUrl", "not a url"),
            ("AutoMigrate", "maybe"),
            ("EwsStatusFrequencyMinutes", "1441"),
            ("AzureClientSecret", SECRET),
        ],
    )
    .arg("config")
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(stdout(&output), "", "nothing on stdout when invalid");
    let err = stderr(&output);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ExchangePushNotificationEndpointUrl")
                && l.contains("environment")
                && l.contains("not a url")),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("AutoMigrate") && l.contains("true or false"))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("EwsStatusFrequencyMinutes") && l.contains("1 to 1440"))
    );
    assert!(!err.contains(SECRET));
}

#[test]
fn a_missing_settings_file_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = binary(dir.path(), &[("IdpRootUrl", "https://h.example")])
        .args(["--config", "does-not-exist.config", "config"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("does-not-exist.config"));
}

#[tokio::test]
async fn migrate_creates_the_database_and_a_second_run_changes_nothing() {
    let name = unique_database_name("rooms_sync_cli_migrate");
    let url = format!("{}/{name}", server_url());
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("IdpRootUrl", "https://h.example"),
        ("DatabaseUrl", url.as_str()),
    ];

    let first = binary(dir.path(), &env).arg("migrate").output().unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert!(database_exists(&name).await);
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let before: Vec<(i64, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("select version, installed_on from _sqlx_migrations order by version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(!before.is_empty());

    let second = binary(dir.path(), &env).arg("migrate").output().unwrap();
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    let after: Vec<(i64, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("select version, installed_on from _sqlx_migrations order by version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(before, after);
    pool.close().await;
    drop_database(&name).await;
}

#[tokio::test]
async fn text_logs_written_to_a_pipe_carry_no_colour_codes() {
    let name = unique_database_name("rooms_sync_cli_plain");
    let url = format!("{}/{name}", server_url());
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("IdpRootUrl", "https://h.example"),
        ("DatabaseUrl", url.as_str()),
        ("LogFormat", "text"),
    ];
    let output = binary(dir.path(), &env).arg("migrate").output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let logs = stderr(&output);
    assert!(logs.contains("migrations are applied"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "escape codes in {logs:?}");
    drop_database(&name).await;
}

#[tokio::test]
async fn serve_creates_a_fresh_database_and_stops_on_sigterm_within_the_drain_bound() {
    let name = unique_database_name("rooms_sync_cli_serve");
    let url = format!("{}/{name}", server_url());
    let port = free_port();
    let admin_port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let admin = format!("127.0.0.1:{admin_port}");
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("IdpRootUrl", "https://h.example"),
        ("DatabaseUrl", url.as_str()),
        ("ListenAddress", listen.as_str()),
        ("AdminListenAddress", admin.as_str()),
        ("ShutdownDrainSeconds", "3"),
    ];
    let mut child = binary(dir.path(), &env)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client
            .get(format!("http://{listen}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "serve never became ready");
        assert!(child.try_wait().unwrap().is_none(), "serve exited early");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(database_exists(&name).await);

    // The container's HEALTHCHECK command agrees.
    let check = binary(dir.path(), &env)
        .arg("healthcheck")
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));

    // The drain bound (3 s) plus slack for the process to exit.
    let status = signal_and_wait(&mut child, "-TERM", Duration::from_secs(3 + 2));
    assert_eq!(status.code(), Some(0));

    // Nothing listens any more: the health check now fails.
    let check = binary(dir.path(), &env)
        .arg("healthcheck")
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    drop_database(&name).await;
}
