//! `POST /api/webhooks/exchange`: EWS push and Graph change notifications.

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;

use super::{AppState, WEBHOOK_PATH};
use crate::config::Settings;

pub(super) fn router(_settings: &Settings) -> Router<AppState> {
    // Only POST is routed: axum answers every other method with 405 and `Allow: POST`.
    Router::new().route(WEBHOOK_PATH, post(receive))
}

async fn receive() -> impl IntoResponse {
    (StatusCode::NOT_IMPLEMENTED, "not implemented yet")
}
