//! Outbound notifications: Graph change notifications POSTed as JSON through a per-URL
//! [`outbox`] (batched, a 3-second answer deadline, retries with back-off for 4 hours;
//! lifecycle notifications only to a subscription's `lifecycleNotificationUrl`, never to
//! its `notificationUrl`), and one task per EWS push subscription that sends a
//! `StatusEvent` at once on subscribing (as Exchange does, often before the client has read
//! the Subscribe response), then `SendNotification` batches and `StatusEvent` keep-alives,
//! retries a failed delivery at 30 s doubling until the interval exceeds the
//! `StatusFrequency` (then the subscription is dead, as in Exchange), and ends on an
//! `Unsubscribe` reply. Every attempt is recorded.

use std::sync::Arc;
use std::time::Duration;

use axum::http::header;
use chrono::Utc;
use serde_json::json;

use super::calendar::Applied;
use super::control::{Backend, EwsEnd, LifecycleKind, PushRecord};
use super::ews::{self, OutEvent};
use super::graph::purge_expired;
use super::ids::{self, GraphIdType};
use super::{Shared, SimError, odata_time};
use crate::ews::SubscriptionStatus;

pub(crate) mod outbox;
use outbox::Outgoing;

/// First retry delay (simulated time) for both backends; it doubles each time.
pub(crate) const FIRST_RETRY: Duration = Duration::from_secs(30);
/// How long an EWS callback may take to answer (real time).
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Most events in one `SendNotification`; the rest follow with `MoreEvents` set.
const MAX_EVENTS_PER_NOTIFICATION: usize = 50;

/// Takes one pending `FailPushes` fault, if any.
fn take_push_failure(shared: &Shared) -> bool {
    let mut state = shared.lock();
    if state.faults.fail_pushes > 0 {
        state.faults.fail_pushes -= 1;
        true
    } else {
        false
    }
}

/// Takes one pending `DuplicatePushes` fault, if any.
fn take_duplicate(shared: &Shared) -> bool {
    let mut state = shared.lock();
    if state.faults.duplicate_pushes > 0 {
        state.faults.duplicate_pushes -= 1;
        true
    } else {
        false
    }
}

/// Fans a calendar change out: a Graph notification to every live subscription of the room
/// that asked for this change type (queued in its URL's [`outbox`]), and a wake-up for the
/// EWS subscription tasks.
pub(crate) fn on_change(shared: &Arc<Shared>, applied: &Applied) {
    let outgoing: Vec<Outgoing> = {
        let mut state = shared.lock();
        purge_expired(&mut state);
        let tenant = shared.config.tenant_id.clone();
        // Graph names the mailbox by its object id in notifications, whatever the
        // subscription's resource said.
        let user = state
            .cal
            .room(&applied.room)
            .map(|r| r.object_id.clone())
            .unwrap_or_default();
        state
            .graph_subs
            .values()
            .filter(|s| {
                s.room == applied.room && s.change_types.iter().any(|c| c == applied.kind.graph())
            })
            .map(|s| {
                // The item is named in the id format the subscription was created with.
                let id = ids::graph_id(
                    &applied.item.id,
                    GraphIdType::from_prefer(s.prefer_immutable_id),
                );
                let resource = format!("Users/{user}/Events/{id}");
                let value = json!({
                    "subscriptionId": s.id,
                    "subscriptionExpirationDateTime": odata_time(s.expiration),
                    "changeType": applied.kind.graph(),
                    "resource": resource,
                    "resourceData": {
                        "@odata.type": "#Microsoft.Graph.Event",
                        "@odata.id": resource,
                        "@odata.etag": applied.item.etag(),
                        "id": id,
                    },
                    "clientState": s.client_state,
                    "tenantId": tenant,
                });
                Outgoing {
                    url: s.notification_url.clone(),
                    subscription_id: s.id.clone(),
                    kind: applied.kind.graph().to_owned(),
                    value,
                }
            })
            .collect()
    };
    outbox::enqueue(shared, outgoing);
    shared.ews_tick.send_modify(|n| *n = n.wrapping_add(1));
}

