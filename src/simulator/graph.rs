//! Microsoft Graph under `/v1.0`: change-notification subscriptions (create with the
//! validation handshake, renew, delete, list), events by id, and `calendarView` with its
//! delta query, each answering with Graph's JSON shapes and error bodies.
//!
//! Every route needs a live bearer token issued for Graph (an Exchange token gets `401
//! InvalidAuthenticationToken`, as a wrong audience does), and an injected throttle answers
//! `429` with `Retry-After` before the route runs. Users (rooms) are named by UPN or by
//! object id alike, and notifications name them by object id, as Graph does.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use super::calendar::{Instance, Room};
use super::control::{Backend, GraphSubscriptionSnapshot, PushRecord};
use super::oauth::TokenResource;
use super::{
    AppState, BearerCheck, SimState, check_bearer, graph_datetime, json_response, odata_time,
};

/// Shortest subscription lifetime for Outlook events, in minutes: an earlier expiration is
/// moved up to this, not refused. The longest one is refused beyond.
pub(crate) const MIN_LIFETIME_MINUTES: i64 = 45;
pub(crate) const MAX_LIFETIME_MINUTES: i64 = 10_080;
/// Graph waits this long for the handshake echo; it is not configurable and not scaled.
pub(crate) const VALIDATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Page size of `calendarView` when the client states no `odata.maxpagesize`.
pub(crate) const DEFAULT_PAGE_SIZE: usize = 10;
/// Largest page served, whatever the client asks.
const MAX_PAGE_SIZE: usize = 1000;
/// Longest `clientState` accepted.
const MAX_CLIENT_STATE: usize = 128;

/// A Graph subscription.
#[derive(Debug, Clone)]
pub(crate) struct GraphSub {
    pub(crate) id: String,
    pub(crate) resource: String,
    pub(crate) room: String,
    pub(crate) change_type: String,
    pub(crate) change_types: Vec<String>,
    pub(crate) notification_url: String,
    pub(crate) lifecycle_url: Option<String>,
    pub(crate) client_state: Option<String>,
    pub(crate) expiration: DateTime<Utc>,
    pub(crate) prefer_immutable_id: bool,
}

impl GraphSub {
    pub(crate) fn snapshot(&self) -> GraphSubscriptionSnapshot {
        GraphSubscriptionSnapshot {
            id: self.id.clone(),
            resource: self.resource.clone(),
            room: self.room.clone(),
            change_type: self.change_type.clone(),
            notification_url: self.notification_url.clone(),
            lifecycle_notification_url: self.lifecycle_url.clone(),
            client_state: self.client_state.clone(),
            expiration_date_time: self.expiration,
            prefer_immutable_id: self.prefer_immutable_id,
        }
    }
}

/// What the rest of a paged answer holds.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    values: Vec<Value>,
    page_size: usize,
    path: String,
    /// For a delta round: the state its final `@odata.deltaLink` stands for.
    then: Option<DeltaState>,
}

/// What a delta link stands for: a room, a window, and the change-log position.
#[derive(Debug, Clone)]
pub(crate) struct DeltaState {
    room: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    seq: u64,
}

pub(crate) fn routes(shared: AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/v1.0/subscriptions",
            get(list_subscriptions).post(create_subscription),
        )
        .route(
            "/v1.0/subscriptions/{id}",
            get(get_subscription)
                .patch(renew_subscription)
                .delete(delete_subscription),
        )
        .route(
            "/v1.0/subscriptions/{id}/reauthorize",
            axum::routing::post(reauthorize_subscription),
        )
        .route("/v1.0/users/{room}", get(get_user))
        .route("/v1.0/users/{room}/events/{id}", get(get_event))
        .route("/v1.0/users/{room}/calendarView", get(calendar_view))
        .route("/v1.0/users/{room}/calendarview", get(calendar_view))
        .route("/v1.0/users/{room}/calendarView/delta", get(calendar_delta))
        .route("/v1.0/users/{room}/calendarview/delta", get(calendar_delta))
        .route_layer(middleware::from_fn_with_state(shared, gate))
}

/// Graph's error body: `{"error":{"code","message","innerError":{...}}}`.
pub(crate) fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    let now = Utc::now();
    json_response(
        status,
        &json!({
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "date": now.format("%Y-%m-%dT%H:%M:%S").to_string(),
                    "request-id": "00000000-0000-0000-0000-000000000000",
                    "client-request-id": "00000000-0000-0000-0000-000000000000",
                }
            }
        }),
    )
}

