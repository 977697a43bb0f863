//! Fuzz target: the EWS `SendNotification` parser (`ews::parse_send_notification`), fed the raw
//! POST body, and the accessors ingest reads from its result.
//!
//! Beyond "never panics", it checks what the parser promises so that every parsed value can be
//! stored: at least one message, at least one event per notification, ids non-empty and at most
//! `MAX_ID_BYTES` long, no NUL anywhere, an id on every event but a status event, and accessors
//! that agree with the fields they read; the timestamp serialises as ingest stores it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rooms_sync::ews::notification::MAX_ID_BYTES;
use rooms_sync::ews::{
    Event, EventKind, ItemRef, NotificationMessage, ObjectRef, parse_send_notification,
};

fuzz_target!(|body: &[u8]| {
    let Ok(parsed) = parse_send_notification(body) else {
        return;
    };
    assert!(!parsed.messages.is_empty(), "a parse without messages");

    let named: Vec<&str> = parsed.subscription_ids().collect();
    let expected: Vec<&str> = parsed
        .messages
        .iter()
        .filter_map(NotificationMessage::subscription_id)
        .collect();
    assert_eq!(named, expected);

    for message in &parsed.messages {
        match message {
            NotificationMessage::Notification(n) => {
                assert_eq!(message.subscription_id(), Some(n.subscription_id.as_str()));
                check_id(&n.subscription_id);
                check_text(n.previous_watermark.as_deref());
                assert!(!n.events.is_empty(), "a notification without events");
                for event in &n.events {
                    check_event(event);
                }
            }
            NotificationMessage::Error(e) => {
                assert!(!e.response_code.is_empty(), "an error without its code");
                check_text(Some(&e.response_code));
                check_text(e.message_text.as_deref());
                assert_ne!(
                    e.message_text.as_deref(),
                    Some(""),
                    "an empty MessageText kept"
                );
                if let Some(id) = &e.subscription_id {
                    check_id(id);
                }
                assert_eq!(message.subscription_id(), e.subscription_id.as_deref());
            }
        }
    }
});

/// A subscription, item or folder id: what Postgres's btree index and text column take.
fn check_id(id: &str) {
    assert!(!id.is_empty(), "an empty id");
    assert!(id.len() <= MAX_ID_BYTES, "an id of {} bytes", id.len());
    check_text(Some(id));
}

/// Postgres text cannot hold NUL.
fn check_text(text: Option<&str>) {
    if let Some(text) = text {
        assert!(!text.contains('\0'), "NUL in {text:?}");
    }
}

fn check_ref(r: &ItemRef) {
    check_id(&r.id);
    if let Some(key) = &r.change_key {
        assert!(!key.is_empty(), "an empty ChangeKey kept");
        check_text(Some(key));
    }
}

fn check_object(o: &ObjectRef) {
    check_ref(o.id_ref());
    match o {
        ObjectRef::Item(r) => {
            assert_eq!(o.item_id(), Some(r.id.as_str()));
            assert_eq!(o.folder_id(), None);
        }
        ObjectRef::Folder(r) => {
            assert_eq!(o.folder_id(), Some(r.id.as_str()));
            assert_eq!(o.item_id(), None);
        }
    }
}

fn check_event(event: &Event) {
    assert!(!event.kind.as_str().is_empty());
    assert!(event.kind.element_name().ends_with("Event"));
    if event.kind != EventKind::Status {
        assert!(event.target.is_some(), "{:?} without a target", event.kind);
    }
    // Ingest stores the timestamp in the event's JSON payload.
    let stamp = serde_json::to_string(&event.timestamp).unwrap();
    assert!(!stamp.contains('\0'));
    check_text(event.watermark.as_deref());
    if let Some(w) = &event.watermark {
        assert!(!w.is_empty(), "an empty watermark kept");
    }
    for object in [&event.target, &event.old_target].into_iter().flatten() {
        check_object(object);
    }
    for folder in [&event.parent_folder_id, &event.old_parent_folder_id]
        .into_iter()
        .flatten()
    {
        check_ref(folder);
    }
    assert_eq!(
        event.item_id(),
        event.target.as_ref().and_then(ObjectRef::item_id)
    );
}
