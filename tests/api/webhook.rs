use std::time::{Duration, Instant};

use rooms_sync::app::Application;
use rooms_sync::db;
use rooms_sync::db::subscriptions::NewSubscription;
use sqlx::PgPool;

use crate::helpers::{TestApp, free_port, test_settings};

const PATH: &str = "/api/webhooks/exchange";

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

const EWS_SUB: &str = "KABzcnYtbWJ4MDEucm9vbXMuZXhhbXBsZRAAAAB+c3ViLXJvb20tYS0wMDE=";
const GRAPH_SUB: &str = "0d8f2b6a-7c31-4e59-9a42-3f1b6c8d9e01";
const GRAPH_STATE: &str = "aurora-cs-4f7Qm2xLr9";

async fn seed_subscription(
    pool: &PgPool,
    address: &str,
    backend: &str,
    remote_id: &str,
    status: &str,
    client_state: Option<&str>,
    last_watermark: Option<&str>,
) -> i64 {
    let mailbox = db::mailboxes::upsert(pool, address, backend.parse().unwrap())
        .await
        .unwrap();
    db::subscriptions::insert(
        pool,
        &NewSubscription {
            mailbox_id: mailbox,
            backend: backend.parse().unwrap(),
            remote_id: Some(remote_id),
            status: status.parse().unwrap(),
            client_state,
            callback_url: "https://h.example/api/webhooks/exchange",
            expires_at: None,
            last_watermark,
            resource: None,
            status_frequency_minutes: None,
        },
    )
    .await
    .unwrap()
}

/// The EWS subscription the EWS fixtures name, with `status` and a stored watermark.
async fn seed_ews(pool: &PgPool, status: &str, last_watermark: Option<&str>) -> i64 {
    seed_subscription(
        pool,
        "room-a@example.com",
        "ews",
        EWS_SUB,
        status,
        None,
        last_watermark,
    )
    .await
}

/// The active Graph subscription the Graph fixtures name, with its `clientState` secret.
async fn seed_graph(pool: &PgPool, client_state: &str) -> i64 {
    seed_subscription(
        pool,
        "room-b@example.com",
        "graph",
        GRAPH_SUB,
        "active",
        Some(client_state),
        None,
    )
    .await
}

async fn event_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from notification_events")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// An event as ingest would store it, pending and matched to nothing, for the tests that call
/// `db::events::store_batch` themselves.
fn pending_event(
    backend: rooms_sync::domain::Backend,
    remote_subscription_id: Option<&str>,
    dedupe_key: &str,
) -> rooms_sync::db::events::NewEvent {
    rooms_sync::db::events::NewEvent {
        backend,
        remote_subscription_id: remote_subscription_id.map(str::to_owned),
        subscription_id: None,
        mailbox_id: None,
        kind: "created".to_owned(),
        item_id: None,
        status: rooms_sync::domain::EventStatus::Pending,
        reject_reason: None,
        dedupe_key: dedupe_key.to_owned(),
        dedupe_window: None,
        payload: "{}".to_owned(),
    }
}

