//! The simulator pushes to a running service over real HTTP on loopback, and the events land in
//! `notification_events`. Subscriptions are recorded the way the worker will: the secret first,
//! then the request to Exchange, then the answer.

use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use rooms_sync::db;
use rooms_sync::db::subscriptions::NewSubscription;
use rooms_sync::simulator::{Meeting, Simulator, SimulatorConfig, SimulatorHandle};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::TestApp;

const ROOM: &str = "room1@sim.example";

async fn start_simulator(shutdown: &CancellationToken) -> SimulatorHandle {
    Simulator::start(
        SimulatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            time_scale: 600.0,
            ..SimulatorConfig::default()
        },
        shutdown.clone(),
    )
    .await
    .unwrap()
}

async fn token(client: &reqwest::Client, base: &str, scope: &str) -> String {
    let body: Value = client
        .post(format!("{base}/sim-tenant/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "sim-client"),
            ("client_secret", "sim-secret"),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

fn meeting(subject: &str, hour: u32) -> Meeting {
    Meeting {
        subject: subject.to_owned(),
        organizer: "alice@sim.example".to_owned(),
        start: Utc.with_ymd_and_hms(2026, 12, 3, hour, 0, 0).unwrap(),
        end: Utc.with_ymd_and_hms(2026, 12, 3, hour + 1, 0, 0).unwrap(),
        is_all_day: false,
        location: "Room 1".to_owned(),
    }
}

async fn pending_subscription(
    pool: &PgPool,
    backend: &str,
    secret: Option<&str>,
    url: &str,
) -> i64 {
    let mailbox = db::mailboxes::upsert(pool, ROOM, backend.parse().unwrap())
        .await
        .unwrap();
    db::subscriptions::insert(
        pool,
        &NewSubscription {
            mailbox_id: mailbox,
            backend: backend.parse().unwrap(),
            remote_id: None,
            status: rooms_sync::domain::SubscriptionState::Pending,
            client_state: secret,
            callback_url: url,
            expires_at: None,
            last_watermark: None,
            resource: None,
            status_frequency_minutes: None,
        },
    )
    .await
    .unwrap()
}

/// Waits until `query` (a count) reaches `n`.
async fn wait_for_count(pool: &PgPool, query: &str, bind: i64, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let count: i64 = sqlx::query_scalar(query)
            .bind(bind)
            .fetch_one(pool)
            .await
            .unwrap();
        if count >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{query}: {count} < {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test]
async fn a_graph_booking_in_the_simulator_lands_in_notification_events(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let shutdown = CancellationToken::new();
    let sim = start_simulator(&shutdown).await;
    let base = sim.base_url().to_owned();
    let callback = app.url("/api/webhooks/exchange");
    let secret = "e2e-graph-client-state";
    let sub = pending_subscription(&pool, "graph", Some(secret), &callback).await;

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let bearer = token(&client, &base, "https://graph.microsoft.com/.default").await;
    let created = client
        .post(format!("{base}/v1.0/subscriptions"))
        .bearer_auth(bearer)
        .json(&json!({
            "changeType": "created,updated,deleted",
            "notificationUrl": callback,
            "lifecycleNotificationUrl": callback,
            "resource": format!("/users/{ROOM}/events"),
            "expirationDateTime": (Utc::now() + chrono::Duration::minutes(60)).to_rfc3339(),
            "clientState": secret,
        }))
        .send()
        .await
        .unwrap();
    // 201 means the service answered the validation handshake (twice: both URLs).
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let remote = created["id"].as_str().unwrap();
    db::subscriptions::activate(
        &pool,
        sub,
        &db::subscriptions::Activation {
            remote_id: remote,
            expires_at: None,
            renew_at: None,
            subscribe_watermark: None,
        },
        None,
    )
    .await
    .unwrap();

    let item = sim
        .control()
        .create_meeting(ROOM, meeting("Standup", 9))
        .unwrap();
    wait_for_count(
        &pool,
        "select count(*) from notification_events
         where subscription_id = $1 and kind = 'created' and status = 'pending'",
        sub,
        1,
    )
    .await;
    let stored: Option<String> = sqlx::query_scalar(
        "select item_id from notification_events where subscription_id = $1 and kind = 'created'",
    )
    .bind(sub)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored.as_deref(), Some(item.as_str()));
    let pushes = sim.control().pushes();
    assert!(pushes.iter().any(|p| p.status == Some(202)), "{pushes:#?}");
    shutdown.cancel();
    app.stop().await;
}

#[sqlx::test]
async fn an_ews_booking_in_the_simulator_lands_with_an_unbroken_watermark_chain(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let shutdown = CancellationToken::new();
    let sim = start_simulator(&shutdown).await;
    let base = sim.base_url().to_owned();
    let callback = app.url("/api/webhooks/exchange");
    let sub = pending_subscription(&pool, "ews", None, &callback).await;

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let bearer = token(&client, &base, "https://outlook.office365.com/.default").await;
    let envelope = format!(
        concat!(
            r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" "#,
            r#"xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" "#,
            r#"xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">"#,
            r#"<soap:Header><t:RequestServerVersion Version="Exchange2016"/><t:ExchangeImpersonation><t:ConnectingSID>"#,
            r#"<t:SmtpAddress>{room}</t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation></soap:Header><soap:Body>"#,
            r#"<m:Subscribe><m:PushSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="calendar"/></t:FolderIds>"#,
            r#"<t:EventTypes><t:EventType>CreatedEvent</t:EventType><t:EventType>ModifiedEvent</t:EventType>"#,
            r#"<t:EventType>DeletedEvent</t:EventType><t:EventType>MovedEvent</t:EventType></t:EventTypes>"#,
            r#"<t:StatusFrequency>1</t:StatusFrequency><t:URL>{url}</t:URL></m:PushSubscriptionRequest></m:Subscribe>"#,
            r#"</soap:Body></soap:Envelope>"#
        ),
        room = ROOM,
        url = callback
    );
    let response = client
        .post(format!("{base}/EWS/Exchange.asmx"))
        .bearer_auth(bearer)
        .header("content-type", "text/xml; charset=utf-8")
        .header("x-anchormailbox", ROOM)
        .body(envelope)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let remote = sim.control().ews_subscriptions()[0].id.clone();
    db::subscriptions::activate(
        &pool,
        sub,
        &db::subscriptions::Activation {
            remote_id: &remote,
            expires_at: None,
            renew_at: None,
            subscribe_watermark: None,
        },
        None,
    )
    .await
    .unwrap();

    let item = sim
        .control()
        .create_meeting(ROOM, meeting("Planning", 10))
        .unwrap();
    sim.control()
        .move_meeting(
            ROOM,
            &item,
            Utc.with_ymd_and_hms(2026, 12, 3, 14, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 3, 15, 0, 0).unwrap(),
        )
        .unwrap();
    wait_for_count(
        &pool,
        "select count(*) from notification_events
         where subscription_id = $1 and kind = 'created' and status = 'pending'",
        sub,
        1,
    )
    .await;
    wait_for_count(
        &pool,
        "select count(*) from notification_events
         where subscription_id = $1 and kind = 'modified' and item_id is not null",
        sub,
        2,
    )
    .await;
    let (watermark, gap, seen): (Option<String>, Option<chrono::DateTime<Utc>>, Option<chrono::DateTime<Utc>>) =
        sqlx::query_as(
            "select last_watermark, gap_detected_at, last_notification_at from subscriptions where id = $1",
        )
        .bind(sub)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(watermark.is_some());
    assert!(seen.is_some());
    assert!(gap.is_none(), "the simulator's chain is continuous");
    // Every push the simulator made was acknowledged with the SOAP OK reply.
    let pushes = sim.control().pushes();
    assert!(!pushes.is_empty());
    assert!(pushes.iter().all(|p| p.status == Some(200)), "{pushes:#?}");
    shutdown.cancel();
    app.stop().await;
}
