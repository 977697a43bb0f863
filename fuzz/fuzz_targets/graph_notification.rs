//! Fuzz target: the Microsoft Graph notification parser (`parse_notification_collection`), the
//! dedupe key ingest stores each item under, the clientState check, and the validation-handshake
//! query parser (`validation_token`) fed the same bytes as a query string.
//!
//! Beyond "never panics", it checks what the parser promises so that every item can be stored:
//! at most `MAX_ITEMS` items, a non-empty `subscriptionId` and a `resourceData.id` within
//! `MAX_ID_BYTES`, no NUL in any field, `raw` one JSON object whose strings hold no NUL and no
//! unpaired surrogate, unknown kinds normalised as `GraphKind::as_str` documents, and a
//! deterministic dedupe key. For the handshake: a token is non-empty, within
//! `MAX_VALIDATION_TOKEN_BYTES` and free of markup and control characters.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rooms_sync::graph::notification::{
    GraphKind, GraphNotification, MAX_ID_BYTES, MAX_ITEMS, MAX_VALIDATION_TOKEN_BYTES,
    client_state_matches, parse_notification_collection, validation_token,
};

/// The six names a known kind is stored under; an unknown kind must never take one.
const KNOWN_KIND_NAMES: [&str; 6] = [
    "created",
    "updated",
    "deleted",
    "reauthorization_required",
    "subscription_removed",
    "missed",
];

fuzz_target!(|data: &[u8]| {
    if let Ok(items) = parse_notification_collection(data) {
        assert!(items.len() <= MAX_ITEMS, "{} items", items.len());
        for item in &items {
            check_item(item);
        }
    }
    if let Ok(query) = std::str::from_utf8(data) {
        check_validation_token(query);
    }
});

fn check_text(text: Option<&str>) {
    if let Some(text) = text {
        assert!(!text.contains('\0'), "NUL in {text:?}");
    }
}

fn check_item(item: &GraphNotification) {
    assert!(!item.subscription_id.is_empty(), "an empty subscriptionId");
    assert!(item.subscription_id.len() <= MAX_ID_BYTES);
    if let Some(id) = &item.resource_id {
        assert!(
            id.len() <= MAX_ID_BYTES,
            "a resourceData.id of {} bytes",
            id.len()
        );
    }
    for text in [
        Some(item.subscription_id.as_str()),
        item.client_state.as_deref(),
        item.id.as_deref(),
        item.resource.as_deref(),
        item.resource_id.as_deref(),
        item.etag.as_deref(),
        item.odata_type.as_deref(),
        item.tenant_id.as_deref(),
    ] {
        check_text(text);
    }
    check_kind(&item.kind);
    check_raw(item.raw.get());

    let key = item.dedupe_key();
    assert!(key.starts_with("graph1|"), "{key:?}");
    assert_eq!(
        key,
        item.dedupe_key(),
        "the dedupe key is not deterministic"
    );
    let sub = &item.subscription_id;
    assert!(key.contains(&format!("|{}:{sub}", sub.len())));
    assert_eq!(
        item.names_an_object(),
        item.resource_id.is_some() || item.resource.is_some() || item.id.is_some()
    );

    // A subscription without a secret accepts nothing; the received secret matches itself
    // unless it is empty.
    assert!(!client_state_matches(item.client_state.as_deref(), ""));
    if let Some(state) = item.client_state.as_deref() {
        assert_eq!(client_state_matches(Some(state), state), !state.is_empty());
    }
}

fn check_kind(kind: &GraphKind) {
    assert!(!(kind.is_change() && kind.is_lifecycle()));
    let name = kind.as_str();
    match kind {
        GraphKind::Unknown(stored) => {
            assert!(!kind.is_change() && !kind.is_lifecycle());
            assert_eq!(name, stored);
            assert!(
                !name.is_empty() && name.len() <= 64,
                "unknown kind {name:?}"
            );
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "unknown kind {name:?}"
            );
            assert!(
                !KNOWN_KIND_NAMES.contains(&name),
                "unknown kind stored as {name:?}"
            );
        }
        _ => {
            assert!(kind.is_change() || kind.is_lifecycle());
            assert!(KNOWN_KIND_NAMES.contains(&name));
        }
    }
}

/// The item as stored (`jsonb`): one JSON object. Decoded by serde_json on its own, its strings
/// and keys must hold no NUL, and serde_json refuses unpaired surrogates when it decodes them.
fn check_raw(raw: &str) {
    assert!(raw.starts_with('{'), "raw is not an object: {raw:?}");
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(value) => assert_no_nul(&value),
        // A number within the parser's bounds can still be beyond f64 (`1e999`): Postgres's
        // numeric takes it, serde_json's Value does not. Nothing else may fail.
        Err(e) if e.to_string().starts_with("number out of range") => {}
        Err(e) => panic!("raw does not decode as JSON: {e}: {raw:?}"),
    }
}

fn assert_no_nul(value: &serde_json::Value) {
    match value {
        serde_json::Value::String(s) => check_text(Some(s)),
        serde_json::Value::Array(items) => items.iter().for_each(assert_no_nul),
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                check_text(Some(key));
                assert_no_nul(value);
            }
        }
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {}
    }
}

fn check_validation_token(query: &str) {
    if let Ok(Some(token)) = validation_token(query) {
        assert!(!token.is_empty());
        assert!(
            token.len() <= MAX_VALIDATION_TOKEN_BYTES,
            "{} bytes",
            token.len()
        );
        assert!(!token.contains(['<', '>']), "markup echoed: {token:?}");
        assert!(
            !token.chars().any(|c| c.is_ascii_control()),
            "control character echoed: {token:?}"
        );
    }
}
