//! Microsoft Graph under `/v1.0`: change-notification subscriptions (create with the
//! validation handshake, renew, delete, list), users, events by id, `calendarView` with its
//! delta query (also under the OData function spelling `delta()` the SDKs use), and event
//! writes ([`writes`]), each answering with Graph's JSON shapes and error bodies.
//!
//! Series look as Graph shows them: calendar views and delta list occurrences and
//! exceptions (each with its own `iCalUId`, its `seriesMasterId` and `originalStart`), never
//! the master, which is read by id with its `recurrence`. Delta and paging tokens die as
//! Exchange's sync states do: each delta round of a chain is a generation, only the newest
//! [`LIVE_GENERATIONS`] stay usable, and anything older or unknown answers `410 Gone` with
//! `SyncStateNotFound`.
//!
//! Every route needs a live bearer token issued for Graph (an Exchange token gets `401
//! InvalidAuthenticationToken`, as a wrong audience does), and an injected throttle answers
//! `429` with `Retry-After` before the route runs. Users (rooms) are named by UPN or by
//! object id alike, and notifications name them by object id, as Graph does.

use std::collections::{BTreeSet, HashMap, VecDeque};
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

use super::busy::SplitMix64;
use super::calendar::{Instance, InstanceKind, Item, Room, occurrence_id, weekday_name};
use super::control::{Backend, GraphSubscriptionSnapshot, PushRecord};
use super::ids::{self, GraphIdType};
use super::oauth::TokenResource;
mod writes;
pub(crate) mod zones;

use super::{
    AppState, BearerCheck, SimState, check_bearer, ews_datetime, graph_datetime, json_response,
    odata_time,
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
/// How many of a delta chain's newest generations stay usable. Exchange keeps only the
/// last few sync states of a chain, so a delta link dies once newer rounds were issued.
pub(crate) const LIVE_GENERATIONS: usize = 3;
/// Most parked `calendarView` (not delta) pages kept; the oldest are forgotten first.
const MAX_VIEW_PAGES: usize = 1000;

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

/// One page of an answer, parked behind its `$skiptoken`. Pages can be fetched again (a
/// client retrying a lost response) as long as their generation lives.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    values: Vec<Value>,
    page_size: usize,
    path: String,
    /// The `$skiptoken` of the next page; `None` on the last page.
    next: Option<String>,
    /// On the last page of a delta round: the `$deltatoken` of its `@odata.deltaLink`.
    delta: Option<String>,
    /// The chain and generation of a delta round's page; `None` for `calendarView`.
    generation: Option<(u32, u64)>,
}

/// What a delta link stands for: a room, a window, and the change-log position.
#[derive(Debug, Clone)]
pub(crate) struct DeltaState {
    room: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    seq: u64,
}

/// An issued `@odata.deltaLink`.
#[derive(Debug, Clone)]
struct DeltaLink {
    chain: u32,
    generation: u64,
    state: DeltaState,
}

/// One delta chain: an initial round and every round that followed its links.
#[derive(Debug, Default)]
struct Chain {
    highest: u64,
    /// The generations still usable, oldest first.
    live: VecDeque<u64>,
}

/// Every delta and paging token issued and still alive.
#[derive(Debug, Default)]
pub(crate) struct DeltaStore {
    next_chain: u32,
    chains: HashMap<u32, Chain>,
    links: HashMap<String, DeltaLink>,
    pages: HashMap<String, Page>,
    /// `calendarView` skiptokens, oldest first, to bound how many are kept.
    view_pages: VecDeque<String>,
}

impl DeltaStore {
    /// Forgets every link and page ([`Fault::ExpireDeltaLinks`](super::Fault)).
    pub(crate) fn expire_all(&mut self) {
        self.links.clear();
        self.pages.clear();
        self.view_pages.clear();
        for chain in self.chains.values_mut() {
            chain.live.clear();
        }
    }