/// Sends a lifecycle notification for a Graph subscription now, to its
/// `lifecycleNotificationUrl`; a subscription created without one is not told (Graph never
/// falls back to the `notificationUrl`), though `subscriptionRemoved` still removes it.
pub(crate) fn send_lifecycle(
    shared: &Arc<Shared>,
    subscription_id: &str,
    kind: LifecycleKind,
) -> Result<(), SimError> {
    let outgoing = {
        let mut state = shared.lock();
        let sub = state
            .graph_subs
            .get(subscription_id)
            .cloned()
            .ok_or_else(|| SimError::UnknownSubscription(subscription_id.to_owned()))?;
        if kind == LifecycleKind::SubscriptionRemoved {
            state.graph_subs.remove(subscription_id);
        }
        let Some(url) = sub.lifecycle_url else {
            return Ok(());
        };
        Outgoing {
            url,
            subscription_id: sub.id.clone(),
            kind: kind.as_str().to_owned(),
            value: json!({
                "lifecycleEvent": kind.as_str(),
                "subscriptionId": sub.id,
                "subscriptionExpirationDateTime": odata_time(sub.expiration),
                "clientState": sub.client_state,
                "tenantId": shared.config.tenant_id,
            }),
        }
    };
    outbox::enqueue(shared, vec![outgoing]);
    Ok(())
}

/// Sleeps `simulated` scaled time; `false` when the simulator is shutting down.
pub(crate) async fn pause(shared: &Shared, simulated: Duration) -> bool {
    tokio::select! {
        () = shared.shutdown.cancelled() => false,
        () = tokio::time::sleep(shared.scaled(simulated)) => true,
    }
}

/// One Graph POST; the status, or `None` when no answer came within `deadline`.
async fn post_graph(shared: &Shared, url: &str, body: &str, deadline: Duration) -> Option<u16> {
    shared
        .http
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .timeout(deadline)
        .body(body.to_owned())
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// When the calendar attendant updates a booking after it arrives (simulated time, each
/// wait after the previous touch): a room mailbox sees a booking created, then updated twice
/// as the attendant processes the request.
pub(crate) const ATTENDANT_TOUCHES: [Duration; 2] =
    [Duration::from_secs(1), Duration::from_secs(1)];

/// Starts the calendar attendant on a booking just made in `room`: two updates a moment
/// later, each a new version of the item that Graph and EWS subscribers are told about. A
/// booking deleted meanwhile is left alone.
pub(crate) fn spawn_attendant(shared: &Arc<Shared>, room: String, id: String) {
    /// Counts the booking as being attended until dropped, however the task ends.
    struct Attending(Arc<Shared>);
    impl Drop for Attending {
        fn drop(&mut self) {
            let mut state = self.0.lock();
            state.attending = state.attending.saturating_sub(1);
        }
    }
    shared.lock().attending += 1;
    let shared2 = Arc::clone(shared);
    shared.runtime.spawn(async move {
        let _attending = Attending(Arc::clone(&shared2));
        for wait in ATTENDANT_TOUCHES {
            if !pause(&shared2, wait).await {
                return;
            }
            let touched = shared2.lock().cal.attendant_touch(&room, &id);
            match touched {
                Ok(applied) => on_change(&shared2, &applied),
                Err(_) => return,
            }
        }
    });
}

/// Starts the delivery task of a new EWS push subscription.
pub(crate) fn spawn_ews_subscription(shared: &Arc<Shared>, sub_id: String) {
    let shared2 = Arc::clone(shared);
    shared.runtime.spawn(async move {
        ews_subscription_task(shared2, sub_id).await;
    });
}

/// What the next `SendNotification` of a subscription holds.
struct Batch {
    url: String,
    body: String,
    kind: &'static str,
    last_pos: u64,
    last_watermark: String,
    status_frequency: u32,
    /// Whether delivery stops once the subscription is no longer alive (all batches but the
    /// farewell `ErrorReadEventsFailed`, which is sent by a subscription already ended).
    needs_live: bool,
}

/// What a subscription task wants to send next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Pending events, if any.
    Events,
    /// Pending events, else a keep-alive status event.
    EventsOrStatus,
    /// A status event even if events are pending: the first notification of a subscription.
    Status,
}

