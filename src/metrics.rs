//! Prometheus metrics: one [`Metrics`] registry per application (no global recorder), rendered
//! in the text exposition format by the admin listener's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of an HTTP request: the matched route (never the raw path) and the status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: &'static str,
    pub status: u16,
}

/// Labels of a stored notification event. Both are from fixed sets: a label value made from
/// input (a `changeType` Graph may invent) would be a new time series kept for ever.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub backend: &'static str,
    /// A kind this code knows, or `other`.
    pub kind: &'static str,
}

/// Labels of a listener's connection gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `public` or `admin`.
    pub listener: &'static str,
}

/// Labels of a deadline of the ingest path.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadlineLabels {
    /// `database`: one round trip of a flusher was cut client-side; `webhook`: a handler gave
    /// up waiting for its delivery's commit and answered 503.
    pub stage: &'static str,
}

/// Labels of the mailbox coverage gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CoverageLabels {
    pub backend: &'static str,
    pub coverage: &'static str,
}

/// Labels of an upkeep pass.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpkeepLabels {
    pub backend: &'static str,
    /// `keep`, `subscribe`, `renew`, `recreate`, `end`, or `failed`.
    pub action: &'static str,
    pub outcome: &'static str,
}

/// Labels of a sync round.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    pub backend: &'static str,
    /// `full` or `incremental`.
    pub round: &'static str,
    /// `ok` or `failed`.
    pub outcome: &'static str,
}

/// Every metric the service exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_request_duration: Family<HttpLabels, Histogram>,
    pub events_received: Family<EventLabels, Counter>,
    /// Deliveries (webhook requests) stored per ingest transaction.
    pub ingest_batch_deliveries: Histogram,
    /// Time of one ingest transaction, lookup included.
    pub ingest_commit_duration: Histogram,
    /// Deadlines of the ingest path that were hit, by stage.
    pub ingest_deadlines: Family<DeadlineLabels, Counter>,
    /// Ingest flusher tasks restarted after a panic.
    pub ingest_flusher_restarts: Counter,
    /// Connections each listener holds open.
    pub http_open_connections: Family<ListenerLabels, Gauge>,
    /// Mailboxes by backend and coverage (covered, uncovered, disabled).
    pub mailboxes: Family<CoverageLabels, Gauge>,
    /// Seconds until the soonest expiry of an active Graph subscription (NaN: none).
    pub soonest_expiry_seconds: Gauge<f64, AtomicU64>,
    /// Seconds since the last notification of the most silent active subscription.
    pub worst_notification_age_seconds: Gauge<f64, AtomicU64>,
    /// Subscription upkeep passes by backend, action and outcome.
    pub upkeep_passes: Family<UpkeepLabels, Counter>,
    /// Sync rounds by backend, kind and outcome.
    pub sync_rounds: Family<SyncLabels, Counter>,
    /// Time of one sync round, Exchange calls and commit included.
    pub sync_round_duration: Histogram,
    /// Reservation rows written (inserted, changed or marked deleted) by sync rounds.
    pub reservations_written: Counter,
    /// Notification events that ended `dead` after their last attempt.
    pub events_dead: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rooms_sync");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            http_requests.clone(),
        );
        let http_request_duration = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            // 0.25 ms .. ~4 s: acknowledgements are expected in milliseconds.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.000_25, 2.0, 15,
            ))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response, by route and status",
            http_request_duration.clone(),
        );
        let events_received = Family::<EventLabels, Counter>::default();
        registry.register(
            "notification_events_received",
            "Notification events committed by the webhook (redeliveries excluded)",
            events_received.clone(),
        );
        let ingest_batch_deliveries = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 12),
        );
        registry.register(
            "ingest_batch_deliveries",
            "Webhook deliveries committed together in one transaction",
            ingest_batch_deliveries.clone(),
        );
        let ingest_commit_duration = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.000_1, 2.0, 16),
        );
        registry.register(
            "ingest_commit_duration_seconds",
            "Time to store and commit one ingest batch",
            ingest_commit_duration.clone(),
        );
        let ingest_deadlines = Family::<DeadlineLabels, Counter>::default();
        registry.register(
            "ingest_deadlines_exceeded",
            "Ingest deadlines hit: database (a round trip cut client-side) or webhook (answered \
             503 before the commit)",
            ingest_deadlines.clone(),
        );
        let ingest_flusher_restarts = Counter::default();
        registry.register(
            "ingest_flusher_restarts",
            "Ingest flusher tasks restarted after a panic",
            ingest_flusher_restarts.clone(),
        );
        let http_open_connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "http_open_connections",
            "Connections each listener holds open (at most HttpMaxConnections)",
            http_open_connections.clone(),
        );
        let mailboxes = Family::<CoverageLabels, Gauge>::default();
        registry.register(
            "mailboxes",
            "Configured mailboxes by backend and subscription coverage",
            mailboxes.clone(),
        );
        let soonest_expiry_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "subscription_soonest_expiry_seconds",
            "Seconds until the soonest expiry of an active Graph subscription",
            soonest_expiry_seconds.clone(),
        );
        let worst_notification_age_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "subscription_worst_notification_age_seconds",
            "Seconds since the last notification of the most silent active subscription",
            worst_notification_age_seconds.clone(),
        );
        let upkeep_passes = Family::<UpkeepLabels, Counter>::default();
        registry.register(
            "upkeep_passes",
            "Subscription upkeep passes by backend, action and outcome",
            upkeep_passes.clone(),
        );
        let sync_rounds = Family::<SyncLabels, Counter>::default();
        registry.register(
            "sync_rounds",
            "Sync rounds of a mailbox by backend, kind (full, incremental) and outcome",
            sync_rounds.clone(),
        );
        let sync_round_duration = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16),
        );
        registry.register(
            "sync_round_duration_seconds",
            "Time of one sync round, Exchange calls and commit included",
            sync_round_duration.clone(),
        );
        let reservations_written = Counter::default();
        registry.register(
            "reservations_written",
            "Reservation rows inserted, changed or marked deleted by sync rounds",
            reservations_written.clone(),
        );
        let events_dead = Counter::default();
        registry.register(
            "notification_events_dead",
            "Notification events given up after their last attempt",
            events_dead.clone(),
        );
        Self {
            registry,
            sync_rounds,
            sync_round_duration,
            reservations_written,
            events_dead,
            mailboxes,
            soonest_expiry_seconds,
            worst_notification_age_seconds,
            upkeep_passes,
            http_requests,
            http_request_duration,
            events_received,
            ingest_batch_deliveries,
            ingest_commit_duration,
            ingest_deadlines,
            ingest_flusher_restarts,
            http_open_connections,
        }
    }

    /// The registry in the Prometheus text format.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