async fn post(app: &TestApp, content_type: &str, body: Vec<u8>) -> reqwest::Response {
    app.client
        .post(app.url(PATH))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[sqlx::test]
async fn an_ews_notification_is_committed_then_answered_ok_in_soap(pool: PgPool) {
    let sub = seed_ews(&pool, "active", Some("AQAAAHJvb20tYS13bS0wMDAy")).await;
    let app = TestApp::spawn(pool.clone()).await;
    let response = post(
        &app,
        "text/xml; charset=utf-8",
        fixture("ews/send-notification-created.xml"),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/xml; charset=utf-8"
    );
    let body = response.text().await.unwrap();
    assert!(body.contains(">OK</m:SubscriptionStatus>"), "{body}");

    type Row = (String, String, Option<String>, String, Option<i64>);
    let rows: Vec<Row> = sqlx::query_as(
        "select backend, kind, item_id, status, subscription_id from notification_events order by id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].0, "ews");
    assert_eq!(rows[0].1, "created");
    assert_eq!(
        rows[0].2.as_deref(),
        Some("AAMkAGZpeHR1cmUtcm9vbS1hAEYAAAAAbWVldGluZy0xMDAx+/AAA=")
    );
    assert_eq!(rows[0].3, "pending");
    assert_eq!(rows[0].4, Some(sub));
    assert_eq!(rows[1].1, "modified");

    let (watermark, seen, gap): (Option<String>, Option<chrono::DateTime<chrono::Utc>>, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as(
            "select last_watermark, last_notification_at, gap_detected_at from subscriptions where id = $1",
        )
        .bind(sub)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(watermark.as_deref(), Some("AQAAAHJvb20tYS13bS0wMDA0"));
    assert!(seen.is_some());
    assert!(gap.is_none());
    app.stop().await;
}

#[sqlx::test]
async fn every_ews_event_kind_is_stored_with_its_contract_kind(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool.clone(),
        &[("EwsUnknownSubscriptionGraceSeconds", "600")],
    )
    .await;
    // Within the grace window after a Subscribe call, an unknown id is stored and answered OK.
    seed_subscription(
        &pool,
        "other@example.com",
        "ews",
        "some-other-sub",
        "active",
        None,
        None,
    )
    .await;
    let response = post(
        &app,
        "text/xml",
        fixture("ews/send-notification-mixed-moreevents.xml"),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains(">OK<"));
    let kinds: Vec<String> =
        sqlx::query_scalar("select kind from notification_events order by kind")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        kinds,
        vec![
            "copied",
            "created",
            "deleted",
            "free_busy_changed",
            "modified",
            "moved",
            "new_mail",
            "status"
        ]
    );
    let status_state: String =
        sqlx::query_scalar("select status from notification_events where kind = 'status'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status_state, "ignored");
    app.stop().await;
}

#[sqlx::test]
async fn a_redelivered_notification_is_stored_once_and_answered_the_same(pool: PgPool) {
    seed_ews(&pool, "active", None).await;
    let app = TestApp::spawn(pool.clone()).await;
    let body = fixture("ews/send-notification-created.xml");
    let first = post(&app, "text/xml", body.clone())
        .await
        .text()
        .await
        .unwrap();
    let second = post(&app, "text/xml", body).await.text().await.unwrap();
    assert_eq!(first, second);
    assert_eq!(event_count(&pool).await, 2);
    let gap: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("select gap_detected_at from subscriptions")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(gap.is_none(), "a redelivery is not a gap");

    seed_graph(&pool, GRAPH_STATE).await;
    let graph = fixture("graph/change-created.json");
    assert_eq!(
        post(&app, "application/json", graph.clone()).await.status(),
        202
    );
    assert_eq!(post(&app, "application/json", graph).await.status(), 202);
    assert_eq!(event_count(&pool).await, 3);
    app.stop().await;
}

/// Events stored before the redelivery index became a digest column (migration
/// 20261130000005) still keep out their redeliveries after it: the migration's backfill and
/// ingest digest a key alike, for every kind of part (ASCII, non-ASCII, a missing
/// subscription id).
#[sqlx::test(migrations = false)]
async fn events_stored_before_the_digest_migration_still_keep_out_their_redeliveries(pool: PgPool) {
    use std::borrow::Cow;

    use rooms_sync::db::events::store_batch;
    use rooms_sync::domain::Backend;
    use sqlx::migrate::Migrator;

    const DIGEST_MIGRATION: i64 = 20_261_130_000_005;
    let before = Migrator {
        migrations: Cow::Owned(
            db::MIGRATOR
                .iter()
                .filter(|m| m.version < DIGEST_MIGRATION)
                .cloned()
                .collect(),
        ),
        ..Migrator::DEFAULT
    };
    before.run(&pool).await.unwrap();
    let stored = [
        ("graph", Some(GRAPH_SUB), "3f9c0a"),
        ("ews", Some("Zürich-Räume/Sub+1="), "WM-1"),
        ("graph", None, "lifecycle|missed"),
    ];
    for (backend, remote, key) in stored {
        sqlx::query(
            "insert into notification_events
                 (backend, remote_subscription_id, kind, dedupe_key, payload)
             values ($1, $2, 'created', $3, '{}')",
        )
        .bind(backend)
        .bind(remote)
        .bind(key)
        .execute(&pool)
        .await
        .unwrap();
    }
    db::MIGRATOR.run(&pool).await.unwrap();

    let event = |backend: &str, remote: Option<&str>, key: &str| {
        pending_event(backend.parse::<Backend>().unwrap(), remote, key)
    };
    for (backend, remote, key) in stored {
        let inserted = store_batch(&pool, &[event(backend, remote, key)], &[], &[])
            .await
            .unwrap();
        assert!(
            inserted.is_empty(),
            "{backend} {remote:?} {key}: stored twice"
        );
    }
    // Whereas anything that differs in one part is new.
    let new = [
        event("ews", Some(GRAPH_SUB), "3f9c0a"),
        event("graph", Some("Zürich-Räume/Sub+1="), "WM-1"),
        event("graph", Some(""), "lifecycle|missed"),
        event("graph", Some(GRAPH_SUB), "3f9c0b"),
    ];
    let inserted = store_batch(&pool, &new, &[], &[]).await.unwrap();
    let count: i64 = inserted.iter().map(|(_, _, n)| n).sum();
    assert_eq!(count, 4);
    assert_eq!(event_count(&pool).await, 7);
}

#[sqlx::test]
async fn a_previous_watermark_that_breaks_the_stored_chain_records_a_gap(pool: PgPool) {
    let sub = seed_ews(&pool, "active", Some("AQAAAHNvbWV0aGluZy1lbHNl")).await;
    let app = TestApp::spawn(pool.clone()).await;
    let response = post(
        &app,
        "text/xml",
        fixture("ews/send-notification-created.xml"),
    )
    .await;
    assert!(
        response.text().await.unwrap().contains(">OK<"),
        "a gap is still acknowledged"
    );
    let (gap, watermark): (Option<chrono::DateTime<chrono::Utc>>, Option<String>) =
        sqlx::query_as("select gap_detected_at, last_watermark from subscriptions where id = $1")
            .bind(sub)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(gap.is_some());
    assert_eq!(watermark.as_deref(), Some("AQAAAHJvb20tYS13bS0wMDA0"));
    app.stop().await;
}

#[sqlx::test]
async fn a_superseded_ews_subscription_is_answered_unsubscribe(pool: PgPool) {
    seed_ews(&pool, "superseded", None).await;
    let app = TestApp::spawn(pool.clone()).await;
    let response = post(
        &app,
        "text/xml",
        fixture("ews/send-notification-created.xml"),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(
        body.contains(">Unsubscribe</m:SubscriptionStatus>"),
        "{body}"
    );
    let pending: i64 =
        sqlx::query_scalar("select count(*) from notification_events where status = 'pending'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        pending, 0,
        "nothing from a superseded subscription is acted on"
    );
    app.stop().await;
}

#[sqlx::test]
async fn an_unknown_ews_subscription_is_answered_unsubscribe_after_the_grace_window(pool: PgPool) {
    let app =
        TestApp::spawn_with(pool.clone(), &[("EwsUnknownSubscriptionGraceSeconds", "0")]).await;
    let response = post(
        &app,
        "text/xml",
        fixture("ews/send-notification-created.xml"),
    )
    .await;
    assert!(response.text().await.unwrap().contains(">Unsubscribe<"));
    app.stop().await;
}

#[sqlx::test]
async fn an_error_class_notification_marks_the_subscription_lost(pool: PgPool) {
    let body = fixture("ews/send-notification-error-readeventsfailed.xml");
    let parsed = rooms_sync::ews::parse_send_notification(&body).unwrap();
    let remote = parsed.subscription_ids().next().unwrap().to_owned();
    let sub = seed_subscription(
        &pool,
        "room-a@example.com",
        "ews",
        &remote,
        "active",
        None,
        None,
    )
    .await;
    let app = TestApp::spawn(pool.clone()).await;
    let response = post(&app, "text/xml", body).await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains(">OK<"));
    let (lost_at, reason): (Option<chrono::DateTime<chrono::Utc>>, Option<String>) =
        sqlx::query_as("select lost_at, lost_reason from subscriptions where id = $1")
            .bind(sub)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(lost_at.is_some());
    assert_eq!(reason.as_deref(), Some("ErrorReadEventsFailed"));
    app.stop().await;
}

#[sqlx::test]
async fn graph_notifications_are_committed_then_answered_202_with_an_empty_body(pool: PgPool) {
    seed_graph(&pool, GRAPH_STATE).await;
    let app = TestApp::spawn(pool.clone()).await;
    let response = post(
        &app,
        "application/json; charset=utf-8",
        fixture("graph/change-created.json"),
    )
    .await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.bytes().await.unwrap().len(), 0);
    let (kind, status, item, payload): (String, String, Option<String>, serde_json::Value) =
        sqlx::query_as("select kind, status, item_id, payload::jsonb from notification_events")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((kind.as_str(), status.as_str()), ("created", "pending"));
    assert_eq!(item.as_deref(), Some("AAMkAGF1cm9yYS1ldnQtMDAxAA=="));
    assert_eq!(payload["subscriptionId"], GRAPH_SUB);
    app.stop().await;
}

#[sqlx::test]
async fn lifecycle_notifications_are_stored_with_their_kinds(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    for name in [
        "lifecycle-missed.json",
        "lifecycle-reauthorization-required.json",
        "lifecycle-subscription-removed.json",
    ] {
        let response = post(&app, "application/json", fixture(&format!("graph/{name}"))).await;
        assert_eq!(response.status(), 202, "{name}");
    }
    let kinds: Vec<String> =
        sqlx::query_scalar("select distinct kind from notification_events order by kind")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        kinds,
        vec!["missed", "reauthorization_required", "subscription_removed"]
    );
    app.stop().await;
}

