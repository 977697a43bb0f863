//! What to store for a delivery and what to answer, given the subscriptions it names.
//!
//! Lookup goes through a short-lived cache (a query only for ids it misses, plus one for the
//! EWS grace window when an id is unknown); planning is pure, so the
//! rules (clientState, Unsubscribe, gaps, grace window) are tested without a database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::IngestOptions;
use super::cache::SubscriptionCache;
use super::checkout::{Checkout, StoreError};
use crate::db::events::NewEvent;
use crate::db::subscriptions::{EwsUpdate, SubscriptionRow, WatermarkKeys};
use crate::domain::{Backend, EventStatus, RejectReason};
use crate::ews::{
    Event, EventKind, NotificationMessage, ObjectRef, SendNotification, SubscriptionStatus,
};
use crate::graph::notification::{GraphKind, GraphNotification, client_state_matches};

/// How long an identical copy of a Graph item that names no object (a lifecycle notification)
/// is taken for a redelivery of the stored one. Graph retries an unacknowledged POST for up to
/// 4 hours, with the identical body, so every redelivery falls inside this window; the same
/// notification arriving later (a second `reauthorizationRequired` or `missed` with the same
/// expiration, nothing in it telling the two apart) is a new event and is stored again. A
/// genuine repeat inside the window is folded into the first: if that one is still pending, acting on
/// it covers both; a repeated `missed` is also covered by the worker's periodic full sync.
pub(super) const REPEAT_WINDOW: Duration = Duration::from_secs(6 * 3600);

/// One webhook POST, parsed.
#[derive(Debug)]
pub enum Delivery {
    Ews { parsed: SendNotification },
    Graph { items: Vec<GraphNotification> },
}

impl Delivery {
    #[must_use]
    pub fn ews(parsed: SendNotification) -> Self {
        Self::Ews { parsed }
    }

    #[must_use]
    pub fn graph(items: Vec<GraphNotification>) -> Self {
        Self::Graph { items }
    }

    pub(super) fn event_count(&self) -> usize {
        match self {
            Self::Ews { parsed, .. } => parsed
                .messages
                .iter()
                .map(|m| match m {
                    NotificationMessage::Notification(n) => n.events.len(),
                    NotificationMessage::Error(_) => 1,
                })
                .sum(),
            Self::Graph { items, .. } => items.len(),
        }
    }
}

/// The acknowledgement owed to the sender once the delivery is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    Ews(SubscriptionStatus),
    Graph,
}

/// The subscriptions a batch names, as stored.
#[derive(Debug, Default)]
pub(super) struct Lookup {
    by_remote_id: HashMap<String, Arc<SubscriptionRow>>,
    /// A Subscribe call was made within the grace window: unknown EWS ids are answered OK.
    ews_grace_open: bool,
}

/// Looks up the subscriptions `deliveries` name, on `conn`; each round trip is cut after the
/// limit of `options`.
pub(super) async fn lookup(
    conn: &mut Checkout<'_>,
    cache: &SubscriptionCache,
    deliveries: &[&Delivery],
    options: IngestOptions,
) -> Result<Lookup, StoreError> {
    let limit = options.limits.round_trip;
    let mut ews_ids: Vec<&str> = Vec::new();
    let mut ids: Vec<&str> = Vec::new();
    for delivery in deliveries {
        match delivery {
            Delivery::Ews { parsed, .. } => ews_ids.extend(parsed.subscription_ids()),
            Delivery::Graph { items, .. } => {
                ids.extend(items.iter().map(|i| i.subscription_id.as_str()));
            }
        }
    }
    ids.extend(&ews_ids);
    ids.sort_unstable();
    ids.dedup();
    let by_remote_id = cache.resolve(conn, limit, &ids).await?;
    let unknown_ews = ews_ids.iter().any(|id| {
        by_remote_id
            .get(*id)
            .is_none_or(|s| s.backend != Backend::Ews)
    });
    let ews_grace_open = unknown_ews && {
        let outcome = tokio::time::timeout(
            limit,
            crate::db::subscriptions::ews_subscribed_within(
                conn.begin()?,
                options.ews_unknown_grace,
            ),
        )
        .await;
        conn.end(outcome, limit)?
    };
    Ok(Lookup {
        by_remote_id,
        ews_grace_open,
    })
}

/// Rows and updates for one transaction, and the answers in delivery order.
#[derive(Debug, Default)]
pub(super) struct Plan {
    pub(super) events: Vec<NewEvent>,
    pub(super) ews_updates: Vec<EwsUpdate>,
    pub(super) graph_touched: Vec<i64>,
    pub(super) acks: Vec<Ack>,
}

/// Why a stored event is not to be acted on.
pub(super) fn plan(deliveries: &[&Delivery], lookup: &Lookup) -> Plan {
    let mut plan = Plan::default();
    let mut ews: HashMap<i64, EwsUpdate> = HashMap::new();
    for delivery in deliveries {
        let ack = match delivery {
            Delivery::Ews { parsed } => Ack::Ews(plan_ews(parsed, lookup, &mut plan, &mut ews)),
            Delivery::Graph { items } => {
                plan_graph(items, lookup, &mut plan);
                Ack::Graph
            }
        };
        plan.acks.push(ack);
    }
    plan.ews_updates = ews.into_values().collect();
    plan.ews_updates.sort_by_key(|u| u.subscription_id);
    plan.graph_touched.sort_unstable();
    plan.graph_touched.dedup();
    plan
}

