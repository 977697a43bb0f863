use super::*;
use crate::domain::{Backend, EventStatus, RejectReason, SubscriptionState};
use crate::ews::parse_send_notification;
use crate::graph::notification::parse_notification_collection;

const EWS_CREATED: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/ews/send-notification-created.xml"
));
const EWS_ERROR: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/ews/send-notification-error-readeventsfailed.xml"
));
const GRAPH_CREATED: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/graph/change-created.json"
));
const GRAPH_LIFECYCLE: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/graph/lifecycle-and-change-mixed.json"
));

const EWS_SUB: &str = "KABzcnYtbWJ4MDEucm9vbXMuZXhhbXBsZRAAAAB+c3ViLXJvb20tYS0wMDE=";
const EWS_PREVIOUS: &str = "AQAAAHJvb20tYS13bS0wMDAy";
const EWS_LAST: &str = "AQAAAHJvb20tYS13bS0wMDA0";
const GRAPH_SUB: &str = "0d8f2b6a-7c31-4e59-9a42-3f1b6c8d9e01";
const GRAPH_STATE: &str = "aurora-cs-4f7Qm2xLr9";

fn ews() -> Delivery {
    Delivery::ews(parse_send_notification(EWS_CREATED).unwrap())
}

fn graph() -> Delivery {
    Delivery::graph(parse_notification_collection(GRAPH_CREATED).unwrap())
}

fn sub(
    id: i64,
    remote_id: &str,
    backend: &str,
    status: &str,
    client_state: Option<&str>,
) -> SubscriptionRow {
    SubscriptionRow {
        id,
        remote_id: remote_id.to_owned(),
        backend: match backend {
            "ews" => Backend::Ews,
            _ => Backend::Graph,
        },
        mailbox_id: id * 10,
        status: match status {
            "active" => SubscriptionState::Active,
            "pending" => SubscriptionState::Pending,
            _ => SubscriptionState::Superseded,
        },
        client_state: client_state.map(str::to_owned),
    }
}

fn lookup(rows: Vec<SubscriptionRow>, ews_grace_open: bool) -> Lookup {
    Lookup {
        by_remote_id: rows
            .into_iter()
            .map(|r| (r.remote_id.clone(), std::sync::Arc::new(r)))
            .collect(),
        ews_grace_open,
    }
}

fn active_ews() -> Lookup {
    lookup(vec![sub(1, EWS_SUB, "ews", "active", None)], false)
}

#[test]
fn ews_events_of_an_active_subscription_are_pending_and_advance_the_watermark() {
    let plan = plan(&[&ews()], &active_ews());
    assert_eq!(plan.acks, vec![Ack::Ews(SubscriptionStatus::Ok)]);
    let kinds: Vec<(&str, &str, Option<i64>)> = plan
        .events
        .iter()
        .map(|e| (e.kind.as_str(), e.status.as_str(), e.mailbox_id))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("created", "pending", Some(10)),
            ("modified", "pending", Some(10))
        ]
    );
    assert_eq!(
        plan.events[0].item_id.as_deref(),
        Some("AAMkAGZpeHR1cmUtcm9vbS1hAEYAAAAAbWVldGluZy0xMDAx+/AAA=")
    );
    assert_eq!(plan.events[1].item_id, None, "a folder event names no item");
    assert_ne!(plan.events[0].dedupe_key, plan.events[1].dedupe_key);
    let keys = plan.ews_updates[0].previous_keys.clone();
    assert_eq!(
        plan.ews_updates,
        vec![EwsUpdate {
            subscription_id: 1,
            first_previous: Some(EWS_PREVIOUS.to_owned()),
            previous_keys: keys,
            last_watermark: Some(EWS_LAST.to_owned()),
            inner_gap: false,
            lost_reason: None,
        }]
    );
    let payload: serde_json::Value = serde_json::from_str(&plan.events[0].payload).unwrap();
    assert_eq!(payload["previousWatermark"], EWS_PREVIOUS);
    assert_eq!(payload["target"]["type"], "item");
}

/// The created fixture with its watermarks renamed, continuing from `previous`.
fn ews_next(previous: &str, suffix: &str) -> Delivery {
    let xml = String::from_utf8(EWS_CREATED.to_vec())
        .unwrap()
        .replace("AQAAAHJvb20tYS13bS0wMDAz", &format!("WM-3-{suffix}"))
        .replace(EWS_LAST, &format!("WM-4-{suffix}"))
        .replace(EWS_PREVIOUS, previous);
    Delivery::ews(parse_send_notification(xml.as_bytes()).unwrap())
}