/// Authentication, then injected throttling.
async fn gate(State(shared): State<AppState>, request: Request, next: Next) -> Response {
    let refusal = match check_bearer(&shared, request.headers(), TokenResource::Graph) {
        BearerCheck::Valid => None,
        BearerCheck::WrongResource(_) => Some("Access token validation failure. Invalid audience."),
        BearerCheck::Expired => Some("Lifetime validation failed, the token is expired."),
        BearerCheck::Invalid => Some("Access token is empty or invalid."),
    };
    if let Some(message) = refusal {
        let mut r = graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            message,
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"\", error=\"invalid_token\""),
        );
        return r;
    }
    let throttled = {
        let mut state = shared.lock();
        if state.faults.graph_throttle > 0 {
            state.faults.graph_throttle -= 1;
            Some(state.faults.graph_retry_after.clone())
        } else {
            None
        }
    };
    if let Some(retry_after) = throttled {
        let mut r = graph_error(
            StatusCode::TOO_MANY_REQUESTS,
            "ApplicationThrottled",
            "Application is over its MailboxConcurrency limit.",
        );
        // Checked when the fault was injected; a value that still fails is left out.
        if let Ok(value) = HeaderValue::from_str(&retry_after) {
            r.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return r;
    }
    next.run(request).await
}

/// RFC 3339, or a date-time without offset taken as UTC (what Graph accepts).
fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc())
}

fn subscription_json(shared: &AppState, sub: &GraphSub, with_secret: bool) -> Value {
    json!({
        "@odata.context": format!("{}/v1.0/$metadata#subscriptions/$entity", shared.base_url),
        "id": sub.id,
        "resource": sub.resource,
        "applicationId": shared.config.client_id,
        "changeType": sub.change_type,
        // Graph never returns clientState when listing ("for security purposes").
        "clientState": if with_secret { json!(sub.client_state) } else { Value::Null },
        "notificationUrl": sub.notification_url,
        "notificationQueryOptions": null,
        "lifecycleNotificationUrl": sub.lifecycle_url,
        "expirationDateTime": odata_time(sub.expiration),
        "creatorId": "3b2a2f0e-5a51-4c5d-8f3c-51a0c1d0a001",
        "includeResourceData": false,
        "latestSupportedTlsVersion": "v1_2",
        "encryptionCertificate": null,
        "encryptionCertificateId": null,
        "notificationUrlAppId": null,
    })
}

/// Drops subscriptions whose expiration has passed, as Graph does.
pub(crate) fn purge_expired(state: &mut SimState) {
    let now = Utc::now();
    state.graph_subs.retain(|_, s| s.expiration > now);
}

/// https, or plain http to a loopback host (the simulator's concession to local tests).
fn notification_url_ok(text: &str) -> bool {
    let Ok(url) = url::Url::parse(text) else {
        return false;
    };
    match url.scheme() {
        "https" => url.host().is_some(),
        "http" => match url.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

/// `users/{room}/events` (leading `/` and any case of the fixed segments) → the room.
fn resource_room(resource: &str) -> Option<String> {
    let parts: Vec<&str> = resource.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        [users, room, events]
            if users.eq_ignore_ascii_case("users")
                && events.eq_ignore_ascii_case("events")
                && !room.is_empty() =>
        {
            let room = percent_encoding::percent_decode_str(room)
                .decode_utf8()
                .ok()?
                .to_ascii_lowercase();
            Some(room)
        }
        _ => None,
    }
}

/// The expiration Graph keeps for a requested one: under the minimum it is moved up to 45
/// minutes from now; beyond the maximum it is refused with the message returned.
fn settle_expiration(requested: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let now = Utc::now();
    if requested > now + TimeDelta::minutes(MAX_LIFETIME_MINUTES) {
        return Err(format!(
            "Subscription expiration can only be {MAX_LIFETIME_MINUTES} minutes in the future."
        ));
    }
    Ok(requested.max(now + TimeDelta::minutes(MIN_LIFETIME_MINUTES)))
}

fn expiration_too_far(message: &str) -> Response {
    graph_error(StatusCode::BAD_REQUEST, "ExtensionError", message)
}

/// Whether a `Prefer` header asks for immutable ids (`IdType="ImmutableId"`).
fn prefers_immutable_id(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| {
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("IdType")
                    && v.trim()
                        .trim_matches('"')
                        .eq_ignore_ascii_case("ImmutableId")
            })
        })
}

