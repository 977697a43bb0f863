//! Reconciling with Graph's own list of subscriptions, at start and then every few hours:
//! subscriptions that point at our callback but that the database does not want (orphans of a
//! crash, or of an earlier run) are deleted; active ones Graph no longer lists are recreated
//! (their mailbox becomes due at once, with a full resync). Listing is rate-limited by Graph
//! (25 calls per 20 s per tenant), so it runs rarely and on one replica at a time.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;

use super::{Upkeep, UpkeepError};
use crate::db;
use crate::domain::{Backend, ResyncReason, SubscriptionState};
use crate::graph::subscription::Subscription;

/// The `worker_jobs` row of this job.
pub const GRAPH_RECONCILE_JOB: &str = "graph_reconcile";

/// What a reconciliation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub listed: usize,
    pub deleted_orphans: usize,
    pub lost: usize,
    /// Nothing was done because a create was in flight (its id could look like an orphan).
    pub postponed: bool,
}

/// Runs one reconciliation.
///
/// # Errors
/// Graph or database errors.
pub async fn reconcile_graph_subscriptions(u: &Upkeep) -> Result<ReconcileReport, UpkeepError> {
    let uses_graph = u
        .settings
        .exchange
        .mailboxes
        .iter()
        .any(|m| m.backend == Backend::Graph);
    let mut report = ReconcileReport::default();
    if !uses_graph
        && db::subscriptions::wanted_graph_remote_ids(&u.pool)
            .await?
            .is_empty()
    {
        // No Graph mailbox: there may be no Graph credentials either.
        return Ok(report);
    }
    // Checked before listing too, so that a reconciliation that would be postponed anyway
    // spends none of Graph's listing budget.
    if db::subscriptions::graph_create_in_flight(&u.pool, u.options.lease).await? {
        report.postponed = true;
        return Ok(report);
    }
    let started = Utc::now();
    let listed = u.client.graph().list_subscriptions().await?;
    report.listed = listed.len();
    let verdict = judge(
        &u.pool,
        &listed,
        &u.settings.callback_url,
        u.options.lease,
        started,
    )
    .await?;
    if verdict.postponed {
        report.postponed = true;
        return Ok(report);
    }
    for (id, resource) in &verdict.orphans {
        tracing::warn!(subscription = %id, %resource, "deleting an orphaned Graph subscription");
        u.client.graph().delete_subscription("<list>", id).await?;
        report.deleted_orphans += 1;
    }
    for (id, mailbox_id, remote_id) in verdict.lost {
        tracing::warn!(subscription = %remote_id, "Graph no longer has an active subscription; recreating it");
        db::subscriptions::end(
            &u.pool,
            id,
            SubscriptionState::Removed,
            "Graph no longer lists it",
        )
        .await?;
        db::mailboxes::request_resync(&u.pool, mailbox_id, ResyncReason::SubscriptionRemoved)
            .await?;
        db::mailboxes::make_due(&u.pool, mailbox_id).await?;
        report.lost += 1;
    }
    Ok(report)
}

/// What a listing of Graph's subscriptions, asked for at `started`, calls for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Verdict {
    /// Graph subscriptions (id, resource) to delete.
    orphans: Vec<(String, String)>,
    /// Active subscriptions (row id, mailbox, remote id) Graph no longer has.
    lost: Vec<(i64, i64, String)>,
    /// A create is in flight: act on nothing.
    postponed: bool,
}

