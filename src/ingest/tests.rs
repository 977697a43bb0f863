use std::sync::Arc;
use std::time::Instant;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::graph::notification::parse_notification_collection;
use crate::metrics::Metrics;

const GRAPH_CREATED: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/graph/change-created.json"
));

fn graph(item: &str) -> (Delivery, usize) {
    let body = String::from_utf8(GRAPH_CREATED.to_vec())
        .unwrap()
        .replace("AAMkAGF1cm9yYS1ldnQtMDAxAA==", item);
    let items = parse_notification_collection(body.as_bytes()).unwrap();
    (Delivery::graph(items), body.len())
}

struct Running {
    ingestor: Ingestor,
    metrics: Arc<Metrics>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

fn start(pool: &PgPool, limits: IngestLimits) -> Running {
    let metrics = Arc::new(Metrics::new());
    let tasks = TaskTracker::new();
    let stop = CancellationToken::new();
    let ingestor = Ingestor::start(
        Connect {
            options: db::ingest_connect_options(pool, limits.round_trip * 2),
            timeout: Duration::from_secs(2),
        },
        IngestOptions {
            ews_unknown_grace: Duration::from_secs(60),
            limits,
        },
        Arc::clone(&metrics),
        Arc::new(Notify::new()),
        &tasks,
        stop.clone(),
    );
    tasks.close();
    Running {
        ingestor,
        metrics,
        tasks,
        stop,
    }
}

impl Running {
    async fn submit(&self, item: &str) -> Result<Ack, IngestError> {
        let (delivery, bytes) = graph(item);
        let reservation = self.ingestor.reserve(bytes)?;
        self.ingestor
            .submit(delivery, reservation, Instant::now())
            .await
    }

