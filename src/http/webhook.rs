//! `POST /api/webhooks/exchange`: EWS push (SOAP) and Graph change notifications (JSON).
//!
//! Order of work, cheapest refusal first: source address (before the body is read), Graph's
//! validation handshake (no body, no database), a database not migrated yet (503), content
//! type, declared body size, room in the ingest queue (taken as the body's bytes arrive),
//! parse, then store and commit through the [`crate::ingest::Ingestor`], and only then the
//! acknowledgement. The raw body is dropped once parsed: a handler waiting for its commit holds
//! only the parsed delivery.

use std::net::SocketAddr;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};

use super::{ApiError, Shared, WEBHOOK_PATH, source};
use crate::ews::{parse_send_notification, send_notification_result};
use crate::graph::notification::{parse_notification_collection, validation_token};
use crate::ingest::{Ack, Delivery, IngestError};
use crate::offload;

pub(super) fn router() -> Router<Shared> {
    // Only POST is routed: axum answers every other method with 405 and `Allow: POST`.
    Router::new().route(WEBHOOK_PATH, post(receive))
}

/// Which protocol a POST speaks, by its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Ews,
    Graph,
}

fn protocol(headers: &HeaderMap) -> Result<Protocol, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType(
            "Content-Type is required: text/xml (EWS) or application/json (Graph)".to_owned(),
        ));
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "text/xml" | "application/soap+xml" | "application/xml" => Ok(Protocol::Ews),
        "application/json" => Ok(Protocol::Graph),
        _ => Err(ApiError::UnsupportedMediaType(
            "unsupported Content-Type: expected text/xml (EWS) or application/json (Graph)"
                .to_owned(),
        )),
    }
}

async fn receive(State(state): State<Shared>, request: Request) -> Result<Response, ApiError> {
    let started = Instant::now();
    // The source check comes first, so a refused caller's body is never read.
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    source::check(&state.settings.http, peer, request.headers())?;
    // Graph's handshake: echo the token, touching neither the body nor the database, so it
    // answers even while Postgres is down or every pooled connection is busy.
    if let Some(token) = validation_token(request.uri().query().unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?
    {
        return Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            token,
        )
            .into_response());
    }
    if !state.schema.is_ready() {
        return Err(ApiError::NotReady("the database is not migrated yet"));
    }
    let protocol = protocol(request.headers())?;
    let limit = state.settings.http.webhook_max_body_bytes;
    // A declared length over the limit is refused before any of the body is read.
    if content_length(request.headers()).is_some_and(|length| length > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    // Bytes still being uploaded count against the queue's budget too, as they arrive. Not
    // the declared length: a client that declares megabytes and sends nothing would then hold
    // room for nothing, and a handful of them would shut every delivery out.
    let mut reservation = state.ingestor.reserve(0).map_err(|_| QUEUE_FULL)?;
    let body = read_body(request.into_body(), limit, |total| {
        state
            .ingestor
            .grow(&mut reservation, total)
            .map_err(|_| QUEUE_FULL)
    })
    .await?;
    let delivery = offload::parse(body, move |body| match protocol {
        Protocol::Ews => parse_send_notification(body)
            .map(Delivery::ews)
            .map_err(|e| e.to_string()),
        Protocol::Graph => parse_notification_collection(body)
            .map(Delivery::graph)
            .map_err(|e| e.to_string()),
    })
    .await
    .map_err(ApiError::BadRequest)?;
    let ack = state
        .ingestor
        .submit(delivery, reservation, started)
        .await
        .map_err(|e| match e {
            IngestError::Overloaded => QUEUE_FULL,
            IngestError::ShuttingDown => ApiError::NotReady("the service is shutting down"),
            e => ApiError::Unavailable(e.into()),
        })?;
    Ok(match ack {
        Ack::Ews(status) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
            send_notification_result(status),
        )
            .into_response(),
        Ack::Graph => StatusCode::ACCEPTED.into_response(),
    })
}

/// The `Content-Length` a request declares, when it declares one that parses.
fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The answer when the ingest queue has no room for a delivery's bytes.
const QUEUE_FULL: ApiError = ApiError::NotReady("the ingest queue is full");

/// Reads the whole body, refusing with 413 as soon as it passes `limit` (nothing past the limit
/// is buffered). `make_room` is told the length read so far before each piece is kept, and
/// stops the read with its error.
async fn read_body(
    body: Body,
    limit: usize,
    mut make_room: impl FnMut(usize) -> Result<(), ApiError>,
) -> Result<Bytes, ApiError> {
    let mut body = Limited::new(body, limit);
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            // The limit's error, or an error caused by it.
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
            while let Some(error) = cause {
                if error.is::<LengthLimitError>() {
                    return ApiError::PayloadTooLarge { limit };
                }
                cause = error.source();
            }
            ApiError::BadRequest("request body could not be read".to_owned())
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        make_room(total)?;
        chunks.push(data);
    }
    // A body that arrived in one piece is passed on without a copy.
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => {
            let mut whole = Vec::with_capacity(total);
            for chunk in &chunks {
                whole.extend_from_slice(chunk);
            }
            Bytes::from(whole)
        }
    })
}
