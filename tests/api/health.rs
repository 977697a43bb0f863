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
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
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