    async fn stop(self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }
}

#[sqlx::test]
async fn flushers_that_panic_are_restarted_and_their_deliveries_answered_as_lost(pool: PgPool) {
    let running = start(&pool, IngestLimits::default());
    // Every flusher panics once: without a restart none would be left to store anything.
    running.ingestor.panic_on_next(FLUSHERS);
    for n in 0..FLUSHERS {
        let outcome = running.submit(&format!("ITEM-PANIC-{n}")).await;
        assert!(matches!(outcome, Err(IngestError::Lost)), "{outcome:?}");
    }
    let outcome = running.submit("ITEM-AFTER").await;
    assert!(matches!(outcome, Ok(Ack::Graph)), "{outcome:?}");
    assert_eq!(
        running.metrics.ingest_flusher_restarts.get(),
        FLUSHERS as u64
    );
    let stored: Vec<String> = sqlx::query_scalar("select item_id from notification_events")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(stored, vec!["ITEM-AFTER".to_owned()]);
    running.stop().await;
}

/// Ingest with production's limits but a queue of 10 kB of bodies.
fn start_with_10_kb_of_queue(pool: &PgPool) -> Running {
    start(
        pool,
        IngestLimits {
            queue_bytes: 10_000,
            ..IngestLimits::default()
        },
    )
}

#[sqlx::test]
async fn the_queue_takes_no_more_body_bytes_than_its_budget(pool: PgPool) {
    let running = start_with_10_kb_of_queue(&pool);
    let first = running.ingestor.reserve(6_000).unwrap();
    assert!(matches!(
        running.ingestor.reserve(6_000),
        Err(IngestError::Overloaded)
    ));
    let second = running.ingestor.reserve(4_000).unwrap();
    assert!(matches!(
        running.ingestor.reserve(1),
        Err(IngestError::Overloaded)
    ));
    drop(first);
    // A body larger than the whole budget still gets in once the queue is empty.
    assert!(matches!(
        running.ingestor.reserve(50_000),
        Err(IngestError::Overloaded)
    ));
    drop(second);
    let huge = running.ingestor.reserve(50_000).unwrap();
    drop(huge);
    // A reservation is given back once its delivery is answered.
    for n in 0..5 {
        let (delivery, _) = graph(&format!("ITEM-{n}"));
        let reservation = running.ingestor.reserve(9_000).unwrap();
        let ack = running
            .ingestor
            .submit(delivery, reservation, Instant::now())
            .await;
        assert!(matches!(ack, Ok(Ack::Graph)), "{ack:?}");
    }
    running.stop().await;
}

#[sqlx::test]
async fn a_reservation_grows_with_its_body_within_the_same_budget(pool: PgPool) {
    let running = start_with_10_kb_of_queue(&pool);
    let ingestor = &running.ingestor;
    // A body sent without a length starts with no room and takes it as it arrives.
    let mut growing = ingestor.reserve(0).unwrap();
    ingestor.grow(&mut growing, 3_000).unwrap();
    ingestor.grow(&mut growing, 2_000).unwrap();
    let other = ingestor.reserve(7_000).unwrap();
    assert!(matches!(
        ingestor.grow(&mut growing, 3_001),
        Err(IngestError::Overloaded)
    ));
    drop(other);
    // Alone, it may grow to the whole budget and no further.
    ingestor.grow(&mut growing, 1_000_000).unwrap();
    assert!(matches!(ingestor.reserve(1), Err(IngestError::Overloaded)));
    drop(growing);
    drop(ingestor.reserve(10_000).unwrap());
    running.stop().await;
}

#[test]
fn event_kinds_from_input_never_become_metric_labels() {
    use crate::ews::EventKind;
    use crate::graph::notification::GraphKind;
    let ews = [
        EventKind::Copied,
        EventKind::Created,
        EventKind::Deleted,
        EventKind::Modified,
        EventKind::Moved,
        EventKind::NewMail,
        EventKind::Status,
        EventKind::FreeBusyChanged,
    ];
    for kind in ews {
        assert_eq!(kind_label(kind.as_str()), kind.as_str());
    }
    let graph = [
        GraphKind::Created,
        GraphKind::Updated,
        GraphKind::Deleted,
        GraphKind::ReauthorizationRequired,
        GraphKind::SubscriptionRemoved,
        GraphKind::Missed,
    ];
    for kind in graph {
        assert_eq!(kind_label(kind.as_str()), kind.as_str());
    }
    for invented in ["unknown_future_value", "unknown", "unknown_created", "x"] {
        assert_eq!(kind_label(invented), "other");
    }
}

#[sqlx::test]
async fn a_graph_subscription_is_stamped_once_and_not_again_by_every_batch_after(pool: PgPool) {
    use crate::db::subscriptions::NewSubscription;
    use crate::domain::{Backend, SubscriptionState};

    let mailbox = db::mailboxes::upsert(&pool, "room-b@example.com", Backend::Graph)
        .await
        .unwrap();
    let sub = db::subscriptions::insert(
        &pool,
        &NewSubscription {
            mailbox_id: mailbox,
            backend: Backend::Graph,
            remote_id: Some("0d8f2b6a-7c31-4e59-9a42-3f1b6c8d9e01"),
            status: SubscriptionState::Active,
            client_state: Some("aurora-cs-4f7Qm2xLr9"),
            callback_url: "https://h.example/api/webhooks/exchange",
            expires_at: None,
            last_watermark: None,
            resource: None,
            status_frequency_minutes: None,
        },
    )
    .await
    .unwrap();
    let stamp = async || -> Option<chrono::DateTime<chrono::Utc>> {
        sqlx::query_scalar("select last_notification_at from subscriptions where id = $1")
            .bind(sub)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let running = start(&pool, IngestLimits::default());
    running.submit("first").await.unwrap();
    assert!(
        stamp().await.is_some(),
        "the first batch stamps the subscription"
    );
    // Cleared behind the process's back: only a stamp sent by the next batch would set it.
    sqlx::query("update subscriptions set last_notification_at = null where id = $1")
        .bind(sub)
        .execute(&pool)
        .await
        .unwrap();
    running.submit("second").await.unwrap();
    assert_eq!(
        stamp().await,
        None,
        "a batch within the stamp interval leaves the row alone"
    );
    let stored: i64 = sqlx::query_scalar(
        "select count(*) from notification_events where subscription_id = $1 and status = 'pending'",
    )
    .bind(sub)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored, 2);
    running.stop().await;
}
