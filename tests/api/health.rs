use std::time::{Duration, Instant};

use rooms_sync::app::Application;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{TestApp, test_settings};

#[sqlx::test]
async fn healthz_answers_ok_on_both_listeners(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for url in [app.url("/healthz"), app.admin_url("/healthz")] {
        let response = app.client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, serde_json::json!({ "status": "ok" }));
    }
    app.stop().await;
}

#[sqlx::test]
async fn readyz_is_ready_when_the_database_answers_and_is_migrated(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn readyz_says_migrations_are_pending_on_an_unmigrated_database(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["migrations"], "pending");
    assert_eq!(body["database"], "ok");
    app.stop().await;
}

#[tokio::test]
async fn readyz_answers_503_within_two_seconds_when_the_database_port_is_closed() {
    let closed = crate::helpers::free_port();
    let url = format!("postgres://postgres@127.0.0.1:{closed}/nowhere");
    let settings = test_settings(&[("DatabaseUrl", &url), ("AutoMigrate", "false")]);
    let app = TestApp::run(Application::build(settings).await.unwrap());

    // Liveness must not depend on the database.
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let started = Instant::now();
    let response = app
        .client
        .get(app.admin_url("/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["database"], "unreachable");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    app.stop().await;
}

#[sqlx::test]
async fn other_methods_on_the_webhook_get_405_with_allow_post(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for method in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let response = app
            .client
            .request(method.clone(), app.url("/api/webhooks/exchange"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method}");
        let allow = response
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(allow.as_deref(), Some("POST"), "{method}");
    }
    app.stop().await;
}

#[sqlx::test]
async fn unknown_paths_get_404_on_both_listeners(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for url in [
        app.url("/nope"),
        app.url("/api/webhooks/exchange/extra"),
        app.admin_url("/api/webhooks/exchange"),
    ] {
        let response = app.client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 404, "{url}");
    }
    app.stop().await;
}

#[sqlx::test]
async fn every_response_carries_a_request_id_and_keeps_the_callers(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    let generated = response
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(generated.len(), 25, "prefix-counter: {generated}");
    let second = app.client.get(app.url("/healthz")).send().await.unwrap();
    let second = second.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(generated, second, "ids are unique");
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "proxy-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "proxy-abc-123");
    app.stop().await;
}

#[sqlx::test]
async fn metrics_are_served_on_the_admin_listener_only(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.client.get(app.url("/healthz")).send().await.unwrap();
    let response = app
        .client
        .get(app.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("rooms_sync_http_requests_total{route=\"/healthz\",status=\"200\"} 1"),
        "{text}"
    );
    let public = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), 404);
    app.stop().await;
}

#[sqlx::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected(pool: PgPool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with(pool, &[("HeaderReadTimeoutSeconds", "1")]).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"POST /api/webhooks/exchange HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The server must close the connection on its own; a generous bound keeps this robust.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open after 10 s");
    app.stop().await;
}

#[tokio::test]
async fn serve_answers_while_postgres_is_down_and_migrates_as_soon_as_it_answers() {
    // Nothing listens on the database port yet.
    let port = crate::helpers::free_port();
    let name = crate::helpers::unique_database_name("rooms_sync_late");
    let url = format!("postgres://postgres@127.0.0.1:{port}/{name}");
    let settings = test_settings(&[
        ("DatabaseUrl", &url),
        ("DatabaseAcquireTimeoutMs", "500"),
        ("ServiceRoles", "web,worker"),
        ("ExchangeRoomMailboxes", "ews:room@late.example"),
        ("EwsAuth", "basic"),
        ("EwsUsername", "svc"),
        ("EwsPassword", "secret"),
        ("EwsUrl", "http://127.0.0.1:1/EWS/Exchange.asmx"),
    ]);
    let app = TestApp::run(Application::build(settings).await.unwrap());

    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let validation = app
        .client
        .post(app.url("/api/webhooks/exchange?validationToken=early"))
        .send()
        .await
        .unwrap();
    assert_eq!(validation.text().await.unwrap(), "early");
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body = r#"{"value":[{"subscriptionId":"s","changeType":"created","resource":"Users/r/Events/E1","resourceData":{"id":"E1"}}]}"#;
    let post = || {
        app.client
            .post(app.url("/api/webhooks/exchange"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let started = Instant::now();
    assert_eq!(post().await.unwrap().status(), 503);
    assert!(started.elapsed() < Duration::from_secs(1));

    // Postgres comes up on that port.
    let proxy = crate::helpers::Proxy::start_on(port, &crate::helpers::server_host_port()).await;
    crate::helpers::eventually(Duration::from_secs(20), "/readyz answers 200", || async {
        app.client
            .get(app.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert_eq!(post().await.unwrap().status(), 202);
    assert!(crate::helpers::database_exists(&name).await);
    let pool = sqlx::PgPool::connect(&format!("{}/{name}", crate::helpers::server_url()))
        .await
        .unwrap();
    // The worker started once the tables were there: it recorded the configured room.
    crate::helpers::eventually(
        Duration::from_secs(10),
        "the worker records the room",
        || async {
            sqlx::query_scalar::<_, i64>("select count(*) from mailboxes")
                .fetch_one(&pool)
                .await
                .is_ok_and(|n| n == 1)
        },
    )
    .await;
    pool.close().await;
    app.stop().await;
    drop(proxy);
    crate::helpers::drop_database(&name).await;
}

#[sqlx::test]
async fn serve_stops_with_an_error_when_an_applied_migration_was_changed(pool: PgPool) {
    sqlx::query(
        "update _sqlx_migrations set checksum = '\\x00'::bytea
         where version = (select min(version) from _sqlx_migrations)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let url = crate::helpers::database_url(&pool);
    let app = Application::build(test_settings(&[("DatabaseUrl", &url)]))
        .await
        .unwrap();
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        app.run(tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("serve stops by itself");
    let error = outcome.expect_err("a changed migration is fatal");
    assert!(format!("{error:#}").contains("modified"), "{error:#}");
}