#[sqlx::test]
async fn items_that_beat_their_subscription_are_rematched_with_their_client_state_checked(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool.clone()).await;
    let genuine = fixture("graph/change-created.json");
    let forged = String::from_utf8(genuine.clone())
        .unwrap()
        .replace(GRAPH_STATE, "a-forged-state")
        .replace("AAMkAGF1cm9yYS1ldnQtMDAxAA==", "AAMkAGZvcmdlZA==");
    assert_eq!(post(&app, "application/json", genuine).await.status(), 202);
    assert_eq!(
        post(&app, "application/json", forged.into_bytes())
            .await
            .status(),
        202
    );
    let unmatched: i64 = sqlx::query_scalar(
        "select count(*) from notification_events where subscription_id is null and status = 'pending'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(unmatched, 2, "both wait, unmatched");

    let sub = seed_graph(&pool, GRAPH_STATE).await;
    let done = rooms_sync::ingest::rematch(&pool, GRAPH_SUB).await.unwrap();
    assert_eq!((done.attached, done.rejected), (1, 1));
    type Row = (Option<String>, String, Option<String>, Option<i64>);
    let rows: Vec<Row> = sqlx::query_as(
        "select item_id, status, reject_reason, subscription_id from notification_events order by item_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                Some("AAMkAGF1cm9yYS1ldnQtMDAxAA==".to_owned()),
                "pending".to_owned(),
                None,
                Some(sub)
            ),
            (
                Some("AAMkAGZvcmdlZA==".to_owned()),
                "ignored".to_owned(),
                Some("client_state_mismatch".to_owned()),
                Some(sub)
            ),
        ]
    );
    // Nothing is left to match the second time.
    assert_eq!(
        rooms_sync::ingest::rematch(&pool, GRAPH_SUB)
            .await
            .unwrap()
            .attached,
        0
    );
    app.stop().await;
}

#[sqlx::test]
async fn a_client_state_mismatch_is_stored_as_rejected_and_still_answered_202(pool: PgPool) {
    seed_graph(&pool, "the-real-secret").await;
    let app = TestApp::spawn(pool.clone()).await;
    let response = post(
        &app,
        "application/json",
        fixture("graph/change-created.json"),
    )
    .await;
    assert_eq!(response.status(), 202);
    let (status, reason): (String, Option<String>) =
        sqlx::query_as("select status, reject_reason from notification_events")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "ignored");
    assert_eq!(reason.as_deref(), Some("client_state_mismatch"));
    app.stop().await;
}

