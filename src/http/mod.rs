//! HTTP: translates requests into calls on the domain and answers. No SQL here (that is
//! [`crate::db`]) and no outbound calls to Exchange, ever.

mod error;
mod health;
pub mod server;
mod source;
mod webhook;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use sqlx::PgPool;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use error::ApiError;
pub use source::client_ip;

use crate::config::Settings;
use crate::db::SchemaGate;
use crate::ingest::Ingestor;
use crate::metrics::{HttpLabels, Metrics};

/// The webhook path Exchange and Graph post to (CONTRACT §4).
pub const WEBHOOK_PATH: &str = "/api/webhooks/exchange";

/// What handlers may touch: cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub db: PgPool,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    pub ingestor: Ingestor,
    /// Open once the database is migrated.
    pub schema: SchemaGate,
}

/// The public listener: the webhook and the health probes.
pub fn public_router(state: AppState) -> Router {
    let router = Router::new()
        .merge(webhook::router(&state))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(any(not_found))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ));
    with_common_layers(router, state.settings.http.request_timeout).with_state(state)
}

/// The admin listener: metrics and the health probes; keep it private.
pub fn admin_router(state: AppState) -> Router {
    let router = Router::new()
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(any(not_found));
    with_common_layers(router, state.settings.http.request_timeout).with_state(state)
}

/// Request id (generated unless the proxy sent one), one log line per request, and a deadline.
fn with_common_layers(router: Router<AppState>, timeout: Duration) -> Router<AppState> {
    // `layer` wraps what is already there, so the last one added runs first.
    router
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(log_response)
                .on_body_chunk(())
                .on_eos(())
                .on_failure(()),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

fn request_span(request: &Request) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // The path only: query strings may carry tokens.
    tracing::info_span!(
        "http_request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id,
    )
}

fn log_response(response: &Response, latency: Duration, _span: &tracing::Span) {
    tracing::info!(
        status = response.status().as_u16(),
        latency_ms = latency.as_secs_f64() * 1000.0,
        "request finished"
    );
}

async fn record_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = HttpLabels {
        route,
        status: response.status().as_u16(),
    };
    state
        .metrics
        .http_request_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    state.metrics.http_requests.get_or_create(&labels).inc();
    response
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "not found")
}
