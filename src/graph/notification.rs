//! Microsoft Graph change and lifecycle notifications as they arrive at the
//! webhook (`POST /api/webhooks/exchange`), and the validation handshake.
//!
//! * [`parse_notification_collection`] turns a POST body (a
//!   `changeNotificationCollection`, `{"value":[ … ]}`) into one
//!   [`GraphNotification`] per `value[]` item, keeping each item's exact bytes
//!   for storage.
//! * [`GraphNotification::dedupe_key`] gives the key under which a redelivered
//!   item is stored once.
//! * [`client_state_matches`] checks an item's `clientState` against the
//!   secret stored for its subscription, in constant time.
//! * [`validation_token`] extracts and decodes the `validationToken` of the
//!   subscription handshake from a raw query string.
//!
//! Nothing here allocates per byte of input beyond the owned copies of the
//! fields it returns, nothing panics on any input, and every error message is
//! short and echoes no input (fit for a `400` body).

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use subtle::ConstantTimeEq as _;

/// Most `value[]` items accepted in one POST; more is [`GraphError::Invalid`].
/// Graph documents no maximum batch size; real batches are far smaller.
pub const MAX_ITEMS: usize = 10_000;

/// Deepest nesting of JSON arrays/objects accepted in a body (the envelope
/// object counts as level 1, `value` as 2, an item as 3, `resourceData` as 4).
/// Deeper bodies are [`GraphError::Malformed`]. This is checked by an explicit
/// scan because `serde_json` skips unknown fields and raw values iteratively,
/// without its recursion limit, so a deeply nested unknown field would
/// otherwise be accepted and handed on to Postgres.
pub const MAX_DEPTH: usize = 64;

/// Longest `subscriptionId` and `resourceData.id` accepted, in bytes. Graph's are a GUID and an
/// id of about 150 bytes; the subscription id is part of a btree index entry on the event table
/// (and the item id is stored beside it), and Postgres refuses an entry over about 2.7 kB. A
/// longer id is [`GraphError::Invalid`], so whatever parses can be stored.
pub const MAX_ID_BYTES: usize = 1024;

/// Most digits (integer and fraction part together) a JSON number may have.
///
/// Postgres stores `jsonb` numbers as `numeric`, which refuses values past its range (about
/// 131,000 digits before the point, 16,383 after, and on older servers an exponent beyond
/// ±1000). Such numbers are refused here rather than rewritten (e.g. as strings): the item is
/// stored exactly as received or not at all, and Graph never sends them. Together with
/// [`MAX_NUMBER_EXPONENT`] this keeps every number well inside what every supported Postgres
/// version accepts (at most 2,000 digits either side of the point).
pub const MAX_NUMBER_DIGITS: usize = 1000;

/// Largest exponent magnitude a JSON number may have (see [`MAX_NUMBER_DIGITS`]).
pub const MAX_NUMBER_EXPONENT: u64 = 1000;

/// Longest decoded `validationToken` accepted, in bytes.
pub const MAX_VALIDATION_TOKEN_BYTES: usize = 1024;

/// Longest [`GraphKind::as_str`] of an unknown kind, in bytes.
const MAX_UNKNOWN_KIND_BYTES: usize = 64;

/// Longest slice of a library error message that may reach an error text.
const MAX_ECHO: usize = 64;

/// Why a body or a query string was refused. Every message is short, contains
/// at most 64 characters derived from the input and is fit for an
/// HTTP 400 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// The body is not well-formed JSON of the expected outer shape (not UTF-8,
    /// syntax error, truncated, nested deeper than [`MAX_DEPTH`], not a JSON
    /// object, a duplicated `value`).
    #[error("malformed notification body: {0}")]
    Malformed(String),
    /// The body is a JSON object without a `value` array (missing, `null` or
    /// another type).
    #[error("notification body has no `value` array")]
    NoValueArray,
    /// Well-formed JSON (or a query string) that breaks a rule: an item that is
    /// not an object, without `subscriptionId`, with neither `changeType` nor
    /// `lifecycleEvent`, an id longer than [`MAX_ID_BYTES`], too many items, a
    /// string or number Postgres cannot store, or a refused `validationToken`.
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// What a notification item reports: a change (`changeType`) or a lifecycle
/// event (`lifecycleEvent`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GraphKind {
    /// `changeType: created`.
    Created,
    /// `changeType: updated`.
    Updated,
    /// `changeType: deleted`.
    Deleted,
    /// `lifecycleEvent: reauthorizationRequired`.
    ReauthorizationRequired,
    /// `lifecycleEvent: subscriptionRemoved`.
    SubscriptionRemoved,
    /// `lifecycleEvent: missed`.
    Missed,
    /// A `changeType` or `lifecycleEvent` value this code does not know (for
    /// example beta's `unknownFutureValue`). Such items are accepted and
    /// stored, never acted on. The parser stores the value already normalised
    /// as [`GraphKind::as_str`] describes; the original is in
    /// [`GraphNotification::raw`].
    Unknown(String),
}

impl GraphKind {
    /// The `notification_events.kind` text: `created`, `updated`, `deleted`,
    /// `reauthorization_required`, `subscription_removed`, `missed`; for
    /// [`GraphKind::Unknown`] the stored string, which the parser makes from the
    /// received value in `snake_case`, lower-case ASCII (any other character
    /// becomes `_`), at most 64 bytes, `unknown` when nothing is left, and
    /// prefixed `unknown_` when it would otherwise equal one of the six known
    /// names (so `lifecycleEvent: "created"` can never pass for a change).
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
            Self::ReauthorizationRequired => "reauthorization_required",
            Self::SubscriptionRemoved => "subscription_removed",
            Self::Missed => "missed",
            Self::Unknown(value) => value,
        }
    }

    /// True for the three known lifecycle events. [`GraphKind::Unknown`] is
    /// neither lifecycle nor change.
    #[must_use]
    pub const fn is_lifecycle(&self) -> bool {
        matches!(
            self,
            Self::ReauthorizationRequired | Self::SubscriptionRemoved | Self::Missed
        )
    }

    /// True for the three known change types. [`GraphKind::Unknown`] is
    /// neither lifecycle nor change.
    #[must_use]
    pub const fn is_change(&self) -> bool {
        matches!(self, Self::Created | Self::Updated | Self::Deleted)
    }

    /// The kind of a `changeType` value, compared ignoring ASCII case and `_`.
    fn from_change_type(value: &str) -> Self {
        match squash(value).as_ref() {
            "created" => Self::Created,
            "updated" => Self::Updated,
            "deleted" => Self::Deleted,
            _ => Self::unknown(value),
        }
    }

    /// The kind of a `lifecycleEvent` value, compared ignoring ASCII case and `_`.
    fn from_lifecycle_event(value: &str) -> Self {
        match squash(value).as_ref() {
            "reauthorizationrequired" => Self::ReauthorizationRequired,
            "subscriptionremoved" => Self::SubscriptionRemoved,
            "missed" => Self::Missed,
            _ => Self::unknown(value),
        }
    }

    fn unknown(value: &str) -> Self {
        let mut name = snake_case(value);
        if name.is_empty() {
            name.push_str("unknown");
        } else if KNOWN_KIND_NAMES.contains(&name.as_str()) {
            name.insert_str(0, "unknown_");
        }
        name.truncate(MAX_UNKNOWN_KIND_BYTES); // ASCII only: always a char boundary
        Self::Unknown(name)
    }
}

const KNOWN_KIND_NAMES: [&str; 6] = [
    "created",
    "updated",
    "deleted",
    "reauthorization_required",
    "subscription_removed",
    "missed",
];

/// `value` lower-cased with every `_` removed, for comparing enum values.
fn squash(value: &str) -> Cow<'_, str> {
    if value.bytes().all(|b| b.is_ascii_lowercase()) {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(
            value
                .chars()
                .filter(|c| *c != '_')
                .map(|c| c.to_ascii_lowercase())
                .collect(),
        )
    }
}