#[sqlx::test]
async fn the_validation_handshake_echoes_the_decoded_token_as_plain_text(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let response = app
        .client
        .post(app.url(&format!(
            "{PATH}?validationToken=Validation%3a+Testing+client+application+reachability+for+subscription+Request-Id%3a+b1a2c3d4"
        )))
        .header("content-type", "text/plain; charset=utf-8")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(
        response.text().await.unwrap(),
        "Validation: Testing client application reachability for subscription Request-Id: b1a2c3d4"
    );
    let markup = app
        .client
        .post(app.url(&format!(
            "{PATH}?validationToken=%3Cscript%3Ealert(1)%3C%2Fscript%3E"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(markup.status(), 400);
    assert_eq!(event_count(&pool).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_database_gets_503_while_validation_still_answers() {
    let closed = free_port();
    let url = format!("postgres://postgres@127.0.0.1:{closed}/nowhere");
    let settings = test_settings(&[
        ("DatabaseUrl", &url),
        ("AutoMigrate", "false"),
        ("DatabaseAcquireTimeoutMs", "300"),
    ]);
    let app = TestApp::run(Application::build(settings).await.unwrap());

    let response = post(
        &app,
        "application/json",
        fixture("graph/change-created.json"),
    )
    .await;
    assert_eq!(response.status(), 503);
    let body = response.text().await.unwrap();
    assert!(
        !body.contains("127.0.0.1"),
        "5xx bodies are generic: {body}"
    );
    let response = post(
        &app,
        "text/xml",
        fixture("ews/send-notification-created.xml"),
    )
    .await;
    assert_eq!(response.status(), 503);

    let started = Instant::now();
    let response = app
        .client
        .post(app.url(&format!("{PATH}?validationToken=still+here")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "still here");
    assert!(started.elapsed() < Duration::from_secs(1));
    app.stop().await;
}

#[sqlx::test]
async fn validation_answers_at_once_while_every_pooled_connection_is_busy(pool: PgPool) {
    let options = pool.connect_options();
    let small = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with((*options).clone())
        .await
        .unwrap();
    let app = TestApp::spawn_with(small.clone(), &[]).await;
    let _held = (
        small.acquire().await.unwrap(),
        small.acquire().await.unwrap(),
    );
    let started = Instant::now();
    let response = app
        .client
        .post(app.url(&format!("{PATH}?validationToken=busy+pool")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "busy pool");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    drop(_held);
    app.stop().await;
}

#[sqlx::test]
async fn bad_input_gets_its_status_and_stores_nothing(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), &[("WebhookMaxBodyBytes", "65536")]).await;
    let billion_laughs = fixture("ews/bad/doctype-billion-laughs.xml");
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        (
            "malformed XML",
            "text/xml",
            b"<soap:Envelope><unclosed>".to_vec(),
            400,
        ),
        ("billion laughs", "text/xml", billion_laughs, 400),
        (
            "XXE",
            "text/xml",
            fixture("ews/bad/xxe-external-entity.xml"),
            400,
        ),
        (
            "not a SendNotification",
            "text/xml",
            fixture("ews/bad/wrong-body.xml"),
            400,
        ),
        (
            "malformed JSON",
            "application/json",
            b"{\"value\": [".to_vec(),
            400,
        ),
        (
            "deeply nested JSON",
            "application/json",
            format!(r#"{{"value":[{}{}]}}"#, "[".repeat(5000), "]".repeat(5000)).into_bytes(),
            400,
        ),
        (
            "deeply nested XML",
            "text/xml",
            format!("{}{}", "<a>".repeat(5000), "</a>".repeat(5000)).into_bytes(),
            400,
        ),
        (
            "no value array",
            "application/json",
            b"{\"foo\": 1}".to_vec(),
            400,
        ),
        ("unsupported type", "text/plain", b"hello".to_vec(), 415),
        (
            "form data",
            "application/x-www-form-urlencoded",
            b"a=b".to_vec(),
            415,
        ),
        ("too large", "application/json", vec![b' '; 70_000], 413),
        (
            "NUL in a string",
            "text/xml",
            String::from_utf8(fixture("ews/send-notification-created.xml"))
                .unwrap()
                .replace("<t:SubscriptionId>", "<t:SubscriptionId>&#0;")
                .into_bytes(),
            400,
        ),
    ];
    for (name, content_type, body, status) in cases {
        let response = post(&app, content_type, body).await;
        assert_eq!(response.status().as_u16(), status, "{name}");
        let reason = response.text().await.unwrap();
        assert!(
            !reason.is_empty() && reason.len() < 300,
            "{name}: {reason:?}"
        );
    }
    // No content type at all.
    let response = app
        .client
        .post(app.url(PATH))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    assert_eq!(event_count(&pool).await, 0);
    app.stop().await;
}

#[sqlx::test]
async fn a_chunked_body_over_the_limit_is_refused_413_without_reading_it_all(pool: PgPool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with(pool.clone(), &[("WebhookMaxBodyBytes", "4096")]).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Transfer-Encoding: chunked\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // 8 KiB in 1 KiB chunks: twice the limit, no Content-Length to refuse it by.
    for _ in 0..8 {
        let chunk = format!("400\r\n{}\r\n", " ".repeat(1024));
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break; // the server may already have answered and closed
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = vec![0; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut response))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&response[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert_eq!(event_count(&pool).await, 0);
    app.stop().await;
}

#[sqlx::test]
async fn callers_outside_the_allowed_ranges_get_403_and_proxies_are_believed_only_if_trusted(
    pool: PgPool,
) {
    seed_graph(&pool, GRAPH_STATE).await;
    let app = TestApp::spawn_with(
        pool.clone(),
        &[
            ("WebhookAllowedIpRanges", "52.96.0.0/14"),
            ("TrustedProxyRanges", "127.0.0.0/8"),
        ],
    )
    .await;
    let body = fixture("graph/change-created.json");
    let send = |xff: Option<&'static str>| {
        let mut request = app
            .client
            .post(app.url(PATH))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(xff) = xff {
            request = request.header("x-forwarded-for", xff);
        }
        request.send()
    };
    // Loopback itself is not allowed; an allowed address forged left of an untrusted hop is not
    // believed; the hop our trusted proxy (loopback) saw is.
    assert_eq!(send(None).await.unwrap().status(), 403);
    assert_eq!(
        send(Some("52.96.1.1, 203.0.113.5")).await.unwrap().status(),
        403
    );
    let validation = app
        .client
        .post(app.url(&format!("{PATH}?validationToken=x")))
        .send()
        .await
        .unwrap();
    assert_eq!(validation.status(), 403, "the handshake is not exempt");
    assert_eq!(event_count(&pool).await, 0);
    assert_eq!(
        send(Some("203.0.113.5, 52.96.1.1")).await.unwrap().status(),
        202
    );
    assert_eq!(event_count(&pool).await, 1);
    app.stop().await;
}

#[sqlx::test]
async fn concurrent_deliveries_are_all_committed_before_they_are_answered(pool: PgPool) {
    seed_graph(&pool, GRAPH_STATE).await;
    let app = TestApp::spawn(pool.clone()).await;
    let template = String::from_utf8(fixture("graph/change-created.json")).unwrap();
    let mut handles = Vec::new();
    for i in 0..200 {
        let body = template.replace("AAMkAGF1cm9yYS1ldnQtMDAxAA==", &format!("ITEM-{i}"));
        let client = app.client.clone();
        let url = app.url(PATH);
        handles.push(tokio::spawn(async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for handle in handles {
        assert_eq!(handle.await.unwrap(), 202);
    }
    // Every 202 means committed: all rows are visible the moment the last answer arrived.
    let distinct: i64 =
        sqlx::query_scalar("select count(distinct item_id) from notification_events")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(distinct, 200);
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Bad input is answered 4xx, never 5xx: whatever the parsers accept can be stored.

/// 4 KiB of letters and digits that do not compress: past what a btree index entry holds, and
/// longer than any id Exchange sends.
fn huge_id() -> String {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..4096).map(|_| rng.alphanumeric()).collect()
}

#[sqlx::test]
async fn content_postgres_cannot_store_is_refused_400_and_never_503(pool: PgPool) {
    seed_ews(&pool, "active", None).await;
    seed_graph(&pool, GRAPH_STATE).await;
    let app = TestApp::spawn(pool.clone()).await;
    let ews = String::from_utf8(fixture("ews/send-notification-created.xml")).unwrap();
    let graph = String::from_utf8(fixture("graph/change-created.json")).unwrap();
    let change_key = r#"ChangeKey="DwAAABYAAADmZXh0LWNrLTEwMDE=""#;
    let long = huge_id();
    let extra = |field: &str| graph.replace(r#""tenantId""#, &format!(r#"{field}, "tenantId""#));
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "a number past jsonb's range",
            "application/json",
            extra(r#""x": 1e200000"#),
        ),
        (
            "a number finer than numeric keeps",
            "application/json",
            extra(&format!(r#""x": 0.{}1"#, "0".repeat(20_000))),
        ),
        (
            "a number with more digits than numeric keeps",
            "application/json",
            extra(&format!(r#""x": [-{}]"#, "9".repeat(140_000))),
        ),
        (
            "a raw NUL in EWS text",
            "text/xml",
            ews.replace("<t:SubscriptionId>", "<t:SubscriptionId>\0"),
        ),
        (
            "a raw NUL in an EWS attribute",
            "text/xml",
            ews.replace(change_key, "ChangeKey=\"Dw\0AA\""),
        ),
        (
            "a NUL reference in an EWS attribute",
            "text/xml",
            ews.replace(change_key, r#"ChangeKey="Dw&#0;AA""#),
        ),
        (
            "a huge EWS subscription id",
            "text/xml",
            ews.replace(EWS_SUB, &long),
        ),
        (
            "a huge EWS item id",
            "text/xml",
            ews.replace(
                "AAMkAGZpeHR1cmUtcm9vbS1hAEYAAAAAbWVldGluZy0xMDAx+/AAA=",
                &long,
            ),
        ),
        (
            "a huge Graph subscription id",
            "application/json",
            graph.replace(GRAPH_SUB, &long),
        ),
        (
            "a huge Graph item id",
            "application/json",
            graph.replace("AAMkAGF1cm9yYS1ldnQtMDAxAA==", &long),
        ),
    ];
    for (name, content_type, body) in cases {
        let response = post(&app, content_type, body.into_bytes()).await;
        let status = response.status().as_u16();
        let reason = response.text().await.unwrap();
        assert_eq!(status, 400, "{name}: {reason}");
        assert!(
            !reason.is_empty() && reason.len() < 300,
            "{name}: {reason:?}"
        );
    }
    assert_eq!(event_count(&pool).await, 0);
    app.stop().await;
}

/// Text for ids and other strings: plain, empty, long, and the characters parsers and Postgres
/// disagree about (NUL, lone surrogates, references), for `json` or XML.
fn odd_text(json: bool) -> proptest::strategy::BoxedStrategy<String> {
    use proptest::prelude::*;
    let chunk = if json {
        prop_oneof![
            24 => "[A-Za-z0-9+/=_-]{1,40}",
            2 => "[A-Za-z0-9]{1000,1100}",
            1 => "[A-Za-z0-9]{2500,3000}",
            1 => Just("\\u0000".to_owned()),
            1 => Just("\\ud800".to_owned()),
            2 => Just("\\ud83d\\ude00".to_owned()),
            2 => Just("\\n\\\"\\\\".to_owned()),
            6 => any::<char>().prop_map(|c| match c {
                '"' | '\\' => "x".to_owned(),
                c if c.is_control() => format!("\\u{:04x}", u32::from(c)),
                c => c.to_string(),
            }),
        ]
        .boxed()
    } else {
        prop_oneof![
            24 => "[A-Za-z0-9+/=_-]{1,40}",
            2 => "[A-Za-z0-9]{1000,1100}",
            1 => "[A-Za-z0-9]{2500,3000}",
            1 => Just("\0".to_owned()),
            1 => Just("&#0;".to_owned()),
            2 => Just("&#x1F600;&amp;&lt;".to_owned()),
            1 => Just("\u{1}".to_owned()),
            6 => any::<char>().prop_map(|c| match c {
                '<' | '&' | '"' => "x".to_owned(),
                c => c.to_string(),
            }),
        ]
        .boxed()
    };
    proptest::collection::vec(chunk, 1..3)
        .prop_map(|parts| parts.concat())
        .boxed()
}

/// JSON numbers from ordinary to far past what `numeric` takes.
fn odd_number() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    (
        any::<bool>(),
        prop_oneof![
            6 => Just(1usize),
            6 => 1usize..30,
            1 => 900usize..1100,
            1 => 130_000usize..132_000
        ],
        prop_oneof![6 => Just(0usize), 6 => 1usize..30, 1 => 16_000usize..17_000],
        prop_oneof![
            6 => Just(None),
            6 => (-1_100i64..1_100).prop_map(Some),
            1 => any::<i64>().prop_map(Some)
        ],
    )
        .prop_map(|(negative, int_digits, frac_digits, exponent)| {
            let mut n = String::new();
            if negative {
                n.push('-');
            }
            n.push('7');
            n.push_str(&"3".repeat(int_digits - 1));
            if frac_digits > 0 {
                n.push('.');
                n.push_str(&"1".repeat(frac_digits));
            }
            if let Some(e) = exponent {
                n.push_str(&format!("e{e}"));
            }
            n
        })
}

#[sqlx::test]
async fn whatever_the_parsers_accept_is_stored_and_nothing_is_answered_5xx(pool: PgPool) {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;

    const CASES: usize = 96;
    seed_graph(&pool, GRAPH_STATE).await;
    seed_ews(&pool, "active", None).await;
    let app = TestApp::spawn(pool.clone()).await;
    // Deterministic, so a failure reproduces; the cases are generated, not shrunk.
    let mut runner = TestRunner::deterministic();

    // How many bodies each parser accepted, per backend: both outcomes must be exercised.
    let mut accepted_count = [0usize; 2];
    let graph = (odd_text(true), odd_text(true), odd_text(true), odd_number());
    for case in 0..CASES {
        let (sub, item, text, number) = graph.new_tree(&mut runner).unwrap().current();
        let sub = if case % 2 == 0 {
            GRAPH_SUB.to_owned()
        } else {
            sub
        };
        let body = format!(
            r#"{{"value":[{{"subscriptionId":"{sub}","clientState":"{GRAPH_STATE}","changeType":"updated","resource":"Users/x/Events/{item}","resourceData":{{"id":"{item}","@odata.etag":"{case}"}},"note":"{text}","n":{number},"more":[{number},{{"k":"{text}"}}]}}]}}"#
        );
        let accepted =
            rooms_sync::graph::notification::parse_notification_collection(body.as_bytes()).is_ok();
        let before = event_count(&pool).await;
        let response = post(&app, "application/json", body.clone().into_bytes()).await;
        let status = response.status().as_u16();
        let reason = response.text().await.unwrap();
        let expected = if accepted { 202 } else { 400 };
        assert_eq!(
            status,
            expected,
            "Graph case {case}: {reason}; body starts {:?}",
            body.chars().take(300).collect::<String>()
        );
        let stored = event_count(&pool).await - before;
        assert_eq!(stored, i64::from(accepted), "Graph case {case}");
        accepted_count[0] += usize::from(accepted);
    }

    let template = String::from_utf8(fixture("ews/send-notification-created.xml")).unwrap();
    let ews = (odd_text(false), odd_text(false), odd_text(false));
    for case in 0..CASES {
        let (sub, item, change_key) = ews.new_tree(&mut runner).unwrap().current();
        let sub = if case % 2 == 0 {
            EWS_SUB.to_owned()
        } else {
            sub
        };
        let body = template
            .replace(EWS_SUB, &sub)
            .replace(
                "AAMkAGZpeHR1cmUtcm9vbS1hAEYAAAAAbWVldGluZy0xMDAx+/AAA=",
                &item,
            )
            .replace("DwAAABYAAADmZXh0LWNrLTEwMDE=", &change_key)
            // A fresh chain per case, so every accepted body stores its two events.
            .replace("AQAAAHJvb20tYS13bS0wMDAz", &format!("WM-{case}-a"))
            .replace("AQAAAHJvb20tYS13bS0wMDA0", &format!("WM-{case}-b"));
        let accepted = rooms_sync::ews::parse_send_notification(body.as_bytes()).is_ok();
        let before = event_count(&pool).await;
        let response = post(&app, "text/xml", body.clone().into_bytes()).await;
        let status = response.status().as_u16();
        let reason = response.text().await.unwrap();
        let expected = if accepted { 200 } else { 400 };
        assert_eq!(
            status,
            expected,
            "EWS case {case}: {reason}; body {:?}",
            body.chars().take(300).collect::<String>()
        );
        let stored = event_count(&pool).await - before;
        assert_eq!(stored, if accepted { 2 } else { 0 }, "EWS case {case}");
        accepted_count[1] += usize::from(accepted);
    }
    for accepted in accepted_count {
        assert!(
            (CASES / 8..CASES - CASES / 8).contains(&accepted),
            "accepted per backend: {accepted_count:?} of {CASES}"
        );
    }
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Lifecycle notifications and forged items must not eat real events.

#[sqlx::test]
async fn a_lifecycle_notification_repeated_a_day_later_is_stored_again_but_a_redelivery_once(
    pool: PgPool,
) {
    seed_graph(&pool, GRAPH_STATE).await;
    let app = TestApp::spawn(pool.clone()).await;
    let names = [
        "lifecycle-reauthorization-required.json",
        "lifecycle-missed.json",
    ];
    for name in names {
        let body = fixture(&format!("graph/{name}"));
        // Graph redelivers the identical body when it saw no 2xx in time.
        for _ in 0..2 {
            assert_eq!(
                post(&app, "application/json", body.clone()).await.status(),
                202
            );
        }
    }
    assert_eq!(event_count(&pool).await, 2, "a redelivery is stored once");

    // A day later the same subscription needs reauthorizing again, and misses again, with the
    // same expiration (nothing renewed it in between): the notifications are identical.
    sqlx::query("update notification_events set received_at = received_at - interval '1 day'")
        .execute(&pool)
        .await
        .unwrap();
    for name in names {
        let body = fixture(&format!("graph/{name}"));
        for _ in 0..2 {
            assert_eq!(
                post(&app, "application/json", body.clone()).await.status(),
                202
            );
        }
    }
    let rows: Vec<(String, String)> =
        sqlx::query_as("select kind, status from notification_events order by id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let rows: Vec<(&str, &str)> = rows.iter().map(|(k, s)| (k.as_str(), s.as_str())).collect();
    assert_eq!(
        rows,
        vec![
            ("reauthorization_required", "pending"),
            ("missed", "pending"),
            ("reauthorization_required", "pending"),
            ("missed", "pending"),
        ]
    );
    app.stop().await;
}

#[sqlx::test]
async fn a_forged_item_never_keeps_out_the_genuine_item_that_follows_it(pool: PgPool) {
    let sub = seed_graph(&pool, GRAPH_STATE).await;
    let app = TestApp::spawn(pool.clone()).await;
    let genuine = fixture("graph/change-created.json");
    let forged = String::from_utf8(genuine.clone())
        .unwrap()
        .replace(GRAPH_STATE, "a-forged-state");
    assert_eq!(
        post(&app, "application/json", forged.clone().into_bytes())
            .await
            .status(),
        202
    );
    assert_eq!(
        post(&app, "application/json", genuine.clone())
            .await
            .status(),
        202
    );
    // Redeliveries of either are still stored once.
    assert_eq!(post(&app, "application/json", genuine).await.status(), 202);
    assert_eq!(
        post(&app, "application/json", forged.into_bytes())
            .await
            .status(),
        202
    );
    type Row = (String, Option<String>, Option<i64>);
    let rows: Vec<Row> = sqlx::query_as(
        "select status, reject_reason, subscription_id from notification_events order by id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                "ignored".to_owned(),
                Some("client_state_mismatch".to_owned()),
                Some(sub)
            ),
            ("pending".to_owned(), None, Some(sub)),
        ]
    );
    app.stop().await;
}

#[sqlx::test]
async fn a_forged_item_that_beats_its_subscription_never_keeps_the_genuine_one_out(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let genuine = fixture("graph/change-created.json");
    let forged = String::from_utf8(genuine.clone())
        .unwrap()
        .replace(GRAPH_STATE, "a-forged-state");
    assert_eq!(
        post(&app, "application/json", forged.into_bytes())
            .await
            .status(),
        202
    );
    assert_eq!(post(&app, "application/json", genuine).await.status(), 202);
    let sub = seed_graph(&pool, GRAPH_STATE).await;
    let done = rooms_sync::ingest::rematch(&pool, GRAPH_SUB).await.unwrap();
    assert_eq!((done.attached, done.rejected), (1, 1));
    let genuine: Vec<(String, Option<i64>)> = sqlx::query_as(
        "select status, subscription_id from notification_events where reject_reason is null",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(genuine, vec![("pending".to_owned(), Some(sub))]);
    app.stop().await;
}

// ---------------------------------------------------------------------------
// The EWS watermark chain only moves forward.

const EWS_W2: &str = "AQAAAHJvb20tYS13bS0wMDAy";
const EWS_W3: &str = "AQAAAHJvb20tYS13bS0wMDAz";
const EWS_W4: &str = "AQAAAHJvb20tYS13bS0wMDA0";

async fn chain(pool: &PgPool, sub: i64) -> (Option<String>, bool) {
    let (watermark, gap): (Option<String>, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("select last_watermark, gap_detected_at from subscriptions where id = $1")
            .bind(sub)
            .fetch_one(pool)
            .await
            .unwrap();
    (watermark, gap.is_some())
}

/// The created fixture (W2 → W3, W4) with its watermarks renamed: `previous` → `middle`,
/// `last`.
fn ews_chain(previous: &str, middle: &str, last: &str) -> Vec<u8> {
    String::from_utf8(fixture("ews/send-notification-created.xml"))
        .unwrap()
        .replace(EWS_W4, last)
        .replace(EWS_W3, middle)
        .replace(EWS_W2, previous)
        .into_bytes()
}

async fn post_ok(app: &TestApp, body: Vec<u8>) {
    let response = post(app, "text/xml", body).await;
    assert!(response.text().await.unwrap().contains(">OK<"));
}

/// A service process of its own on the test's database (stopping one closes its pool), so that
/// a test can restart the service.
async fn process(pool: &PgPool) -> TestApp {
    let own = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_lazy_with(pool.connect_options().as_ref().clone());
    TestApp::spawn(own).await
}

/// The subscription row's version: changes whenever the row is written.
async fn row_version(pool: &PgPool, sub: i64) -> String {
    sqlx::query_scalar("select xmin::text from subscriptions where id = $1")
        .bind(sub)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn a_late_commit_of_an_older_notification_never_moves_the_watermark_back(pool: PgPool) {
    let sub = seed_ews(&pool, "active", Some(EWS_W2)).await;
    // N1 runs W2 → W4; N2 continues W4 → W6. Each goes to a fresh process, whose first batch
    // of a subscription always goes to the database's judgement.
    let app = process(&pool).await;
    post_ok(&app, ews_chain(EWS_W2, EWS_W3, EWS_W4)).await;
    app.stop().await;
    let app = process(&pool).await;
    post_ok(&app, ews_chain(EWS_W4, "WM-5", "WM-6")).await;
    assert_eq!(chain(&pool, sub).await, (Some("WM-6".to_owned()), false));
    // Exchange retried N1 while its first copy was stuck before commit; the retry was stored and
    // answered, N2 followed, and now the stuck copy commits.
    post_ok(&app, ews_chain(EWS_W2, EWS_W3, EWS_W4)).await;
    assert_eq!(
        chain(&pool, sub).await,
        (Some("WM-6".to_owned()), false),
        "the chain neither moves back nor records a gap"
    );
    app.stop().await;
}

#[sqlx::test]
async fn notifications_that_continue_the_chain_leave_the_subscription_row_alone_for_seconds(
    pool: PgPool,
) {
    let sub = seed_ews(&pool, "active", Some(EWS_W2)).await;
    let app = process(&pool).await;
    post_ok(&app, ews_chain(EWS_W2, EWS_W3, EWS_W4)).await;
    assert_eq!(chain(&pool, sub).await, (Some(EWS_W4.to_owned()), false));
    let version = row_version(&pool, sub).await;
    post_ok(&app, ews_chain(EWS_W4, "WM-5", "WM-6")).await;
    post_ok(&app, ews_chain("WM-6", "WM-7", "WM-8")).await;
    assert_eq!(event_count(&pool).await, 6, "every event is stored");
    assert_eq!(
        row_version(&pool, sub).await,
        version,
        "no row version per notification"
    );
    assert_eq!(
        chain(&pool, sub).await,
        (Some(EWS_W4.to_owned()), false),
        "the stored end lags, without a gap"
    );
    // A break is recorded at once, whatever the stored end.
    post_ok(&app, ews_chain("WM-10", "WM-11", "WM-12")).await;
    assert_eq!(chain(&pool, sub).await, (Some("WM-12".to_owned()), true));
    app.stop().await;
}

#[sqlx::test]
async fn after_a_restart_a_chain_ahead_of_the_stored_end_is_no_gap_and_a_break_still_is(
    pool: PgPool,
) {
    let sub = seed_ews(&pool, "active", Some(EWS_W2)).await;
    let app = process(&pool).await;
    post_ok(&app, ews_chain(EWS_W2, EWS_W3, EWS_W4)).await;
    post_ok(&app, ews_chain(EWS_W4, "WM-5", "WM-6")).await;
    app.stop().await;
    assert_eq!(chain(&pool, sub).await, (Some(EWS_W4.to_owned()), false));
    // A new process knows nothing of W6 but finds its event stored.
    let app = process(&pool).await;
    post_ok(&app, ews_chain("WM-6", "WM-7", "WM-8")).await;
    assert_eq!(chain(&pool, sub).await, (Some("WM-8".to_owned()), false));
    app.stop().await;
    // Nor does the next one of WM-9, which was never stored: a gap.
    let app = process(&pool).await;
    post_ok(&app, ews_chain("WM-9", "WM-10", "WM-11")).await;
    assert_eq!(chain(&pool, sub).await, (Some("WM-11".to_owned()), true));
    app.stop().await;
}

#[sqlx::test]
async fn a_chain_that_continues_from_a_keep_alive_is_no_gap_after_a_restart(pool: PgPool) {
    const EWS_W1: &str = "AQAAAHJvb20tYS13bS0wMDAx";
    let sub = seed_ews(&pool, "active", Some(EWS_W1)).await;
    let status = String::from_utf8(fixture("ews/send-notification-status.xml")).unwrap();
    let app = process(&pool).await;
    // Keep-alives W1 → W2, then W2 → WM-3: the second is continuous, so the stored end stays W2.
    post_ok(&app, status.clone().into_bytes()).await;
    post_ok(
        &app,
        status
            .replace(EWS_W2, "WM-3")
            .replace(EWS_W1, EWS_W2)
            .into_bytes(),
    )
    .await;
    app.stop().await;
    assert_eq!(chain(&pool, sub).await, (Some(EWS_W2.to_owned()), false));
    // The keep-alive's event is stored as ignored, under a key of its own; a booking continuing
    // from it is still no gap.
    let app = process(&pool).await;
    post_ok(&app, ews_chain("WM-3", "WM-4", "WM-5")).await;
    assert_eq!(chain(&pool, sub).await, (Some("WM-5".to_owned()), false));
    app.stop().await;
}

#[sqlx::test]
async fn a_batch_that_ends_where_the_stored_chain_has_already_passed_leaves_it_alone(pool: PgPool) {
    use rooms_sync::db::events::{NewEvent, store_batch};
    use rooms_sync::db::subscriptions::EwsUpdate;
    use rooms_sync::domain::Backend;

    let sub = seed_ews(&pool, "active", Some("W0")).await;
    let mailbox: i64 = sqlx::query_scalar("select mailbox_id from subscriptions where id = $1")
        .bind(sub)
        .fetch_one(&pool)
        .await
        .unwrap();
    let event = |key: &str| NewEvent {
        subscription_id: Some(sub),
        mailbox_id: Some(mailbox),
        ..pending_event(Backend::Ews, Some(EWS_SUB), key)
    };
    let update = |previous: &str, last: &str| EwsUpdate {
        first_previous: Some(previous.to_owned()),
        last_watermark: Some(last.to_owned()),
        ..EwsUpdate::new(sub)
    };
    store_batch(&pool, &[event("a")], &[update("W0", "W1")], &[])
        .await
        .unwrap();
    store_batch(&pool, &[event("b")], &[update("W1", "W2")], &[])
        .await
        .unwrap();
    assert_eq!(chain(&pool, sub).await, (Some("W2".to_owned()), false));
    // Two batches for one subscription were in flight at once; the one committing last carries
    // the older part of the chain (and events not stored before).
    store_batch(&pool, &[event("c")], &[update("W0", "W1")], &[])
        .await
        .unwrap();
    assert_eq!(chain(&pool, sub).await, (Some("W2".to_owned()), false));
}

#[sqlx::test]
async fn a_batch_that_waited_for_a_newer_one_judges_the_chain_as_that_one_left_it(pool: PgPool) {
    use rooms_sync::db::events::{NewEvent, store_batch};
    use rooms_sync::db::subscriptions::EwsUpdate;
    use rooms_sync::domain::Backend;

    let sub = seed_ews(&pool, "active", Some("W0")).await;
    // The newer batch (W1 → W2) holds the subscription row, uncommitted; W0 → W1 was its
    // predecessor's, stored as well.
    let mut newer = pool.begin().await.unwrap();
    sqlx::query(
        "update subscriptions set last_watermark = 'W2', recent_watermarks = '{W2,W1,W1,W0}'
         where id = $1",
    )
    .bind(sub)
    .execute(&mut *newer)
    .await
    .unwrap();
    // The older batch (W0 → W1, with events not stored before) starts meanwhile and waits.
    let older = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let event = NewEvent {
                subscription_id: Some(sub),
                ..pending_event(Backend::Ews, Some(EWS_SUB), "late")
            };
            let update = EwsUpdate {
                first_previous: Some("W0".to_owned()),
                last_watermark: Some("W1".to_owned()),
                ..EwsUpdate::new(sub)
            };
            store_batch(&pool, &[event], &[update], &[]).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!older.is_finished(), "the older batch waits for the row");
    newer.commit().await.unwrap();
    older.await.unwrap().unwrap();
    assert_eq!(chain(&pool, sub).await, (Some("W2".to_owned()), false));
    assert_eq!(
        event_count(&pool).await,
        1,
        "its events are stored all the same"
    );
}

#[sqlx::test]
async fn every_shape_of_the_batch_statement_stores_the_events_and_does_only_the_work_it_is_given(
    pool: PgPool,
) {
    use rooms_sync::db::events::{NewEvent, store_batch};
    use rooms_sync::db::subscriptions::EwsUpdate;
    use rooms_sync::domain::Backend;

    let ews = seed_ews(&pool, "active", Some("W0")).await;
    let graph = seed_graph(&pool, GRAPH_STATE).await;
    let stamped = async |pool: &PgPool| -> bool {
        sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
            "select last_notification_at from subscriptions where id = $1",
        )
        .bind(graph)
        .fetch_one(pool)
        .await
        .unwrap()
        .is_some()
    };
    let mut watermark = 0;
    for (chains, stamps) in [(false, false), (true, false), (false, true), (true, true)] {
        sqlx::query("update subscriptions set last_notification_at = null where id = $1")
            .bind(graph)
            .execute(&pool)
            .await
            .unwrap();
        let before = chain(&pool, ews).await;
        let key = format!("{chains}-{stamps}");
        let events = [
            NewEvent {
                subscription_id: Some(ews),
                ..pending_event(Backend::Ews, Some(EWS_SUB), &key)
            },
            NewEvent {
                subscription_id: Some(graph),
                kind: "updated".to_owned(),
                ..pending_event(Backend::Graph, Some(GRAPH_SUB), &key)
            },
        ];
        let update = chains.then(|| {
            watermark += 1;
            EwsUpdate {
                first_previous: Some(format!("W{}", watermark - 1)),
                last_watermark: Some(format!("W{watermark}")),
                ..EwsUpdate::new(ews)
            }
        });
        let stamp: &[i64] = if stamps { &[graph] } else { &[] };
        let mut inserted = store_batch(&pool, &events, update.as_slice(), stamp)
            .await
            .unwrap();
        inserted.sort();
        assert_eq!(
            inserted,
            [
                (Backend::Ews, "created".to_owned(), 1),
                (Backend::Graph, "updated".to_owned(), 1)
            ],
            "chains {chains}, stamps {stamps}"
        );
        let after = chain(&pool, ews).await;
        if chains {
            assert_eq!(after, (Some(format!("W{watermark}")), false));
        } else {
            assert_eq!(after, before, "no chain update, no change to the chain");
        }
        assert_eq!(
            stamped(&pool).await,
            stamps,
            "chains {chains}, stamps {stamps}"
        );
        // The same events again are redeliveries, whatever the shape.
        let again = store_batch(&pool, &events, &[], stamp).await.unwrap();
        assert!(again.is_empty(), "redelivered: {again:?}");
    }
    assert_eq!(event_count(&pool).await, 8);
}