fn bad_request(message: &str) -> Response {
    graph_error(StatusCode::BAD_REQUEST, "InvalidRequest", message)
}

fn not_found_subscription() -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        "The object was not found.",
    )
}

/// The handshake Graph performs before creating or renewing: POST `?validationToken=…`
/// with `text/plain` and expect the decoded token back, exactly, with 200, within 10 s.
pub(crate) async fn validate_endpoint(shared: &AppState, url: &str) -> Result<(), &'static str> {
    let token = {
        let mut state = shared.lock();
        format!(
            "Validation: Testing client application reachability for subscription Request-Id: {}",
            state.rng.guid()
        )
    };
    let separator = if url.contains('?') { '&' } else { '?' };
    let target = format!(
        "{url}{separator}validationToken={}",
        utf8_percent_encode(&token, NON_ALPHANUMERIC)
    );
    let sent = shared
        .http
        .post(&target)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .timeout(VALIDATION_TIMEOUT)
        .send()
        .await;
    let (status, outcome) = match sent {
        Err(e) if e.is_timeout() => (None, Err("Subscription validation request timed out.")),
        Err(_) => (None, Err(VALIDATION_FAILED)),
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            let outcome = if status != StatusCode::OK {
                Err(VALIDATION_FAILED)
            } else if body != token {
                Err(
                    "Subscription validation request failed. Response must exactly match validationToken query parameter.",
                )
            } else {
                Ok(())
            };
            (Some(status.as_u16()), outcome)
        }
    };
    let mut state = shared.lock();
    state.record_push(PushRecord {
        backend: Backend::Graph,
        url: target,
        subscription_id: String::new(),
        kind: "validation".to_owned(),
        attempt: 1,
        status,
        at: Utc::now(),
        body: String::new(),
    });
    if outcome.is_ok() && state.faults.fail_validation > 0 {
        // Graph sometimes fails a handshake the endpoint answered correctly (its request
        // timed out on its side); it says the same as for a wrong answer.
        state.faults.fail_validation -= 1;
        return Err(VALIDATION_FAILED);
    }
    outcome
}

/// What Graph says when a handshake did not get its 200 and echo.
const VALIDATION_FAILED: &str = "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request.";

fn parse_json_object(body: &[u8]) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

fn bad_json() -> Response {
    graph_error(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.",
    )
}

fn string_field<'a>(map: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a str> {
    map.get(name).and_then(Value::as_str)
}

