//! Liveness (`/healthz`, no I/O), readiness (`/readyz`, database and migrations) and metrics.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use super::Shared;
use crate::db::{self, Readiness};

/// How long `/readyz` waits for the database before it answers 503.
const READINESS_TIMEOUT: Duration = Duration::from_millis(1500);

/// The process is up. Deliberately touches nothing else: a slow database must not get a
/// healthy process restarted.
pub(super) async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// The database answers and every embedded migration is applied (by this process, when it is
/// the one to migrate: until then its webhook refuses deliveries).
pub(super) async fn readyz(State(state): State<Shared>) -> impl IntoResponse {
    let readiness = match db::readiness(&state.db, READINESS_TIMEOUT).await {
        Readiness::Ready if !state.schema.is_ready() => Readiness::MigrationsPending,
        readiness => readiness,
    };
    match readiness {
        Readiness::Ready => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "database": "ok", "migrations": "applied" })),
        ),
        Readiness::MigrationsPending => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "database": "ok", "migrations": "pending" })),
        ),
        Readiness::DatabaseUnreachable => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({ "status": "not_ready", "database": "unreachable", "migrations": "unknown" }),
            ),
        ),
    }
}

pub(super) async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