/// `unknownFutureValue` → `unknown_future_value`, `HTTPError` → `http_error`,
/// `Some Value!` → `some_value`. ASCII letters and digits are kept; every run
/// of other characters becomes one `_`; no leading or trailing `_`. Stops once
/// the output is longer than the cap (the caller truncates).
fn snake_case(value: &str) -> String {
    let chars: Vec<char> = value.chars().take(4 * MAX_UNKNOWN_KIND_BYTES).collect();
    let mut out = String::with_capacity(chars.len().min(2 * MAX_UNKNOWN_KIND_BYTES));
    let mut pending_sep = false;
    for (i, &c) in chars.iter().enumerate() {
        if out.len() > 2 * MAX_UNKNOWN_KIND_BYTES {
            break;
        }
        if !c.is_ascii_alphanumeric() {
            pending_sep = !out.is_empty();
            continue;
        }
        if c.is_ascii_uppercase() && !out.is_empty() {
            let prev = i.checked_sub(1).and_then(|p| chars.get(p)).copied();
            let next = chars.get(i + 1).copied();
            let prev_lower_or_digit =
                prev.is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit());
            let acronym_end = prev.is_some_and(|p| p.is_ascii_uppercase())
                && next.is_some_and(|n| n.is_ascii_lowercase());
            if prev_lower_or_digit || acronym_end {
                pending_sep = true;
            }
        }
        if pending_sep {
            out.push('_');
            pending_sep = false;
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// One `value[]` item of a Graph notification POST.
///
/// `raw` is the item **exactly as received**: a `Box<RawValue>` holding the
/// item's own bytes from the body (its inner whitespace, key order and escapes
/// untouched), guaranteed to be one valid JSON object without `\u0000` or
/// unpaired surrogate escapes, so Postgres accepts it as `jsonb` (bind
/// `raw.get()` as text and cast `$1::jsonb`, or use `sqlx::types::Json(&raw)`).
/// Note that it contains the `clientState` secret, as Graph sent it.
///
/// `Debug` prints `client_state` as `"***"` and `raw` as its length only, so
/// the secret never reaches a log through `{:?}`.
#[derive(Clone)]
pub struct GraphNotification {
    /// `subscriptionId`; never empty.
    pub subscription_id: String,
    /// `clientState`; `None` when absent, `null` or not a string.
    pub client_state: Option<String>,
    /// From `lifecycleEvent` when present, else from `changeType`.
    pub kind: GraphKind,
    /// The notification `id` (optional in Graph and absent in real event
    /// payloads: do not key on it).
    pub id: Option<String>,
    /// `resource`, e.g. `Users/{mailbox-id}/Events/{event-id}`.
    pub resource: Option<String>,
    /// `resourceData.id`: the event id.
    pub resource_id: Option<String>,
    /// `resourceData["@odata.etag"]` (key matched in any ASCII case).
    pub etag: Option<String>,
    /// `resourceData["@odata.type"]` (key matched in any ASCII case), e.g.
    /// `#Microsoft.Graph.Event`; the value is kept as sent (compare it
    /// case-insensitively).
    pub odata_type: Option<String>,
    /// `subscriptionExpirationDateTime`; `None` when absent or unparseable.
    pub subscription_expiration: Option<DateTime<Utc>>,
    /// `tenantId`.
    pub tenant_id: Option<String>,
    /// The item exactly as received (see the type's documentation).
    pub raw: Box<RawValue>,
}

impl PartialEq for GraphNotification {
    fn eq(&self, other: &Self) -> bool {
        self.subscription_id == other.subscription_id
            && self.client_state == other.client_state
            && self.kind == other.kind
            && self.id == other.id
            && self.resource == other.resource
            && self.resource_id == other.resource_id
            && self.etag == other.etag
            && self.odata_type == other.odata_type
            && self.subscription_expiration == other.subscription_expiration
            && self.tenant_id == other.tenant_id
            && self.raw.get() == other.raw.get()
    }
}

impl Eq for GraphNotification {}

impl fmt::Debug for GraphNotification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphNotification")
            .field("subscription_id", &self.subscription_id)
            .field("client_state", &self.client_state.as_ref().map(|_| "***"))
            .field("kind", &self.kind)
            .field("id", &self.id)
            .field("resource", &self.resource)
            .field("resource_id", &self.resource_id)
            .field("etag", &self.etag)
            .field("odata_type", &self.odata_type)
            .field("subscription_expiration", &self.subscription_expiration)
            .field("tenant_id", &self.tenant_id)
            .field(
                "raw",
                &format_args!("<{} bytes of JSON>", self.raw.get().len()),
            )
            .finish()
    }
}

impl GraphNotification {
    /// True when the item names the object it is about: `resourceData.id`,
    /// `resource` or the notification `id` (what [`Self::dedupe_key`] keys a
    /// change by). Lifecycle notifications usually name none.
    #[must_use]
    pub const fn names_an_object(&self) -> bool {
        self.resource_id.is_some() || self.resource.is_some() || self.id.is_some()
    }

    /// The key under which this item is stored once, however often Graph
    /// delivers it.
    ///
    /// The key is `graph1` followed by components, each written as
    /// `|{byte length}:{text}` (so no content can fake a boundary); an absent
    /// value is the empty text (`|0:`). The components are:
    ///
    /// * change (`created`/`updated`/`deleted`): `c`, `subscription_id`,
    ///   [`GraphKind::as_str`], the object, `etag`. The object is
    ///   `resource_id`, else `resource`, else the notification `id`, else
    ///   empty. The notification `id` and the expiration are deliberately left
    ///   out: a redelivery may differ in them.
    /// * lifecycle (`reauthorization_required`/`subscription_removed`/`missed`):
    ///   `l`, `subscription_id`, [`GraphKind::as_str`],
    ///   `subscription_expiration` as RFC 3339 UTC with nanoseconds
    ///   (`2026-12-02T09:15:30.123456700Z`, so `+00:00` and `Z` forms of one
    ///   instant agree), the notification `id`. A repeat of the same lifecycle
    ///   event for the same subscription and expiration without an `id` gets
    ///   the same key as the first: only the time it arrives tells a repeat
    ///   from a redelivery, so the caller must let the key lapse once the
    ///   redelivery window has passed (ingest does; see
    ///   [`Self::names_an_object`]).
    /// * unknown kind: `u`, `subscription_id`, [`GraphKind::as_str`], the
    ///   object (as for a change), `etag`, the expiration (as for lifecycle),
    ///   the notification `id`.
    ///
    /// The key is unbounded (it grows with the ids Graph sends, about 300
    /// bytes for a real event); index a hash of it (e.g. a unique index on
    /// `sha256(convert_to(key, 'UTF8'))` or a stored digest column) rather than
    /// the text itself.
    #[must_use]
    pub fn dedupe_key(&self) -> String {
        let object = self
            .resource_id
            .as_deref()
            .or(self.resource.as_deref())
            .or(self.id.as_deref())
            .unwrap_or("");
        let etag = self.etag.as_deref().unwrap_or("");
        // Formatted only for the kinds whose key holds it: a change, nearly every item, does not.
        let expiration = || {
            self.subscription_expiration
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Nanos, true))
                .unwrap_or_default()
        };
        let id = self.id.as_deref().unwrap_or("");
        let kind = self.kind.as_str();
        let sub = self.subscription_id.as_str();

        if self.kind.is_change() {
            length_prefixed(&["c", sub, kind, object, etag])
        } else if self.kind.is_lifecycle() {
            length_prefixed(&["l", sub, kind, &expiration(), id])
        } else {
            length_prefixed(&["u", sub, kind, object, etag, &expiration(), id])
        }
    }
}

/// `graph1` followed by `|<byte length>:<part>` for each part: no part can run into the next.
fn length_prefixed(parts: &[&str]) -> String {
    let capacity = 8 + parts.iter().map(|p| p.len() + 8).sum::<usize>();
    let mut key = String::with_capacity(capacity);
    key.push_str("graph1");
    let mut digits = itoa::Buffer::new();
    for part in parts {
        key.push('|');
        key.push_str(digits.format(part.len()));
        key.push(':');
        key.push_str(part);
    }
    key
}

/// Parses a POST body of Graph change and/or lifecycle notifications (a
/// `changeNotificationCollection`).
///
/// * The body must be a UTF-8 JSON object (a leading byte-order mark is
///   tolerated) nested at most [`MAX_DEPTH`] levels; `validationTokens` (rich
///   notifications) and any other top-level field are ignored.
/// * `value` missing, `null` or not an array → [`GraphError::NoValueArray`];
///   an empty array → `Ok` with no items (nothing to store; answer `202`).
/// * More than [`MAX_ITEMS`] items → [`GraphError::Invalid`].
/// * Each item must be an object with a non-empty string `subscriptionId` and
///   a non-empty string `changeType` or `lifecycleEvent`, else the whole body
///   is [`GraphError::Invalid`] (the message names the item's index). When
///   both are present, `lifecycleEvent` decides (Graph documents them as
///   mutually exclusive; lifecycle handling is the safe side). Unknown values
///   give [`GraphKind::Unknown`].
/// * Other fields are lenient: a missing, `null` or non-string `clientState`,
///   `id`, `resource`, `tenantId`, `resourceData.*` is `None`; unknown fields
///   are ignored; `resourceData`'s `@odata.*` keys match in any ASCII case.
/// * `subscriptionExpirationDateTime` that does not parse is `None` rather
///   than an error: it is only a hint (renewal is scheduled from our own
///   database), and refusing the batch would make Graph retry it for hours.
///   RFC 3339 with any offset and 0–9 fraction digits is read, and so is a
///   timestamp without offset (taken as UTC).
/// * A `\u0000` escape or an unpaired surrogate escape anywhere in the body is
///   [`GraphError::Invalid`]: valid JSON, but Postgres cannot store it. So is
///   a number with more than [`MAX_NUMBER_DIGITS`] digits or an exponent
///   beyond ±[`MAX_NUMBER_EXPONENT`] (`jsonb` keeps numbers as `numeric`), and
///   a `subscriptionId` or `resourceData.id` longer than [`MAX_ID_BYTES`]. Every
///   item this returns can therefore be stored as it is.
///
/// The body is scanned once for depth and escapes, then parsed once: the
/// envelope is read with each item captured as a borrowed raw slice, and each
/// item slice is decoded into its fields; the only copies are the returned
/// strings and the item's raw bytes.
///
/// # Errors
///
/// [`GraphError::Malformed`] for a body that is not UTF-8 JSON, not an object,
/// nested too deeply or has two `value` fields; [`GraphError::NoValueArray`]
/// when `value` is missing or not an array; [`GraphError::Invalid`] for a bad
/// item, too many items or an unstorable escape, as listed above. One bad item
/// refuses the whole body.
pub fn parse_notification_collection(body: &[u8]) -> Result<Vec<GraphNotification>, GraphError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let text = std::str::from_utf8(body)
        .map_err(|_| GraphError::Malformed("body is not valid UTF-8".to_owned()))?;
    scan(text.as_bytes())?;

    let envelope: Envelope<'_> =
        serde_json::from_str(text).map_err(|e| GraphError::Malformed(describe(&e, true)))?;
    let items = match envelope.value {
        Some(ValueField::Items(items)) => items,
        Some(ValueField::TooMany) => {
            return Err(GraphError::Invalid(format!(
                "more than {MAX_ITEMS} items in one POST"
            )));
        }
        Some(ValueField::NotArray) | None => return Err(GraphError::NoValueArray),
    };

    items
        .into_iter()
        .enumerate()
        .map(|(index, raw)| parse_item(index, raw))
        .collect()
}