async fn create_subscription(
    State(shared): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(map) = parse_json_object(&body) else {
        return bad_json();
    };
    let change_type = string_field(&map, "changeType")
        .unwrap_or_default()
        .to_owned();
    let change_types: Vec<String> = change_type
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty())
        .collect();
    if change_types.is_empty()
        || change_types
            .iter()
            .any(|c| !matches!(c.as_str(), "created" | "updated" | "deleted"))
    {
        return bad_request(
            "changeType must be a comma-separated list of created, updated, deleted.",
        );
    }
    let notification_url = string_field(&map, "notificationUrl")
        .unwrap_or_default()
        .to_owned();
    if !notification_url_ok(&notification_url) {
        return bad_request("The Notification Url must be an absolute https URL.");
    }
    let lifecycle_url = string_field(&map, "lifecycleNotificationUrl").map(str::to_owned);
    if lifecycle_url
        .as_deref()
        .is_some_and(|u| !notification_url_ok(u))
    {
        return bad_request("The lifecycleNotificationUrl must be an absolute https URL.");
    }
    let resource = string_field(&map, "resource")
        .unwrap_or_default()
        .to_owned();
    let Some(user) = resource_room(&resource) else {
        return bad_request("Unsupported resource: expected users/{id}/events.");
    };
    let Some(requested) = string_field(&map, "expirationDateTime").and_then(parse_time) else {
        return bad_request("expirationDateTime is missing or not a date-time.");
    };
    if let Err(message) = settle_expiration(requested) {
        return expiration_too_far(&message);
    }
    let client_state = string_field(&map, "clientState").map(str::to_owned);
    if client_state
        .as_deref()
        .is_some_and(|c| c.chars().count() > MAX_CLIENT_STATE)
    {
        return bad_request("clientState must be at most 128 characters.");
    }
    let mut normalized = change_types.clone();
    normalized.sort();
    normalized.dedup();
    // One app may hold one subscription per change type set and resource, whatever the
    // notification URL; a user named by UPN or by object id is the same resource.
    let duplicate = |state: &mut SimState, room: &str| -> Option<String> {
        purge_expired(state);
        state
            .graph_subs
            .values()
            .find(|s| {
                let mut theirs = s.change_types.clone();
                theirs.sort();
                theirs.dedup();
                s.room == room && theirs == normalized
            })
            .map(|s| s.id.clone())
    };
    let conflict = |id: &str| {
        graph_error(
            StatusCode::CONFLICT,
            "ObjectIdentifierInUse",
            &format!("Subscription Id {id} already exists for the requested combination"),
        )
    };
    let room = {
        let mut state = shared.lock();
        let Some(room) = state.cal.user(&user).map(|r| r.address.clone()) else {
            return graph_error(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                "Resource not found for the segment 'users'.",
            );
        };
        if let Some(id) = duplicate(&mut state, &room) {
            return conflict(&id);
        }
        room
    };
    if let Err(message) = validate_endpoint(&shared, &notification_url).await {
        return graph_error(StatusCode::BAD_REQUEST, "ValidationError", message);
    }
    if let Some(url) = &lifecycle_url
        && let Err(message) = validate_endpoint(&shared, url).await
    {
        return graph_error(StatusCode::BAD_REQUEST, "ValidationError", message);
    }
    // The 45-minute floor counts from when the subscription is made, after the handshakes.
    let expiration = match settle_expiration(requested) {
        Ok(at) => at,
        Err(message) => return expiration_too_far(&message),
    };
    let sub = {
        let mut state = shared.lock();
        if let Some(id) = duplicate(&mut state, &room) {
            return conflict(&id);
        }
        let sub = GraphSub {
            id: state.rng.guid(),
            resource,
            room,
            change_type,
            change_types,
            notification_url,
            lifecycle_url,
            client_state,
            expiration,
            prefer_immutable_id: prefers_immutable_id(&headers),
        };
        state.graph_subs.insert(sub.id.clone(), sub.clone());
        sub
    };
    json_response(StatusCode::CREATED, &subscription_json(&shared, &sub, true))
}

async fn list_subscriptions(State(shared): State<AppState>) -> Response {
    let subs: Vec<GraphSub> = {
        let mut state = shared.lock();
        purge_expired(&mut state);
        state.graph_subs.values().cloned().collect()
    };
    let values: Vec<Value> = subs
        .iter()
        .map(|s| {
            let mut v = subscription_json(&shared, s, false);
            if let Some(o) = v.as_object_mut() {
                o.remove("@odata.context");
            }
            v
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "@odata.context": format!("{}/v1.0/$metadata#subscriptions", shared.base_url),
            "value": values,
        }),
    )
}

async fn get_subscription(State(shared): State<AppState>, Path(id): Path<String>) -> Response {
    let sub = {
        let mut state = shared.lock();
        purge_expired(&mut state);
        state.graph_subs.get(&id).cloned()
    };
    match sub {
        Some(sub) => json_response(StatusCode::OK, &subscription_json(&shared, &sub, false)),
        None => not_found_subscription(),
    }
}