    fn new_chain(&mut self) -> u32 {
        self.next_chain += 1;
        self.next_chain
    }

    /// Opens the next generation of a chain; the generation that falls out of the newest
    /// [`LIVE_GENERATIONS`] dies with its link and pages.
    fn next_generation(&mut self, chain: u32) -> u64 {
        let c = self.chains.entry(chain).or_default();
        c.highest += 1;
        let generation = c.highest;
        c.live.push_back(generation);
        let mut dead = Vec::new();
        while c.live.len() > LIVE_GENERATIONS {
            dead.extend(c.live.pop_front());
        }
        for gone in dead {
            self.links
                .retain(|_, l| !(l.chain == chain && l.generation == gone));
            self.pages
                .retain(|_, p| p.generation != Some((chain, gone)));
        }
        generation
    }

    fn park_view_page(&mut self, token: String, page: Page) {
        self.view_pages.push_back(token.clone());
        self.pages.insert(token, page);
        while self.view_pages.len() > MAX_VIEW_PAGES {
            if let Some(old) = self.view_pages.pop_front() {
                self.pages.remove(&old);
            }
        }
    }

    /// Exchange's answer to a token whose sync state is gone, naming the generation asked
    /// for and the ones still kept, e.g. `generation=149;[highest=157][155][156][157]`.
    fn not_found(&self, token: &str) -> Response {
        let (chain, generation) = token_generation(token).unwrap_or((0, 0));
        let mut message =
            format!("The sync state generation is not found; generation={generation};");
        if let Some(c) = self.chains.get(&chain) {
            message.push_str(&format!("[highest={}]", c.highest));
            for g in &c.live {
                message.push_str(&format!("[{g}]"));
            }
        }
        graph_error(StatusCode::GONE, "SyncStateNotFound", &message)
    }
}

/// A new opaque token that carries its chain and generation (both 0 for `calendarView`
/// pages), so even a dead one can be named in the error.
fn new_token(rng: &mut SplitMix64, chain: u32, generation: u64) -> String {
    format!("{}{chain:08x}{generation:016x}", rng.hex(16))
}

fn token_generation(token: &str) -> Option<(u32, u64)> {
    let tail = token.get(token.len().checked_sub(24)?..)?;
    let chain = u32::from_str_radix(tail.get(..8)?, 16).ok()?;
    let generation = u64::from_str_radix(tail.get(8..)?, 16).ok()?;
    Some((chain, generation))
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
        .route(
            "/v1.0/users/{room}/events",
            axum::routing::post(writes::create_event),
        )
        .route(
            "/v1.0/users/{room}/calendar/events",
            axum::routing::post(writes::create_event),
        )
        .route(
            "/v1.0/users/{room}/events/{id}",
            get(get_event)
                .patch(writes::update_event)
                .delete(writes::delete_event),
        )
        .route(
            "/v1.0/users/{room}/events/{id}/permanentDelete",
            axum::routing::post(writes::permanent_delete_event),
        )
        .route("/v1.0/users/{room}/calendarView", get(calendar_view))
        .route("/v1.0/users/{room}/calendarview", get(calendar_view))
        .route("/v1.0/users/{room}/calendarView/delta", get(calendar_delta))
        .route("/v1.0/users/{room}/calendarview/delta", get(calendar_delta))
        // The OData function-call spelling names the same function.
        .route(
            "/v1.0/users/{room}/calendarView/delta()",
            get(calendar_delta),
        )
        .route(
            "/v1.0/users/{room}/calendarview/delta()",
            get(calendar_delta),
        )
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

/// Requests Graph lets an app have in flight at once for one mailbox (Outlook's
/// `MailboxConcurrency` limit); the next gets `429 ApplicationThrottled`.
pub(crate) const MAILBOX_CONCURRENCY: usize = 4;
/// The `Retry-After` of a concurrency refusal, in seconds.
const CONCURRENCY_RETRY_AFTER: &str = "1";

/// One request counted against a mailbox's concurrency until dropped.
#[derive(Debug)]
pub(crate) struct MailboxSlot {
    shared: AppState,
    room: String,
}

impl Drop for MailboxSlot {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if let Some(n) = state.mailbox_in_flight.get_mut(&self.room) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.mailbox_in_flight.remove(&self.room);
            }
        }
    }
}