fn plan_ews(
    parsed: &SendNotification,
    lookup: &Lookup,
    plan: &mut Plan,
    updates: &mut HashMap<i64, EwsUpdate>,
) -> SubscriptionStatus {
    let mut any_wanted = false;
    let mut any_named = false;
    for message in &parsed.messages {
        match message {
            NotificationMessage::Notification(n) => {
                any_named = true;
                let sub = lookup
                    .by_remote_id
                    .get(&n.subscription_id)
                    .filter(|s| s.backend == Backend::Ews);
                let (wanted, reject) = match sub {
                    Some(s) if s.is_wanted() => (true, None),
                    Some(_) => (false, Some(RejectReason::InactiveSubscription)),
                    None if lookup.ews_grace_open => (true, None),
                    None => (false, Some(RejectReason::UnknownSubscription)),
                };
                any_wanted |= wanted;
                for event in &n.events {
                    let (status, reject) = match (reject, event.kind) {
                        (Some(r), _) => (EventStatus::Ignored, Some(r)),
                        (None, EventKind::Status) => {
                            (EventStatus::Ignored, Some(RejectReason::KeepAlive))
                        }
                        (None, _) => (EventStatus::Pending, None),
                    };
                    let payload = ews_payload(n, event);
                    let key = match &event.watermark {
                        Some(w) => watermark_key(w),
                        None => digest_hex(&["ews-event", &payload]),
                    };
                    plan.events.push(NewEvent {
                        backend: Backend::Ews,
                        remote_subscription_id: Some(n.subscription_id.clone()),
                        subscription_id: sub.map(|s| s.id),
                        mailbox_id: sub.map(|s| s.mailbox_id),
                        kind: event.kind.as_str().to_owned(),
                        item_id: event.item_id().map(str::to_owned),
                        status,
                        reject_reason: reject,
                        dedupe_key: dedupe_key(reject, &key),
                        dedupe_window: None,
                        payload,
                    });
                }
                if let Some(sub) = sub {
                    let last = n.events.iter().rev().find_map(|e| e.watermark.clone());
                    let update = updates
                        .entry(sub.id)
                        .or_insert_with(|| EwsUpdate::new(sub.id));
                    if update.first_previous.is_none() && update.last_watermark.is_none() {
                        // The first notification of this batch: the database compares its
                        // PreviousWatermark with the stored chain when it applies the update.
                        update.first_previous.clone_from(&n.previous_watermark);
                        update.previous_keys = n.previous_watermark.as_deref().map(|w| {
                            let event = watermark_key(w);
                            WatermarkKeys {
                                remote_subscription_id: n.subscription_id.clone(),
                                status: dedupe_key(Some(RejectReason::KeepAlive), &event),
                                event,
                            }
                        });
                    } else if let (Some(previous), Some(current)) =
                        (&n.previous_watermark, &update.last_watermark)
                    {
                        // A later one in the same batch continues the chain held here.
                        update.inner_gap |= previous != current && Some(current) != last.as_ref();
                    }
                    if last.is_some() {
                        update.last_watermark = last;
                    }
                }
            }
            NotificationMessage::Error(error) => {
                // Exchange has already dropped this subscription: record it for the worker.
                let sub = error
                    .subscription_id
                    .as_deref()
                    .and_then(|id| lookup.by_remote_id.get(id))
                    .filter(|s| s.backend == Backend::Ews);
                match sub {
                    Some(sub) => {
                        updates
                            .entry(sub.id)
                            .or_insert_with(|| EwsUpdate::new(sub.id))
                            .lost_reason = Some(error.response_code.clone());
                    }
                    None => tracing::warn!(
                        response_code = %error.response_code,
                        subscription.remote_id = error.subscription_id.as_deref().unwrap_or(""),
                        "EWS reported an error for a subscription we do not know"
                    ),
                }
            }
        }
    }
    // Only a delivery that names subscriptions, none of which we want, ends the subscription.
    if any_named && !any_wanted {
        SubscriptionStatus::Unsubscribe
    } else {
        SubscriptionStatus::Ok
    }
}