async fn renew_subscription(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Some(map) = parse_json_object(&body) else {
        return bad_json();
    };
    let current = {
        let mut state = shared.lock();
        purge_expired(&mut state);
        state.graph_subs.get(&id).cloned()
    };
    let Some(current) = current else {
        return not_found_subscription();
    };
    let expiration = match map.get("expirationDateTime") {
        None => None,
        Some(v) => match v.as_str().and_then(parse_time) {
            Some(at) => Some(at),
            None => return bad_request("expirationDateTime is not a date-time."),
        },
    };
    let notification_url = string_field(&map, "notificationUrl").map(str::to_owned);
    if expiration.is_none() && notification_url.is_none() {
        return bad_request("The request must change expirationDateTime or notificationUrl.");
    }
    if let Some(Err(message)) = expiration.map(settle_expiration) {
        return expiration_too_far(&message);
    }
    if notification_url
        .as_deref()
        .is_some_and(|u| !notification_url_ok(u))
    {
        return bad_request("The Notification Url must be an absolute https URL.");
    }
    let url = notification_url
        .clone()
        .unwrap_or_else(|| current.notification_url.clone());
    if let Err(message) = validate_endpoint(&shared, &url).await {
        return graph_error(StatusCode::BAD_REQUEST, "ValidationError", message);
    }
    let expiration = match expiration.map(settle_expiration) {
        Some(Err(message)) => return expiration_too_far(&message),
        Some(Ok(at)) => Some(at),
        None => None,
    };
    let updated = {
        let mut state = shared.lock();
        state.graph_subs.get_mut(&id).map(|sub| {
            if let Some(at) = expiration {
                sub.expiration = at;
            }
            if let Some(u) = notification_url {
                sub.notification_url = u;
            }
            sub.clone()
        })
    };
    match updated {
        Some(sub) => json_response(StatusCode::OK, &subscription_json(&shared, &sub, false)),
        None => not_found_subscription(),
    }
}

/// `POST /subscriptions/{id}/reauthorize`: re-validates the endpoint, keeps the expiration.
async fn reauthorize_subscription(
    State(shared): State<AppState>,
    Path(id): Path<String>,
) -> Response {
    let url = {
        let mut state = shared.lock();
        purge_expired(&mut state);
        state
            .graph_subs
            .get(&id)
            .map(|s| s.notification_url.clone())
    };
    let Some(url) = url else {
        return not_found_subscription();
    };
    match validate_endpoint(&shared, &url).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(message) => graph_error(StatusCode::BAD_REQUEST, "ValidationError", message),
    }
}

async fn delete_subscription(State(shared): State<AppState>, Path(id): Path<String>) -> Response {
    let removed = {
        let mut state = shared.lock();
        purge_expired(&mut state);
        state.graph_subs.remove(&id)
    };
    match removed {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => not_found_subscription(),
    }
}

// ---- events and calendarView ------------------------------------------------

/// An event (or occurrence) as Graph serializes it.
pub(crate) fn event_json(inst: &Instance) -> Value {
    let item = &inst.item;
    let m = &item.meeting;
    let series_master = match inst.kind {
        super::calendar::InstanceKind::Occurrence => json!(item.id),
        _ => Value::Null,
    };
    json!({
        "@odata.etag": item.etag(),
        "id": inst.id,
        "createdDateTime": odata_time(item.created_at),
        "lastModifiedDateTime": odata_time(item.modified_at),
        "changeKey": item.change_key(),
        "iCalUId": item.uid,
        "subject": m.subject,
        "bodyPreview": "",
        "isAllDay": m.is_all_day,
        "isCancelled": item.cancelled,
        "showAs": if item.cancelled { "free" } else { "busy" },
        "type": inst.kind.graph(),
        "seriesMasterId": series_master,
        "start": { "dateTime": graph_datetime(inst.start), "timeZone": "UTC" },
        "end": { "dateTime": graph_datetime(inst.end), "timeZone": "UTC" },
        "location": { "displayName": m.location, "locationType": "default" },
        "organizer": { "emailAddress": { "name": m.organizer, "address": m.organizer } },
    })
}

fn unknown_user(room: &str) -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "ErrorInvalidUser",
        &format!("The requested user '{room}' is invalid."),
    )
}

/// `GET /users/{upn-or-id}`: the room as a directory user.
async fn get_user(State(shared): State<AppState>, Path(user): Path<String>) -> Response {
    let found = shared
        .lock()
        .cal
        .user(&user)
        .map(|r| (r.object_id.clone(), r.address.clone()));
    let Some((id, address)) = found else {
        return graph_error(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            &format!(
                "Resource '{user}' does not exist or one of its queried reference-property objects are not present."
            ),
        );
    };
    json_response(
        StatusCode::OK,
        &json!({
            "@odata.context": format!("{}/v1.0/$metadata#users/$entity", shared.base_url),
            "businessPhones": [],
            "displayName": display_name(&address),
            "givenName": null,
            "jobTitle": null,
            "mail": address,
            "mobilePhone": null,
            "officeLocation": null,
            "preferredLanguage": null,
            "surname": null,
            "userPrincipalName": address,
            "id": id,
        }),
    )
}