/// Counts an authenticated Graph request on a mailbox's data (`/v1.0/users/{user}/…`:
/// events, calendar views, delta; not the directory entry itself, not subscriptions)
/// against the mailbox's concurrency, whichever name (UPN or object id) it uses. `Ok(None)`
/// for a request that does not count; `Err` with the `429` for one over the limit.
pub(crate) fn mailbox_slot(
    shared: &AppState,
    path: &str,
    headers: &HeaderMap,
) -> Result<Option<MailboxSlot>, Box<Response>> {
    let Some((user, tail)) = path
        .strip_prefix("/v1.0/users/")
        .and_then(|rest| rest.split_once('/'))
    else {
        return Ok(None);
    };
    if tail.is_empty() || check_bearer(shared, headers, TokenResource::Graph) != BearerCheck::Valid
    {
        return Ok(None);
    }
    let user = percent_encoding::percent_decode_str(user).decode_utf8_lossy();
    let mut state = shared.lock();
    let Some(room) = state.cal.user(&user).map(|r| r.address.clone()) else {
        return Ok(None);
    };
    let in_flight = state.mailbox_in_flight.entry(room.clone()).or_default();
    if *in_flight >= MAILBOX_CONCURRENCY {
        drop(state);
        let mut r = graph_error(
            StatusCode::TOO_MANY_REQUESTS,
            "ApplicationThrottled",
            "Application is over its MailboxConcurrency limit.",
        );
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(CONCURRENCY_RETRY_AFTER),
        );
        return Err(Box::new(r));
    }
    *in_flight += 1;
    Ok(Some(MailboxSlot {
        shared: AppState::clone(shared),
        room,
    }))
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
pub(crate) fn prefers_immutable_id(headers: &HeaderMap) -> bool {
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
        notifications: 1,
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

/// An event, series master, occurrence or exception as Graph serializes it.
/// One event as `GET /users/{room}/events/{id}` and the event writes answer it: in the id
/// format and the time zone the request prefers, with its `@odata.context`.
pub(crate) fn event_entity(
    shared: &AppState,
    room: &str,
    inst: &Instance,
    headers: &HeaderMap,
) -> Value {
    let mut v = event_json(inst);
    ids::graph_event_ids(
        &mut v,
        GraphIdType::from_prefer(prefers_immutable_id(headers)),
    );
    if let Some(zone) = zones::preferred(headers) {
        zones::apply(&mut v, &zone);
    }
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "@odata.context".to_owned(),
            json!(format!(
                "{}/v1.0/$metadata#users('{room}')/events/$entity",
                shared.base_url
            )),
        );
    }
    v
}

pub(crate) fn event_json(inst: &Instance) -> Value {
    let item = &inst.item;
    let m = &item.meeting;
    let cancelled = inst.cancelled();
    let series_master = if inst.kind.in_series() {
        json!(item.id)
    } else {
        Value::Null
    };
    let recurrence = if inst.kind == InstanceKind::Master {
        recurrence_json(item)
    } else {
        Value::Null
    };
    let mut v = json!({
        "@odata.etag": inst.etag(),
        "id": inst.id,
        "createdDateTime": odata_time(item.created_at),
        "lastModifiedDateTime": odata_time(inst.modified_at()),
        "changeKey": inst.change_key(),
        "iCalUId": inst.ical_uid(),
        "subject": m.subject,
        "bodyPreview": "",
        "isAllDay": m.is_all_day,
        "isCancelled": cancelled,
        "showAs": if cancelled { "free" } else { "busy" },
        "type": inst.kind.graph(),
        "seriesMasterId": series_master,
        "recurrence": recurrence,
        "start": { "dateTime": graph_datetime(inst.start), "timeZone": "UTC" },
        "end": { "dateTime": graph_datetime(inst.end), "timeZone": "UTC" },
        "location": { "displayName": m.location, "locationType": "default" },
        "organizer": {
            "emailAddress": { "name": display_name(&m.organizer), "address": m.organizer }
        },
    });
    // Only occurrences and exceptions have an original start; Graph writes it in UTC
    // without fractions.
    if let (Some(at), Some(o)) = (inst.original_start(), v.as_object_mut()) {
        o.insert("originalStart".to_owned(), json!(ews_datetime(at)));
    }
    v
}

