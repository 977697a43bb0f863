//! What every request gets, in one middleware: a request id (the proxy's `X-Request-Id`, or one
//! made here), the request counter and latency histogram, and a log line.
//!
//! This is one layer rather than tower-http's request-id, propagation and trace layers plus a
//! metrics middleware because the webhook answers thousands of requests a second and each
//! layer cost an allocation, a state clone or a span per request; a profile of the webhook
//! showed the per-request span, its log line and the random request id among the larger costs.
//!
//! The log line's level follows what an operator needs: a request that succeeded is logged at
//! `debug` (the metrics count it), a refused one (4xx) at `info`, one the sender will retry
//! (503) or one that took longer than [`SLOW`] at `warn`, any other failure (5xx) at `error`.
//! A 5xx carries the error the handler attached (see [`ErrorDetail`]), so the cause is logged
//! once, with the request id.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use tower::{Layer, Service};

use super::WEBHOOK_PATH;
use crate::metrics::{HttpLabels, Metrics};

/// The header a request id travels in, both ways.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// A request slower than this is logged at `warn`: Graph gives up on a notification after 3 s.
const SLOW: Duration = Duration::from_secs(1);
/// The longest request id taken from a caller; a longer one is replaced by our own.
const MAX_CALLER_ID: usize = 128;

/// Why a request failed, attached by the handler to its 5xx response for the log line (the
/// body itself stays generic).
#[derive(Debug, Clone)]
pub(crate) struct ErrorDetail(pub(crate) String);

/// Request ids unique within this process and, by a random prefix, across restarts: a counter
/// is cheap where a random UUID per request costs a system call.
#[derive(Debug)]
struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        Self {
            prefix: fastrand::u32(..),
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut id = String::with_capacity(25);
        let _ = write!(id, "{:08x}-{n:016x}", self.prefix);
        HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
    }
}

/// The middleware's layer; see the module documentation.
#[derive(Debug, Clone)]
pub(super) struct ObserveLayer {
    ids: Arc<RequestIds>,
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    pub(super) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            ids: Arc::new(RequestIds::new()),
            metrics,
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

/// The metrics label of a path: one of the routes this service serves, never the raw path (a
/// label value made from input would be a new time series kept for ever).
fn route(path: &str) -> &'static str {
    match path {
        WEBHOOK_PATH => WEBHOOK_PATH,
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        _ => "unmatched",
    }
}

/// A caller's id is kept when it is short and printable; anything else is replaced.
fn usable(id: &HeaderValue) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CALLER_ID
        && id.as_bytes().iter().all(|b| b.is_ascii_graphic())
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let started = Instant::now();
        let id = match request.headers().get(&REQUEST_ID) {
            Some(id) if usable(id) => id.clone(),
            _ => {
                let id = self.layer.ids.next();
                request.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        let method = request.method().clone();
        // The URI is reference-counted: keeping it for the log line copies no bytes.
        let uri = request.uri().clone();
        let metrics = Arc::clone(&self.layer.metrics);
        let response = self.inner.call(request);
        Box::pin(async move {
            let Ok(mut response) = response.await;
            let latency = started.elapsed();
            let status = response.status();
            let labels = HttpLabels {
                route: route(uri.path()),
                status: status.as_u16(),
            };
            metrics
                .http_request_duration
                .get_or_create(&labels)
                .observe(latency.as_secs_f64());
            metrics.http_requests.get_or_create(&labels).inc();
            let detail = response.extensions_mut().remove::<ErrorDetail>();
            // The path only: query strings may carry tokens.
            let (path, request_id) = (uri.path(), id.to_str().unwrap_or(""));
            let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            let status = status.as_u16();
            let error = detail.as_ref().map_or("", |d| d.0.as_str());
            if status >= 500 && status != 503 {
                tracing::error!(%method, path, status, latency_us, request_id, error, "request failed");
            } else if status == 503 {
                // Retried by the sender: the service is starting, stopping, shedding load or
                // waiting for its database.
                tracing::warn!(%method, path, status, latency_us, request_id, error, "request failed");
            } else if latency >= SLOW {
                tracing::warn!(%method, path, status, latency_us, request_id, "slow request");
            } else if status >= 400 {
                tracing::info!(%method, path, status, latency_us, request_id, "request refused");
            } else {
                tracing::debug!(%method, path, status, latency_us, request_id, "request finished");
            }
            response.headers_mut().insert(REQUEST_ID, id);
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_unique_and_share_the_process_prefix() {
        let ids = RequestIds::new();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
        assert_eq!(a.len(), 25);
        assert_eq!(a[..9], b[..9]);
    }

    #[test]
    fn a_callers_request_id_is_kept_only_when_short_and_printable() {
        assert!(usable(&HeaderValue::from_static("proxy-abc-123")));
        assert!(!usable(&HeaderValue::from_static("")));
        assert!(!usable(&HeaderValue::from_static("has space")));
        assert!(!usable(&HeaderValue::from_str(&"x".repeat(129)).unwrap()));
    }

    #[test]
    fn only_known_routes_become_metric_labels() {
        assert_eq!(route(WEBHOOK_PATH), WEBHOOK_PATH);
        assert_eq!(route("/readyz"), "/readyz");
        assert_eq!(route("/api/webhooks/exchange/../../etc"), "unmatched");
        assert_eq!(route("/random-123"), "unmatched");
    }
}