#[test]
fn consecutive_notifications_in_one_batch_continue_the_chain_without_a_gap() {
    let first = ews();
    let second = ews_next(EWS_LAST, "b");
    let plan = plan(&[&first, &second], &active_ews());
    assert_eq!(plan.ews_updates.len(), 1);
    let update = &plan.ews_updates[0];
    assert_eq!(update.first_previous.as_deref(), Some(EWS_PREVIOUS));
    assert_eq!(update.last_watermark.as_deref(), Some("WM-4-b"));
    assert!(!update.inner_gap);
}

#[test]
fn a_break_between_notifications_of_one_batch_is_a_gap() {
    let first = ews();
    let second = ews_next("WM-somewhere-else", "c");
    let plan = plan(&[&first, &second], &active_ews());
    assert!(plan.ews_updates[0].inner_gap);
}

#[test]
fn the_same_notification_twice_in_one_batch_keeps_the_chain_without_a_gap() {
    let first = ews();
    let again = ews();
    let plan = plan(&[&first, &again], &active_ews());
    assert_eq!(plan.ews_updates.len(), 1);
    assert!(!plan.ews_updates[0].inner_gap);
    // Both are stored; the database's dedupe key keeps one of each.
    assert_eq!(plan.events.len(), 4);
    assert_eq!(plan.events[0].dedupe_key, plan.events[2].dedupe_key);
}

#[test]
fn a_superseded_subscription_is_told_to_unsubscribe_and_its_events_are_not_acted_on() {
    let lookup = lookup(vec![sub(1, EWS_SUB, "ews", "superseded", None)], true);
    let plan = plan(&[&ews()], &lookup);
    assert_eq!(plan.acks, vec![Ack::Ews(SubscriptionStatus::Unsubscribe)]);
    assert!(plan.events.iter().all(|e| e.status.as_str() == "ignored"
        && e.reject_reason.map(RejectReason::as_str) == Some("inactive_subscription")));
}

#[test]
fn an_unknown_subscription_is_welcome_within_the_grace_window_and_refused_after() {
    let within = plan(&[&ews()], &lookup(vec![], true));
    assert_eq!(within.acks, vec![Ack::Ews(SubscriptionStatus::Ok)]);
    assert!(
        within
            .events
            .iter()
            .all(|e| e.status.as_str() == "pending" && e.subscription_id.is_none())
    );
    assert!(within.ews_updates.is_empty());

    let after = plan(&[&ews()], &lookup(vec![], false));
    assert_eq!(after.acks, vec![Ack::Ews(SubscriptionStatus::Unsubscribe)]);
    assert!(
        after
            .events
            .iter()
            .all(|e| e.reject_reason.map(RejectReason::as_str) == Some("unknown_subscription"))
    );
}

#[test]
fn an_error_class_message_marks_the_subscription_lost_and_is_still_acknowledged() {
    let parsed = parse_send_notification(EWS_ERROR).unwrap();
    let lost_id = parsed.subscription_ids().next().unwrap().to_owned();
    let delivery = Delivery::ews(parsed);
    let plan = plan(
        &[&delivery],
        &lookup(vec![sub(7, &lost_id, "ews", "active", None)], false),
    );
    assert_eq!(plan.acks, vec![Ack::Ews(SubscriptionStatus::Ok)]);
    assert_eq!(plan.ews_updates.len(), 1);
    assert_eq!(
        plan.ews_updates[0].lost_reason.as_deref(),
        Some("ErrorReadEventsFailed")
    );
    assert!(plan.events.is_empty());
}

#[test]
fn graph_items_with_the_right_client_state_are_pending() {
    let lookup = lookup(
        vec![sub(2, GRAPH_SUB, "graph", "active", Some(GRAPH_STATE))],
        false,
    );
    let plan = plan(&[&graph()], &lookup);
    assert_eq!(plan.acks, vec![Ack::Graph]);
    assert_eq!(plan.events.len(), 1);
    let e = &plan.events[0];
    assert_eq!(
        (e.kind.as_str(), e.status, e.reject_reason),
        ("created", EventStatus::Pending, None)
    );
    assert_eq!(e.item_id.as_deref(), Some("AAMkAGF1cm9yYS1ldnQtMDAxAA=="));
    assert_eq!(plan.graph_touched, vec![2]);
}