fn plan_graph(items: &[GraphNotification], lookup: &Lookup, plan: &mut Plan) {
    for item in items {
        let sub = lookup
            .by_remote_id
            .get(&item.subscription_id)
            .filter(|s| s.backend == Backend::Graph);
        // Unknown subscriptions stay pending and unmatched: the worker matches them (and checks
        // their clientState) once the create response has been stored.
        let (status, reject) = match sub {
            Some(s) if !s.is_wanted() => (
                EventStatus::Ignored,
                Some(RejectReason::InactiveSubscription),
            ),
            Some(s)
                if !client_state_matches(
                    item.client_state.as_deref(),
                    s.client_state.as_deref().unwrap_or(""),
                ) =>
            {
                (
                    EventStatus::Ignored,
                    Some(RejectReason::ClientStateMismatch),
                )
            }
            _ if matches!(item.kind, GraphKind::Unknown(_)) => {
                (EventStatus::Ignored, Some(RejectReason::UnknownChangeType))
            }
            _ => (EventStatus::Pending, None),
        };
        if let Some(s) = sub
            && status == EventStatus::Pending
        {
            plan.graph_touched.push(s.id);
        }
        // The clientState is part of the key: an item carrying another one (a forgery, kept
        // as `ignored`, or still unmatched and checked only once its subscription is known)
        // can never take the key of the genuine item, before or after it.
        let key = match &item.client_state {
            Some(state) => digest_hex(&["graph", &item.dedupe_key(), "client-state", state]),
            None => digest_hex(&["graph", &item.dedupe_key()]),
        };
        plan.events.push(NewEvent {
            backend: Backend::Graph,
            remote_subscription_id: Some(item.subscription_id.clone()),
            subscription_id: sub.map(|s| s.id),
            mailbox_id: sub.map(|s| s.mailbox_id),
            kind: item.kind.as_str().to_owned(),
            item_id: if item.kind.is_change() {
                item.resource_id.clone()
            } else {
                None
            },
            status,
            reject_reason: reject,
            dedupe_key: dedupe_key(reject, &key),
            // A change names its object and version: its key stands forever. An item naming
            // none (lifecycle notifications) is identical each time it happens.
            dedupe_window: (item.kind.is_lifecycle() || !item.names_an_object())
                .then_some(REPEAT_WINDOW),
            payload: item.raw.get().to_owned(),
        });
    }
}

/// The stored form of one EWS event, with its notification's context. Fields are declared in
/// the order of their names so that the JSON is the same as earlier versions wrote (keys
/// sorted), which keeps the dedupe key of an event without a watermark stable.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EwsPayload<'a> {
    kind: &'static str,
    more_events: bool,
    old_parent_folder_id: Option<FolderPayload<'a>>,
    old_target: Option<ObjectPayload<'a>>,
    parent_folder_id: Option<FolderPayload<'a>>,
    previous_watermark: Option<&'a str>,
    subscription_id: &'a str,
    target: Option<ObjectPayload<'a>>,
    time_stamp: Option<&'a chrono::DateTime<chrono::Utc>>,
    unread_count: Option<i32>,
    watermark: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ObjectPayload<'a> {
    change_key: Option<&'a str>,
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FolderPayload<'a> {
    change_key: Option<&'a str>,
    id: &'a str,
}

fn object_payload(o: Option<&ObjectRef>) -> Option<ObjectPayload<'_>> {
    o.map(|o| {
        let (kind, r) = match o {
            ObjectRef::Item(r) => ("item", r),
            ObjectRef::Folder(r) => ("folder", r),
        };
        ObjectPayload {
            change_key: r.change_key.as_deref(),
            id: &r.id,
            kind,
        }
    })
}

fn folder_payload(r: Option<&crate::ews::ItemRef>) -> Option<FolderPayload<'_>> {
    r.map(|r| FolderPayload {
        change_key: r.change_key.as_deref(),
        id: &r.id,
    })
}

fn ews_payload(n: &crate::ews::Notification, event: &Event) -> String {
    let payload = EwsPayload {
        kind: event.kind.as_str(),
        more_events: n.more_events,
        old_parent_folder_id: folder_payload(event.old_parent_folder_id.as_ref()),
        old_target: object_payload(event.old_target.as_ref()),
        parent_folder_id: folder_payload(event.parent_folder_id.as_ref()),
        previous_watermark: n.previous_watermark.as_deref(),
        subscription_id: &n.subscription_id,
        target: object_payload(event.target.as_ref()),
        time_stamp: event.timestamp.as_ref(),
        unread_count: event.unread_count,
        watermark: event.watermark.as_deref(),
    };
    // Serialising borrowed strings and numbers cannot fail.
    serde_json::to_string(&payload).unwrap_or_default()
}

/// The redelivery key of an EWS event that carries a watermark.
fn watermark_key(watermark: &str) -> String {
    digest_hex(&["ews-watermark", watermark])
}

/// The stored dedupe key: `key` for an event that is acted on, and a key of a namespace of its
/// own for one stored as rejected, so that a rejected row (a forgery, a notification of a
/// subscription we did not want at that moment) can never keep out a genuine event that
/// shares its content.
fn dedupe_key(reject: Option<RejectReason>, key: &str) -> String {
    match reject {
        Some(reason) => digest_hex(&["rejected", reason.as_str(), key]),
        None => key.to_owned(),
    }
}

/// Hex SHA-256 over length-prefixed parts: fixed-size keys whatever the input length (a btree
/// index refuses keys over ~2.7 kB), and no ambiguity between parts.
fn digest_hex(parts: &[&str]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = crate::db::events::digest_parts(parts.iter().copied().map(Some));
    // By hand rather than through `format!`, which costs more than the hash on this hot path.
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    hex
}

#[cfg(test)]
mod tests;