fn parse_item(index: usize, raw: &RawValue) -> Result<GraphNotification, GraphError> {
    let json = raw.get();
    if !json.starts_with('{') {
        return Err(GraphError::Invalid(format!(
            "item {index} is not a JSON object"
        )));
    }
    let wire: ItemWire = serde_json::from_str(json)
        .map_err(|e| GraphError::Invalid(format!("item {index}: {}", describe(&e, false))))?;

    let subscription_id = match wire.subscription_id.0 {
        Some(s) if !s.is_empty() => s,
        _ => {
            return Err(GraphError::Invalid(format!(
                "item {index} has no subscriptionId"
            )));
        }
    };
    let too_long = |what: &str| {
        GraphError::Invalid(format!(
            "item {index}: {what} is longer than {MAX_ID_BYTES} bytes"
        ))
    };
    if subscription_id.len() > MAX_ID_BYTES {
        return Err(too_long("subscriptionId"));
    }
    if wire
        .resource_data
        .id
        .as_ref()
        .is_some_and(|id| id.len() > MAX_ID_BYTES)
    {
        return Err(too_long("resourceData.id"));
    }
    let kind = match (
        non_empty(wire.lifecycle_event.0),
        non_empty(wire.change_type.0),
    ) {
        (Some(event), _) => GraphKind::from_lifecycle_event(&event),
        (None, Some(change)) => GraphKind::from_change_type(&change),
        (None, None) => {
            return Err(GraphError::Invalid(format!(
                "item {index} has neither changeType nor lifecycleEvent"
            )));
        }
    };

    Ok(GraphNotification {
        subscription_id,
        client_state: wire.client_state.0,
        kind,
        id: wire.id.0,
        resource: wire.resource.0,
        resource_id: wire.resource_data.id,
        etag: wire.resource_data.etag,
        odata_type: wire.resource_data.odata_type,
        subscription_expiration: wire
            .subscription_expiration_date_time
            .0
            .as_deref()
            .and_then(parse_timestamp),
        tenant_id: wire.tenant_id.0,
        raw: raw.to_owned(),
    })
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|s| !s.is_empty())
}

/// RFC 3339 with any offset and fraction; else an ISO 8601 date-time without
/// offset, taken as UTC.
fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

/// A short description of a `serde_json` error that echoes at most [`MAX_ECHO`]
/// characters of it (a data error's text can quote the input).
fn describe(error: &serde_json::Error, with_position: bool) -> String {
    use serde_json::error::Category;
    let what: Cow<'_, str> = match error.classify() {
        Category::Syntax => "invalid JSON syntax".into(),
        Category::Eof => "unexpected end of JSON".into(),
        Category::Io => "could not read JSON".into(),
        Category::Data => {
            let message = error.to_string();
            let message = message
                .rsplit_once(" at line ")
                .map_or(message.as_str(), |(head, _)| head);
            let cut: String = message.chars().take(MAX_ECHO).collect();
            Cow::Owned(cut)
        }
    };
    if with_position && error.line() > 0 {
        format!("{what} at line {} column {}", error.line(), error.column())
    } else {
        what.into_owned()
    }
}

/// One pass over the body: refuses nesting deeper than [`MAX_DEPTH`], and the
/// `\u0000` / unpaired-surrogate escapes and the numbers Postgres cannot store.
/// Anything else wrong with the JSON is left to `serde_json`.
fn scan(bytes: &[u8]) -> Result<(), GraphError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut i = 0usize;
    while let Some(&b) = bytes.get(i) {
        if in_string {
            match b {
                b'"' => in_string = false,
                b'\\' if bytes.get(i + 1) == Some(&b'u') => match hex4(bytes.get(i + 2..i + 6)) {
                    Some(0) => {
                        return Err(GraphError::Invalid(
                            "JSON contains a \\u0000 escape, which cannot be stored".to_owned(),
                        ));
                    }
                    Some(0xD800..=0xDBFF) => {
                        let low = match bytes.get(i + 6..i + 8) {
                            Some(b"\\u") => hex4(bytes.get(i + 8..i + 12)),
                            _ => None,
                        };
                        if !matches!(low, Some(0xDC00..=0xDFFF)) {
                            return Err(unpaired_surrogate());
                        }
                        i += 12;
                        continue;
                    }
                    Some(0xDC00..=0xDFFF) => return Err(unpaired_surrogate()),
                    Some(_) => {
                        i += 6;
                        continue;
                    }
                    None => {
                        i += 2;
                        continue;
                    }
                },
                b'\\' => {
                    i += 2;
                    continue;
                }
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(GraphError::Malformed(format!(
                            "JSON nested deeper than {MAX_DEPTH} levels"
                        )));
                    }
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                b'-' | b'0'..=b'9' => {
                    // serde_json checks no range when it skips an unknown field or captures a
                    // raw item, so this is the only place a number's size is ever looked at.
                    let end = number_end(bytes, i);
                    check_number(bytes.get(i..end).unwrap_or_default())?;
                    i = end;
                    continue;
                }
                _ => {}
            }
        }
        i += 1;
    }
    Ok(())
}

/// The end of the number token starting at `start` (`-`, digits, `.` digits,
/// `e`/`E` sign digits, each part optional here: malformed tokens are left for
/// `serde_json` to refuse). Always past `start` when a `-` or digit is there.
fn number_end(bytes: &[u8], start: usize) -> usize {
    let digits = |mut j: usize| {
        while bytes.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        j
    };
    let mut j = start;
    if bytes.get(j) == Some(&b'-') {
        j += 1;
    }
    j = digits(j);
    if bytes.get(j) == Some(&b'.') {
        j = digits(j + 1);
    }
    if matches!(bytes.get(j), Some(b'e' | b'E')) {
        j += 1;
        if matches!(bytes.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        j = digits(j);
    }
    j
}

/// Refuses a number token with more than [`MAX_NUMBER_DIGITS`] digits or an
/// exponent beyond ±[`MAX_NUMBER_EXPONENT`].
fn check_number(token: &[u8]) -> Result<(), GraphError> {
    let (mantissa, exponent) = match token.iter().position(|b| matches!(b, b'e' | b'E')) {
        Some(at) => {
            let (mantissa, rest) = token.split_at(at);
            (mantissa, rest.get(1..).unwrap_or_default())
        }
        None => (token, &[][..]),
    };
    let digits = mantissa.iter().filter(|b| b.is_ascii_digit()).count();
    let magnitude = exponent
        .iter()
        .filter(|b| b.is_ascii_digit())
        .fold(0u64, |acc, d| {
            acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        });
    if digits > MAX_NUMBER_DIGITS || magnitude > MAX_NUMBER_EXPONENT {
        return Err(GraphError::Invalid(format!(
            "a JSON number has more than {MAX_NUMBER_DIGITS} digits or an exponent beyond \
             ±{MAX_NUMBER_EXPONENT}, which cannot be stored"
        )));
    }
    Ok(())
}

fn unpaired_surrogate() -> GraphError {
    GraphError::Invalid(
        "JSON contains an unpaired surrogate escape, which cannot be stored".to_owned(),
    )
}

fn hex4(digits: Option<&[u8]>) -> Option<u16> {
    let digits = digits?;
    if digits.len() != 4 {
        return None;
    }
    digits.iter().try_fold(0u16, |acc, &d| {
        let v = char::from(d).to_digit(16)?;
        Some(acc * 16 + u16::try_from(v).ok()?)
    })
}

// ---------------------------------------------------------------------------
// Wire shapes

/// The envelope: only `value` is read, every other key is skipped.
struct Envelope<'a> {
    value: Option<ValueField<'a>>,
}

/// What `value` held.
enum ValueField<'a> {
    /// The items, each as the borrowed slice of the body.
    Items(Vec<&'a RawValue>),
    /// An array longer than [`MAX_ITEMS`].
    TooMany,
    /// Not an array (`null`, an object, a string, …).
    NotArray,
}

impl<'de> Deserialize<'de> for Envelope<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EnvelopeVisitor)
    }
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut value = None;
        while let Some(key) = map.next_key_seed(KeyIs("value"))? {
            if key {
                if value.is_some() {
                    return Err(de::Error::custom("duplicate `value` field"));
                }
                value = Some(map.next_value::<ValueField<'de>>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Envelope { value })
    }
}

/// Deserializes an object key to `true` when it equals the given name, without
/// allocating.
struct KeyIs(&'static str);

impl<'de> de::DeserializeSeed<'de> for KeyIs {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyIs {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

impl<'de> Deserialize<'de> for ValueField<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueFieldVisitor)
    }
}

struct ValueFieldVisitor;

impl<'de> Visitor<'de> for ValueFieldVisitor {
    type Value = ValueField<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            if items.len() == MAX_ITEMS {
                // Consume the rest cheaply so the parser stays consistent.
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(ValueField::TooMany);
            }
            items.push(item);
        }
        Ok(ValueField::Items(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(ValueField::NotArray)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(ValueField::NotArray)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(ValueField::NotArray)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(ValueField::NotArray)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(ValueField::NotArray)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(ValueField::NotArray)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(ValueField::NotArray)
    }
}

/// One item's fields. Unknown fields are skipped; every field is lenient.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ItemWire {
    #[serde(default)]
    subscription_id: Lenient,
    #[serde(default)]
    client_state: Lenient,
    #[serde(default)]
    change_type: Lenient,
    #[serde(default)]
    lifecycle_event: Lenient,
    #[serde(default)]
    id: Lenient,
    #[serde(default)]
    resource: Lenient,
    #[serde(default)]
    resource_data: ResourceDataWire,
    #[serde(default)]
    subscription_expiration_date_time: Lenient,
    #[serde(default)]
    tenant_id: Lenient,
}