/// Judges `listed` against the database as it is once the listing has arrived, not as it was
/// before it was asked for: a create that started meanwhile shows in the listing while its row
/// is still pending, or just became active, and must not be taken for an orphan (deleting it
/// would leave its room without notifications until the next renewal, hours later).
async fn judge(
    pool: &sqlx::PgPool,
    listed: &[Subscription],
    callback_url: &str,
    lease: Duration,
    started: chrono::DateTime<Utc>,
) -> Result<Verdict, sqlx::Error> {
    if db::subscriptions::graph_create_in_flight(pool, lease).await? {
        return Ok(Verdict {
            postponed: true,
            ..Verdict::default()
        });
    }
    let wanted: HashSet<String> = db::subscriptions::wanted_graph_remote_ids(pool)
        .await?
        .into_iter()
        .collect();
    let ours: HashSet<String> = db::subscriptions::known_graph_remote_ids(pool)
        .await?
        .into_iter()
        .collect();
    let orphans = listed
        .iter()
        .filter(|s| {
            !wanted.contains(&s.id) && (s.notification_url == callback_url || ours.contains(&s.id))
        })
        .map(|s| (s.id.clone(), s.resource.clone()))
        .collect();
    let listed_ids: HashSet<&str> = listed.iter().map(|s| s.id.as_str()).collect();
    let lost = db::subscriptions::active_graph_before(pool, started)
        .await?
        .into_iter()
        .filter(|(_, _, remote_id)| !listed_ids.contains(remote_id.as_str()))
        .collect();
    Ok(Verdict {
        orphans,
        lost,
        postponed: false,
    })
}

/// How long to wait before the next reconciliation after a failed one.
#[must_use]
pub const fn retry_after_failure() -> Duration {
    Duration::from_secs(5 * 60)
}

#[cfg(test)]
mod tests {
    use sqlx::PgPool;

    use super::*;
    use crate::db::subscriptions::{Activation, NewSubscription};

    const CALLBACK: &str = "https://rooms.example/api/webhooks/exchange";
    const LEASE: Duration = Duration::from_secs(30);

    fn at_graph(id: &str, notification_url: &str) -> Subscription {
        Subscription {
            id: id.to_owned(),
            resource: format!("/users/{id}@example.com/events"),
            change_type: "created,updated,deleted".to_owned(),
            notification_url: notification_url.to_owned(),
            lifecycle_notification_url: None,
            expiration_date_time: Utc::now() + chrono::Duration::hours(1),
            application_id: None,
        }
    }

    /// A subscription row of a mailbox of its own; `remote_id` is unknown while it is pending.
    async fn row(
        pool: &PgPool,
        room: &str,
        state: SubscriptionState,
        remote_id: Option<&str>,
    ) -> i64 {
        let mailbox = db::mailboxes::upsert(pool, room, Backend::Graph)
            .await
            .unwrap();
        db::subscriptions::insert(
            pool,
            &NewSubscription {
                mailbox_id: mailbox,
                backend: Backend::Graph,
                remote_id,
                status: state,
                client_state: Some("secret"),
                callback_url: CALLBACK,
                expires_at: None,
                last_watermark: None,
                resource: None,
                status_frequency_minutes: None,
            },
        )
        .await
        .unwrap()
    }

    /// A row created pending and then activated as `remote_id`, as upkeep does.
    async fn activated(pool: &PgPool, room: &str, remote_id: &str) -> i64 {
        let id = row(pool, room, SubscriptionState::Pending, None).await;
        let activation = Activation {
            remote_id,
            expires_at: None,
            renew_at: None,
            subscribe_watermark: None,
        };
        db::subscriptions::activate(pool, id, &activation, None)
            .await
            .unwrap();
        id
    }

