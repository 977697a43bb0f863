//! The test and demo handle on a running simulator: book, move, cancel and delete
//! meetings, inject faults, and read back what the simulator saw and sent. [`Control`] is
//! the in-process API; the same operations are served as JSON under `/_sim/` (no token
//! needed; the simulator listens on loopback only):
//!
//! | request | body / answer |
//! | --- | --- |
//! | `POST /_sim/rooms/{room}/meetings` | a [`Meeting`] → `201 {"id"}` |
//! | `PATCH /_sim/rooms/{room}/meetings/{id}` | `{"start","end"}` or `{"cancel":true}` |
//! | `DELETE /_sim/rooms/{room}/meetings/{id}[?soft=true]` | `204` (hard delete, or move to Deleted Items) |
//! | `POST /_sim/rooms/{room}/series` | a [`Meeting`] plus `"recurrence":{"pattern":"daily"\|"weekly","count":N}` → `201 {"id"}` |
//! | `GET /_sim/rooms/{room}/series/{id}/occurrences` | `{"ids":[…]}`: the live occurrences and exceptions, in series order |
//! | `PATCH /_sim/rooms/{room}/series/{id}/occurrences/{index}` | `{"start","end"}` (it becomes an exception) or `{"cancel":true}` → `{"id"}` |
//! | `DELETE /_sim/rooms/{room}/series/{id}/occurrences/{index}` | `{"id"}`: the occurrence is deleted from the series |
//! | `POST /_sim/rooms/{room}/series/{id}/end` | `{"count":N}` → `204`: the series keeps its first `N` occurrences |
//! | `POST /_sim/faults` | a [`Fault`], e.g. `{"kind":"graphThrottle","count":2,"retryAfterSecs":5}` |
//! | `POST /_sim/lifecycle` | `{"subscriptionId","lifecycleEvent":"missed"\|"subscriptionRemoved"\|"reauthorizationRequired"}` |
//! | `GET /_sim/health` | `200 {"status":"ok","baseUrl","rooms"}` once the simulator serves |
//! | `GET /_sim/rooms` | every room as a [`RoomIdentity`]: its SMTP address and its Graph object id |
//! | `GET /_sim/requests`, `/_sim/pushes`, `/_sim/subscriptions` | the records and snapshots below |
//!
//! The faults, as `POST /_sim/faults` bodies:
//!
//! | `kind` | other fields | effect |
//! | --- | --- | --- |
//! | `graphThrottle` | `count`, `retryAfterSecs` or `retryAfter` | the next `count` Graph calls get `429 ApplicationThrottled`; `retryAfter` is sent verbatim (`"1.5"`, an HTTP-date), else `retryAfterSecs` |
//! | `ewsServerBusy` | `count`, `backoffMs` | the next `count` EWS calls get an `ErrorServerBusy` SOAP fault with `BackOffMilliseconds` |
//! | `failPushes` | `count` | the next `count` push attempts are lost on the way (and retried) |
//! | `duplicatePushes` | `count` | the next `count` delivered notifications are delivered twice |
//! | `lifecycleEvent` | `subscriptionId`, `lifecycle` | a Graph lifecycle notification now, to the `lifecycleNotificationUrl` only |
//! | `wrongTokens` | | every token issued so far is revoked |
//! | `expireDeltaLinks` | | every delta and paging link answers `410 SyncStateNotFound` |
//! | `forgetGraphSubscription` | `subscriptionId` | the Graph subscription disappears without a word; GET and PATCH then answer `404` |
//! | `failValidation` | `count` | the next `count` validation handshakes fail whatever the callback answers: create and renew get `400 ValidationError` |
//! | `dropEwsSubscription` | `subscriptionId` | the EWS push subscription dies silently (a mailbox-server failover): no status events, no notifications |
//! | `ewsReadEventsFailed` | `subscriptionId` | the EWS subscription pushes one `ErrorReadEventsFailed` message and ends |
//! | `expireEwsWatermarks` | | every EWS watermark issued so far is unknown: a Subscribe carrying one gets `ErrorInvalidWatermark` |

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::calendar::{Applied, Meeting, Recurrence, parse_occurrence_id};
use super::ids::{self, GraphIdType};
use super::oauth::TokenResource;
use super::{AppState, Shared, SimError, json_response, push};