/// A master's `recurrence`: its `pattern` and `range` as Graph's patternedRecurrence.
fn recurrence_json(item: &Item) -> Value {
    let Some(r) = item.recurrence else {
        return Value::Null;
    };
    let start = item.meeting.start;
    let (kind, days) = if r.is_weekly() {
        (
            "weekly",
            json!([weekday_name(start.date_naive()).to_ascii_lowercase()]),
        )
    } else {
        ("daily", json!([]))
    };
    let start_date = start.format("%Y-%m-%d").to_string();
    let range = match item.last_pattern_date() {
        Some(last) if item.ends_by_date => json!({
            "type": "endDate",
            "startDate": start_date,
            "endDate": last.format("%Y-%m-%d").to_string(),
            "recurrenceTimeZone": "UTC",
            "numberOfOccurrences": 0,
        }),
        _ => json!({
            "type": "numbered",
            "startDate": start_date,
            "endDate": "0001-01-01",
            "recurrenceTimeZone": "UTC",
            "numberOfOccurrences": r.count(),
        }),
    };
    json!({
        "pattern": {
            "type": kind,
            "interval": 1,
            "month": 0,
            "dayOfMonth": 0,
            "daysOfWeek": days,
            "firstDayOfWeek": "sunday",
            "index": "first",
        },
        "range": range,
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
pub(crate) fn display_name(address: &str) -> String {
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
    headers: HeaderMap,
) -> Response {
    // Graph takes an event id in any format (EWS, REST or immutable) and answers in the
    // format the request prefers (`event_entity`).
    let found = {
        let state = shared.lock();
        state.cal.user(&room).map(|r| r.instance(&ids::ews_id(&id)))
    };
    match found {
        None => unknown_user(&room),
        Some(None) => graph_error(
            StatusCode::NOT_FOUND,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        ),
        Some(Some(inst)) => json_response(
            StatusCode::OK,
            &event_entity(&shared, &room, &inst, &headers),
        ),
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

/// Splits an answer into pages, parks every page behind a `$skiptoken` (the first one
/// too, though it is served at once) and returns the first. `delta` names the chain,
/// generation and state of a delta round, whose last page carries the deltaLink.
fn park_answer(
    state: &mut SimState,
    path: &str,
    values: Vec<Value>,
    page_size: usize,
    delta: Option<(u32, u64, DeltaState)>,
) -> Page {
    let generation = delta.as_ref().map(|(c, g, _)| (*c, *g));
    let (chain, number) = generation.unwrap_or((0, 0));
    let mut chunks: Vec<Vec<Value>> = values
        .chunks(page_size.max(1))
        .map(<[Value]>::to_vec)
        .collect();
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    // Page i > 0 is parked behind skiptoken i - 1; the first is served at once.
    let tokens: Vec<String> = (1..chunks.len())
        .map(|_| new_token(&mut state.rng, chain, number))
        .collect();
    let delta_token = delta.map(|(chain, generation, then)| {
        let token = new_token(&mut state.rng, chain, generation);
        state.delta.links.insert(
            token.clone(),
            DeltaLink {
                chain,
                generation,
                state: then,
            },
        );
        token
    });
    let last = chunks.len() - 1;
    let mut pages = chunks.into_iter().enumerate().map(|(i, values)| Page {
        values,
        page_size,
        path: path.to_owned(),
        next: tokens.get(i).cloned(),
        delta: if i == last { delta_token.clone() } else { None },
        generation,
    });
    let first = pages.next();
    let rest: Vec<Page> = pages.collect();
    for (token, page) in tokens.into_iter().zip(rest) {
        if generation.is_some() {
            state.delta.pages.insert(token, page);
        } else {
            state.delta.park_view_page(token, page);
        }
    }
    first.unwrap_or_else(|| Page {
        values: Vec::new(),
        page_size,
        path: path.to_owned(),
        next: None,
        delta: delta_token,
        generation,
    })
}

/// One page with its `@odata.nextLink` or `@odata.deltaLink` and `Preference-Applied`, its
/// events' ids (parked as EWS ids) in the format this request asked for, and their times
/// (parked in UTC) in the zone it prefers.
fn serve_page(shared: &AppState, page: Page, context: &str, headers: &HeaderMap) -> Response {
    let id_type = GraphIdType::from_prefer(prefers_immutable_id(headers));
    let zone = zones::preferred(headers);
    let mut values = page.values;
    for v in &mut values {
        ids::graph_event_ids(v, id_type);
        if let Some(zone) = &zone {
            zones::apply(v, zone);
        }
    }
    let mut body = serde_json::Map::new();
    body.insert("@odata.context".to_owned(), json!(context));
    if let Some(next) = &page.next {
        body.insert(
            "@odata.nextLink".to_owned(),
            json!(format!(
                "{}{}?$skiptoken={next}",
                shared.base_url, page.path
            )),
        );
    } else if let Some(delta) = &page.delta {
        body.insert(
            "@odata.deltaLink".to_owned(),
            json!(format!(
                "{}{}?$deltatoken={delta}",
                shared.base_url, page.path
            )),
        );
    }
    body.insert("value".to_owned(), Value::Array(values));
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

/// The parked page a `$skiptoken` names: `None` without one, `Err` with the `410` for a
/// token that is unknown or whose generation died.
fn continuation(
    shared: &AppState,
    query: &HashMap<String, String>,
) -> Option<Result<Page, Response>> {
    let token = query.get("$skiptoken")?;
    let state = shared.lock();
    Some(
        state
            .delta
            .pages
            .get(token)
            .cloned()
            .ok_or_else(|| state.delta.not_found(token)),
    )
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
        Some(Ok(page)) => return serve_page(&shared, page, &context, &headers),
        Some(Err(gone)) => return gone,
        None => {}
    }
    let Some((from, to)) = window(&query) else {
        return bad_window();
    };
    let page = {
        let mut state = shared.lock();
        let Some(r) = state.cal.user(&room) else {
            return unknown_user(&room);
        };
        let values = r.view(from, to).iter().map(event_json).collect();
        park_answer(
            &mut state,
            &format!("/v1.0/users/{room}/calendarView"),
            values,
            page_size(&headers),
            None,
        )
    };
    serve_page(&shared, page, &context, &headers)
}

fn removed(id: &str) -> Value {
    json!({ "@odata.type": "#microsoft.graph.event", "id": id, "@removed": { "reason": "deleted" } })
}

/// The changes of one room between a delta state and now: instances that changed (or
/// moved out of the window, reported as removed), and removed occurrences and items.
fn delta_values(r: &Room, since: &DeltaState) -> Vec<Value> {
    let shown = |inst: &Instance| {
        if inst.overlaps(since.from, since.to) {
            event_json(inst)
        } else {
            // Moved out of the window: Graph reports it under @removed.
            removed(&inst.id)
        }
    };
    let mut out = Vec::new();
    for changed in r.changed_since(since.seq) {
        let (item, live) = match (
            r.items.get(&changed.item_id),
            r.deleted.get(&changed.item_id),
        ) {
            (Some(item), _) => (item, true),
            (None, Some(item)) => (item, false),
            (None, None) => continue,
        };
        let mut reported = BTreeSet::new();
        if changed.whole || !live {
            for inst in item.expand() {
                out.push(if live {
                    shown(&inst)
                } else {
                    removed(&inst.id)
                });
                reported.insert(inst.id);
            }
        }
        for &index in &changed.occurrences {
            let id = occurrence_id(&item.id, index);
            if reported.contains(&id) {
                continue;
            }
            match item.occurrence(index).filter(|_| live) {
                Some(inst) => out.push(shown(&inst)),
                // Deleted from the series or cut off with its end.
                None => out.push(removed(&id)),
            }
            reported.insert(id);
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
        Some(Ok(page)) => return serve_page(&shared, page, &context, &headers),
        Some(Err(gone)) => return gone,
        None => {}
    }
    let path = format!("/v1.0/users/{room}/calendarView/delta");
    let page = if let Some(token) = query.get("$deltatoken") {
        let mut state = shared.lock();
        let Some(link) = state.delta.links.get(token).cloned() else {
            return state.delta.not_found(token);
        };
        let Some(r) = state.cal.room(&link.state.room) else {
            return state.delta.not_found(token);
        };
        let values = delta_values(r, &link.state);
        let seq = state.cal.seq;
        let generation = state.delta.next_generation(link.chain);
        let then = DeltaState { seq, ..link.state };
        park_answer(
            &mut state,
            &path,
            values,
            page_size(&headers),
            Some((link.chain, generation, then)),
        )
    } else {
        let Some((from, to)) = window(&query) else {
            return bad_window();
        };
        let mut state = shared.lock();
        let Some(r) = state.cal.user(&room) else {
            return unknown_user(&room);
        };
        let values = r.view(from, to).iter().map(event_json).collect();
        let then = DeltaState {
            room: r.address.clone(),
            from,
            to,
            seq: state.cal.seq,
        };
        let chain = state.delta.new_chain();
        let generation = state.delta.next_generation(chain);
        park_answer(
            &mut state,
            &path,
            values,
            page_size(&headers),
            Some((chain, generation, then)),
        )
    };
    serve_page(&shared, page, &context, &headers)
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
    fn tokens_carry_their_chain_and_generation_after_an_opaque_prefix() {
        let token = new_token(&mut SplitMix64::new(1), 7, 149);
        assert_eq!(token_generation(&token), Some((7, 149)));
        assert_eq!(token_generation("short"), None);
    }

    #[test]
    fn a_chain_keeps_its_newest_three_generations_and_drops_the_links_of_older_ones() {
        let mut store = DeltaStore::default();
        let chain = store.new_chain();
        let other = store.new_chain();
        let state = DeltaState {
            room: "r@x".to_owned(),
            from: Utc::now(),
            to: Utc::now(),
            seq: 0,
        };
        let link = |store: &mut DeltaStore, chain, generation| {
            let token = format!("{chain}-{generation}");
            store.links.insert(
                token.clone(),
                DeltaLink {
                    chain,
                    generation,
                    state: state.clone(),
                },
            );
            token
        };
        let g1 = store.next_generation(chain);
        let first = link(&mut store, chain, g1);
        let o1 = store.next_generation(other);
        let other_first = link(&mut store, other, o1);
        for _ in 0..2 {
            store.next_generation(chain);
        }
        assert!(store.links.contains_key(&first));
        assert_eq!(store.next_generation(chain), 4);
        assert!(!store.links.contains_key(&first));
        assert!(store.links.contains_key(&other_first), "chains are apart");
        assert_eq!(
            store.chains[&chain]
                .live
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            [2, 3, 4]
        );
        store.expire_all();
        assert!(store.links.is_empty());
        assert!(store.chains[&chain].live.is_empty());
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
