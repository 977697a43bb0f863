//! Subscription upkeep against the simulator over real HTTP: `serve` subscribes every configured
//! room on both backends, keeps the subscriptions alive through Graph's and EWS's failure
//! paths, honours throttling, moves subscriptions when the callback or the configuration
//! changes, and never lets two workers act on one mailbox at once.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rooms_sync::simulator::{Control, Fault, LifecycleKind, SimulatorHandle};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Service, TestApp, eventually, free_port, simulator};

const GRAPH_ROOM: &str = "room1@sim.example";
const EWS_ROOM: &str = "room2@sim.example";

#[derive(Debug, sqlx::FromRow)]
struct SubRow {
    address: String,
    backend: String,
    remote_id: Option<String>,
    status: String,
    client_state: Option<String>,
    callback_url: String,
    end_reason: Option<String>,
}

async fn subscriptions(pool: &PgPool) -> Vec<SubRow> {
    sqlx::query_as(
        "select m.address, s.backend, s.remote_id, s.status, s.client_state,
                s.callback_url, s.end_reason
         from subscriptions s join mailboxes m on m.id = s.mailbox_id order by s.id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn active(pool: &PgPool, address: &str) -> Option<SubRow> {
    subscriptions(pool)
        .await
        .into_iter()
        .find(|s| s.address == address && s.status == "active")
}

async fn covered(pool: &PgPool, count: i64) -> bool {
    sqlx::query_scalar::<_, i64>("select count(*) from mailboxes where coverage = 'covered'")
        .fetch_one(pool)
        .await
        .unwrap()
        == count
}

async fn resync_reason(pool: &PgPool, address: &str) -> Option<String> {
    sqlx::query_scalar("select resync_reason from mailboxes where address = $1")
        .bind(address)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until a full resync for `reason` is owed or has run (the sync worker takes requests
/// up within moments).
async fn resynced_for(pool: &PgPool, address: &str, reason: &str) {
    eventually(Duration::from_secs(10), reason, || async {
        sqlx::query_scalar::<_, bool>(
            "select coalesce(resync_reason, full_sync_reason) = $2 from mailboxes
             where address = $1",
        )
        .bind(address)
        .bind(reason)
        .fetch_one(pool)
        .await
        .unwrap()
    })
    .await;
}

/// Waits for the upkeep passes under way to finish (a pass records its outcome, resync
/// requests included, after it has activated a new subscription).
async fn settled(pool: &PgPool) {
    eventually(Duration::from_secs(5), "no mailbox leased", || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from mailboxes where upkeep_locked_until > now()",
        )
        .fetch_one(pool)
        .await
        .unwrap()
            == 0
    })
    .await;
}

/// Once the passes under way are finished, moves every mailbox's next upkeep to now, as if
/// its scheduled time had come.
async fn due_now(pool: &PgPool) {
    settled(pool).await;
    sqlx::query("update mailboxes set upkeep_due_at = now()")
        .execute(pool)
        .await
        .unwrap();
}

/// Forgets the resync requests so far, as the sync worker does once it has resynced.
async fn resynced(pool: &PgPool) {
    sqlx::query("update mailboxes set resync_requested_at = null, resync_reason = null")
        .execute(pool)
        .await
        .unwrap();
}

/// Waits until `room`'s active subscription is another one than `old`; returns its remote id.
async fn replaced(pool: &PgPool, room: &str, old: &str, what: &str) -> String {
    let start = Instant::now();
    loop {
        if let Some(id) = active(pool, room).await.and_then(|s| s.remote_id)
            && id != old
        {
            return id;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not within 10s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until both rooms are covered; returns their active subscriptions' remote ids.
async fn until_covered(pool: &PgPool) -> (String, String) {
    eventually(Duration::from_secs(15), "both rooms covered", || {
        covered(pool, 2)
    })
    .await;
    let graph = active(pool, GRAPH_ROOM).await.unwrap().remote_id.unwrap();
    let ews = active(pool, EWS_ROOM).await.unwrap().remote_id.unwrap();
    (graph, ews)
}

fn both_rooms() -> String {
    format!("graph:{GRAPH_ROOM},ews:{EWS_ROOM}")
}

/// Posts a SendNotification with one StatusEvent for `subscription_id`; returns the
/// SubscriptionStatus the service answered.
async fn ews_status_answer(app: &TestApp, subscription_id: &str) -> String {
    let body = format!(
        r#"<?xml version="1.0" encoding="utf-8"?><soap11:Envelope xmlns:soap11="http://schemas.xmlsoap.org/soap/envelope/"><soap11:Body><m:SendNotification xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages><m:SendNotificationResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Notification><t:SubscriptionId>{subscription_id}</t:SubscriptionId><t:PreviousWatermark>AAAA</t:PreviousWatermark><t:MoreEvents>false</t:MoreEvents><t:StatusEvent><t:Watermark>BBBB{}</t:Watermark></t:StatusEvent></m:Notification></m:SendNotificationResponseMessage></m:ResponseMessages></m:SendNotification></soap11:Body></soap11:Envelope>"#,
        uuid::Uuid::new_v4().simple()
    );
    let answer = app
        .client
        .post(app.url("/api/webhooks/exchange"))
        .header("content-type", "text/xml; charset=utf-8")
        .body(body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    if answer.contains(">Unsubscribe<") {
        "Unsubscribe".into()
    } else if answer.contains(">OK<") {
        "OK".into()
    } else {
        answer
    }
}

fn graph_sub_count(control: &Control) -> usize {
    control.graph_subscriptions().len()
}

#[sqlx::test]
async fn serve_subscribes_every_room_on_both_backends_and_a_restart_makes_no_duplicate(
    pool: PgPool,
) {
    let stop = CancellationToken::new();
    let sim = simulator(&stop).await;
    let service = Service::new(&both_rooms());
    let app = service.start(&pool, &sim).await;
    let (graph_id, ews_id) = until_covered(&pool).await;

    let rows = subscriptions(&pool).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let graph_row = rows.iter().find(|r| r.backend == "graph").unwrap();
    assert_eq!(graph_row.callback_url, service.callback());

    let graph = sim.control().graph_subscriptions();
    assert_eq!(graph.len(), 1);
    let g = &graph[0];
    assert_eq!(g.id, graph_id);
    assert_eq!(g.notification_url, service.callback());
    assert_eq!(
        g.lifecycle_notification_url.as_deref(),
        Some(service.callback().as_str())
    );
    assert_eq!(g.change_type, "created,updated,deleted");
    assert!(g.resource.to_ascii_lowercase().contains(GRAPH_ROOM));
    assert_eq!(
        g.client_state, graph_row.client_state,
        "the stored secret was registered"
    );
    assert!(g.client_state.as_ref().is_some_and(|s| s.len() >= 32));
    assert!(g.prefer_immutable_id, "created with immutable ids");

    let ews: Vec<_> = sim
        .control()
        .ews_subscriptions()
        .into_iter()
        .filter(|s| s.alive)
        .collect();
    assert_eq!(ews.len(), 1);
    let e = &ews[0];
    assert_eq!(e.id, ews_id);
    assert_eq!(e.room, EWS_ROOM);
    assert_eq!(e.url, service.callback());
    assert_eq!(e.status_frequency_minutes, 2);
    assert_eq!(e.impersonated.as_deref(), Some(EWS_ROOM));
    assert_eq!(e.anchor_mailbox.as_deref(), Some(EWS_ROOM));
    for kind in [
        "CreatedEvent",
        "ModifiedEvent",
        "DeletedEvent",
        "MovedEvent",
    ] {
        assert!(
            e.event_types.iter().any(|t| t == kind),
            "{kind} in {:?}",
            e.event_types
        );
    }
    // Every call to Graph and EWS used a token for its own resource and named the room.
    for r in sim.control().requests() {
        if r.path.contains("/EWS/") {
            assert_eq!(r.anchor_mailbox.as_deref(), Some(EWS_ROOM), "{r:?}");
        }
    }

    app.stop().await;
    let again = service.start(&pool, &sim).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(covered(&pool, 2).await);
    assert_eq!(
        subscriptions(&pool).await.len(),
        2,
        "no new subscription rows"
    );
    assert_eq!(graph_sub_count(sim.control()), 1, "no duplicate at Graph");
    assert_eq!(
        sim.control()
            .ews_subscriptions()
            .iter()
            .filter(|s| s.alive)
            .count(),
        1,
        "no duplicate at EWS"
    );
    again.stop().await;
    stop.cancel();
}

#[sqlx::test]
async fn a_graph_subscription_is_renewed_when_its_renewal_time_comes(pool: PgPool) {
    let stop = CancellationToken::new();
    let sim = simulator(&stop).await;
    let service = Service::new(&format!("graph:{GRAPH_ROOM}"));
    let app = service.start(&pool, &sim).await;
    eventually(Duration::from_secs(10), "covered", || covered(&pool, 1)).await;
    let before: DateTime<Utc> = sim.control().graph_subscriptions()[0].expiration_date_time;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Half the lifetime has passed, as far as the schedule knows.
    sqlx::query("update subscriptions set renew_at = now() where status = 'active'")
        .execute(&pool)
        .await
        .unwrap();
    due_now(&pool).await;
    eventually(Duration::from_secs(10), "renewed at Graph", || async {
        sim.control().graph_subscriptions()[0].expiration_date_time > before
    })
    .await;
    let renewals = sim
        .control()
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.starts_with("/v1.0/subscriptions/"))
        .count();
    assert_eq!(renewals, 1);
    settled(&pool).await;
    let stored: DateTime<Utc> =
        sqlx::query_scalar("select expires_at from subscriptions where status = 'active'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        stored,
        sim.control().graph_subscriptions()[0].expiration_date_time
    );
    app.stop().await;
    stop.cancel();
}

#[sqlx::test]
async fn graph_lifecycle_events_and_errors_each_end_in_a_working_subscription(pool: PgPool) {
    let stop = CancellationToken::new();
    let sim = simulator(&stop).await;
    let control = sim.control().clone();
    // A subscription for the room already exists at Graph (a crash between create and
    // commit): the first create answers 409, and the orphan is deleted.
    let orphan = create_orphan(&sim).await;
    // The first validation handshake fails: the create is retried with back-off.
    control.inject(Fault::FailValidation { count: 1 }).unwrap();
    let service = Service::new(&format!("graph:{GRAPH_ROOM}"));
    let app = service.start(&pool, &sim).await;
    eventually(
        Duration::from_secs(10),
        "covered despite 409 and a failed validation",
        || covered(&pool, 1),
    )
    .await;
    resynced(&pool).await;
    let first = active(&pool, GRAPH_ROOM).await.unwrap().remote_id.unwrap();
    assert!(
        control.graph_subscriptions().iter().all(|s| s.id != orphan),
        "the orphan is gone"
    );
    assert_eq!(graph_sub_count(&control), 1);

    // reauthorizationRequired → one renewal PATCH.
    let patches = || {
        control
            .requests()
            .into_iter()
            .filter(|r| r.method == "PATCH")
            .count()
    };
    control
        .inject(Fault::LifecycleEvent {
            subscription_id: first.clone(),
            lifecycle: LifecycleKind::ReauthorizationRequired,
        })
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "renewed after reauthorizationRequired",
        || async { patches() == 1 },
    )
    .await;
    assert_eq!(
        active(&pool, GRAPH_ROOM).await.unwrap().remote_id.unwrap(),
        first
    );

    // subscriptionRemoved → a new subscription and a full resync.
    control
        .inject(Fault::LifecycleEvent {
            subscription_id: first.clone(),
            lifecycle: LifecycleKind::SubscriptionRemoved,
        })
        .unwrap();
    let second = replaced(
        &pool,
        GRAPH_ROOM,
        &first,
        "recreated after subscriptionRemoved",
    )
    .await;
    resynced_for(&pool, GRAPH_ROOM, "subscription_removed").await;

    // Graph loses it silently: the renewal answers 404 and a new one is created.
    control
        .inject(Fault::ForgetGraphSubscription {
            subscription_id: second.clone(),
        })
        .unwrap();
    sqlx::query("update subscriptions set renew_at = now() where status = 'active'")
        .execute(&pool)
        .await
        .unwrap();
    due_now(&pool).await;
    let third = replaced(
        &pool,
        GRAPH_ROOM,
        &second,
        "recreated after a 404 on renewal",
    )
    .await;
    let at_graph: Vec<String> = control
        .graph_subscriptions()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(
        at_graph,
        vec![third],
        "exactly the active one lives at Graph"
    );
    let ended: Vec<(String, Option<String>)> = subscriptions(&pool)
        .await
        .into_iter()
        .filter(|s| s.status != "active")
        .map(|s| (s.status, s.end_reason))
        .collect();
    assert!(
        ended.iter().any(|(s, _)| s == "failed"),
        "the failed create is kept: {ended:?}"
    );
    assert!(
        ended
            .iter()
            .any(|(s, r)| s == "removed" && r.as_deref().is_some_and(|r| r.contains("404"))),
        "{ended:?}"
    );
    assert!(covered(&pool, 1).await);
    app.stop().await;
    stop.cancel();
}

/// Creates a Graph subscription for the Graph room straight at the simulator, as a crashed
/// earlier run would have left it.
async fn create_orphan(sim: &SimulatorHandle) -> String {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = sim.base_url().trim_end_matches('/');
    let token: serde_json::Value = client
        .post(format!("{base}/sim-tenant/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "sim-client"),
            ("client_secret", "sim-secret"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // A receiver that answers the handshake, standing in for the crashed run's listener.
    let echo = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", echo))
        .await
        .unwrap();
    tokio::spawn(async move {
        let router = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                |q: axum::extract::Query<std::collections::HashMap<String, String>>| async move {
                    q.get("validationToken").cloned().unwrap_or_default()
                },
            ),
        );
        let _ = axum::serve(listener, router).await;
    });
    let created: serde_json::Value = client
        .post(format!("{base}/v1.0/subscriptions"))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .json(&serde_json::json!({
            "changeType": "created,updated,deleted",
            "notificationUrl": format!("http://127.0.0.1:{echo}/hook"),
            "resource": format!("/users/{GRAPH_ROOM}/events"),
            "expirationDateTime": (Utc::now() + chrono::Duration::hours(2)).to_rfc3339(),
            "clientState": "lost-secret",
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    created["id"].as_str().unwrap().to_owned()
}

#[sqlx::test]
async fn a_silent_ews_subscription_is_replaced_from_its_watermark_and_the_old_one_unsubscribed(
    pool: PgPool,
) {
    let stop = CancellationToken::new();
    let sim = simulator(&stop).await;
    let control = sim.control().clone();
    let service = Service::new(&format!("ews:{EWS_ROOM}"));
    let app = service.start(&pool, &sim).await;
    eventually(Duration::from_secs(10), "covered", || covered(&pool, 1)).await;
    let first = active(&pool, EWS_ROOM).await.unwrap().remote_id.unwrap();
    // Let a keep-alive or two move the watermark.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let watermark: Option<String> = sqlx::query_scalar(
        "select coalesce(last_watermark, subscribe_watermark) from subscriptions where remote_id = $1",
    )
    .bind(&first)
    .fetch_one(&pool)
    .await
    .unwrap();
    control
        .inject(Fault::DropEwsSubscription {
            subscription_id: first.clone(),
        })
        .unwrap();
    // Silence for 2 × StatusFrequency (2 × 400 ms) plus slack, then a resubscribe.
    let second = replaced(&pool, EWS_ROOM, &first, "resubscribed after silence").await;
    let new_sub = control
        .ews_subscriptions()
        .into_iter()
        .find(|s| s.id == second)
        .unwrap();
    assert!(new_sub.subscribed_with_watermark.is_some());
    assert_eq!(
        new_sub.subscribed_with_watermark, watermark,
        "resumed from the last watermark"
    );
    // Should the old subscription ever speak again, it is told to stop.
    eventually(Duration::from_secs(5), "Unsubscribe for the old id", || {
        let app = &app;
        let first = first.clone();
        async move { ews_status_answer(app, &first).await == "Unsubscribe" }
    })
    .await;
    assert_eq!(ews_status_answer(&app, &second).await, "OK");
    app.stop().await;
    stop.cancel();
}

#[sqlx::test]
async fn read_events_failed_resubscribes_with_the_watermark_and_an_invalid_one_resyncs(
    pool: PgPool,
) {
    let stop = CancellationToken::new();
    let sim = simulator(&stop).await;
    let control = sim.control().clone();
    let service = Service::new(&format!("ews:{EWS_ROOM}"));
    let app = service.start(&pool, &sim).await;
    eventually(Duration::from_secs(10), "covered", || covered(&pool, 1)).await;
    resynced(&pool).await;
    let first = active(&pool, EWS_ROOM).await.unwrap().remote_id.unwrap();

    control
        .inject(Fault::EwsReadEventsFailed {
            subscription_id: first.clone(),
        })
        .unwrap();
    let second = replaced(
        &pool,
        EWS_ROOM,
        &first,
        "resubscribed after ErrorReadEventsFailed",
    )
    .await;
    let resumed = control
        .ews_subscriptions()
        .into_iter()
        .find(|s| s.id == second)
        .unwrap();
    assert!(
        resumed.subscribed_with_watermark.is_some(),
        "carried the watermark"
    );
    settled(&pool).await;
    assert_eq!(
        resync_reason(&pool, EWS_ROOM).await,
        None,
        "no resync needed"
    );
    let old = subscriptions(&pool)
        .await
        .into_iter()
        .find(|s| s.remote_id.as_deref() == Some(&first))
        .unwrap();
    assert_eq!(old.status, "superseded");
    assert!(old.end_reason.unwrap().contains("ErrorReadEventsFailed"));

    // Now the watermarks are too old: the resubscribe falls back to none and asks for a resync.
    control.inject(Fault::ExpireEwsWatermarks).unwrap();
    control
        .inject(Fault::EwsReadEventsFailed {
            subscription_id: second.clone(),
        })
        .unwrap();
    let third = replaced(&pool, EWS_ROOM, &second, "resubscribed without a watermark").await;
    let fresh = control
        .ews_subscriptions()
        .into_iter()
        .find(|s| s.id == third)
        .unwrap();
    assert_eq!(fresh.subscribed_with_watermark, None);
    resynced_for(&pool, EWS_ROOM, "invalid_watermark").await;
    app.stop().await;
    stop.cancel();
}

/// Seconds between the throttled request and the retry of the same request (same method, path
/// and, for EWS, SOAP operation), both timed at their arrival.
/// `None` until both have happened.
///
/// The operation matters: every EWS call posts to the same path, and the log is in order of
/// completion, so another call for the mailbox sent before the throttled answer came back (the
/// sync worker's beside the upkeep's, say) would otherwise pass for an early retry.
fn wait_after_throttle(control: &Control, path_part: &str, throttled_status: u16) -> Option<f64> {
    let requests = control.requests();
    let i = requests
        .iter()
        .position(|r| r.path.contains(path_part) && r.status == throttled_status)?;
    let throttled = &requests[i];
    let retry = requests[i + 1..].iter().find(|r| {
        r.method == throttled.method
            && r.path == throttled.path
            && r.operation == throttled.operation
    })?;
    Some((retry.at - throttled.at).num_milliseconds() as f64 / 1000.0)
}

#[sqlx::test]
async fn graph_retry_after_and_ews_back_off_are_honoured(pool: PgPool) {
    let stop = CancellationToken::new();
    let sim = simulator(&stop).await;
    let control = sim.control().clone();
    control
        .inject(Fault::GraphThrottle {
            count: 1,
            retry_after_secs: 0,
            retry_after: Some("1.5".into()),
        })
        .unwrap();
    control
        .inject(Fault::EwsServerBusy {
            count: 1,
            backoff_ms: 1200,
        })
        .unwrap();
    let service = Service::new(&both_rooms());
    let app = service.start(&pool, &sim).await;
    until_covered(&pool).await;
    eventually(
        Duration::from_secs(5),
        "both throttled calls retried",
        || async {
            wait_after_throttle(&control, "/v1.0/", 429).is_some()
                && wait_after_throttle(&control, "/EWS/", 500).is_some()
        },
    )
    .await;
    // The sync's first Graph call may be the one throttled: any Graph call counts.
    let graph_wait = wait_after_throttle(&control, "/v1.0/", 429).unwrap();
    assert!(
        graph_wait >= 1.5,
        "Graph retried after {graph_wait} s, asked 1.5 s"
    );
    let ews_wait = wait_after_throttle(&control, "/EWS/", 500).unwrap();
    assert!(
        ews_wait >= 1.2,
        "EWS retried after {ews_wait} s, asked 1.2 s"
    );
    app.stop().await;
    stop.cancel();
}

#[sqlx::test]
async fn two_workers_on_one_database_never_act_on_one_mailbox_at_once(pool: PgPool) {
    let stop = CancellationToken::new();
    let sim = simulator(&stop).await;
    let rooms: Vec<String> = (1..=6)
        .map(|i| {
            format!(
                "{}:room{i}@sim.example",
                if i % 2 == 0 { "ews" } else { "graph" }
            )
        })
        .collect();
    let one = Service::new(&rooms.join(","));
    let a = one.start(&pool, &sim).await;
    let b = one.replica().start(&pool, &sim).await;
    eventually(Duration::from_secs(15), "all six covered", || {
        covered(&pool, 6)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = subscriptions(&pool).await;
    assert_eq!(rows.len(), 6, "one subscription per mailbox: {rows:?}");
    let creates = sim
        .control()
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/v1.0/subscriptions")
        .count()
        + sim.control().ews_subscriptions().len();
    assert_eq!(creates, 6, "one create or Subscribe per mailbox");
    a.stop().await;
    b.stop().await;
    stop.cancel();
}

#[sqlx::test]
async fn a_changed_callback_url_moves_every_subscription(pool: PgPool) {
    let stop = CancellationToken::new();
    let sim = simulator(&stop).await;
    let old = Service::new(&both_rooms());
    let app = old.start(&pool, &sim).await;
    let (old_graph, old_ews) = until_covered(&pool).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.stop().await;

    let new = Service::new(&both_rooms());
    let app = new.start(&pool, &sim).await;
    eventually(
        Duration::from_secs(15),
        "both moved to the new callback",
        || async {
            let g = active(&pool, GRAPH_ROOM).await;
            let e = active(&pool, EWS_ROOM).await;
            g.is_some_and(|s| s.callback_url == new.callback())
                && e.is_some_and(|s| s.callback_url == new.callback())
                && covered(&pool, 2).await
        },
    )
    .await;
    let graph = sim.control().graph_subscriptions();
    assert_eq!(graph.len(), 1, "the old Graph subscription is deleted");
    assert_eq!(graph[0].notification_url, new.callback());
    assert_ne!(graph[0].id, old_graph);
    let new_ews = active(&pool, EWS_ROOM).await.unwrap().remote_id.unwrap();
    let e = sim
        .control()
        .ews_subscriptions()
        .into_iter()
        .find(|s| s.id == new_ews)
        .unwrap();
    assert_eq!(e.url, new.callback());
    assert!(
        e.subscribed_with_watermark.is_some(),
        "EWS moved without losing events"
    );
    let old_row = subscriptions(&pool)
        .await
        .into_iter()
        .find(|s| s.remote_id.as_deref() == Some(&old_ews))
        .unwrap();
    assert_eq!(old_row.status, "superseded");
    eventually(
        Duration::from_secs(5),
        "the old EWS id is told to unsubscribe",
        || {
            let app = &app;
            let old_ews = old_ews.clone();
            async move { ews_status_answer(app, &old_ews).await == "Unsubscribe" }
        },
    )
    .await;
    app.stop().await;
    stop.cancel();
}

#[sqlx::test]
async fn a_mailbox_removed_from_the_configuration_is_disabled_and_its_subscription_ended(
    pool: PgPool,
) {
    let stop = CancellationToken::new();
    let sim = simulator(&stop).await;
    let service = Service::new(&both_rooms());
    let app = service.start(&pool, &sim).await;
    let (_, ews_id) = until_covered(&pool).await;
    sqlx::query(
        "insert into reservations (mailbox_id, item_id, starts_at, ends_at)
         select id, 'kept-item', now(), now() + interval '1 hour' from mailboxes",
    )
    .execute(&pool)
    .await
    .unwrap();
    app.stop().await;

    let fewer = service.with_mailboxes(&format!("ews:{EWS_ROOM}"));
    let app = fewer.start(&pool, &sim).await;
    eventually(
        Duration::from_secs(10),
        "the Graph room is disabled and unsubscribed",
        || async {
            graph_sub_count(sim.control()) == 0 && active(&pool, GRAPH_ROOM).await.is_none()
        },
    )
    .await;
    let enabled: bool = sqlx::query_scalar("select enabled from mailboxes where address = $1")
        .bind(GRAPH_ROOM)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!enabled);
    let kept: i64 = sqlx::query_scalar("select count(*) from reservations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kept, 2, "reservations are kept");
    assert_eq!(
        active(&pool, EWS_ROOM).await.unwrap().remote_id.unwrap(),
        ews_id,
        "the other room is untouched"
    );
    app.stop().await;

    // And the EWS room removed too: its subscription is answered Unsubscribe from then on.
    let none = service.with_mailboxes("");
    let app = none.start(&pool, &sim).await;
    eventually(
        Duration::from_secs(10),
        "the EWS room is disabled",
        || async { active(&pool, EWS_ROOM).await.is_none() },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "Unsubscribe for the ended EWS subscription",
        || {
            let app = &app;
            let ews_id = ews_id.clone();
            async move { ews_status_answer(app, &ews_id).await == "Unsubscribe" }
        },
    )
    .await;
    app.stop().await;
    stop.cancel();
}
