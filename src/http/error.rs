//! The one error type of the HTTP edge. Client errors answer with a short plain-text reason;
//! server errors answer with a generic body and are logged here, once.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// What a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed or refused input; the reason is safe to show.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("source address not allowed")]
    Forbidden,
    /// The database could not commit or answer in time: the sender should retry.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] anyhow::Error),
    /// Not able to take the request now (starting, shedding load, stopping): the sender should
    /// retry. Expected under stress, so logged at debug level only (metrics count the 503s).
    #[error("not ready: {0}")]
    NotReady(&'static str),
    #[error("internal error: {0}")]
    Internal(#[source] anyhow::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            Self::BadRequest(reason) => (StatusCode::BAD_REQUEST, reason.clone()),
            Self::UnsupportedMediaType(reason) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, reason.clone())
            }
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, self.to_string()),
            Self::Forbidden => (StatusCode::FORBIDDEN, self.to_string()),
            Self::Unavailable(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "request failed: database unavailable"
                );
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service unavailable, retry later".to_owned(),
                )
            }
            Self::NotReady(reason) => {
                tracing::debug!(reason, "request refused: not ready");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service unavailable, retry later".to_owned(),
                )
            }
            Self::Internal(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "request failed: internal error"
                );
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal server error".to_owned(),
                )
            }
        };
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}
