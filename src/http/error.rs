//! The one error type of the HTTP edge. Client errors answer with a short plain-text reason;
//! server errors answer with a generic body, and their cause is logged once, on the request's
//! log line (the response carries it there as an [`ErrorDetail`]).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::observe::ErrorDetail;

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
        // The cause of a 5xx goes to the request's log line (see `observe`), not to the body.
        let (status, body, detail) = match &self {
            Self::BadRequest(reason) => (StatusCode::BAD_REQUEST, reason.clone(), None),
            Self::UnsupportedMediaType(reason) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, reason.clone(), None)
            }
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, self.to_string(), None),
            Self::Forbidden => (StatusCode::FORBIDDEN, self.to_string(), None),
            Self::Unavailable(error) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service unavailable, retry later".to_owned(),
                Some(format!("database unavailable: {error:#}")),
            ),
            Self::NotReady(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service unavailable, retry later".to_owned(),
                Some((*reason).to_owned()),
            ),
            Self::Internal(error) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal server error".to_owned(),
                Some(format!("internal error: {error:#}")),
            ),
        };
        let mut response = (status, body).into_response();
        if let Some(detail) = detail {
            response.extensions_mut().insert(ErrorDetail(detail));
        }
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}