/// Which protocol a push used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Backend {
    Graph,
    Ews,
}

/// How a request authenticated: the scheme of its `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum AuthScheme {
    /// No `Authorization` header.
    None,
    Bearer,
    Basic,
    /// Any other scheme (NTLM, Negotiate...).
    Other,
}

/// A request the simulator answered (control API calls excluded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The query string, undecoded, without the `?` (Graph's `$deltatoken`, `$skiptoken`...).
    pub query: Option<String>,
    /// For EWS, the SOAP operation's local name (`SyncFolderItems`, `GetItem`...), when the
    /// body could be read.
    pub operation: Option<String>,
    pub at: DateTime<Utc>,
    pub status: u16,
    /// The `Prefer` header (several are joined with `, `).
    pub prefer: Option<String>,
    /// The `X-AnchorMailbox` header.
    pub anchor_mailbox: Option<String>,
    /// The authorization scheme; the credential itself is never recorded.
    pub auth_scheme: AuthScheme,
    /// For a bearer token the simulator issued, the resource it was issued for.
    pub token_resource: Option<TokenResource>,
}

/// A room mailbox as Graph names it: by SMTP address (its UPN) or by object id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomIdentity {
    pub address: String,
    /// The stable directory object id (a GUID) that Graph notifications name the room by.
    pub object_id: String,
}

/// One POST to a callback: a delivery attempt of a notification, or of a Graph batch of them.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushRecord {
    pub backend: Backend,
    pub url: String,
    /// The subscription the POST was for; a Graph batch that carried notifications of
    /// several subscriptions (which share the URL) names each once, comma-separated.
    pub subscription_id: String,
    /// What was pushed: `created`/`updated`/`deleted`/a lifecycle event for Graph (each
    /// kind in a batch once, comma-separated in order of first appearance, e.g.
    /// `created,updated`), `notification`/`status`/`error` (the `ErrorReadEventsFailed`
    /// farewell) for EWS, `validation` for a Graph handshake; a redelivery injected by
    /// [`Fault::DuplicatePushes`] has ` (duplicate)` appended.
    pub kind: String,
    /// 1 for the first delivery, 2 for the first retry...; for a Graph batch, the highest
    /// try among its notifications (a retried one travels with fresh ones).
    pub attempt: u32,
    /// How many Graph notifications the POST's `value[]` carried; 1 for EWS and handshakes.
    pub notifications: usize,
    /// The HTTP status, `None` when no reply came (refused, timed out, dropped by a fault).
    pub status: Option<u16>,
    pub at: DateTime<Utc>,
    pub body: String,
}

/// A Graph subscription as the simulator holds it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphSubscriptionSnapshot {
    pub id: String,
    pub resource: String,
    pub room: String,
    pub change_type: String,
    pub notification_url: String,
    pub lifecycle_notification_url: Option<String>,
    pub client_state: Option<String>,
    pub expiration_date_time: DateTime<Utc>,
    /// Whether the create request carried `Prefer: IdType="ImmutableId"`.
    pub prefer_immutable_id: bool,
}

/// An EWS push subscription as the simulator holds it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EwsSubscriptionSnapshot {
    pub id: String,
    pub room: String,
    pub url: String,
    pub status_frequency_minutes: u32,
    pub event_types: Vec<String>,
    /// `ExchangeImpersonation` address from the Subscribe header.
    pub impersonated: Option<String>,
    /// `X-AnchorMailbox` HTTP header of the Subscribe call.
    pub anchor_mailbox: Option<String>,
    /// The watermark the Subscribe request carried, if any.
    pub subscribed_with_watermark: Option<String>,
    /// The watermark of the last event delivered.
    pub last_watermark: String,
    /// `false` once the subscription ended, for the reason in `ended_by`.
    pub alive: bool,
    pub ended_by: Option<EwsEnd>,
}

