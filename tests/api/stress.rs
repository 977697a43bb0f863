//! Ingest under stress: a database that is slow, refusing or gone silent, a backlog, a queue
//! full of large bodies, more connections than the cap, slow clients, and input that would
//! make up metric labels.

use std::time::{Duration, Instant};

use rooms_sync::app::Application;
use rooms_sync::ingest::IngestLimits;
use sqlx::PgPool;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::helpers::{Proxy, TestApp, eventually, sample, server_host_port, test_settings};

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

/// Spawns one POST per body, each on a client of its own (so each has its own connection).
fn post_all(app: &TestApp, bodies: Vec<String>) -> Vec<tokio::task::JoinHandle<(u16, Duration)>> {
    let started = Instant::now();
    bodies
        .into_iter()
        .map(|body| {
            let (client, url) = (app.client.clone(), app.url(PATH));
            tokio::spawn(async move {
                let status = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                (status, started.elapsed())
            })
        })
        .collect()
}

async fn event_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from notification_events")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Holds an exclusive lock on `notification_events` until the returned transaction ends:
/// every insert waits, as on a database that has stopped keeping up.
async fn lock_events(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("lock table notification_events in access exclusive mode")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// An app on `pool` with `limits` and `extra` settings.
async fn spawn_with_limits(pool: PgPool, extra: &[(&str, &str)], limits: IngestLimits) -> TestApp {
    let app = Application::build_with_pool(test_settings(extra), pool)
        .await
        .unwrap()
        .with_ingest_limits(limits);
    TestApp::run(app)
}

/// Limits that leave the database all the time it wants, for tests about something else.
fn patient() -> IngestLimits {
    IngestLimits {
        round_trip: Duration::from_secs(30),
        commit_deadline: Duration::from_secs(30),
        ..IngestLimits::default()
    }
}

// ---------------------------------------------------------------------------
// A sick database

#[sqlx::test]
async fn a_batch_failing_on_the_databases_state_is_answered_at_once_not_one_delivery_at_a_time(
    pool: PgPool,
) {
    let app = spawn_with_limits(
        pool.clone(),
        &[("DatabaseStatementTimeoutSeconds", "1")],
        patient(),
    )
    .await;
    assert_eq!(post(&app.client, &app, graph_body("WARM", 0)).await, 202);
    let lock = lock_events(&pool).await;
    // Two deliveries keep both flushers waiting on the lock; ten more queue up behind them and
    // make one batch. Every insert then fails on the statement timeout, a state of the server:
    // retried one by one, the batch would take ten more seconds.
    let started = Instant::now();
    let mut posts = post_all(&app, vec![graph_body("A", 0), graph_body("B", 0)]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    posts.extend(post_all(
        &app,
        (0..10).map(|i| graph_body(&format!("Q{i}"), 0)).collect(),
    ));
    for post in posts {
        let (status, _) = post.await.unwrap();
        assert_eq!(status, 503);
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(6), "took {elapsed:?}");
    lock.rollback().await.unwrap();
    assert_eq!(post(&app.client, &app, graph_body("AFTER", 0)).await, 202);
    app.stop().await;
}

#[sqlx::test]
async fn a_backlog_is_stored_in_batches_of_at_most_64_deliveries(pool: PgPool) {
    let app = spawn_with_limits(pool.clone(), &[], patient()).await;
    assert_eq!(post(&app.client, &app, graph_body("WARM", 0)).await, 202);
    let lock = lock_events(&pool).await;
    let posts = post_all(
        &app,
        (0..300).map(|i| graph_body(&format!("B{i}"), 0)).collect(),
    );
    // Both flushers wait on the lock while the rest queue up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    lock.rollback().await.unwrap();
    for post in posts {
        assert_eq!(post.await.unwrap().0, 202);
    }
    assert_eq!(event_count(&pool).await, 301);
    let metrics = app.metrics().await;
    let batches = sample(&metrics, "rooms_sync_ingest_batch_deliveries_count").unwrap();
    let small = sample(
        &metrics,
        "rooms_sync_ingest_batch_deliveries_bucket{le=\"64.0\"}",
    )
    .unwrap();
    assert_eq!(small, batches, "{metrics}");
    app.stop().await;
}

#[sqlx::test]
async fn a_database_gone_silent_is_answered_503_within_graphs_3_seconds_and_then_left_behind(
    pool: PgPool,
) {
    let proxy = Proxy::start(&server_host_port()).await;
    let app = TestApp::spawn(proxy.pool(&pool)).await;
    // Load until both flushers have connected.
    for round in 0.. {
        let posts = post_all(
            &app,
            (0..8)
                .map(|i| graph_body(&format!("W{round}-{i}"), 0))
                .collect(),
        );
        for post in posts {
            assert_eq!(post.await.unwrap().0, 202);
        }
        if proxy.connections() >= 2 {
            break;
        }
        assert!(round < 50, "one flusher took every batch");
    }

    // The server stops answering without closing anything: half-open connections.
    proxy.freeze();
    let mut posts = post_all(
        &app,
        (0..3).map(|i| graph_body(&format!("S{i}"), 0)).collect(),
    );
    // Two more, one after another, so that both flushers meet their frozen connection.
    for i in 0..2 {
        let (status, elapsed) = posts.remove(0).await.unwrap();
        assert_eq!(status, 503);
        assert!(
            elapsed < Duration::from_secs(3),
            "answered after {elapsed:?}"
        );
        posts.extend(post_all(&app, vec![graph_body(&format!("T{i}"), 0)]));
    }
    for post in posts {
        let (status, elapsed) = post.await.unwrap();
        assert_eq!(status, 503);
        assert!(
            elapsed < Duration::from_secs(3),
            "answered after {elapsed:?}"
        );
    }
    let metrics = app.metrics().await;
    let cut = sample(
        &metrics,
        "rooms_sync_ingest_deadlines_exceeded_total{stage=\"database\"}",
    );
    assert!(cut.is_some_and(|n| n >= 1.0), "{metrics}");

    // New connections get through again; the frozen ones stay frozen, and are not used again.
    proxy.thaw();
    let started = Instant::now();
    loop {
        let status = post(&app.client, &app, graph_body("AFTER", 0)).await;
        if status == 202 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still 503 after the database came back"
        );
    }
    let stored: i64 =
        sqlx::query_scalar("select count(*) from notification_events where item_id = 'AFTER'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, 1);
    app.stop().await;
}

#[sqlx::test]
async fn a_commit_slower_than_the_webhook_deadline_is_answered_503_and_counted(pool: PgPool) {
    let app = spawn_with_limits(
        pool.clone(),
        &[],
        IngestLimits {
            commit_deadline: Duration::from_millis(500),
            ..patient()
        },
    )
    .await;
    assert_eq!(post(&app.client, &app, graph_body("WARM", 0)).await, 202);
    let lock = lock_events(&pool).await;
    let started = Instant::now();
    assert_eq!(post(&app.client, &app, graph_body("LATE", 0)).await, 503);
    assert!(started.elapsed() < Duration::from_secs(2));
    let metrics = app.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "rooms_sync_ingest_deadlines_exceeded_total{stage=\"webhook\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    // The delivery is committed once the database catches up; the sender's retry is stored once.
    lock.rollback().await.unwrap();
    assert_eq!(post(&app.client, &app, graph_body("LATE", 0)).await, 202);
    assert_eq!(event_count(&pool).await, 2);
    app.stop().await;
}

#[sqlx::test]
async fn shutdown_stops_ingest_within_the_drain_while_the_database_hangs(pool: PgPool) {
    let proxy = Proxy::start(&server_host_port()).await;
    let app = spawn_with_limits(
        proxy.pool(&pool),
        // Deadlines far past the drain (connecting too): the drain alone must bound the
        // shutdown.
        &[
            ("ShutdownDrainSeconds", "1"),
            ("DatabaseAcquireTimeoutMs", "60000"),
        ],
        IngestLimits {
            round_trip: Duration::from_secs(600),
            commit_deadline: Duration::from_secs(600),
            ..IngestLimits::default()
        },
    )
    .await;
    assert_eq!(post(&app.client, &app, graph_body("WARM", 0)).await, 202);
    proxy.freeze();
    let hanging = post_all(&app, vec![graph_body("HANGING", 0)]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("the service stopped");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(4),
        "stopping took {elapsed:?}"
    );
    for post in hanging {
        // Answered 503, or cut off: never acknowledged.
        assert_ne!(post.await.unwrap().0, 202);
    }
}

// ---------------------------------------------------------------------------
// Bounded memory and connections

/// An app whose ingest queue holds 200 kB of bodies, otherwise patient.
async fn spawn_with_200_kb_of_queue(pool: PgPool) -> TestApp {
    spawn_with_limits(
        pool,
        &[],
        IngestLimits {
            queue_bytes: 200_000,
            ..patient()
        },
    )
    .await
}

#[sqlx::test]
async fn a_queue_full_of_body_bytes_answers_503_at_once(pool: PgPool) {
    let app = spawn_with_200_kb_of_queue(pool.clone()).await;
    assert_eq!(post(&app.client, &app, graph_body("WARM", 0)).await, 202);
    let lock = lock_events(&pool).await;
    // 20 bodies of 50 kB against a budget of 200 kB: at most four fit.
    let posts = post_all(
        &app,
        (0..20)
            .map(|i| graph_body(&format!("L{i}"), 50_000))
            .collect(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let answered_while_locked = posts.iter().filter(|p| p.is_finished()).count();
    lock.rollback().await.unwrap();
    let mut statuses = Vec::new();
    for post in posts {
        statuses.push(post.await.unwrap().0);
    }
    let refused = statuses.iter().filter(|s| **s == 503).count();
    let stored = statuses.iter().filter(|s| **s == 202).count();
    assert_eq!(refused + stored, 20, "{statuses:?}");
    assert!(refused >= 16, "{statuses:?}");
    assert!(
        answered_while_locked >= 16,
        "the refusals waited: {answered_while_locked} answered"
    );
    assert_eq!(event_count(&pool).await, 1 + i64::try_from(stored).unwrap());
    app.stop().await;
}

/// Starts a webhook POST on a connection of its own and sends `head` of its body: with a
/// `Content-Length` of `declared`, or chunked when `declared` is `None`.
async fn start_upload(app: &TestApp, declared: Option<usize>, head: usize) -> TcpStream {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let length = match declared {
        Some(n) => format!("Content-Length: {n}"),
        None => "Transfer-Encoding: chunked".to_owned(),
    };
    let mut request = format!(
        "POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{length}\r\n\r\n"
    )
    .into_bytes();
    let body = vec![b' '; head];
    match declared {
        Some(_) => request.extend_from_slice(&body),
        None => {
            request.extend_from_slice(format!("{head:x}\r\n").as_bytes());
            request.extend_from_slice(&body);
            request.extend_from_slice(b"\r\n");
        }
    }
    stream.write_all(&request).await.unwrap();
    stream
}

/// Waits until a 50 kB delivery of `item` is stored again, after uploads holding the room
/// broke off.
async fn room_comes_back(client: &reqwest::Client, app: &TestApp, item: &str) {
    eventually(
        Duration::from_secs(5),
        "room once the uploads broke off",
        || async { post(client, app, graph_body(item, 50_000)).await == 202 },
    )
    .await;
}

#[sqlx::test]
async fn bodies_still_being_uploaded_count_against_the_queues_byte_budget(pool: PgPool) {
    let app = spawn_with_200_kb_of_queue(pool.clone()).await;
    let client = fresh_client();
    assert_eq!(post(&client, &app, graph_body("WARM", 0)).await, 202);

    // Uploads count what they have sent, not what they declared: two that declared 90 kB
    // and sent 85 kB each hold 170 kB of the 200 kB, and a 50 kB delivery does not fit...
    let sent = vec![
        start_upload(&app, Some(90_000), 85_000).await,
        start_upload(&app, Some(90_000), 85_000).await,
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(post(&client, &app, graph_body("SENT", 50_000)).await, 503);
    // ...and broken off, they give their room back.
    drop(sent);
    room_comes_back(&client, &app, "AFTER-SENT").await;
    // Whereas uploads that declared 1 MB each and sent 10 bytes hold next to nothing: a few
    // such clients cannot shut deliveries out.
    let mut declared = Vec::new();
    for _ in 0..4 {
        declared.push(start_upload(&app, Some(1_000_000), 10).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        post(&client, &app, graph_body("DECLARED", 50_000)).await,
        202
    );
    drop(declared);

    // A chunked upload declares nothing: it takes room as its bytes arrive.
    let chunked = start_upload(&app, None, 170_000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        post(&client, &app, graph_body("CHUNKED", 50_000)).await,
        503
    );
    drop(chunked);
    room_comes_back(&client, &app, "AFTER-CHUNKED").await;
    assert_eq!(event_count(&pool).await, 4);
    app.stop().await;
}

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

#[sqlx::test]
async fn a_change_type_the_service_does_not_know_is_counted_as_other(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let body = graph_body("ODD", 0).replace("\"created\"", "\"someFutureChange\"");
    assert_eq!(post(&app.client, &app, body).await, 202);
    let metrics = app.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "rooms_sync_notification_events_received_total{backend=\"graph\",kind=\"other\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(!metrics.contains("future"), "{metrics}");
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