    /// The race itself, against the simulator: Graph answers every request after 800 ms, and
    /// the row of a subscription created just before becomes active while the list is on its
    /// way.
    #[sqlx::test]
    async fn a_subscription_that_becomes_active_while_graph_lists_is_not_deleted(pool: PgPool) {
        use std::collections::HashMap;
        use std::sync::Arc;

        use axum::extract::Query;
        use tokio_util::sync::CancellationToken;

        use crate::exchange::ExchangeClient;
        use crate::graph::subscription::CreateSubscription;
        use crate::metrics::Metrics;
        use crate::simulator::{Simulator, SimulatorConfig, serve_settings};
        use crate::worker::WorkerOptions;

        const ROOM: &str = "room@sim.example";
        let stop = CancellationToken::new();
        // Answers the validation handshake at the callback URL, as the service would.
        let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let callback = format!(
            "http://{}/api/webhooks/exchange",
            hook.local_addr().unwrap()
        );
        let echo = axum::Router::new().route(
            "/api/webhooks/exchange",
            axum::routing::post(|q: Query<HashMap<String, String>>| async move {
                q.get("validationToken").cloned().unwrap_or_default()
            }),
        );
        tokio::spawn(async move { axum::serve(hook, echo).await });
        let config = SimulatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            latency: Duration::from_millis(800),
            rooms: vec![ROOM.to_owned()],
            ..SimulatorConfig::default()
        };
        let sim = Simulator::start(config.clone(), stop.clone())
            .await
            .unwrap();
        let base = sim.base_url().trim_end_matches('/');
        let env: Vec<(String, String)> = serve_settings(base, &config)
            .into_iter()
            .chain([
                ("IdpRootUrl", "http://127.0.0.1:1".to_owned()),
                ("ExchangePushNotificationEndpointUrl", callback.clone()),
            ])
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let settings = crate::config::load_from(None, &env).unwrap().settings;
        let options = WorkerOptions::default();
        let client = ExchangeClient::new(settings.exchange.clone(), options.limits).unwrap();
        let upkeep = Upkeep {
            pool: pool.clone(),
            client: Arc::new(client),
            settings: Arc::new(settings),
            options,
            metrics: Arc::new(Metrics::new()),
        };
        let resource = format!("/users/{ROOM}/events");
        let created = upkeep
            .client
            .graph()
            .create_subscription(
                ROOM,
                &CreateSubscription {
                    change_type: "created,updated,deleted",
                    notification_url: &callback,
                    lifecycle_notification_url: &callback,
                    resource: &resource,
                    expiration_date_time: Utc::now() + chrono::Duration::hours(1),
                    client_state: "secret",
                    latest_supported_tls_version: "v1_2",
                },
            )
            .await
            .unwrap();
        let job = {
            let upkeep = upkeep.clone();
            tokio::spawn(async move { reconcile_graph_subscriptions(&upkeep).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!job.is_finished(), "the list is still on its way");
        row(&pool, ROOM, SubscriptionState::Active, Some(&created.id)).await;
        let report = job.await.unwrap().unwrap();
        assert_eq!(report.listed, 1);
        assert_eq!(report.deleted_orphans, 0);
        assert!(
            sim.control()
                .graph_subscriptions()
                .iter()
                .any(|s| s.id == created.id),
            "the subscription lives on at Graph"
        );
        stop.cancel();
    }

    #[sqlx::test]
    async fn a_subscription_whose_row_became_active_while_the_list_was_taken_is_no_orphan(
        pool: PgPool,
    ) {
        let started = Utc::now();
        let listing = [
            at_graph("made-meanwhile", CALLBACK),
            at_graph("left-by-a-crash", CALLBACK),
            at_graph("someone-elses", "https://other.example/hook"),
        ];
        // Its create answered while the list was on its way, and its row is active now.
        row(
            &pool,
            "a@example.com",
            SubscriptionState::Active,
            Some("made-meanwhile"),
        )
        .await;
        let verdict = judge(&pool, &listing, CALLBACK, LEASE, started)
            .await
            .unwrap();
        assert_eq!(
            verdict,
            Verdict {
                orphans: vec![(
                    "left-by-a-crash".to_owned(),
                    "/users/left-by-a-crash@example.com/events".to_owned()
                )],
                lost: vec![],
                postponed: false,
            }
        );
    }

    #[sqlx::test]
    async fn a_create_still_pending_when_the_list_arrives_postpones_the_reconciliation(
        pool: PgPool,
    ) {
        let started = Utc::now();
        row(&pool, "a@example.com", SubscriptionState::Pending, None).await;
        let verdict = judge(
            &pool,
            &[at_graph("made-meanwhile", CALLBACK)],
            CALLBACK,
            LEASE,
            started,
        )
        .await
        .unwrap();
        assert!(verdict.postponed);
        assert!(verdict.orphans.is_empty());
    }

    #[sqlx::test]
    async fn an_active_subscription_graph_no_longer_lists_is_lost_unless_activated_meanwhile(
        pool: PgPool,
    ) {
        let gone = activated(&pool, "a@example.com", "gone").await;
        let started = Utc::now();
        activated(&pool, "b@example.com", "fresh").await;
        let verdict = judge(&pool, &[], CALLBACK, LEASE, started).await.unwrap();
        let mailbox: i64 = sqlx::query_scalar("select mailbox_id from subscriptions where id = $1")
            .bind(gone)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(verdict.lost, vec![(gone, mailbox, "gone".to_owned())]);
    }
}