/// Why an EWS push subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum EwsEnd {
    /// The callback answered `Unsubscribe`.
    Unsubscribe,
    /// Deliveries kept failing until the retry interval outgrew the `StatusFrequency`.
    RetriesExhausted,
    /// Dropped silently by [`Fault::DropEwsSubscription`].
    Dropped,
    /// Ended with an `ErrorReadEventsFailed` push by [`Fault::EwsReadEventsFailed`].
    ReadEventsFailed,
}

/// The lifecycle events Graph sends for Outlook resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LifecycleKind {
    ReauthorizationRequired,
    SubscriptionRemoved,
    Missed,
}

impl LifecycleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReauthorizationRequired => "reauthorizationRequired",
            Self::SubscriptionRemoved => "subscriptionRemoved",
            Self::Missed => "missed",
        }
    }
}

/// Something to go wrong on purpose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Fault {
    /// The next `count` Graph calls get `429` with `Retry-After`: `retry_after` verbatim when
    /// given (a fractional `"1.5"` or an HTTP-date, to test a client's parsing), else
    /// `retry_after_secs`.
    GraphThrottle {
        count: u32,
        #[serde(default)]
        retry_after_secs: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after: Option<String>,
    },
    /// The next `count` EWS calls get an `ErrorServerBusy` fault with `BackOffMilliseconds`.
    EwsServerBusy { count: u32, backoff_ms: u32 },
    /// The next `count` push attempts (Graph or EWS) are lost on the way, as if the
    /// network dropped them; they count as failed deliveries and are retried.
    FailPushes { count: u32 },
    /// The next `count` notifications that are delivered successfully are delivered a
    /// second time, as Graph and Exchange occasionally do.
    DuplicatePushes { count: u32 },
    /// Sends a Graph lifecycle notification now (`subscriptionRemoved` also removes it).
    LifecycleEvent {
        subscription_id: String,
        lifecycle: LifecycleKind,
    },
    /// Revokes every token issued so far: the next Graph/EWS calls get 401 until a new
    /// token is fetched.
    WrongTokens,
    /// Forgets every delta and paging link: their next use gets `410 SyncStateNotFound`.
    ExpireDeltaLinks,
    /// The Graph subscription disappears without a lifecycle notification, as Graph
    /// sometimes loses one: GET and PATCH then answer `404 ResourceNotFound`.
    ForgetGraphSubscription { subscription_id: String },
    /// The next `count` validation handshakes fail even when the callback echoes the token,
    /// so the create or renew that asked for them answers `400 ValidationError`.
    FailValidation { count: u32 },
    /// The EWS push subscription dies silently, as in a mailbox-server failover: no more
    /// status events or notifications, and nothing tells the client.
    DropEwsSubscription { subscription_id: String },
    /// The EWS push subscription sends one `ErrorReadEventsFailed` message (no
    /// `Notification`, the id only in `MessageXml`) and ends.
    EwsReadEventsFailed { subscription_id: String },
    /// Every EWS watermark issued so far becomes unknown: a Subscribe carrying one answers
    /// `ErrorInvalidWatermark` and creates nothing.
    ExpireEwsWatermarks,
}

/// Pending injected faults.
#[derive(Debug, Default, Clone)]
pub(crate) struct Faults {
    pub(crate) graph_throttle: u32,
    /// The `Retry-After` value sent with an injected 429.
    pub(crate) graph_retry_after: String,
    pub(crate) fail_validation: u32,
    pub(crate) ews_busy: u32,
    pub(crate) ews_backoff_ms: u32,
    pub(crate) fail_pushes: u32,
    pub(crate) duplicate_pushes: u32,
}

