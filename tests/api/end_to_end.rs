//! The whole push path over real HTTP on loopback: the service's own upkeep subscribes a room in
//! the simulator, a booking there is pushed to the service, and the events land in
//! `notification_events`, matched to the subscription the service recorded.

use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use rooms_sync::simulator::Meeting;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Service, eventually, simulator};

const ROOM: &str = "room1@sim.example";

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

/// The id of the room's active subscription, once upkeep has made one and recorded the room
/// as covered.
async fn subscribed(pool: &PgPool) -> i64 {
    let start = Instant::now();
    loop {
        let id: Option<i64> = sqlx::query_scalar(
            "select s.id from subscriptions s join mailboxes m on m.id = s.mailbox_id
             where m.address = $1 and s.status = 'active' and m.coverage = 'covered'",
        )
        .bind(ROOM)
        .fetch_optional(pool)
        .await
        .unwrap();
        if let Some(id) = id {
            return id;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the room is not subscribed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(pool: &PgPool, query: &str, subscription: i64) -> i64 {
    sqlx::query_scalar(query)
        .bind(subscription)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn a_graph_booking_in_the_simulator_lands_in_notification_events(pool: PgPool) {
    let stop = CancellationToken::new();
    let sim = simulator(&stop).await;
    let app = Service::new(&format!("graph:{ROOM}"))
        .start(&pool, &sim)
        .await;
    let sub = subscribed(&pool).await;

    let item = sim
        .control()
        .create_meeting(ROOM, meeting("Standup", 9))
        .unwrap();
    eventually(
        Duration::from_secs(15),
        "the created event is stored",
        || async {
            count(
                &pool,
                "select count(*) from notification_events
             where subscription_id = $1 and kind = 'created' and status <> 'ignored'",
                sub,
            )
            .await
                >= 1
        },
    )
    .await;
    let stored: Option<String> = sqlx::query_scalar(
        "select item_id from notification_events where subscription_id = $1 and kind = 'created'",
    )
    .bind(sub)
    .fetch_one(&pool)
    .await
    .unwrap();
    // The subscription asked for immutable ids: its notifications name the item by one.
    let immutable = sim.control().graph_id(&item, true);
    assert_ne!(immutable, item);
    assert_eq!(stored.as_deref(), Some(immutable.as_str()));
    let pushes = sim.control().pushes();
    assert!(pushes.iter().any(|p| p.status == Some(202)), "{pushes:#?}");
    app.stop().await;
    stop.cancel();
}

#[sqlx::test]
async fn an_ews_booking_in_the_simulator_lands_with_an_unbroken_watermark_chain(pool: PgPool) {
    let stop = CancellationToken::new();
    let sim = simulator(&stop).await;
    let app = Service::new(&format!("ews:{ROOM}"))
        .start(&pool, &sim)
        .await;
    let sub = subscribed(&pool).await;

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
    eventually(
        Duration::from_secs(15),
        "created and modified events stored",
        || async {
            count(
                &pool,
                "select count(*) from notification_events
             where subscription_id = $1 and kind = 'created' and status <> 'ignored'",
                sub,
            )
            .await
                >= 1
                && count(
                    &pool,
                    "select count(*) from notification_events
                 where subscription_id = $1 and kind = 'modified' and item_id is not null",
                    sub,
                )
                .await
                    >= 2
        },
    )
    .await;
    let (watermark, gap, seen): (
        Option<String>,
        Option<chrono::DateTime<Utc>>,
        Option<chrono::DateTime<Utc>>,
    ) = sqlx::query_as(
        "select last_watermark, gap_detected_at, last_notification_at from subscriptions
         where id = $1",
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
    app.stop().await;
    stop.cancel();
}
