//! HTTP: translates requests into calls on the domain and answers. No SQL here (that is
//! [`crate::db`]) and no outbound calls to Exchange, ever.

mod error;
mod health;
mod observe;
pub mod server;
mod source;
mod webhook;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{any, get};
use sqlx::PgPool;
use tower_http::timeout::TimeoutLayer;

pub use error::ApiError;
pub use source::client_ip;

use crate::config::Settings;
use crate::db::SchemaGate;
use crate::ingest::Ingestor;
use crate::metrics::Metrics;

/// The webhook path Exchange and Graph post to (CONTRACT §4).
pub const WEBHOOK_PATH: &str = "/api/webhooks/exchange";

/// What handlers may touch. The routers hold it in an `Arc`: axum hands each request its own
/// copy of the state, and one reference count is cheaper than a copy of every field (some of
/// which take a lock to clone).
#[derive(Debug, Clone)]
pub struct AppState {
    pub db: PgPool,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    pub ingestor: Ingestor,
    /// Open once the database is migrated.
    pub schema: SchemaGate,
}

/// The state as the handlers receive it.
type Shared = Arc<AppState>;

/// The public listener: the webhook and the health probes.
pub fn public_router(state: AppState) -> Router {
    let router = Router::new()
        .merge(webhook::router())
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(any(not_found));
    with_common_layers(router, &state).with_state(Arc::new(state))
}

/// The admin listener: metrics and the health probes; keep it private.
pub fn admin_router(state: AppState) -> Router {
    let router = Router::new()
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(any(not_found));
    with_common_layers(router, &state).with_state(Arc::new(state))
}

/// Request id, metrics and a log line per request ([`observe`]), and a deadline.
fn with_common_layers(router: Router<Shared>, state: &AppState) -> Router<Shared> {
    // `layer` wraps what is already there, so the last one added runs first: the observer sees
    // the deadline's 503 too.
    router
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            state.settings.http.request_timeout,
        ))
        .layer(observe::ObserveLayer::new(Arc::clone(&state.metrics)))
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "not found")
}