/// The handle tests and the demo drive a simulator with. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Control {
    shared: Arc<Shared>,
}

impl Control {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// The simulator's base URL.
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    fn applied(&self, applied: Applied) {
        push::on_change(&self.shared, &applied);
    }

    /// A booking made by someone else (a meeting request the room received): notified as
    /// created, then updated twice a moment later as the calendar attendant processes it.
    fn booked(&self, applied: Applied) -> String {
        let id = applied.item.id.clone();
        let room = applied.room.clone();
        self.applied(applied);
        push::spawn_attendant(&self.shared, room, id.clone());
        id
    }

    /// Books a meeting; returns its item id. The room's calendar attendant then updates it
    /// twice (a new change key and etag each time), as Exchange does with a request.
    ///
    /// # Errors
    ///
    /// [`SimError::InvalidMeeting`] when it ends before it starts.
    pub fn create_meeting(&self, room: &str, meeting: Meeting) -> Result<String, SimError> {
        let applied = self.shared.lock().cal.create(room, meeting, None)?;
        Ok(self.booked(applied))
    }

    /// Books a recurring series; returns the series master's id. The calendar attendant
    /// updates it twice, as [`create_meeting`](Self::create_meeting) says.
    ///
    /// # Errors
    ///
    /// [`SimError::InvalidMeeting`] for a bad meeting or occurrence count.
    pub fn create_series(
        &self,
        room: &str,
        meeting: Meeting,
        recurrence: Recurrence,
    ) -> Result<String, SimError> {
        let applied = self
            .shared
            .lock()
            .cal
            .create(room, meeting, Some(recurrence))?;
        Ok(self.booked(applied))
    }