/// `room-01@x` → `Room 01`: something a directory could hold.
fn display_name(address: &str) -> String {
    let local = address.split('@').next().unwrap_or(address);
    let mut out = String::with_capacity(local.len());
    let mut upper = true;
    for c in local.chars() {
        if matches!(c, '-' | '_' | '.') {
            out.push(' ');
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

async fn get_event(
    State(shared): State<AppState>,
    Path((room, id)): Path<(String, String)>,
) -> Response {
    let found = {
        let state = shared.lock();
        state.cal.user(&room).map(|r| r.instance(&id))
    };
    match found {
        None => unknown_user(&room),
        Some(None) => graph_error(
            StatusCode::NOT_FOUND,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        ),
        Some(Some(inst)) => {
            let mut v = event_json(&inst);
            if let Some(o) = v.as_object_mut() {
                o.insert(
                    "@odata.context".to_owned(),
                    json!(format!(
                        "{}/v1.0/$metadata#users('{room}')/events/$entity",
                        shared.base_url
                    )),
                );
            }
            json_response(StatusCode::OK, &v)
        }
    }
}

/// `Prefer: odata.maxpagesize=N` (among other preferences), capped.
fn page_size(headers: &HeaderMap) -> usize {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            if k.trim().eq_ignore_ascii_case("odata.maxpagesize") {
                v.trim().trim_matches('"').parse::<usize>().ok()
            } else {
                None
            }
        })
        .next()
        .unwrap_or(DEFAULT_PAGE_SIZE)
        .clamp(1, MAX_PAGE_SIZE)
}

fn sync_state_not_found() -> Response {
    graph_error(
        StatusCode::GONE,
        "syncStateNotFound",
        "The sync state generation is not found.",
    )
}

/// Serves the first page of `page` and parks the rest behind a `$skiptoken`.
fn serve_page(shared: &AppState, mut page: Page, context: &str) -> Response {
    let rest = if page.values.len() > page.page_size {
        page.values.split_off(page.page_size)
    } else {
        Vec::new()
    };
    let mut body = serde_json::Map::new();
    body.insert("@odata.context".to_owned(), json!(context));
    let mut state = shared.lock();
    if !rest.is_empty() {
        let token = state.rng.hex(24);
        body.insert(
            "@odata.nextLink".to_owned(),
            json!(format!(
                "{}{}?$skiptoken={token}",
                shared.base_url, page.path
            )),
        );
        state.pages.insert(
            token,
            Page {
                values: rest,
                page_size: page.page_size,
                path: page.path.clone(),
                then: page.then.clone(),
            },
        );
    } else if let Some(delta) = page.then.take() {
        let token = state.rng.hex(24);
        body.insert(
            "@odata.deltaLink".to_owned(),
            json!(format!(
                "{}{}?$deltatoken={token}",
                shared.base_url, page.path
            )),
        );
        state.delta_links.insert(token, delta);
    }
    drop(state);
    body.insert("value".to_owned(), Value::Array(page.values));
    let mut response = json_response(StatusCode::OK, &Value::Object(body));
    if let Ok(v) = HeaderValue::from_str(&format!("odata.maxpagesize={}", page.page_size)) {
        response.headers_mut().insert("preference-applied", v);
    }
    response
}

fn window(query: &HashMap<String, String>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let get = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .and_then(|(_, v)| parse_time(v))
    };
    match (get("startDateTime"), get("endDateTime")) {
        (Some(from), Some(to)) if from < to => Some((from, to)),
        _ => None,
    }
}

fn bad_window() -> Response {
    graph_error(
        StatusCode::BAD_REQUEST,
        "ErrorInvalidParameter",
        "This request requires a time window specified by the query string parameters StartDateTime and EndDateTime.",
    )
}

fn continuation(shared: &AppState, query: &HashMap<String, String>) -> Option<Result<Page, ()>> {
    let token = query.get("$skiptoken")?;
    Some(shared.lock().pages.remove(token).ok_or(()))
}

