//! Prometheus metrics: one [`Metrics`] registry per application (no global recorder), rendered
//! in the text exposition format by the admin listener's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of an HTTP request: the matched route (never the raw path) and the status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub status: u16,
}

/// Labels of a stored notification event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub backend: &'static str,
    pub kind: String,
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
        Self {
            registry,
            http_requests,
            http_request_duration,
            events_received,
            ingest_batch_deliveries,
            ingest_commit_duration,
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