/// A string, or `None` for `null` and any other JSON type (which is skipped).
#[derive(Default)]
struct Lenient(Option<String>);

impl<'de> Deserialize<'de> for Lenient {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LenientVisitor)
    }
}

struct LenientVisitor;

impl<'de> Visitor<'de> for LenientVisitor {
    type Value = Lenient;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Lenient, E> {
        Ok(Lenient(Some(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Lenient, E> {
        Ok(Lenient(Some(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Lenient, E> {
        Ok(Lenient(None))
    }

    fn visit_none<E: de::Error>(self) -> Result<Lenient, E> {
        Ok(Lenient(None))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Lenient, E> {
        Ok(Lenient(None))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Lenient, E> {
        Ok(Lenient(None))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Lenient, E> {
        Ok(Lenient(None))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Lenient, E> {
        Ok(Lenient(None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Lenient, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Lenient(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Lenient, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Lenient(None))
    }
}

/// `resourceData`: `id` (exact key) and the `@odata.type` / `@odata.etag`
/// keys in any ASCII case; the first non-null string of each wins. Anything
/// other than an object gives all `None`.
#[derive(Default)]
struct ResourceDataWire {
    id: Option<String>,
    odata_type: Option<String>,
    etag: Option<String>,
}

impl<'de> Deserialize<'de> for ResourceDataWire {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ResourceDataVisitor)
    }
}

struct ResourceDataVisitor;

#[derive(Clone, Copy)]
enum ResourceKey {
    Id,
    ODataType,
    ODataEtag,
    Other,
}

impl<'de> de::DeserializeSeed<'de> for ResourceKey {
    type Value = Self;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for ResourceKey {
    type Value = Self;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self, E> {
        Ok(if v == "id" {
            Self::Id
        } else if v.eq_ignore_ascii_case("@odata.type") {
            Self::ODataType
        } else if v.eq_ignore_ascii_case("@odata.etag") {
            Self::ODataEtag
        } else {
            Self::Other
        })
    }
}

impl<'de> Visitor<'de> for ResourceDataVisitor {
    type Value = ResourceDataWire;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ResourceDataWire, A::Error> {
        let mut out = ResourceDataWire::default();
        while let Some(key) = map.next_key_seed(ResourceKey::Other)? {
            let slot = match key {
                ResourceKey::Id => &mut out.id,
                ResourceKey::ODataType => &mut out.odata_type,
                ResourceKey::ODataEtag => &mut out.etag,
                ResourceKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let Lenient(value) = map.next_value()?;
            if slot.is_none() {
                *slot = value;
            }
        }
        Ok(out)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<ResourceDataWire, A::Error> {
        LenientVisitor
            .visit_seq(seq)
            .map(|_| ResourceDataWire::default())
    }

    fn visit_unit<E: de::Error>(self) -> Result<ResourceDataWire, E> {
        Ok(ResourceDataWire::default())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<ResourceDataWire, E> {
        Ok(ResourceDataWire::default())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<ResourceDataWire, E> {
        Ok(ResourceDataWire::default())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<ResourceDataWire, E> {
        Ok(ResourceDataWire::default())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<ResourceDataWire, E> {
        Ok(ResourceDataWire::default())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<ResourceDataWire, E> {
        Ok(ResourceDataWire::default())
    }
}

// ---------------------------------------------------------------------------
// clientState and the validation handshake

/// Constant-time comparison of a received `clientState` with the secret stored
/// for its subscription. `None` received never matches, and neither does an
/// empty `expected` (a subscription without a secret must not accept an empty
/// or absent `clientState`). Only the lengths may leak through timing.
#[must_use]
pub fn client_state_matches(received: Option<&str>, expected: &str) -> bool {
    match received {
        Some(received) if !expected.is_empty() => {
            bool::from(received.as_bytes().ct_eq(expected.as_bytes()))
        }
        _ => false,
    }
}

/// The subscription handshake. Given the raw query string of the request
/// (everything after `?`; a leading `?` is tolerated), returns
/// `Ok(Some(token))` when a `validationToken` parameter is present, with the
/// token form-decoded (`+` → space, then `%XX`), ready to be echoed as the
/// `text/plain` body; `Ok(None)` when there is none. The parameter name is
/// matched in any ASCII case (and may itself be percent-encoded); when it
/// appears more than once the first occurrence is used.
///
/// # Errors
///
/// [`GraphError::Invalid`] when the token is empty, longer than
/// [`MAX_VALIDATION_TOKEN_BYTES`] once decoded, not UTF-8 once decoded, or
/// contains `<`, `>` or an ASCII control character. Graph never sends markup;
/// refusing it (rather than escaping it, which would make validation fail)
/// keeps the endpoint from reflecting script.
pub fn validation_token(query: &str) -> Result<Option<String>, GraphError> {
    let query = query.strip_prefix('?').unwrap_or(query);
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !is_validation_token_name(name) {
            continue;
        }
        if value.len() > 3 * MAX_VALIDATION_TOKEN_BYTES {
            return Err(token_too_long());
        }
        let decoded = form_decode(value)
            .map_err(|_| GraphError::Invalid("validationToken is not valid UTF-8".to_owned()))?;
        if decoded.is_empty() {
            return Err(GraphError::Invalid("validationToken is empty".to_owned()));
        }
        if decoded.len() > MAX_VALIDATION_TOKEN_BYTES {
            return Err(token_too_long());
        }
        if decoded.contains(['<', '>']) {
            return Err(GraphError::Invalid(
                "validationToken contains markup".to_owned(),
            ));
        }
        if decoded.chars().any(|c| c.is_ascii_control()) {
            return Err(GraphError::Invalid(
                "validationToken contains a control character".to_owned(),
            ));
        }
        return Ok(Some(decoded));
    }
    Ok(None)
}

fn token_too_long() -> GraphError {
    GraphError::Invalid(format!(
        "validationToken is longer than {MAX_VALIDATION_TOKEN_BYTES} bytes"
    ))
}

fn is_validation_token_name(name: &str) -> bool {
    const NAME: &str = "validationToken";
    if name.eq_ignore_ascii_case(NAME) {
        return true;
    }
    // An encoded name: at most three bytes per character.
    name.len() <= 3 * NAME.len()
        && name.contains(['%', '+'])
        && form_decode(name).is_ok_and(|n| n.eq_ignore_ascii_case(NAME))
}

/// `application/x-www-form-urlencoded` decoding of one name or value: `+` is a
/// space, `%XX` a byte (a `%` not followed by two hex digits stays as it is),
/// and the result must be UTF-8.
fn form_decode(value: &str) -> Result<String, std::string::FromUtf8Error> {
    let plus_as_space: Cow<'_, [u8]> = if value.contains('+') {
        Cow::Owned(
            value
                .bytes()
                .map(|b| if b == b'+' { b' ' } else { b })
                .collect(),
        )
    } else {
        Cow::Borrowed(value.as_bytes())
    };
    let bytes: Vec<u8> = percent_encoding::percent_decode(&plus_as_space).collect();
    String::from_utf8(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/graph/",
                $name
            ))
        };
    }

    const CHANGE_CREATED: &[u8] = fixture!("change-created.json");
    const BATCH_MIXED: &[u8] = fixture!("change-batch-mixed-subscriptions.json");
    const ODD_SHAPES: &[u8] = fixture!("change-odd-shapes.json");
    const LC_REAUTH: &[u8] = fixture!("lifecycle-reauthorization-required.json");
    const LC_REMOVED: &[u8] = fixture!("lifecycle-subscription-removed.json");
    const LC_MISSED: &[u8] = fixture!("lifecycle-missed.json");
    const LC_AND_CHANGE: &[u8] = fixture!("lifecycle-and-change-mixed.json");
    const BAD_NOT_JSON: &[u8] = fixture!("bad/not-json.txt");
    const BAD_NO_VALUE: &[u8] = fixture!("bad/no-value.json");
    const BAD_VALUE_NOT_ARRAY: &[u8] = fixture!("bad/value-not-array.json");
    const BAD_NO_SUBSCRIPTION: &[u8] = fixture!("bad/item-without-subscription.json");

    const VALID_FIXTURES: [&[u8]; 7] = [
        CHANGE_CREATED,
        BATCH_MIXED,
        ODD_SHAPES,
        LC_REAUTH,
        LC_REMOVED,
        LC_MISSED,
        LC_AND_CHANGE,
    ];

    const SUB_AURORA: &str = "0d8f2b6a-7c31-4e59-9a42-3f1b6c8d9e01";
    const SUB_BOREALIS: &str = "a41c9e7d-5b02-4f38-b6e1-92d7c0f4a8b3";
    const CS_AURORA: &str = "aurora-cs-4f7Qm2xLr9";
    const CS_BOREALIS: &str = "borealis-cs-Z8pW1kT3";
    const TENANT: &str = "5b1a3f0e-2c4d-4e6f-8a9b-0c1d2e3f4a5b";
    const AURORA_EXPIRY: &str = "2026-12-02T09:15:30.1234567Z";
    const BOREALIS_EXPIRY: &str = "2026-12-01T22:40:05.5Z";

    fn parse(body: &[u8]) -> Vec<GraphNotification> {
        parse_notification_collection(body).expect("fixture parses")
    }

    fn at(text: &str) -> Option<DateTime<Utc>> {
        Some(
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc),
        )
    }

    fn raw_json(item: &GraphNotification) -> serde_json::Value {
        serde_json::from_str(item.raw.get()).unwrap()
    }

    /// (kind, subscription, client state, resource id, etag)
    type Summary<'a> = (
        GraphKind,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
    );

    fn summary(item: &GraphNotification) -> Summary<'_> {
        (
            item.kind.clone(),
            item.subscription_id.as_str(),
            item.client_state.as_deref(),
            item.resource_id.as_deref(),
            item.etag.as_deref(),
        )
    }

    fn one_item(json: &str) -> GraphNotification {
        let body = format!(r#"{{"value":[{json}]}}"#);
        let mut items = parse(body.as_bytes());
        assert_eq!(items.len(), 1);
        items.remove(0)
    }

    // ----- fixtures that parse -------------------------------------------

    #[test]
    fn a_created_change_for_a_room_event_parses_with_every_field() {
        let items = parse(CHANGE_CREATED);
        assert_eq!(items.len(), 1);
        let item = &items[0];
        assert_eq!(item.subscription_id, SUB_AURORA);
        assert_eq!(item.client_state.as_deref(), Some(CS_AURORA));
        assert_eq!(item.kind, GraphKind::Created);
        assert_eq!(item.id.as_deref(), Some("bm90aWYtcm9vbS1hdXJvcmEtMDAx"));
        assert_eq!(
            item.resource.as_deref(),
            Some("Users/7f3e9a12-4b6c-4d8e-9f01-2a3b4c5d6e7f/Events/AAMkAGF1cm9yYS1ldnQtMDAxAA==")
        );
        assert_eq!(
            item.resource_id.as_deref(),
            Some("AAMkAGF1cm9yYS1ldnQtMDAxAA==")
        );
        assert_eq!(
            item.etag.as_deref(),
            Some(r#"W/"DwAAABYAAABhdXJvcmEtY2stMDAx""#)
        );
        assert_eq!(item.odata_type.as_deref(), Some("#Microsoft.Graph.Event"));
        assert_eq!(item.subscription_expiration, at(AURORA_EXPIRY));
        assert_eq!(item.tenant_id.as_deref(), Some(TENANT));
        assert!(item.kind.is_change());
        assert!(!item.kind.is_lifecycle());
    }

    #[test]
    fn a_batch_for_two_subscriptions_keeps_every_item_in_order() {
        let items = parse(BATCH_MIXED);
        let got: Vec<_> = items.iter().map(summary).collect();
        let e2 = Some("AAMkAGF1cm9yYS1ldnQtMDAyAA==");
        assert_eq!(
            got,
            vec![
                (
                    GraphKind::Created,
                    SUB_AURORA,
                    Some(CS_AURORA),
                    e2,
                    Some(r#"W/"DwAAABYAAABhdXJvcmEtY2stMDAyYQ==""#)
                ),
                (
                    GraphKind::Updated,
                    SUB_AURORA,
                    Some(CS_AURORA),
                    e2,
                    Some(r#"W/"DwAAABYAAABhdXJvcmEtY2stMDAyYg==""#)
                ),
                (
                    GraphKind::Created,
                    SUB_BOREALIS,
                    Some(CS_BOREALIS),
                    Some("AAMkAGJvcmVhbGlzLWV2dC0wMTAA"),
                    Some(r#"W/"DwAAABYAAABib3JlYWxpcy1jay0wMTA=""#)
                ),
                (
                    GraphKind::Deleted,
                    SUB_BOREALIS,
                    Some(CS_BOREALIS),
                    Some("AAMkAGJvcmVhbGlzLWV2dC0wMTEA"),
                    None
                ),
                (
                    GraphKind::Updated,
                    SUB_AURORA,
                    Some(CS_AURORA),
                    e2,
                    Some(r#"W/"DwAAABYAAABhdXJvcmEtY2stMDAyYw==""#)
                ),
            ]
        );
        assert!(items.iter().all(|i| i.id.is_none()));
        assert!(items.iter().all(|i| i.tenant_id.as_deref() == Some(TENANT)));
        assert_eq!(items[2].subscription_expiration, at(BOREALIS_EXPIRY));
    }

    #[test]
    fn odd_but_legal_shapes_are_accepted_and_normalised() {
        let items = parse(ODD_SHAPES);
        assert_eq!(items.len(), 3);

        let first = &items[0];
        assert_eq!(first.kind, GraphKind::Updated);
        assert_eq!(first.subscription_id, SUB_AURORA);
        assert_eq!(first.id, None);
        assert_eq!(first.client_state, None);
        assert_eq!(first.odata_type.as_deref(), Some("#microsoft.graph.event"));
        assert_eq!(
            first.resource_id.as_deref(),
            Some("AAMkAGF1cm9yYS1ldnQtMDAzAA==")
        );
        assert_eq!(
            first.etag.as_deref(),
            Some(r#"W/"DwAAABYAAABhdXJvcmEtY2stMDAz""#)
        );
        assert_eq!(first.subscription_expiration, at("2026-12-02T09:15:30Z"));

        let second = &items[1];
        assert_eq!(
            second.kind,
            GraphKind::Unknown("unknown_future_value".to_owned())
        );
        assert_eq!(second.kind.as_str(), "unknown_future_value");
        assert!(!second.kind.is_change() && !second.kind.is_lifecycle());
        assert_eq!(second.id.as_deref(), Some("bm90aWYtb2RkLTAwMg"));
        assert_eq!(second.client_state.as_deref(), Some(CS_BOREALIS));
        assert_eq!(second.odata_type.as_deref(), Some("#Microsoft.Graph.Event"));
        assert_eq!(
            second.etag.as_deref(),
            Some(r#"W/"DwAAABYAAABib3JlYWxpcy1jay0wMjA=""#)
        );
        assert_eq!(
            second.subscription_expiration,
            at("2026-12-02T09:15:30.9Z"),
            "+05:30 is converted to UTC"
        );

        let third = &items[2];
        assert_eq!(third.kind, GraphKind::Deleted);
        assert_eq!(third.subscription_id, SUB_BOREALIS);
        assert_eq!(third.client_state, None);
        assert_eq!(third.tenant_id, None);
        assert_eq!(third.subscription_expiration, None, "unparseable is None");
        assert_eq!(
            (third.resource_id.as_deref(), third.etag.as_deref()),
            (None, None)
        );
        assert_eq!(third.odata_type, None);
        assert!(third.resource.is_some());
    }

    #[test]
    fn a_lifecycle_reauthorization_required_item_parses_as_reauthorization_required() {
        let items = parse(LC_REAUTH);
        assert_eq!(items.len(), 1);
        let item = &items[0];
        assert_eq!(item.kind, GraphKind::ReauthorizationRequired);
        assert_eq!(item.kind.as_str(), "reauthorization_required");
        assert!(item.kind.is_lifecycle() && !item.kind.is_change());
        assert_eq!(item.subscription_id, SUB_AURORA);
        assert_eq!(item.client_state.as_deref(), Some(CS_AURORA));
        assert_eq!(item.subscription_expiration, at(AURORA_EXPIRY));
        assert_eq!(item.tenant_id.as_deref(), Some(TENANT));
        assert_eq!(
            (
                &item.id,
                &item.resource,
                &item.resource_id,
                &item.etag,
                &item.odata_type
            ),
            (&None, &None, &None, &None, &None)
        );
    }

    #[test]
    fn a_lifecycle_subscription_removed_item_parses_as_subscription_removed() {
        let items = parse(LC_REMOVED);
        assert_eq!(items.len(), 1);
        assert_eq!(
            summary(&items[0]),
            (
                GraphKind::SubscriptionRemoved,
                SUB_BOREALIS,
                Some(CS_BOREALIS),
                None,
                None
            )
        );
        assert_eq!(items[0].kind.as_str(), "subscription_removed");
        assert_eq!(items[0].subscription_expiration, at(BOREALIS_EXPIRY));
    }

    #[test]
    fn a_lifecycle_missed_item_parses_as_missed() {
        let items = parse(LC_MISSED);
        assert_eq!(items.len(), 1);
        assert_eq!(
            summary(&items[0]),
            (GraphKind::Missed, SUB_AURORA, Some(CS_AURORA), None, None)
        );
        assert_eq!(items[0].kind.as_str(), "missed");
        assert_eq!(items[0].subscription_expiration, at("2026-12-02T09:15:30Z"));
    }

    #[test]
    fn lifecycle_and_change_items_in_one_post_are_told_apart() {
        let items = parse(LC_AND_CHANGE);
        let got: Vec<_> = items.iter().map(summary).collect();
        assert_eq!(
            got,
            vec![
                (
                    GraphKind::Updated,
                    SUB_AURORA,
                    Some(CS_AURORA),
                    Some("AAMkAGF1cm9yYS1ldnQtMDA0AA=="),
                    Some(r#"W/"DwAAABYAAABhdXJvcmEtY2stMDA0""#)
                ),
                (
                    GraphKind::Missed,
                    SUB_BOREALIS,
                    Some(CS_BOREALIS),
                    None,
                    None
                ),
                (
                    GraphKind::Deleted,
                    SUB_BOREALIS,
                    Some(CS_BOREALIS),
                    Some("AAMkAGJvcmVhbGlzLWV2dC0wMzAA"),
                    None
                ),
                (
                    GraphKind::ReauthorizationRequired,
                    SUB_AURORA,
                    Some(CS_AURORA),
                    None,
                    None
                ),
            ]
        );
        let lifecycle: Vec<bool> = items.iter().map(|i| i.kind.is_lifecycle()).collect();
        assert_eq!(lifecycle, [false, true, false, true]);
    }

    #[test]
    fn raw_holds_each_item_exactly_as_it_appears_in_the_body() {
        for body in VALID_FIXTURES {
            let text = std::str::from_utf8(body).unwrap();
            let whole: serde_json::Value = serde_json::from_slice(body).unwrap();
            let items = parse(body);
            for (item, expected) in items.iter().zip(whole["value"].as_array().unwrap()) {
                assert!(text.contains(item.raw.get()), "raw is a slice of the body");
                assert!(item.raw.get().starts_with('{') && item.raw.get().ends_with('}'));
                assert_eq!(&raw_json(item), expected);
            }
        }
    }

    #[test]
    fn lifecycle_event_in_any_case_or_snake_case_is_recognised() {
        for (value, kind) in [
            (
                "REAUTHORIZATIONREQUIRED",
                GraphKind::ReauthorizationRequired,
            ),
            (
                "reauthorization_required",
                GraphKind::ReauthorizationRequired,
            ),
            ("SubscriptionRemoved", GraphKind::SubscriptionRemoved),
            ("MISSED", GraphKind::Missed),
        ] {
            let item = one_item(&format!(
                r#"{{"subscriptionId":"s","lifecycleEvent":"{value}"}}"#
            ));
            assert_eq!(item.kind, kind, "{value}");
        }
    }

    #[test]
    fn lifecycle_event_wins_when_an_item_carries_both_fields() {
        let item =
            one_item(r#"{"subscriptionId":"s","changeType":"updated","lifecycleEvent":"missed"}"#);
        assert_eq!(item.kind, GraphKind::Missed);
    }

    #[test]
    fn unknown_kinds_become_bounded_snake_case_names_that_never_pass_for_known_ones() {
        let cases = [
            ("unknownFutureValue", "unknown_future_value"),
            ("HTTPErrorHappened", "http_error_happened"),
            ("some value!", "some_value"),
            ("__x--Y__", "x_y"),
            ("!!!", "unknown"),
            ("ébauche", "bauche"),
        ];
        for (raw, expected) in cases {
            assert_eq!(GraphKind::unknown(raw).as_str(), expected, "{raw}");
        }
        let long = "a".repeat(500);
        assert_eq!(GraphKind::unknown(&long).as_str().len(), 64);
        let item = one_item(r#"{"subscriptionId":"s","lifecycleEvent":"created"}"#);
        assert_eq!(item.kind.as_str(), "unknown_created");
        let item = one_item(r#"{"subscriptionId":"s","changeType":"Missed"}"#);
        assert_eq!(item.kind.as_str(), "unknown_missed");
        assert!(!item.kind.is_lifecycle());
    }

    #[test]
    fn subscription_expiration_reads_every_published_format_and_ignores_junk() {
        for (text, expected) in [
            ("2016-03-19T22:11:09.952Z", at("2016-03-19T22:11:09.952Z")),
            (
                "2019-09-18T00:52:45.9696658+00:00",
                at("2019-09-18T00:52:45.9696658Z"),
            ),
            (
                "2021-12-31T16:16:44.9907405+05:30",
                at("2021-12-31T10:46:44.9907405Z"),
            ),
            ("2019-12-11T02:47:21+00:00", at("2019-12-11T02:47:21Z")),
            ("2019-03-20T11:00:00.0000000", at("2019-03-20T11:00:00Z")),
            ("not a date", None),
            ("", None),
        ] {
            let item = one_item(&format!(
                r#"{{"subscriptionId":"s","changeType":"created","subscriptionExpirationDateTime":"{text}"}}"#
            ));
            assert_eq!(item.subscription_expiration, expected, "{text}");
        }
        let item = one_item(
            r#"{"subscriptionId":"s","changeType":"created","subscriptionExpirationDateTime":12}"#,
        );
        assert_eq!(item.subscription_expiration, None);
    }

    #[test]
    fn non_string_optional_fields_read_as_absent_instead_of_failing_the_batch() {
        let item = one_item(
            r#"{"subscriptionId":"s","changeType":"created","clientState":5,"id":[1],
                "tenantId":{"x":1},"resource":true,"resourceData":{"id":7,"@odata.etag":null}}"#,
        );
        assert_eq!(item.client_state, None);
        assert_eq!(item.id, None);
        assert_eq!(item.tenant_id, None);
        assert_eq!(item.resource, None);
        assert_eq!((item.resource_id, item.etag), (None, None));
        let item =
            one_item(r#"{"subscriptionId":"s","changeType":"created","resourceData":[1,2]}"#);
        assert_eq!(item.resource_id, None);
    }

    #[test]
    fn an_empty_value_array_gives_no_items() {
        assert_eq!(
            parse_notification_collection(br#"{"value":[]}"#),
            Ok(vec![])
        );
        assert_eq!(
            parse_notification_collection(b" \n{ \"value\" : [ ] }\n"),
            Ok(vec![])
        );
    }

    #[test]
    fn a_leading_byte_order_mark_is_tolerated() {
        let mut body = b"\xEF\xBB\xBF".to_vec();
        body.extend_from_slice(CHANGE_CREATED);
        assert_eq!(parse(&body), parse(CHANGE_CREATED));
    }

    // ----- bodies that are refused ---------------------------------------

    fn is_malformed(result: Result<Vec<GraphNotification>, GraphError>) -> bool {
        matches!(result, Err(GraphError::Malformed(_)))
    }

    fn is_invalid(result: Result<Vec<GraphNotification>, GraphError>) -> bool {
        matches!(result, Err(GraphError::Invalid(_)))
    }

    #[test]
    fn a_body_that_is_not_json_is_malformed() {
        assert!(is_malformed(parse_notification_collection(BAD_NOT_JSON)));
        assert!(is_malformed(parse_notification_collection(b"")));
        assert!(is_malformed(parse_notification_collection(b"   ")));
        assert!(is_malformed(parse_notification_collection(b"\xff\xfe{}")));
        assert!(is_malformed(parse_notification_collection(
            br#"{"value":[]} trailing"#
        )));
        assert!(is_malformed(parse_notification_collection(
            br#"{"value":["#
        )));
    }

    #[test]
    fn a_json_body_that_is_not_an_object_is_malformed() {
        for body in [&br#"[{"value":[]}]"#[..], b"null", b"\"value\"", b"42"] {
            assert!(is_malformed(parse_notification_collection(body)));
        }
    }

    #[test]
    fn a_body_without_value_is_refused_with_no_value_array() {
        assert_eq!(
            parse_notification_collection(BAD_NO_VALUE),
            Err(GraphError::NoValueArray)
        );
        assert_eq!(
            parse_notification_collection(b"{}"),
            Err(GraphError::NoValueArray)
        );
    }

    #[test]
    fn a_value_that_is_not_an_array_is_refused_with_no_value_array() {
        assert_eq!(
            parse_notification_collection(BAD_VALUE_NOT_ARRAY),
            Err(GraphError::NoValueArray)
        );
        for body in [
            &br#"{"value":null}"#[..],
            br#"{"value":"x"}"#,
            br#"{"value":1.5}"#,
            br#"{"value":-3}"#,
            br#"{"value":true}"#,
        ] {
            assert_eq!(
                parse_notification_collection(body),
                Err(GraphError::NoValueArray)
            );
        }
    }

    #[test]
    fn a_duplicated_value_field_is_malformed() {
        assert!(is_malformed(parse_notification_collection(
            br#"{"value":[],"value":[]}"#
        )));
    }

    #[test]
    fn an_item_without_subscription_id_is_invalid() {
        let err = parse_notification_collection(BAD_NO_SUBSCRIPTION).unwrap_err();
        assert_eq!(
            err,
            GraphError::Invalid("item 0 has no subscriptionId".to_owned())
        );
        for item in [
            r#"{"subscriptionId":"","changeType":"created"}"#,
            r#"{"subscriptionId":null,"changeType":"created"}"#,
            r#"{"subscriptionId":17,"changeType":"created"}"#,
        ] {
            let body = format!(r#"{{"value":[{item}]}}"#);
            assert!(
                is_invalid(parse_notification_collection(body.as_bytes())),
                "{item}"
            );
        }
    }

    #[test]
    fn an_item_with_neither_change_type_nor_lifecycle_event_is_invalid() {
        let body = br#"{"value":[{"subscriptionId":"a","changeType":"created"},
                                 {"subscriptionId":"b","changeType":"","lifecycleEvent":null}]}"#;
        assert_eq!(
            parse_notification_collection(body),
            Err(GraphError::Invalid(
                "item 1 has neither changeType nor lifecycleEvent".to_owned()
            ))
        );
    }

    #[test]
    fn an_item_that_is_not_an_object_is_invalid() {
        for body in [
            &br#"{"value":[["s","created"]]}"#[..],
            br#"{"value":["created"]}"#,
            br#"{"value":[null]}"#,
        ] {
            assert!(is_invalid(parse_notification_collection(body)));
        }
    }

    #[test]
    fn an_item_with_a_duplicated_known_field_is_invalid() {
        let body =
            br#"{"value":[{"subscriptionId":"a","subscriptionId":"b","changeType":"created"}]}"#;
        assert!(is_invalid(parse_notification_collection(body)));
    }

    fn nested(depth: usize) -> String {
        format!(
            r#"{{"value":[{{"subscriptionId":"s","changeType":"created","x":{}1{}}}]}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )
    }

    #[test]
    fn deeply_nested_json_is_malformed_and_does_not_crash() {
        let huge = "[".repeat(200_000);
        assert!(is_malformed(parse_notification_collection(huge.as_bytes())));
        let huge_objects = r#"{"a":"#.repeat(100_000);
        assert!(is_malformed(parse_notification_collection(
            huge_objects.as_bytes()
        )));
        // Inside an unknown field of an item, which serde_json would skip
        // without its recursion limit.
        for depth in [MAX_DEPTH, 129, 5_000] {
            let result = parse_notification_collection(nested(depth).as_bytes());
            assert!(
                matches!(&result, Err(GraphError::Malformed(m)) if m.contains("nested")),
                "{depth}: {result:?}"
            );
        }
    }

    #[test]
    fn nesting_within_the_limit_is_accepted() {
        // Envelope, value and item take three levels.
        let items = parse(nested(MAX_DEPTH - 3).as_bytes());
        assert_eq!(items.len(), 1);
    }

    #[test]
    fn brackets_inside_strings_do_not_count_as_nesting() {
        let body = format!(
            r#"{{"value":[{{"subscriptionId":"s","note":"{}","changeType":"created","x":"\"[{{"}}]}}"#,
            "[{".repeat(1_000)
        );
        assert_eq!(parse(body.as_bytes()).len(), 1);
    }

    #[test]
    fn more_than_ten_thousand_items_are_invalid() {
        let item = r#"{"subscriptionId":"s","changeType":"updated"}"#;
        let body = |n: usize| format!(r#"{{"value":[{}]}}"#, vec![item; n].join(","));
        assert_eq!(parse(body(MAX_ITEMS).as_bytes()).len(), MAX_ITEMS);
        assert_eq!(
            parse_notification_collection(body(MAX_ITEMS + 1).as_bytes()),
            Err(GraphError::Invalid(
                "more than 10000 items in one POST".to_owned()
            ))
        );
    }

    #[test]
    fn strings_postgres_cannot_store_are_invalid() {
        for bad in [
            r"\u0000",
            r"a\uD800b",
            r"\udc00",
            r"\uD800\u0041",
            r"x\uDBFF",
        ] {
            let body = format!(
                r#"{{"value":[{{"subscriptionId":"s","changeType":"created","note":"{bad}"}}]}}"#
            );
            assert!(
                is_invalid(parse_notification_collection(body.as_bytes())),
                "{bad}"
            );
        }
        let fine = r#"{"value":[{"subscriptionId":"s\\u0000","changeType":"created","n":"\uD83D\uDE00 \u00e9"}]}"#;
        let items = parse(fine.as_bytes());
        assert_eq!(items[0].subscription_id, r"s\u0000");
    }

    #[test]
    fn numbers_numeric_cannot_hold_are_invalid_and_ordinary_ones_are_fine() {
        let body = |number: &str| {
            format!(
                r#"{{"value":[{{"subscriptionId":"s","changeType":"created","n":{number},"m":[1,{{"k":"1e999999"}}]}}]}}"#
            )
        };
        let digits = "7".repeat(MAX_NUMBER_DIGITS);
        for fine in [
            "0",
            "-0",
            "12.5",
            "-1.5E+3",
            "1e1000",
            "1e-1000",
            "-9e0001000",
            digits.as_str(),
            &format!("0.{}", "1".repeat(MAX_NUMBER_DIGITS - 1)),
            &format!("{digits}e-1000"),
        ] {
            assert!(
                parse_notification_collection(body(fine).as_bytes()).is_ok(),
                "{fine}"
            );
        }
        for bad in [
            "1e200000".to_owned(),
            "1e1001".to_owned(),
            "-1E-1001".to_owned(),
            "1e99999999999999999999999999".to_owned(),
            format!("{digits}7"),
            format!("0.{}1", "0".repeat(20_000)),
            format!("[1, -{}]", "9".repeat(140_000)),
        ] {
            let err = parse_notification_collection(body(&bad).as_bytes());
            assert!(is_invalid(err.clone()), "{}: {err:?}", bad.len());
            assert!(err.unwrap_err().to_string().contains("cannot be stored"));
        }
        // Outside the items too: the whole body is checked in one pass.
        let outside = r#"{"odd": 1e5000, "value":[{"subscriptionId":"s","changeType":"created"}]}"#;
        assert!(is_invalid(parse_notification_collection(
            outside.as_bytes()
        )));
    }

    #[test]
    fn ids_past_the_bound_are_invalid_so_that_whatever_parses_can_be_stored() {
        let at_bound = "i".repeat(MAX_ID_BYTES);
        let past = "i".repeat(MAX_ID_BYTES + 1);
        let item = |sub: &str, id: &str| {
            format!(
                r#"{{"value":[{{"subscriptionId":"{sub}","changeType":"created","resourceData":{{"id":"{id}"}}}}]}}"#
            )
        };
        let items = parse(item(&at_bound, &at_bound).as_bytes());
        assert_eq!(items[0].subscription_id, at_bound);
        assert_eq!(items[0].resource_id.as_deref(), Some(at_bound.as_str()));
        for (body, what) in [
            (
                item(&past, "x"),
                "item 0: subscriptionId is longer than 1024 bytes",
            ),
            (
                item("s", &past),
                "item 0: resourceData.id is longer than 1024 bytes",
            ),
        ] {
            let err = parse_notification_collection(body.as_bytes()).unwrap_err();
            assert_eq!(err, GraphError::Invalid(what.to_owned()));
        }
    }

    #[test]
    fn error_messages_are_short_and_echo_no_input() {
        let secret = "S".repeat(5_000);
        let bodies = [
            format!(r#"{{"value":[{{"subscriptionId":"{secret}"#),
            format!(r#"{{"value":[], "{secret}": }}"#),
            format!(r#"["{secret}"]"#),
            format!(r#"{{"value":[{{"subscriptionId":"{secret}","{secret}":1,"{secret}":2}}]}}"#),
            format!(
                r#"{{"value":[{{"subscriptionId":"a","changeType":"created","id":"x","id":"{secret}"}}]}}"#
            ),
        ];
        for body in bodies {
            let err = parse_notification_collection(body.as_bytes()).unwrap_err();
            let text = err.to_string();
            assert!(text.len() < 160, "{text}");
            assert!(!text.contains("SSSSSSSSSS"), "{text}");
        }
    }

    #[test]
    fn debug_output_hides_the_client_state() {
        let items = parse(CHANGE_CREATED);
        let debug = format!("{:?}", items[0]);
        assert!(!debug.contains(CS_AURORA), "{debug}");
        assert!(debug.contains("***"));
        assert!(debug.contains(SUB_AURORA));
    }

    // ----- dedupe keys ----------------------------------------------------

    #[test]
    fn a_redelivered_change_has_the_same_dedupe_key() {
        let first = parse(CHANGE_CREATED).remove(0);
        // The same item again: other formatting, key order, notification id and
        // expiration offset notation.
        let again = one_item(&format!(
            r#"{{"changeType":"created","subscriptionId":"{SUB_AURORA}","id":"another-id",
               "subscriptionExpirationDateTime":"2026-12-02T09:15:30.1234567Z",
               "resourceData":{{"id":"AAMkAGF1cm9yYS1ldnQtMDAxAA==",
               "@odata.etag":"W/\"DwAAABYAAABhdXJvcmEtY2stMDAx\""}}}}"#
        ));
        assert_eq!(first.dedupe_key(), again.dedupe_key());
        assert_eq!(first.dedupe_key(), parse(CHANGE_CREATED)[0].dedupe_key());
    }

    #[test]
    fn the_dedupe_key_differs_when_etag_change_type_or_subscription_differs() {
        let items = parse(BATCH_MIXED);
        let keys: Vec<String> = items.iter().map(GraphNotification::dedupe_key).collect();
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            keys.len(),
            "every item of the batch is distinct"
        );

        let base = parse(CHANGE_CREATED).remove(0);
        let mut other_etag = base.clone();
        other_etag.etag = Some(r#"W/"other""#.to_owned());
        let mut other_kind = base.clone();
        other_kind.kind = GraphKind::Updated;
        let mut other_sub = base.clone();
        other_sub.subscription_id = SUB_BOREALIS.to_owned();
        let mut no_etag = base.clone();
        no_etag.etag = None;
        for changed in [&other_etag, &other_kind, &other_sub, &no_etag] {
            assert_ne!(base.dedupe_key(), changed.dedupe_key());
        }
    }

    #[test]
    fn the_dedupe_key_spells_out_its_components() {
        let item = parse(CHANGE_CREATED).remove(0);
        assert_eq!(
            item.dedupe_key(),
            format!(
                "graph1|1:c|36:{SUB_AURORA}|7:created|28:AAMkAGF1cm9yYS1ldnQtMDAxAA==|32:{}",
                r#"W/"DwAAABYAAABhdXJvcmEtY2stMDAx""#
            )
        );
        let lifecycle = parse(LC_MISSED).remove(0);
        assert_eq!(
            lifecycle.dedupe_key(),
            format!("graph1|1:l|36:{SUB_AURORA}|6:missed|30:2026-12-02T09:15:30.000000000Z|0:")
        );
    }

    #[test]
    fn component_boundaries_cannot_be_faked_in_the_dedupe_key() {
        let a = one_item(
            r#"{"subscriptionId":"s|1:x","changeType":"created","resourceData":{"id":"y"}}"#,
        );
        let b = one_item(
            r#"{"subscriptionId":"s","changeType":"created","resourceData":{"id":"x|1:y"}}"#,
        );
        assert_ne!(a.dedupe_key(), b.dedupe_key());
    }

    #[test]
    fn lifecycle_dedupe_keys_follow_subscription_event_and_expiration() {
        let reauth = parse(LC_REAUTH).remove(0);
        let again = one_item(&format!(
            r#"{{"subscriptionId":"{SUB_AURORA}","lifecycleEvent":"reauthorizationRequired",
               "subscriptionExpirationDateTime":"2026-12-02T14:45:30.1234567+05:30"}}"#
        ));
        assert_eq!(reauth.dedupe_key(), again.dedupe_key(), "same instant");

        let mut renewed = reauth.clone();
        renewed.subscription_expiration = at("2026-12-05T09:15:30Z");
        assert_ne!(reauth.dedupe_key(), renewed.dedupe_key());
        let mut with_id = reauth.clone();
        with_id.id = Some("n-1".to_owned());
        assert_ne!(reauth.dedupe_key(), with_id.dedupe_key());
        let mut missed = reauth.clone();
        missed.kind = GraphKind::Missed;
        assert_ne!(reauth.dedupe_key(), missed.dedupe_key());
    }

    #[test]
    fn a_change_without_resource_data_is_keyed_by_its_resource() {
        let a = one_item(
            r#"{"subscriptionId":"s","changeType":"updated","resource":"Users/u/Events/1"}"#,
        );
        let b = one_item(
            r#"{"subscriptionId":"s","changeType":"updated","resource":"Users/u/Events/2"}"#,
        );
        assert_ne!(a.dedupe_key(), b.dedupe_key());
        let unknown = parse(ODD_SHAPES).remove(1);
        assert!(unknown.dedupe_key().starts_with("graph1|1:u|"));
    }

    // ----- clientState ----------------------------------------------------

    #[test]
    fn client_state_matches_only_the_exact_stored_secret() {
        assert!(client_state_matches(Some(CS_AURORA), CS_AURORA));
        assert!(!client_state_matches(Some(CS_BOREALIS), CS_AURORA));
        assert!(!client_state_matches(
            Some("aurora-cs-4f7Qm2xLr"),
            CS_AURORA
        ));
        assert!(!client_state_matches(
            Some("aurora-cs-4f7Qm2xLr9 "),
            CS_AURORA
        ));
        assert!(!client_state_matches(
            Some("AURORA-CS-4F7QM2XLR9"),
            CS_AURORA
        ));
        assert!(!client_state_matches(None, CS_AURORA));
        assert!(!client_state_matches(Some(""), ""));
        assert!(!client_state_matches(None, ""));
        let items = parse(ODD_SHAPES);
        assert!(!client_state_matches(
            items[0].client_state.as_deref(),
            CS_AURORA
        ));
        assert!(client_state_matches(
            items[1].client_state.as_deref(),
            CS_BOREALIS
        ));
    }

    // ----- validation handshake ------------------------------------------

    const GRAPH_SENTENCE: &str = "Validation: Testing client application reachability for subscription Request-Id: 3c9e1a57-0b2d-4f68-9e15-a7c3d2b10f84";

    #[test]
    fn the_graph_validation_sentence_is_decoded_with_spaces_and_colons() {
        let plus = "validationToken=Validation%3a+Testing+client+application+reachability+for+subscription+Request-Id%3a+3c9e1a57-0b2d-4f68-9e15-a7c3d2b10f84";
        assert_eq!(validation_token(plus), Ok(Some(GRAPH_SENTENCE.to_owned())));
        let percent = "validationToken=Validation%3A%20Testing%20client%20application%20reachability%20for%20subscription%20Request-Id%3A%203c9e1a57-0b2d-4f68-9e15-a7c3d2b10f84";
        assert_eq!(
            validation_token(percent),
            Ok(Some(GRAPH_SENTENCE.to_owned()))
        );
        let with_mark = format!("?{plus}");
        assert_eq!(
            validation_token(&with_mark),
            Ok(Some(GRAPH_SENTENCE.to_owned()))
        );
    }

    #[test]
    fn the_validation_token_name_matches_in_any_case_among_other_parameters() {
        assert_eq!(
            validation_token("tenant=acme&VALIDATIONTOKEN=abc+def&x=1"),
            Ok(Some("abc def".to_owned()))
        );
        assert_eq!(
            validation_token("validationtoken=a&validationToken=b"),
            Ok(Some("a".to_owned()))
        );
        assert_eq!(
            validation_token("validation%54oken=encoded%2Bname"),
            Ok(Some("encoded+name".to_owned()))
        );
        assert_eq!(
            validation_token("validationToken=100%25+sure%zz"),
            Ok(Some("100% sure%zz".to_owned()))
        );
    }

    #[test]
    fn no_validation_token_parameter_gives_none() {
        for query in [
            "",
            "?",
            "tenant=acme",
            "validationTokens=x",
            "xvalidationToken=y",
            "&&=&",
        ] {
            assert_eq!(validation_token(query), Ok(None), "{query}");
        }
    }

    #[test]
    fn a_validation_token_with_markup_is_refused() {
        for query in [
            "validationToken=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
            "validationToken=<b>",
            "validationToken=a%3Eb",
            "validationToken=line%0Abreak",
            "validationToken=nul%00",
        ] {
            assert!(
                matches!(validation_token(query), Err(GraphError::Invalid(_))),
                "{query}"
            );
        }
    }

    #[test]
    fn a_validation_token_that_is_empty_too_long_or_not_utf8_is_refused() {
        let invalid = |q: &str| matches!(validation_token(q), Err(GraphError::Invalid(_)));
        assert!(invalid("validationToken="));
        assert!(invalid("validationToken"));
        assert!(invalid("validationToken=%FF%FE"));
        assert!(invalid("validationToken=%C3"));
        let max = "a".repeat(MAX_VALIDATION_TOKEN_BYTES);
        assert_eq!(
            validation_token(&format!("validationToken={max}")),
            Ok(Some(max.clone()))
        );
        assert!(invalid(&format!("validationToken={max}b")));
        assert!(invalid(&format!("validationToken={}", "%41".repeat(1025))));
        assert!(invalid(&format!("validationToken={}", "a".repeat(100_000))));
        assert_eq!(
            validation_token("validationToken=%C3%A9t%C3%A9"),
            Ok(Some("été".to_owned()))
        );
    }

    // ----- properties: never panic -----------------------------------------

    #[derive(Debug, Clone)]
    enum Mutation {
        Flip(usize, u8),
        Truncate(usize),
        Insert(usize, Vec<u8>),
        Remove(usize, usize),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let interesting = prop::sample::select(vec![
            b"{".to_vec(),
            b"}".to_vec(),
            b"[".to_vec(),
            b"]".to_vec(),
            b"\"".to_vec(),
            b"\\".to_vec(),
            b",".to_vec(),
            b":".to_vec(),
            b"null".to_vec(),
            b"\\u0000".to_vec(),
            b"\\ud800".to_vec(),
            b"\xff".to_vec(),
            b"\"value\":".to_vec(),
            b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".to_vec(),
        ]);
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Flip(p, b)),
            any::<usize>().prop_map(Mutation::Truncate),
            (
                any::<usize>(),
                prop_oneof![prop::collection::vec(any::<u8>(), 1..8), interesting]
            )
                .prop_map(|(p, bytes)| Mutation::Insert(p, bytes)),
            (any::<usize>(), 1..16usize).prop_map(|(p, n)| Mutation::Remove(p, n)),
        ]
    }

    fn apply(body: &mut Vec<u8>, m: &Mutation) {
        let len = body.len();
        match m {
            Mutation::Flip(p, b) if len > 0 => body[p % len] = *b,
            Mutation::Truncate(p) => body.truncate(p % (len + 1)),
            Mutation::Insert(p, bytes) => {
                let at = p % (len + 1);
                body.splice(at..at, bytes.iter().copied());
            }
            Mutation::Remove(p, n) if len > 0 => {
                let at = p % len;
                body.drain(at..(at + n).min(len));
            }
            _ => {}
        }
    }

    /// Exercises every public function on a parse result.
    fn use_result(result: Result<Vec<GraphNotification>, GraphError>) {
        match result {
            Ok(items) => {
                for item in items {
                    assert!(!item.subscription_id.is_empty());
                    assert!(item.raw.get().starts_with('{'));
                    assert!(!item.kind.as_str().is_empty() && item.kind.as_str().len() <= 64);
                    let _ = item.dedupe_key();
                    let _ = client_state_matches(item.client_state.as_deref(), "secret");
                    let _ = format!("{item:?}");
                }
            }
            Err(e) => assert!(e.to_string().len() < 200),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 512,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn random_bytes_never_panic_the_parser(body in prop::collection::vec(any::<u8>(), 0..512)) {
            use_result(parse_notification_collection(&body));
        }

        #[test]
        fn mutated_fixtures_never_panic_the_parser(
            index in 0..VALID_FIXTURES.len(),
            mutations in prop::collection::vec(mutation(), 1..6),
        ) {
            let mut body = VALID_FIXTURES[index].to_vec();
            for m in &mutations {
                apply(&mut body, m);
            }
            use_result(parse_notification_collection(&body));
        }

        #[test]
        fn random_query_strings_never_panic_the_handshake(query in "[a-zA-Z%+=&?<>0-9 \\x00-\\x7f\\u{80}-\\u{10ffff}]{0,200}") {
            if let Ok(Some(token)) = validation_token(&query) {
                prop_assert!(!token.is_empty() && token.len() <= MAX_VALIDATION_TOKEN_BYTES);
                prop_assert!(!token.contains(['<', '>']));
            }
        }

        #[test]
        fn random_query_bytes_after_the_name_never_panic_the_handshake(tail in "(%[0-9a-fA-F]{2}|%|[a-zA-Z0-9+ :-]){0,80}") {
            let _ = validation_token(&format!("validationToken={tail}"));
        }

        #[test]
        fn an_encoded_plain_token_round_trips(token in "[a-zA-Z0-9 :;,./_()@!*'-]{1,300}") {
            let encoded: String = percent_encoding::utf8_percent_encode(
                &token,
                percent_encoding::NON_ALPHANUMERIC,
            )
            .to_string();
            prop_assert_eq!(validation_token(&format!("x=1&validationToken={encoded}")), Ok(Some(token.clone())));
            let plus = encoded.replace("%20", "+");
            prop_assert_eq!(validation_token(&format!("validationToken={plus}")), Ok(Some(token)));
        }
    }
}