async fn calendar_view(
    State(shared): State<AppState>,
    Path(room): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let context = format!(
        "{}/v1.0/$metadata#users('{room}')/calendarView",
        shared.base_url
    );
    match continuation(&shared, &query) {
        Some(Ok(page)) => return serve_page(&shared, page, &context),
        Some(Err(())) => return sync_state_not_found(),
        None => {}
    }
    let Some((from, to)) = window(&query) else {
        return bad_window();
    };
    let values = {
        let state = shared.lock();
        let Some(r) = state.cal.user(&room) else {
            return unknown_user(&room);
        };
        r.view(from, to).iter().map(event_json).collect()
    };
    let page = Page {
        values,
        page_size: page_size(&headers),
        path: format!("/v1.0/users/{room}/calendarView"),
        then: None,
    };
    serve_page(&shared, page, &context)
}

fn removed(id: &str) -> Value {
    json!({ "@odata.type": "#microsoft.graph.event", "id": id, "@removed": { "reason": "deleted" } })
}

/// The changes of one room between a delta state and now.
fn delta_values(r: &Room, since: &DeltaState) -> Vec<Value> {
    let mut out = Vec::new();
    for (id, _) in r.changed_since(since.seq) {
        if let Some(item) = r.items.get(&id) {
            for inst in item.expand() {
                if inst.overlaps(since.from, since.to) {
                    out.push(event_json(&inst));
                } else {
                    // Moved out of the window: Graph reports it under @removed.
                    out.push(removed(&inst.id));
                }
            }
        } else if let Some(item) = r.deleted.get(&id) {
            out.extend(item.expand().iter().map(|inst| removed(&inst.id)));
        }
    }
    out
}

async fn calendar_delta(
    State(shared): State<AppState>,
    Path(room): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let context = format!("{}/v1.0/$metadata#Collection(event)", shared.base_url);
    match continuation(&shared, &query) {
        Some(Ok(page)) => return serve_page(&shared, page, &context),
        Some(Err(())) => return sync_state_not_found(),
        None => {}
    }
    let path = format!("/v1.0/users/{room}/calendarView/delta");
    let page = if let Some(token) = query.get("$deltatoken") {
        let state = shared.lock();
        let Some(since) = state.delta_links.get(token).cloned() else {
            return sync_state_not_found();
        };
        let Some(r) = state.cal.room(&since.room) else {
            return sync_state_not_found();
        };
        Page {
            values: delta_values(r, &since),
            page_size: page_size(&headers),
            path,
            then: Some(DeltaState {
                seq: state.cal.seq,
                ..since
            }),
        }
    } else {
        let Some((from, to)) = window(&query) else {
            return bad_window();
        };
        let state = shared.lock();
        let Some(r) = state.cal.user(&room) else {
            return unknown_user(&room);
        };
        Page {
            values: r.view(from, to).iter().map(event_json).collect(),
            page_size: page_size(&headers),
            path,
            then: Some(DeltaState {
                room: r.address.clone(),
                from,
                to,
                seq: state.cal.seq,
            }),
        }
    };
    serve_page(&shared, page, &context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_name_a_room_in_any_case_with_or_without_a_leading_slash() {
        assert_eq!(
            resource_room("/Users/Room1@Sim.Example/Events").as_deref(),
            Some("room1@sim.example")
        );
        assert_eq!(
            resource_room("users/room1%40sim.example/events").as_deref(),
            Some("room1@sim.example")
        );
        assert_eq!(resource_room("users/room1@sim.example/messages"), None);
        assert_eq!(resource_room("me/events"), None);
    }

    #[test]
    fn notification_urls_must_be_https_or_plain_http_to_loopback() {
        assert!(notification_url_ok(
            "https://rooms.example.com/api/webhooks/exchange"
        ));
        assert!(notification_url_ok("http://127.0.0.1:8080/hook"));
        assert!(notification_url_ok("http://localhost/hook"));
        assert!(!notification_url_ok("http://rooms.example.com/hook"));
        assert!(!notification_url_ok("ftp://127.0.0.1/hook"));
        assert!(!notification_url_ok("not a url"));
    }

    #[test]
    fn the_page_size_comes_from_the_prefer_header_among_other_preferences() {
        let mut h = HeaderMap::new();
        assert_eq!(page_size(&h), DEFAULT_PAGE_SIZE);
        h.insert(
            "prefer",
            HeaderValue::from_static("outlook.timezone=\"UTC\", odata.maxpagesize=3"),
        );
        assert_eq!(page_size(&h), 3);
    }
}
