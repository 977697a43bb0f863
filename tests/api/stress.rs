//! Ingest under stress: a database that is slow, refusing or gone silent, a backlog, a queue
//! full of large bodies, more connections than the cap, slow clients, and input that would
//! make up metric labels.

use std::time::Duration;

use sqlx::PgPool;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::helpers::{TestApp, eventually, sample, test_settings};

const PATH: &str = "/api/webhooks/exchange";

/// A Graph change notification for `item`, of a subscription the service does not know (it is
/// stored unmatched and answered 202 all the same), `pad` bytes longer than usual.
fn graph_body(item: &str, pad: usize) -> String {
    format!(
        r#"{{"value":[{{"subscriptionId":"0d8f2b6a-7c31-4e59-9a42-3f1b6c8d9e01","changeType":"created","clientState":"stress","resource":"Users/r/Events/{item}","resourceData":{{"id":"{item}"}},"pad":"{}"}}]}}"#,
        "x".repeat(pad)
    )
}

async fn post(client: &reqwest::Client, app: &TestApp, body: String) -> u16 {
    client
        .post(app.url(PATH))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

async fn event_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from notification_events")
        .fetch_one(pool)
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------
// Bounded memory and connections

/// Opens `n` connections that send part of a request's headers and nothing more.
async fn slow_connections(app: &TestApp, n: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream
            .write_all(b"POST /api/webhooks/exchange HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        streams.push(stream);
    }
    streams
}

fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[sqlx::test]
async fn connections_past_http_max_connections_wait_until_one_closes(pool: PgPool) {
    let app = TestApp::spawn_with(pool, &[("HttpMaxConnections", "20")]).await;
    let mut slow = slow_connections(&app, 20).await;
    let open = "rooms_sync_http_open_connections{listener=\"public\"}";
    eventually(
        Duration::from_secs(5),
        "20 connections are held",
        || async { sample(&app.metrics().await, open) == Some(20.0) },
    )
    .await;
    // The 21st connection is not taken: it waits in the kernel's accept queue.
    let waiting = fresh_client()
        .get(app.url("/healthz"))
        .timeout(Duration::from_secs(1))
        .send()
        .await;
    assert!(waiting.is_err(), "{waiting:?}");
    assert_eq!(sample(&app.metrics().await, open), Some(20.0));
    // Slots free up as slow clients leave.
    slow.truncate(15);
    let response = fresh_client()
        .get(app.url("/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    drop(slow);
    app.stop().await;
}

#[sqlx::test]
async fn deliveries_are_committed_while_three_hundred_slow_connections_are_held(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let slow = slow_connections(&app, 300).await;
    let open = "rooms_sync_http_open_connections{listener=\"public\"}";
    eventually(
        Duration::from_secs(5),
        "300 connections are held",
        || async { sample(&app.metrics().await, open).is_some_and(|n| n >= 300.0) },
    )
    .await;
    let client = fresh_client();
    for i in 0..50 {
        assert_eq!(
            post(&client, &app, graph_body(&format!("G{i}"), 0)).await,
            202
        );
    }
    assert_eq!(event_count(&pool).await, 50);
    drop(slow);
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Connections of the pools

#[sqlx::test]
async fn the_service_commits_synchronously_whatever_the_database_is_set_to(pool: PgPool) {
    let name: String = sqlx::query_scalar("select current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query(&format!(
        "alter database \"{name}\" set synchronous_commit = off"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let show = |pool: PgPool| async move {
        let setting: String = sqlx::query_scalar("show synchronous_commit")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        setting
    };
    // A new plain connection takes the database's setting...
    let plain = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(pool.connect_options().as_ref().clone());
    assert_eq!(show(plain).await, "off");
    // ...the service's own do not.
    let url = crate::helpers::database_url(&pool);
    let settings = test_settings(&[("DatabaseUrl", &url)]);
    assert_eq!(
        show(rooms_sync::db::pool(&settings.database).unwrap()).await,
        "on"
    );
    let ingest = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(rooms_sync::db::ingest_connect_options(
            &pool,
            Duration::from_secs(5),
        ));
    assert_eq!(show(ingest).await, "on");
}

#[sqlx::test]
async fn pooled_connections_are_handed_out_without_a_ping(pool: PgPool) {
    let url = crate::helpers::database_url(&pool);
    let settings = test_settings(&[("DatabaseUrl", &url)]);
    let service = rooms_sync::db::pool(&settings.database).unwrap();
    assert!(!service.options().get_test_before_acquire());
}