#[test]
fn a_client_state_mismatch_is_kept_for_forensics_but_never_acted_on() {
    let lookup = lookup(
        vec![sub(2, GRAPH_SUB, "graph", "active", Some("another-secret"))],
        false,
    );
    let plan = plan(&[&graph()], &lookup);
    assert_eq!(plan.acks, vec![Ack::Graph]);
    assert_eq!(plan.events[0].status.as_str(), "ignored");
    assert_eq!(
        plan.events[0].reject_reason.map(RejectReason::as_str),
        Some("client_state_mismatch")
    );
    assert!(plan.graph_touched.is_empty());
}

#[test]
fn a_graph_item_for_an_unknown_subscription_waits_unmatched() {
    let plan = plan(&[&graph()], &lookup(vec![], false));
    assert_eq!(plan.events[0].status.as_str(), "pending");
    assert_eq!(plan.events[0].subscription_id, None);
}

#[test]
fn a_subscription_id_of_the_other_backend_does_not_match() {
    // An EWS id that happens to equal a Graph id must not lend its secret or status.
    let lookup = lookup(
        vec![sub(2, GRAPH_SUB, "ews", "active", Some(GRAPH_STATE))],
        false,
    );
    let plan = plan(&[&graph()], &lookup);
    assert_eq!(plan.events[0].subscription_id, None);
}

#[test]
fn dedupe_keys_are_fixed_size_and_separate_their_parts() {
    let long = "x".repeat(10_000);
    assert_eq!(digest_hex(&["graph", &long]).len(), 64);
    assert_ne!(digest_hex(&["ab", "c"]), digest_hex(&["a", "bc"]));
}

#[test]
fn dedupe_keys_stay_what_earlier_versions_stored() {
    // Stored keys keep their redeliveries out only while the same parts give the same key.
    // Computed outside this code: SHA-256 over each part after its length as a big-endian u64.
    assert_eq!(
        digest_hex(&["ews-watermark", "AQAAAHJvb20tYS13bS0wMDAz"]),
        "173e9c09ac772cb271616ecebd3ddae578e50230ef1b43270c4286842df00d4c"
    );
    assert_eq!(
        digest_hex(&["rejected", "keep_alive", "x"]),
        "c44c7b6d1d501c9768f88dd92615e5890b99e0a2dc54ce1b731097eabbaa1f96"
    );
}

#[test]
fn a_rejected_event_never_shares_the_key_of_the_genuine_one() {
    let genuine = plan(
        &[&graph()],
        &lookup(
            vec![sub(2, GRAPH_SUB, "graph", "active", Some(GRAPH_STATE))],
            false,
        ),
    );
    // The same item, its subscription superseded: stored, ignored, keyed apart.
    let inactive = plan(
        &[&graph()],
        &lookup(
            vec![sub(2, GRAPH_SUB, "graph", "superseded", Some(GRAPH_STATE))],
            false,
        ),
    );
    assert_eq!(inactive.events[0].status, EventStatus::Ignored);
    assert_ne!(inactive.events[0].dedupe_key, genuine.events[0].dedupe_key);

    let ews_active = plan(&[&ews()], &active_ews());
    let ews_superseded = plan(
        &[&ews()],
        &lookup(vec![sub(1, EWS_SUB, "ews", "superseded", None)], false),
    );
    for (a, b) in ews_active.events.iter().zip(&ews_superseded.events) {
        assert_ne!(a.dedupe_key, b.dedupe_key);
        assert_eq!(b.dedupe_key.len(), 64);
    }
}

#[test]
fn graph_items_that_differ_only_in_client_state_never_share_a_key() {
    let forged_body = String::from_utf8(GRAPH_CREATED.to_vec())
        .unwrap()
        .replace(GRAPH_STATE, "a-forged-state");
    let forged = Delivery::graph(parse_notification_collection(forged_body.as_bytes()).unwrap());
    // Unmatched (the subscription is not stored yet): both wait as pending, keyed apart, so
    // the check at match time still finds the genuine one.
    let unmatched = plan(&[&forged, &graph()], &lookup(vec![], false));
    assert!(
        unmatched
            .events
            .iter()
            .all(|e| e.status == EventStatus::Pending)
    );
    assert_ne!(
        unmatched.events[0].dedupe_key,
        unmatched.events[1].dedupe_key
    );
    // A redelivery of either keeps its key.
    let again = plan(&[&graph()], &lookup(vec![], false));
    assert_eq!(again.events[0].dedupe_key, unmatched.events[1].dedupe_key);
}