    /// Moves a meeting (a series master moves every occurrence; exceptions keep their own
    /// times). An occurrence id moves that occurrence alone, as
    /// [`move_occurrence`](Self::move_occurrence) does.
    ///
    /// # Errors
    ///
    /// Unknown room or item, or an end before the start.
    pub fn move_meeting(
        &self,
        room: &str,
        id: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<(), SimError> {
        if let Some((master, index)) = self.occurrence_of(room, id) {
            return self
                .move_occurrence(room, &master, index, start, end)
                .map(drop);
        }
        let applied = self.shared.lock().cal.update(room, id, |item| {
            item.meeting.start = start;
            item.meeting.end = end;
            Ok(())
        })?;
        self.applied(applied);
        Ok(())
    }

    /// Marks a meeting cancelled (the room keeps its copy, as with `RemoveCanceledMeetings`
    /// off); a series master cancels the whole series, an occurrence id that occurrence.
    ///
    /// # Errors
    ///
    /// Unknown room or item.
    pub fn cancel_meeting(&self, room: &str, id: &str) -> Result<(), SimError> {
        if let Some((master, index)) = self.occurrence_of(room, id) {
            return self.cancel_occurrence(room, &master, index).map(drop);
        }
        let applied = self.shared.lock().cal.update(room, id, |item| {
            item.cancelled = true;
            Ok(())
        })?;
        self.applied(applied);
        Ok(())
    }

    /// Hard-deletes a meeting (EWS `DeletedEvent`, Graph `deleted`); an occurrence id
    /// deletes that occurrence from its series.
    ///
    /// # Errors
    ///
    /// Unknown room or item.
    pub fn delete_meeting(&self, room: &str, id: &str) -> Result<(), SimError> {
        if let Some((master, index)) = self.occurrence_of(room, id) {
            return self.delete_occurrence(room, &master, index).map(drop);
        }
        let applied = self.shared.lock().cal.delete(room, id, false)?;
        self.applied(applied);
        Ok(())
    }

    /// Moves a meeting to Deleted Items (EWS `MovedEvent` with a new id, Graph `deleted`).
    ///
    /// # Errors
    ///
    /// Unknown room or item.
    pub fn soft_delete_meeting(&self, room: &str, id: &str) -> Result<(), SimError> {
        let applied = self.shared.lock().cal.delete(room, id, true)?;
        self.applied(applied);
        Ok(())
    }

    /// The series and index an id names when it is an occurrence id rather than an item.
    fn occurrence_of(&self, room: &str, id: &str) -> Option<(String, u32)> {
        let state = self.shared.lock();
        let r = state.cal.room(room)?;
        if r.items.contains_key(id) {
            return None;
        }
        let (master, index) = parse_occurrence_id(id)?;
        r.items
            .contains_key(master)
            .then(|| (master.to_owned(), index))
    }

    /// Moves occurrence `index` (0-based) of a series: it becomes an exception at the new
    /// time and keeps its id, which is returned. Notified as a change of the master.
    ///
    /// # Errors
    ///
    /// Unknown room or series, an index beyond the series or deleted, an end before the
    /// start, or a start on or past a neighbouring occurrence's (which Exchange refuses).
    pub fn move_occurrence(
        &self,
        room: &str,
        master_id: &str,
        index: u32,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<String, SimError> {
        let (applied, id) = self
            .shared
            .lock()
            .cal
            .move_occurrence(room, master_id, index, start, end)?;
        self.applied(applied);
        Ok(id)
    }

    /// Cancels occurrence `index` alone: the room keeps it as an exception with
    /// `IsCancelled`/`isCancelled` set. Returns its id.
    ///
    /// # Errors
    ///
    /// Unknown room or series, or an index beyond the series or deleted.
    pub fn cancel_occurrence(
        &self,
        room: &str,
        master_id: &str,
        index: u32,
    ) -> Result<String, SimError> {
        let (applied, id) = self
            .shared
            .lock()
            .cal
            .cancel_occurrence(room, master_id, index)?;
        self.applied(applied);
        Ok(id)
    }

    /// Deletes occurrence `index` from its series (EWS `DeletedOccurrences`; Graph delta
    /// reports it under `@removed`). Returns the id it had.
    ///
    /// # Errors
    ///
    /// Unknown room or series, or an index beyond the series or already deleted.
    pub fn delete_occurrence(
        &self,
        room: &str,
        master_id: &str,
        index: u32,
    ) -> Result<String, SimError> {
        let (applied, id) = self
            .shared
            .lock()
            .cal
            .delete_occurrence(room, master_id, index)?;
        self.applied(applied);
        Ok(id)
    }

    /// Cuts a series to its first `count` occurrences; the later ones disappear (Graph
    /// delta reports them under `@removed`) and the range now ends on a date.
    ///
    /// # Errors
    ///
    /// Unknown room or series, or a `count` of 0 or beyond the series.
    pub fn end_series(&self, room: &str, master_id: &str, count: u32) -> Result<(), SimError> {
        let applied = self.shared.lock().cal.end_series(room, master_id, count)?;
        self.applied(applied);
        Ok(())
    }

    /// The ids of a series' current occurrences and exceptions, in series order (deleted
    /// ones left out).
    ///
    /// # Errors
    ///
    /// Unknown room or series, or an item that is not a series master.
    pub fn occurrence_ids(&self, room: &str, master_id: &str) -> Result<Vec<String>, SimError> {
        let state = self.shared.lock();
        let item = state
            .cal
            .room(room)
            .ok_or_else(|| SimError::UnknownRoom(room.to_owned()))?
            .items
            .get(master_id)
            .ok_or_else(|| SimError::UnknownItem(master_id.to_owned()))?;
        if item.recurrence.is_none() {
            return Err(SimError::InvalidMeeting(format!(
                "{master_id} is not a series master"
            )));
        }
        Ok(item.expand().into_iter().map(|i| i.id).collect())
    }

    /// The id Graph shows for an item or occurrence, given the EWS id the control API
    /// returned: the REST id (URL-safe base64) that requests without
    /// `Prefer: IdType="ImmutableId"` get, or with `immutable` the immutable id that requests
    /// and subscriptions asking for it get. Tests compare Graph rows with this.
    pub fn graph_id(&self, item_id: &str, immutable: bool) -> String {
        ids::graph_id(item_id, GraphIdType::from_prefer(immutable))
    }

    /// Injects a fault.
    ///
    /// # Errors
    ///
    /// [`SimError::UnknownSubscription`] for a fault about a subscription the simulator does
    /// not hold (or, for EWS, one that already ended); [`SimError::InvalidFault`] for a
    /// `retry_after` that cannot be an HTTP header value.
    pub fn inject(&self, fault: Fault) -> Result<(), SimError> {
        let mut state = self.shared.lock();
        match fault {
            Fault::GraphThrottle {
                count,
                retry_after_secs,
                retry_after,
            } => {
                let value = retry_after.unwrap_or_else(|| retry_after_secs.to_string());
                if axum::http::HeaderValue::from_str(&value).is_err() {
                    return Err(SimError::InvalidFault(format!(
                        "retryAfter {value:?} is not a header value"
                    )));
                }
                state.faults.graph_throttle = count;
                state.faults.graph_retry_after = value;
            }
            Fault::FailValidation { count } => state.faults.fail_validation = count,
            Fault::ForgetGraphSubscription { subscription_id } => {
                if state.graph_subs.remove(&subscription_id).is_none() {
                    return Err(SimError::UnknownSubscription(subscription_id));
                }
            }
            Fault::DropEwsSubscription { subscription_id } => {
                drop(state);
                return push::end_ews_subscription(&self.shared, &subscription_id, EwsEnd::Dropped);
            }
            Fault::EwsReadEventsFailed { subscription_id } => {
                drop(state);
                return push::send_read_events_failed(&self.shared, &subscription_id);
            }
            Fault::ExpireEwsWatermarks => {
                state.ews_watermark_epoch = state.ews_watermark_epoch.wrapping_add(1);
            }
            Fault::EwsServerBusy { count, backoff_ms } => {
                state.faults.ews_busy = count;
                state.faults.ews_backoff_ms = backoff_ms;
            }
            Fault::FailPushes { count } => state.faults.fail_pushes = count,
            Fault::DuplicatePushes { count } => state.faults.duplicate_pushes = count,
            Fault::WrongTokens => state.tokens.clear(),
            Fault::ExpireDeltaLinks => state.delta.expire_all(),
            Fault::LifecycleEvent {
                subscription_id,
                lifecycle,
            } => {
                drop(state);
                return push::send_lifecycle(&self.shared, &subscription_id, lifecycle);
            }
        }
        Ok(())
    }

    /// Waits until the calendar attendant has finished with every booking made so far
    /// (its two updates of each are made and notified), for a test that wants the
    /// calendar to hold still.
    pub async fn until_attended(&self) {
        while self.shared.lock().attending > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// Requests answered so far (oldest first; control API calls excluded).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.iter().cloned().collect()
    }

    /// Push attempts so far, oldest first.
    pub fn pushes(&self) -> Vec<PushRecord> {
        self.shared.lock().pushes.iter().cloned().collect()
    }

    /// Graph subscriptions currently held.
    pub fn graph_subscriptions(&self) -> Vec<GraphSubscriptionSnapshot> {
        self.shared
            .lock()
            .graph_subs
            .values()
            .map(super::graph::GraphSub::snapshot)
            .collect()
    }

    /// EWS push subscriptions, live and ended.
    pub fn ews_subscriptions(&self) -> Vec<EwsSubscriptionSnapshot> {
        self.shared
            .lock()
            .ews_subs
            .values()
            .map(super::ews::EwsSub::snapshot)
            .collect()
    }

    /// Every room with its Graph object id, by address.
    pub fn rooms(&self) -> Vec<RoomIdentity> {
        self.shared
            .lock()
            .cal
            .rooms
            .values()
            .map(|r| RoomIdentity {
                address: r.address.clone(),
                object_id: r.object_id.clone(),
            })
            .collect()
    }

    /// The Graph object id of a room, given its address (in any case) or the id itself.
    ///
    /// # Errors
    ///
    /// [`SimError::UnknownRoom`] for a mailbox the simulator does not hold.
    pub fn room_object_id(&self, room: &str) -> Result<String, SimError> {
        self.shared
            .lock()
            .cal
            .user(room)
            .map(|r| r.object_id.clone())
            .ok_or_else(|| SimError::UnknownRoom(room.to_owned()))
    }

    /// Four draws from the seeded generator (for the busy-office mode).
    pub(crate) fn random4(&self) -> (u64, u64, u64, u64) {
        let mut state = self.shared.lock();
        let rng = &mut state.rng;
        (
            rng.next_u64(),
            rng.next_u64(),
            rng.next_u64(),
            rng.next_u64(),
        )
    }
}

// ---- HTTP control API ------------------------------------------------------

/// Where the control API lives, apart from every Microsoft path.
pub const CONTROL_PREFIX: &str = "/_sim";
/// The control API's health check.
pub const HEALTH_PATH: &str = "/_sim/health";

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(HEALTH_PATH, get(http_health))
        .route("/_sim/rooms/{room}/meetings", post(http_create))
        .route(
            "/_sim/rooms/{room}/meetings/{id}",
            patch(http_update).delete(http_delete),
        )
        .route("/_sim/rooms/{room}/series", post(http_series))
        .route(
            "/_sim/rooms/{room}/series/{id}/occurrences",
            get(http_occurrences),
        )
        .route(
            "/_sim/rooms/{room}/series/{id}/occurrences/{index}",
            patch(http_update_occurrence).delete(http_delete_occurrence),
        )
        .route("/_sim/rooms/{room}/series/{id}/end", post(http_end_series))
        .route("/_sim/faults", post(http_fault))
        .route("/_sim/lifecycle", post(http_lifecycle))
        .route("/_sim/rooms", get(http_rooms))
        .route("/_sim/requests", get(http_requests))
        .route("/_sim/pushes", get(http_pushes))
        .route("/_sim/subscriptions", get(http_subscriptions))
}

fn control(shared: AppState) -> Control {
    Control::new(shared)
}

fn sim_error(e: &SimError) -> Response {
    let status = match e {
        SimError::UnknownRoom(_) | SimError::UnknownItem(_) | SimError::UnknownSubscription(_) => {
            StatusCode::NOT_FOUND
        }
        _ => StatusCode::BAD_REQUEST,
    };
    json_response(status, &json!({ "error": e.to_string() }))
}

async fn http_create(
    State(shared): State<AppState>,
    Path(room): Path<String>,
    Json(meeting): Json<Meeting>,
) -> Response {
    match control(shared).create_meeting(&room, meeting) {
        Ok(id) => json_response(StatusCode::CREATED, &json!({ "id": id })),
        Err(e) => sim_error(&e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SeriesBody {
    #[serde(flatten)]
    meeting: Meeting,
    recurrence: Recurrence,
}

async fn http_series(
    State(shared): State<AppState>,
    Path(room): Path<String>,
    Json(body): Json<SeriesBody>,
) -> Response {
    match control(shared).create_series(&room, body.meeting, body.recurrence) {
        Ok(id) => json_response(StatusCode::CREATED, &json!({ "id": id })),
        Err(e) => sim_error(&e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateBody {
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    #[serde(default)]
    cancel: bool,
}

async fn http_update(
    State(shared): State<AppState>,
    Path((room, id)): Path<(String, String)>,
    Json(body): Json<UpdateBody>,
) -> Response {
    let c = control(shared);
    let result = match (body.start, body.end, body.cancel) {
        (_, _, true) => c.cancel_meeting(&room, &id),
        (Some(start), Some(end), false) => c.move_meeting(&room, &id, start, end),
        _ => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({ "error": "give start and end, or cancel: true" }),
            );
        }
    };
    match result {
        Ok(()) => json_response(StatusCode::OK, &json!({ "id": id })),
        Err(e) => sim_error(&e),
    }
}

async fn http_occurrences(
    State(shared): State<AppState>,
    Path((room, id)): Path<(String, String)>,
) -> Response {
    match control(shared).occurrence_ids(&room, &id) {
        Ok(ids) => json_response(StatusCode::OK, &json!({ "ids": ids })),
        Err(e) => sim_error(&e),
    }
}

async fn http_update_occurrence(
    State(shared): State<AppState>,
    Path((room, id, index)): Path<(String, String, u32)>,
    Json(body): Json<UpdateBody>,
) -> Response {
    let c = control(shared);
    let result = match (body.start, body.end, body.cancel) {
        (_, _, true) => c.cancel_occurrence(&room, &id, index),
        (Some(start), Some(end), false) => c.move_occurrence(&room, &id, index, start, end),
        _ => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({ "error": "give start and end, or cancel: true" }),
            );
        }
    };
    match result {
        Ok(occurrence) => json_response(StatusCode::OK, &json!({ "id": occurrence })),
        Err(e) => sim_error(&e),
    }
}

async fn http_delete_occurrence(
    State(shared): State<AppState>,
    Path((room, id, index)): Path<(String, String, u32)>,
) -> Response {
    match control(shared).delete_occurrence(&room, &id, index) {
        Ok(occurrence) => json_response(StatusCode::OK, &json!({ "id": occurrence })),
        Err(e) => sim_error(&e),
    }
}

#[derive(Debug, Deserialize)]
struct EndBody {
    count: u32,
}

async fn http_end_series(
    State(shared): State<AppState>,
    Path((room, id)): Path<(String, String)>,
    Json(body): Json<EndBody>,
) -> Response {
    match control(shared).end_series(&room, &id, body.count) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => sim_error(&e),
    }
}

#[derive(Debug, Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    soft: bool,
}

async fn http_delete(
    State(shared): State<AppState>,
    Path((room, id)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Response {
    let c = control(shared);
    let result = if q.soft {
        c.soft_delete_meeting(&room, &id)
    } else {
        c.delete_meeting(&room, &id)
    };
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => sim_error(&e),
    }
}

async fn http_fault(State(shared): State<AppState>, Json(fault): Json<Fault>) -> Response {
    match control(shared).inject(fault) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => sim_error(&e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LifecycleBody {
    subscription_id: String,
    lifecycle_event: LifecycleKind,
}

async fn http_lifecycle(
    State(shared): State<AppState>,
    Json(body): Json<LifecycleBody>,
) -> Response {
    match control(shared).inject(Fault::LifecycleEvent {
        subscription_id: body.subscription_id,
        lifecycle: body.lifecycle_event,
    }) {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => sim_error(&e),
    }
}

async fn http_health(State(shared): State<AppState>) -> Response {
    let rooms = shared.lock().cal.rooms.len();
    json_response(
        StatusCode::OK,
        &json!({ "status": "ok", "baseUrl": shared.base_url, "rooms": rooms }),
    )
}

async fn http_rooms(State(shared): State<AppState>) -> Response {
    json_response(StatusCode::OK, &control(shared).rooms())
}

async fn http_requests(State(shared): State<AppState>) -> Response {
    json_response(StatusCode::OK, &control(shared).requests())
}

async fn http_pushes(State(shared): State<AppState>) -> Response {
    json_response(StatusCode::OK, &control(shared).pushes())
}

async fn http_subscriptions(State(shared): State<AppState>) -> Response {
    let c = control(shared);
    json_response(
        StatusCode::OK,
        &json!({ "graph": c.graph_subscriptions(), "ews": c.ews_subscriptions() }),
    )
}