/// Builds the next batch: pending events after the cursor, or a status event (see [`Want`]).
/// `None` when there is nothing to send or the subscription ended.
fn next_batch(shared: &Shared, sub_id: &str, want: Want) -> Option<Batch> {
    let mut state = shared.lock();
    let state = &mut *state;
    let epoch = state.ews_watermark_epoch;
    let sub = state.ews_subs.get_mut(sub_id).filter(|s| s.alive)?;
    let room = state.cal.room(&sub.room)?;
    let pending: Vec<_> = room.ews_log.iter().filter(|e| e.pos > sub.cursor).collect();
    let wanted: Vec<_> = if want == Want::Status {
        Vec::new()
    } else {
        pending
            .iter()
            .filter(|e| sub.event_types.contains(&e.kind))
            .take(MAX_EVENTS_PER_NOTIFICATION)
            .collect()
    };
    if wanted.is_empty() {
        if want != Want::Status {
            // Events the subscription did not ask for still move its position.
            if let Some(last) = pending.last() {
                sub.cursor = last.pos;
            }
        }
        if want == Want::Events {
            return None;
        }
        sub.status_nonce += 1;
        let wm = ews::watermark(epoch, sub.room_number, sub.cursor, sub.status_nonce);
        let events = [OutEvent {
            event: None,
            watermark: wm.clone(),
        }];
        let body = ews::send_notification_xml(room, &sub.id, &sub.last_watermark, false, &events);
        return Some(Batch {
            url: sub.url.clone(),
            body,
            kind: "status",
            last_pos: sub.cursor,
            last_watermark: wm,
            status_frequency: sub.status_frequency,
            needs_live: true,
        });
    }
    let more = pending
        .iter()
        .filter(|e| sub.event_types.contains(&e.kind))
        .count()
        > wanted.len();
    let events: Vec<OutEvent> = wanted
        .iter()
        .map(|e| OutEvent {
            event: Some((**e).clone()),
            watermark: ews::watermark(epoch, sub.room_number, e.pos, 0),
        })
        .collect();
    let last_pos = wanted.last().map_or(sub.cursor, |e| e.pos);
    let last_watermark = events
        .last()
        .map(|e| e.watermark.clone())
        .unwrap_or_default();
    let body = ews::send_notification_xml(room, &sub.id, &sub.last_watermark, more, &events);
    Some(Batch {
        url: sub.url.clone(),
        body,
        kind: "notification",
        last_pos,
        last_watermark,
        status_frequency: sub.status_frequency,
        needs_live: true,
    })
}

fn end_subscription(shared: &Shared, sub_id: &str, why: EwsEnd) {
    if let Some(sub) = shared.lock().ews_subs.get_mut(sub_id) {
        sub.alive = false;
        sub.ended_by = Some(why);
    }
}

fn is_alive(shared: &Shared, sub_id: &str) -> bool {
    shared.lock().ews_subs.get(sub_id).is_some_and(|s| s.alive)
}

/// Ends a live EWS subscription now for `why`; the client is not told.
pub(crate) fn end_ews_subscription(
    shared: &Shared,
    sub_id: &str,
    why: EwsEnd,
) -> Result<(), SimError> {
    {
        let mut state = shared.lock();
        let sub = state
            .ews_subs
            .get_mut(sub_id)
            .filter(|s| s.alive)
            .ok_or_else(|| SimError::UnknownSubscription(sub_id.to_owned()))?;
        sub.alive = false;
        sub.ended_by = Some(why);
    }
    // Wakes the subscription's task so it notices and stops.
    shared.ews_tick.send_modify(|n| *n = n.wrapping_add(1));
    Ok(())
}

/// Ends a live EWS subscription with the `ErrorReadEventsFailed` message Exchange pushes
/// when it can no longer read the mailbox's events for it.
pub(crate) fn send_read_events_failed(shared: &Arc<Shared>, sub_id: &str) -> Result<(), SimError> {
    let batch = {
        let state = shared.lock();
        let sub = state
            .ews_subs
            .get(sub_id)
            .filter(|s| s.alive)
            .ok_or_else(|| SimError::UnknownSubscription(sub_id.to_owned()))?;
        Batch {
            url: sub.url.clone(),
            body: ews::read_events_failed_xml(&sub.id),
            kind: "error",
            last_pos: sub.cursor,
            last_watermark: sub.last_watermark.clone(),
            status_frequency: sub.status_frequency,
            needs_live: false,
        }
    };
    end_ews_subscription(shared, sub_id, EwsEnd::ReadEventsFailed)?;
    let shared2 = Arc::clone(shared);
    let sub_id = sub_id.to_owned();
    shared.runtime.spawn(async move {
        // Whatever the callback answers, the subscription is over.
        deliver_ews(&shared2, &sub_id, &batch).await;
    });
    Ok(())
}

/// Outcome of delivering one batch with Exchange's retry schedule.
enum Delivered {
    Ok,
    Unsubscribe,
    GaveUp,
    /// The simulator is shutting down, or the subscription ended meanwhile.
    Stopped,
}