#[test]
fn lifecycle_items_get_the_repeat_window_and_changes_a_key_for_good() {
    let delivery = Delivery::graph(parse_notification_collection(GRAPH_LIFECYCLE).unwrap());
    let plan = plan(&[&delivery], &lookup(vec![], false));
    let windows: Vec<(&str, Option<Duration>)> = plan
        .events
        .iter()
        .map(|e| (e.kind.as_str(), e.dedupe_window))
        .collect();
    assert_eq!(
        windows,
        vec![
            ("updated", None),
            ("missed", Some(REPEAT_WINDOW)),
            ("deleted", None),
            ("reauthorization_required", Some(REPEAT_WINDOW)),
        ]
    );
    assert!(
        REPEAT_WINDOW > Duration::from_secs(4 * 3600),
        "Graph retries for 4 hours"
    );
    assert!(plan.events.iter().all(|e| e.dedupe_key.len() == 64));
}

/// The EWS payload as versions before the serde struct wrote it, through a `json!` tree.
fn ews_payload_as_a_json_tree(n: &crate::ews::Notification, event: &Event) -> String {
    use serde_json::json;
    let object = |o: &Option<ObjectRef>| {
        o.as_ref().map(|o| {
            let (kind, r) = match o {
                ObjectRef::Item(r) => ("item", r),
                ObjectRef::Folder(r) => ("folder", r),
            };
            json!({ "type": kind, "id": r.id, "changeKey": r.change_key })
        })
    };
    let folder = |r: &Option<crate::ews::ItemRef>| {
        r.as_ref()
            .map(|r| json!({ "id": r.id, "changeKey": r.change_key }))
    };
    json!({
        "subscriptionId": n.subscription_id,
        "previousWatermark": n.previous_watermark,
        "moreEvents": n.more_events,
        "kind": event.kind.as_str(),
        "watermark": event.watermark,
        "timeStamp": event.timestamp,
        "target": object(&event.target),
        "parentFolderId": folder(&event.parent_folder_id),
        "oldTarget": object(&event.old_target),
        "oldParentFolderId": folder(&event.old_parent_folder_id),
        "unreadCount": event.unread_count,
    })
    .to_string()
}

#[test]
fn the_ews_payload_is_byte_for_byte_what_earlier_versions_stored() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ews");
    let mut events = 0;
    for name in [
        "send-notification-created.xml",
        "send-notification-deleted.xml",
        "send-notification-mixed-moreevents.xml",
        "send-notification-modified-compact.xml",
        "send-notification-moved.xml",
        "send-notification-multiple-messages.xml",
        "send-notification-status.xml",
    ] {
        let body = std::fs::read(format!("{fixtures}/{name}")).unwrap();
        let parsed = parse_send_notification(&body).unwrap();
        for message in &parsed.messages {
            let NotificationMessage::Notification(n) = message else {
                continue;
            };
            for event in &n.events {
                assert_eq!(
                    ews_payload(n, event),
                    ews_payload_as_a_json_tree(n, event),
                    "{name}"
                );
                events += 1;
            }
        }
    }
    // Moved events carry old targets, modified ones unread counts, status ones nothing.
    assert!(events >= 10, "only {events} events compared");
}

const EWS_STATUS: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/ews/send-notification-status.xml"
));

#[test]
fn an_update_looks_for_the_previous_notification_under_the_keys_its_events_were_stored_with() {
    // The created fixture runs W2 → W3, W4; one continuing from W4 names W4's event.
    let earlier = plan(&[&ews()], &active_ews());
    let later = plan(&[&ews_next(EWS_LAST, "b")], &active_ews());
    let keys = later.ews_updates[0].previous_keys.clone().unwrap();
    assert_eq!(keys.remote_subscription_id, EWS_SUB);
    let last_event = earlier.events.last().unwrap();
    assert_eq!(keys.event, last_event.dedupe_key);
    assert_eq!(last_event.remote_subscription_id.as_deref(), Some(EWS_SUB));

    // The status fixture runs W1 → W2 with a keep-alive, stored as ignored under a key of its
    // own; the created fixture continues from W2.
    let keep_alive = plan(
        &[&Delivery::ews(parse_send_notification(EWS_STATUS).unwrap())],
        &active_ews(),
    );
    assert_eq!(
        keep_alive.events[0].reject_reason,
        Some(RejectReason::KeepAlive)
    );
    let keys = earlier.ews_updates[0].previous_keys.clone().unwrap();
    assert_eq!(keys.status, keep_alive.events[0].dedupe_key);
    assert_ne!(keys.event, keys.status);
}