/// One `SendNotification` POST: the HTTP status (`None` without an answer) and the
/// subscription status read from a 200 reply.
async fn post_ews(shared: &Shared, batch: &Batch) -> (Option<u16>, Option<SubscriptionStatus>) {
    let sent = shared
        .http
        .post(&batch.url)
        .header(header::CONTENT_TYPE, "text/xml; charset=utf-8")
        .header(header::ACCEPT, "text/xml")
        .header(
            "SOAPAction",
            "http://schemas.microsoft.com/exchange/services/2006/messages/SendNotification",
        )
        .timeout(PUSH_TIMEOUT)
        .body(batch.body.clone())
        .send()
        .await;
    match sent {
        Err(_) => (None, None),
        Ok(r) => {
            let code = r.status();
            let body = r.bytes().await.unwrap_or_default();
            let reply = if code.as_u16() == 200 {
                ews::parse_reply(&body)
            } else {
                None
            };
            (Some(code.as_u16()), reply)
        }
    }
}

async fn deliver_ews(shared: &Shared, sub_id: &str, batch: &Batch) -> Delivered {
    let record = |attempt: u32, status: Option<u16>, kind: String| {
        shared.lock().record_push(PushRecord {
            backend: Backend::Ews,
            url: batch.url.clone(),
            subscription_id: sub_id.to_owned(),
            kind,
            attempt,
            notifications: 1,
            status,
            at: Utc::now(),
            body: batch.body.clone(),
        });
    };
    let window = Duration::from_secs(u64::from(batch.status_frequency) * 60);
    let mut interval = FIRST_RETRY;
    let mut attempt = 1;
    loop {
        if batch.needs_live && !is_alive(shared, sub_id) {
            return Delivered::Stopped;
        }
        let (status, reply) = if take_push_failure(shared) {
            (None, None)
        } else {
            post_ews(shared, batch).await
        };
        record(attempt, status, batch.kind.to_owned());
        match reply {
            Some(SubscriptionStatus::Ok) => {
                if take_duplicate(shared) {
                    // The duplicate's reply is ignored: the batch is already delivered.
                    let (again, _) = post_ews(shared, batch).await;
                    record(attempt, again, format!("{} (duplicate)", batch.kind));
                }
                return Delivered::Ok;
            }
            Some(SubscriptionStatus::Unsubscribe) => return Delivered::Unsubscribe,
            None => {}
        }
        // 30 s, 60 s, 120 s… while the interval stays within the StatusFrequency.
        if interval > window {
            return Delivered::GaveUp;
        }
        if !pause(shared, interval).await {
            return Delivered::Stopped;
        }
        interval *= 2;
        attempt += 1;
    }
}

async fn ews_subscription_task(shared: Arc<Shared>, sub_id: String) {
    let mut tick = shared.ews_tick.subscribe();
    // `None` until the first notification, a status event sent at once, is delivered.
    let mut last_sent: Option<tokio::time::Instant> = None;
    loop {
        let frequency = match shared.lock().ews_subs.get(&sub_id) {
            Some(s) if s.alive => s.status_frequency,
            _ => return,
        };
        let status_every = shared.scaled(Duration::from_secs(u64::from(frequency) * 60));
        let now = tokio::time::Instant::now();
        let due = last_sent.map_or(now + status_every, |t| t + status_every);
        let want = match last_sent {
            None => Want::Status,
            Some(_) if now >= due => Want::EventsOrStatus,
            Some(_) => Want::Events,
        };
        let Some(batch) = next_batch(&shared, &sub_id, want) else {
            tokio::select! {
                () = shared.shutdown.cancelled() => return,
                changed = tick.changed() => if changed.is_err() { return },
                () = tokio::time::sleep_until(due) => {}
            }
            continue;
        };
        match deliver_ews(&shared, &sub_id, &batch).await {
            Delivered::Ok => {
                if let Some(sub) = shared.lock().ews_subs.get_mut(&sub_id) {
                    sub.cursor = batch.last_pos;
                    sub.last_watermark = batch.last_watermark.clone();
                }
                last_sent = Some(tokio::time::Instant::now());
            }
            Delivered::Unsubscribe => {
                end_subscription(&shared, &sub_id, EwsEnd::Unsubscribe);
                return;
            }
            Delivered::GaveUp => {
                end_subscription(&shared, &sub_id, EwsEnd::RetriesExhausted);
                return;
            }
            Delivered::Stopped => return,
        }
    }
}
