//! The `SendNotification` request that Exchange POSTs to a push subscription's
//! callback URL, parsed into a typed model in one streaming pass.
//!
//! Shape (MS-OXWSPSNTIF, MS-OXWSNTIF):
//! `Envelope/Body/m:SendNotification/m:ResponseMessages/m:SendNotificationResponseMessage+`,
//! each with `@ResponseClass`, `m:ResponseCode`, optional `m:MessageText`,
//! `m:DescriptiveLinkKey`, `m:MessageXml`, and (on success) a `Notification`
//! holding `t:SubscriptionId`, `t:PreviousWatermark?`, `t:MoreEvents?` and 1..n events.
//!
//! Parsing is by namespace URI and local name. The SOAP header is ignored, the
//! `Notification` may be in the messages or the types namespace, EWS elements
//! are accepted in either EWS namespace, and unknown elements are skipped.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDateTime, Utc};

use super::{Ns, Open, SoapError, Tok, XmlIn, is_xml_whitespace, quote, unexpected_eof};

/// Longest subscription id or item/folder `Id` accepted, in bytes. Exchange's are a few hundred
/// bytes at most; the subscription id is part of a btree index entry on the event table (and
/// the item id is stored beside it), and Postgres refuses an entry over about 2.7 kB. A longer
/// id is [`SoapError::Invalid`], so whatever parses can be stored.
pub const MAX_ID_BYTES: usize = 1024;

/// Refuses an id longer than [`MAX_ID_BYTES`]; `what` names it in the error (formatted only
/// then: this runs for every id of every notification).
fn bounded_id(id: String, what: std::fmt::Arguments<'_>) -> Result<String, SoapError> {
    if id.len() > MAX_ID_BYTES {
        return Err(SoapError::Invalid(format!(
            "{} is longer than {MAX_ID_BYTES} bytes",
            quote(&what.to_string())
        )));
    }
    Ok(id)
}

/// A parsed `SendNotification` request: one entry per
/// `SendNotificationResponseMessage`, in document order (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendNotification {
    pub messages: Vec<NotificationMessage>,
}

impl SendNotification {
    /// Every subscription id the request mentions, notifications and error
    /// messages alike, in document order. An id may repeat.
    pub fn subscription_ids(&self) -> impl Iterator<Item = &str> + '_ {
        self.messages
            .iter()
            .filter_map(NotificationMessage::subscription_id)
    }
}

/// One `SendNotificationResponseMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotificationMessage {
    /// ResponseClass Success or Warning with a Notification
    Notification(Notification),
    /// ResponseClass="Error" (e.g. ErrorReadEventsFailed): the subscription is lost
    Error(ErrorMessage),
}

impl NotificationMessage {
    /// The subscription this message is about, when it says.
    pub fn subscription_id(&self) -> Option<&str> {
        match self {
            Self::Notification(n) => Some(&n.subscription_id),
            Self::Error(e) => e.subscription_id.as_deref(),
        }
    }
}

/// A `ResponseClass="Error"` message. Exchange has already dropped the subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorMessage {
    /// `ResponseCode`, e.g. `ErrorReadEventsFailed`.
    pub response_code: String,
    pub message_text: Option<String>,
    /// From `MessageXml/Value[@Name="SubscriptionId"]`, or else from a
    /// `Notification/SubscriptionId` if the message carries one.
    pub subscription_id: Option<String>,
}

/// The `Notification` of a successful message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub subscription_id: String,
    pub previous_watermark: Option<String>,
    /// `MoreEvents`; `false` when absent.
    pub more_events: bool,
    /// 1..n, in document order.
    pub events: Vec<Event>,
}

/// One event of a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub watermark: Option<String>,
    /// `TimeStamp` in UTC; absent on `StatusEvent`.
    pub timestamp: Option<DateTime<Utc>>,
    /// `ItemId` or `FolderId`: exactly one on every event but `StatusEvent`.
    pub target: Option<ObjectRef>,
    pub parent_folder_id: Option<ItemRef>,
    /// `OldItemId` or `OldFolderId` (moved and copied events).
    pub old_target: Option<ObjectRef>,
    pub old_parent_folder_id: Option<ItemRef>,
    /// `UnreadCount` (modified events, mostly on folders).
    pub unread_count: Option<i32>,
}

impl Event {
    /// The `ItemId`'s `Id`; `None` for folder events and status events.
    pub fn item_id(&self) -> Option<&str> {
        self.target.as_ref().and_then(ObjectRef::item_id)
    }
}

/// The object an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectRef {
    /// `ItemId` / `OldItemId`.
    Item(ItemRef),
    /// `FolderId` / `OldFolderId`.
    Folder(ItemRef),
}

impl ObjectRef {
    /// The id if this is an item.
    pub fn item_id(&self) -> Option<&str> {
        match self {
            Self::Item(r) => Some(&r.id),
            Self::Folder(_) => None,
        }
    }

    /// The id if this is a folder.
    pub fn folder_id(&self) -> Option<&str> {
        match self {
            Self::Folder(r) => Some(&r.id),
            Self::Item(_) => None,
        }
    }

    /// The id and change key, item or folder.
    pub fn id_ref(&self) -> &ItemRef {
        match self {
            Self::Item(r) | Self::Folder(r) => r,
        }
    }
}

/// An EWS id (`Id` attribute, case-sensitive) with its optional `ChangeKey`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRef {
    pub id: String,
    pub change_key: Option<String>,
}

/// The eight EWS notification event kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Copied,
    Created,
    Deleted,
    Modified,
    Moved,
    NewMail,
    Status,
    FreeBusyChanged,
}

impl EventKind {
    /// Stable snake-case name, e.g. for a database column or a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Copied => "copied",
            Self::Created => "created",
            Self::Deleted => "deleted",
            Self::Modified => "modified",
            Self::Moved => "moved",
            Self::NewMail => "new_mail",
            Self::Status => "status",
            Self::FreeBusyChanged => "free_busy_changed",
        }
    }

    /// The EWS element's local name, e.g. `CreatedEvent`.
    pub fn element_name(self) -> &'static str {
        match self {
            Self::Copied => "CopiedEvent",
            Self::Created => "CreatedEvent",
            Self::Deleted => "DeletedEvent",
            Self::Modified => "ModifiedEvent",
            Self::Moved => "MovedEvent",
            Self::NewMail => "NewMailEvent",
            Self::Status => "StatusEvent",
            Self::FreeBusyChanged => "FreeBusyChangedEvent",
        }
    }

    fn from_element_name(local: &str) -> Option<Self> {
        Some(match local {
            "CopiedEvent" => Self::Copied,
            "CreatedEvent" => Self::Created,
            "DeletedEvent" => Self::Deleted,
            "ModifiedEvent" => Self::Modified,
            "MovedEvent" => Self::Moved,
            "NewMailEvent" => Self::NewMail,
            "StatusEvent" => Self::Status,
            "FreeBusyChangedEvent" => Self::FreeBusyChanged,
            _ => return None,
        })
    }
}

/// Parses the body of a `SendNotification` POST.
///
/// Accepts SOAP 1.1 and 1.2 envelopes with any prefixes, a BOM, an XML
/// declaration (UTF-8 only), comments and processing instructions. Refuses
/// DTDs, undeclared entities, NUL, nesting deeper than [`super::MAX_DEPTH`],
/// ids longer than [`MAX_ID_BYTES`], and bodies that break the schema where it
/// matters (see [`SoapError`]): every value it returns can be stored.
pub fn parse_send_notification(body: &[u8]) -> Result<SendNotification, SoapError> {
    let mut x = XmlIn::new(body)?;
    let root = loop {
        match x.next()? {
            Tok::Open(open) => break open,
            Tok::Text(t) if is_blank(&t) => {}
            Tok::Text(_) | Tok::Char(_) | Tok::Close => {
                return Err(SoapError::Malformed(
                    "text before the root element".to_owned(),
                ));
            }
            Tok::Eof => return Err(SoapError::Malformed("no root element".to_owned())),
        }
    };
    if root.ns != Ns::Soap || root.local() != "Envelope" {
        return Err(SoapError::Invalid(
            "root element is not a SOAP Envelope".to_owned(),
        ));
    }
    let messages = envelope(&mut x)?;
    loop {
        match x.next()? {
            Tok::Eof => break,
            Tok::Text(t) if is_blank(&t) => {}
            _ => {
                return Err(SoapError::Malformed(
                    "content after the root element".to_owned(),
                ));
            }
        }
    }
    Ok(SendNotification { messages })
}

fn is_blank(text: &str) -> bool {
    text.chars().all(is_xml_whitespace)
}

fn invalid(reason: &str) -> SoapError {
    SoapError::Invalid(reason.to_owned())
}

/// Stores `value` in `slot` unless it is already set (`name` occurs twice).
fn set_once<T>(slot: &mut Option<T>, value: T, name: &str) -> Result<(), SoapError> {
    if slot.is_some() {
        return Err(SoapError::Invalid(format!("more than one {name}")));
    }
    *slot = Some(value);
    Ok(())
}

fn non_empty(text: Cow<'_, str>) -> Option<String> {
    if text.is_empty() {
        None
    } else {
        Some(text.into_owned())
    }
}

/// Walks the children of the element just opened: `child` gets each EWS
/// child element (and must consume it); other elements are skipped, text
/// between elements is ignored.
fn children<'i>(
    x: &mut XmlIn<'i>,
    accept: impl Fn(Ns) -> bool,
    mut child: impl FnMut(&mut XmlIn<'i>, Open<'i>) -> Result<(), SoapError>,
) -> Result<(), SoapError> {
    loop {
        match x.next()? {
            Tok::Open(open) if accept(open.ns) => child(x, open)?,
            Tok::Open(_) => x.skip()?,
            Tok::Close => return Ok(()),
            Tok::Text(_) | Tok::Char(_) => {}
            Tok::Eof => return Err(unexpected_eof()),
        }
    }
}

fn envelope(x: &mut XmlIn<'_>) -> Result<Vec<NotificationMessage>, SoapError> {
    let mut body = None;
    children(
        x,
        |ns| ns == Ns::Soap,
        |x, open| match open.local() {
            // The Header (RequestServerVersion in any namespace, any version)
            // is skipped whole, like any other envelope child.
            "Body" => set_once(&mut body, soap_body(x)?, "SOAP Body"),
            _ => x.skip(),
        },
    )?;
    body.ok_or_else(|| invalid("SOAP Envelope has no Body"))
}

fn soap_body(x: &mut XmlIn<'_>) -> Result<Vec<NotificationMessage>, SoapError> {
    let mut found = None;
    children(x, Ns::is_ews, |x, open| match open.local() {
        "SendNotification" => set_once(&mut found, send_notification(x)?, "SendNotification"),
        _ => x.skip(),
    })?;
    found.ok_or(SoapError::NotSendNotification)
}

fn send_notification(x: &mut XmlIn<'_>) -> Result<Vec<NotificationMessage>, SoapError> {
    let mut messages = Vec::new();
    let mut seen_list = false;
    children(x, Ns::is_ews, |x, open| match open.local() {
        "ResponseMessages" => {
            seen_list = true;
            children(x, Ns::is_ews, |x, open| match open.local() {
                "SendNotificationResponseMessage" => {
                    messages.push(response_message(x, &open)?);
                    Ok(())
                }
                _ => x.skip(),
            })
        }
        _ => x.skip(),
    })?;
    if !seen_list {
        return Err(invalid("SendNotification has no ResponseMessages"));
    }
    if messages.is_empty() {
        return Err(invalid(
            "ResponseMessages holds no SendNotificationResponseMessage",
        ));
    }
    Ok(messages)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ResponseClass {
    Success,
    Warning,
    Error,
}

/// A `Notification` as read, checked later against the response class.
#[derive(Default)]
struct RawNotification {
    subscription_id: Option<String>,
    previous_watermark: Option<String>,
    more_events: Option<bool>,
    events: Vec<Event>,
}

fn response_message(x: &mut XmlIn<'_>, open: &Open<'_>) -> Result<NotificationMessage, SoapError> {
    let [class] = open.attrs(["ResponseClass"])?;
    let class = match class.as_deref() {
        Some("Success") => ResponseClass::Success,
        Some("Warning") => ResponseClass::Warning,
        Some("Error") => ResponseClass::Error,
        Some(other) => {
            return Err(SoapError::Invalid(format!(
                "unknown ResponseClass {}",
                quote(other)
            )));
        }
        None => {
            return Err(invalid(
                "SendNotificationResponseMessage has no ResponseClass",
            ));
        }
    };
    let mut response_code = None;
    let mut message_text = None;
    let mut xml_subscription_id = None;
    let mut notification = None;
    children(x, Ns::is_ews, |x, open| match open.local() {
        "ResponseCode" => set_once(
            &mut response_code,
            x.text("ResponseCode")?.into_owned(),
            "ResponseCode",
        ),
        "MessageText" => set_once(
            &mut message_text,
            x.text("MessageText")?.into_owned(),
            "MessageText",
        ),
        "MessageXml" => set_once(
            &mut xml_subscription_id,
            message_xml_subscription_id(x)?,
            "MessageXml",
        ),
        "Notification" => set_once(&mut notification, raw_notification(x)?, "Notification"),
        _ => x.skip(),
    })?;

    match class {
        ResponseClass::Success | ResponseClass::Warning => {
            let raw = notification.ok_or_else(|| {
                invalid("successful SendNotificationResponseMessage has no Notification")
            })?;
            Ok(NotificationMessage::Notification(checked_notification(
                raw,
            )?))
        }
        ResponseClass::Error => {
            let response_code = response_code
                .filter(|code| !code.is_empty())
                .ok_or_else(|| invalid("error message has no ResponseCode"))?;
            let subscription_id = xml_subscription_id
                .flatten()
                .or_else(|| notification.and_then(|n| n.subscription_id));
            Ok(NotificationMessage::Error(ErrorMessage {
                response_code,
                message_text: message_text.filter(|t| !t.is_empty()),
                subscription_id,
            }))
        }
    }
}

fn checked_notification(raw: RawNotification) -> Result<Notification, SoapError> {
    let subscription_id = raw
        .subscription_id
        .ok_or_else(|| invalid("Notification has no SubscriptionId"))?;
    if raw.events.is_empty() {
        return Err(invalid("Notification holds no event"));
    }
    Ok(Notification {
        subscription_id,
        previous_watermark: raw.previous_watermark,
        more_events: raw.more_events.unwrap_or(false),
        events: raw.events,
    })
}

/// `MessageXml` is open content; the subscription id is in a descendant
/// `Value` element with `Name="SubscriptionId"`.
fn message_xml_subscription_id(x: &mut XmlIn<'_>) -> Result<Option<String>, SoapError> {
    let outer = x.depth().saturating_sub(1);
    let mut found = None;
    loop {
        match x.next()? {
            Tok::Open(open) if open.ns.is_ews() && open.local() == "Value" => {
                let [name] = open.attrs(["Name"])?;
                if found.is_none() && name.as_deref() == Some("SubscriptionId") {
                    found = non_empty(x.text("Value")?)
                        .map(|id| bounded_id(id, format_args!("SubscriptionId")))
                        .transpose()?;
                } else {
                    x.skip()?;
                }
            }
            Tok::Close if x.depth() == outer => return Ok(found),
            Tok::Open(_) | Tok::Close | Tok::Text(_) | Tok::Char(_) => {}
            Tok::Eof => return Err(unexpected_eof()),
        }
    }
}

fn raw_notification(x: &mut XmlIn<'_>) -> Result<RawNotification, SoapError> {
    let mut n = RawNotification::default();
    children(x, Ns::is_ews, |x, open| match open.local() {
        "SubscriptionId" => {
            let id = non_empty(x.text("SubscriptionId")?)
                .ok_or_else(|| invalid("SubscriptionId is empty"))?;
            let id = bounded_id(id, format_args!("SubscriptionId"))?;
            set_once(&mut n.subscription_id, id, "SubscriptionId")
        }
        "PreviousWatermark" => {
            let watermark = non_empty(x.text("PreviousWatermark")?);
            match watermark {
                Some(w) => set_once(&mut n.previous_watermark, w, "PreviousWatermark"),
                None => Ok(()),
            }
        }
        "MoreEvents" => {
            let more = parse_bool(&x.text("MoreEvents")?, "MoreEvents")?;
            set_once(&mut n.more_events, more, "MoreEvents")
        }
        local => match EventKind::from_element_name(local) {
            Some(kind) => {
                n.events.push(event(x, kind)?);
                Ok(())
            }
            None => x.skip(),
        },
    })?;
    Ok(n)
}

fn event(x: &mut XmlIn<'_>, kind: EventKind) -> Result<Event, SoapError> {
    let mut e = Event {
        kind,
        watermark: None,
        timestamp: None,
        target: None,
        parent_folder_id: None,
        old_target: None,
        old_parent_folder_id: None,
        unread_count: None,
    };
    children(x, Ns::is_ews, |x, open| match open.local() {
        "Watermark" => match non_empty(x.text("Watermark")?) {
            Some(w) => set_once(&mut e.watermark, w, "Watermark"),
            None => Ok(()),
        },
        "TimeStamp" => {
            let at = parse_timestamp(&x.text("TimeStamp")?)?;
            set_once(&mut e.timestamp, at, "TimeStamp")
        }
        "ItemId" => {
            let r = ObjectRef::Item(item_ref(x, &open)?);
            set_once(&mut e.target, r, "ItemId or FolderId")
        }
        "FolderId" => {
            let r = ObjectRef::Folder(item_ref(x, &open)?);
            set_once(&mut e.target, r, "ItemId or FolderId")
        }
        "ParentFolderId" => {
            let r = item_ref(x, &open)?;
            set_once(&mut e.parent_folder_id, r, "ParentFolderId")
        }
        "OldItemId" => {
            let r = ObjectRef::Item(item_ref(x, &open)?);
            set_once(&mut e.old_target, r, "OldItemId or OldFolderId")
        }
        "OldFolderId" => {
            let r = ObjectRef::Folder(item_ref(x, &open)?);
            set_once(&mut e.old_target, r, "OldItemId or OldFolderId")
        }
        "OldParentFolderId" => {
            let r = item_ref(x, &open)?;
            set_once(&mut e.old_parent_folder_id, r, "OldParentFolderId")
        }
        "UnreadCount" => {
            let text = x.text("UnreadCount")?;
            let count = text.parse::<i32>().map_err(|_| {
                SoapError::Invalid(format!("UnreadCount {} is not an xs:int", quote(&text)))
            })?;
            set_once(&mut e.unread_count, count, "UnreadCount")
        }
        _ => x.skip(),
    })?;
    if kind != EventKind::Status && e.target.is_none() {
        return Err(SoapError::Invalid(format!(
            "{} has no ItemId or FolderId",
            kind.element_name()
        )));
    }
    Ok(e)
}

/// `Id` (required) and `ChangeKey` of an id element; its content is skipped.
fn item_ref(x: &mut XmlIn<'_>, open: &Open<'_>) -> Result<ItemRef, SoapError> {
    let [id, change_key] = open.attrs(["Id", "ChangeKey"])?;
    x.skip()?;
    let id = id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| SoapError::Invalid(format!("{} has no Id", quote(open.local()))))?;
    let id = bounded_id(id, format_args!("{} Id", open.local()))?;
    Ok(ItemRef {
        id,
        change_key: change_key.filter(|k| !k.is_empty()),
    })
}

/// `xs:boolean`: `true`, `false`, `1`, `0`.
fn parse_bool(text: &str, what: &str) -> Result<bool, SoapError> {
    match text {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(SoapError::Invalid(format!(
            "{what} {} is not an xs:boolean",
            quote(text)
        ))),
    }
}

/// `xs:dateTime` to UTC. A value without a zone (which Exchange does not
/// send) is taken as UTC.
fn parse_timestamp(text: &str) -> Result<DateTime<Utc>, SoapError> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|naive| naive.and_utc())
        .map_err(|_| SoapError::Invalid(format!("TimeStamp {} is not an xs:dateTime", quote(text))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ews::MAX_DEPTH;
    use chrono::TimeZone;
    use proptest::prelude::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/ews/",
                $name
            ))
            .as_slice()
        };
    }

    const SUB_A: &str = "KABzcnYtbWJ4MDEucm9vbXMuZXhhbXBsZRAAAAB+c3ViLXJvb20tYS0wMDE=";
    const CAL_A: &str = "AAMkAGZpeHR1cmUtcm9vbS1hAC4AAAAAY2FsZW5kYXI=";
    const ROOT_A: &str = "AAMkAGZpeHR1cmUtcm9vbS1hAC4AAAAAbXNnLXJvb3Q=";

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Option<DateTime<Utc>> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).single()
    }

    fn r(id: &str, change_key: Option<&str>) -> ItemRef {
        ItemRef {
            id: id.to_owned(),
            change_key: change_key.map(str::to_owned),
        }
    }

    fn item(id: &str, change_key: &str) -> Option<ObjectRef> {
        Some(ObjectRef::Item(r(id, Some(change_key))))
    }

    fn folder(id: &str, change_key: &str) -> Option<ObjectRef> {
        Some(ObjectRef::Folder(r(id, Some(change_key))))
    }

    fn status(watermark: &str) -> Event {
        Event {
            kind: EventKind::Status,
            watermark: Some(watermark.to_owned()),
            timestamp: None,
            target: None,
            parent_folder_id: None,
            old_target: None,
            old_parent_folder_id: None,
            unread_count: None,
        }
    }

    /// An item or folder event without old ids or unread count.
    fn changed(
        kind: EventKind,
        watermark: &str,
        at: Option<DateTime<Utc>>,
        target: Option<ObjectRef>,
        parent: ItemRef,
    ) -> Event {
        Event {
            kind,
            watermark: Some(watermark.to_owned()),
            timestamp: at,
            target,
            parent_folder_id: Some(parent),
            old_target: None,
            old_parent_folder_id: None,
            unread_count: None,
        }
    }

    fn parse(body: &[u8]) -> SendNotification {
        match parse_send_notification(body) {
            Ok(parsed) => parsed,
            Err(e) => panic!("parse failed: {e}"),
        }
    }

    fn single_notification(body: &[u8]) -> Notification {
        let mut parsed = parse(body);
        assert_eq!(parsed.messages.len(), 1, "{parsed:?}");
        match parsed.messages.remove(0) {
            NotificationMessage::Notification(n) => n,
            NotificationMessage::Error(e) => panic!("unexpected error message {e:?}"),
        }
    }

    fn err(body: &[u8]) -> SoapError {
        match parse_send_notification(body) {
            Ok(parsed) => panic!("expected an error, got {parsed:?}"),
            Err(e) => e,
        }
    }

    fn assert_invalid(body: &[u8], needle: &str) {
        match err(body) {
            SoapError::Invalid(reason) => assert!(reason.contains(needle), "{reason}"),
            other => panic!("expected Invalid({needle}), got {other:?}"),
        }
    }

    // ---- valid fixtures ------------------------------------------------

    #[test]
    fn a_status_keep_alive_parses_to_one_status_event_with_its_watermark() {
        let n = single_notification(fixture!("send-notification-status.xml"));
        assert_eq!(
            n,
            Notification {
                subscription_id: SUB_A.to_owned(),
                previous_watermark: Some("AQAAAHJvb20tYS13bS0wMDAx".to_owned()),
                more_events: false,
                events: vec![status("AQAAAHJvb20tYS13bS0wMDAy")],
            }
        );
        assert_eq!(n.events[0].item_id(), None);
    }

    #[test]
    fn a_created_booking_yields_the_item_event_and_the_folder_event_with_its_unread_count() {
        let n = single_notification(fixture!("send-notification-created.xml"));
        let at = utc(2026, 3, 2, 10, 30, 45);
        let mut folder_event = changed(
            EventKind::Modified,
            "AQAAAHJvb20tYS13bS0wMDA0",
            at,
            folder(CAL_A, "AQAAAA=="),
            r(ROOT_A, Some("AQAAAA==")),
        );
        folder_event.unread_count = Some(0);
        assert_eq!(n.subscription_id, SUB_A);
        assert_eq!(
            n.previous_watermark.as_deref(),
            Some("AQAAAHJvb20tYS13bS0wMDAy")
        );
        assert!(!n.more_events);
        assert_eq!(
            n.events,
            vec![
                changed(
                    EventKind::Created,
                    "AQAAAHJvb20tYS13bS0wMDAz",
                    at,
                    item(
                        "AAMkAGZpeHR1cmUtcm9vbS1hAEYAAAAAbWVldGluZy0xMDAx+/AAA=",
                        "DwAAABYAAADmZXh0LWNrLTEwMDE="
                    ),
                    r(CAL_A, Some("AQAAAA==")),
                ),
                folder_event,
            ]
        );
        assert_eq!(
            n.events[0].item_id(),
            Some("AAMkAGZpeHR1cmUtcm9vbS1hAEYAAAAAbWVldGluZy0xMDAx+/AAA=")
        );
        assert_eq!(n.events[1].item_id(), None);
        assert_eq!(
            n.events[1].target.as_ref().and_then(ObjectRef::folder_id),
            Some(CAL_A)
        );
    }

    #[test]
    fn a_one_line_exchange_online_body_yields_the_item_and_the_folder_modified_events() {
        let n = single_notification(fixture!("send-notification-modified-compact.xml"));
        let cal = "AAMkADk4cm9vbS1iAC4AAAAAY2FsZW5kYXI=";
        let at = utc(2026, 3, 2, 14, 5, 9);
        assert_eq!(
            n,
            Notification {
                subscription_id: "NQBvdXRsb29rLmV4YW1wbGUub25saW5lEAAAAH5zdWItcm9vbS1iLTAwNw=="
                    .to_owned(),
                previous_watermark: Some("AQAAAHJvb20tYi13bS0wMDQx".to_owned()),
                more_events: false,
                events: vec![
                    changed(
                        EventKind::Modified,
                        "AQAAAHJvb20tYi13bS0wMDQy",
                        at,
                        item(
                            "AAMkADk4cm9vbS1iAEYAAAAAbWVldGluZy0yMDQ0/+AAA=",
                            "DwAAABYAAAByb29tLWItY2stMjA0NA=="
                        ),
                        r(cal, Some("AQAAAA==")),
                    ),
                    changed(
                        EventKind::Modified,
                        "AQAAAHJvb20tYi13bS0wMDQz",
                        at,
                        folder(cal, "AQAAAA=="),
                        r("AAMkADk4cm9vbS1iAC4AAAAAbXNnLXJvb3Q=", Some("AQAAAA==")),
                    ),
                ],
            }
        );
    }

    #[test]
    fn one_line_exchange_online_body_parses_like_the_pretty_one() {
        let compact = fixture!("send-notification-modified-compact.xml");
        assert!(!compact.contains(&b'\n'));
        let text = std::str::from_utf8(compact).unwrap();
        let pretty = text.replace("><", ">\n    <");
        assert!(pretty.lines().count() > 20);
        assert_eq!(parse(pretty.as_bytes()), parse(compact));
    }

    #[test]
    fn a_hard_delete_yields_the_deleted_item_event_then_the_folder_modified_event() {
        let n = single_notification(fixture!("send-notification-deleted.xml"));
        let at = utc(2026, 3, 2, 11, 2, 13);
        assert_eq!(
            n.previous_watermark.as_deref(),
            Some("AQAAAHJvb20tYS13bS0wMDA0")
        );
        assert_eq!(
            n.events,
            vec![
                changed(
                    EventKind::Deleted,
                    "AQAAAHJvb20tYS13bS0wMDA1",
                    at,
                    item(
                        "AAMkAGZpeHR1cmUtcm9vbS1hAEYAAAAAbWVldGluZy0xMDAx+/AAA=",
                        "DwAAABYAAADmZXh0LWNrLTEwMDI="
                    ),
                    r(CAL_A, Some("AQAAAA==")),
                ),
                changed(
                    EventKind::Modified,
                    "AQAAAHJvb20tYS13bS0wMDA2",
                    at,
                    folder(CAL_A, "AQAAAA=="),
                    r(ROOT_A, Some("AQAAAA==")),
                ),
            ]
        );
    }

    #[test]
    fn a_move_carries_the_new_and_the_old_item_ids_and_parent_folders() {
        let n = single_notification(fixture!("send-notification-moved.xml"));
        let moved = &n.events[0];
        assert_eq!(n.events.len(), 2);
        assert_eq!(moved.kind, EventKind::Moved);
        assert_eq!(moved.watermark.as_deref(), Some("AQAAAHJvb20tYS13bS0wMDA3"));
        assert_eq!(moved.timestamp, utc(2026, 3, 2, 12, 15, 0));
        assert_eq!(
            moved.target,
            item(
                "AAMkAGZpeHR1cmUtcm9vbS1hAEYAAAAAZHVtcHN0ZXItMTAwMw==",
                "DwAAABYAAADmZXh0LWNrLTEwMDM="
            )
        );
        assert_eq!(
            moved.parent_folder_id,
            Some(r(
                "AAMkAGZpeHR1cmUtcm9vbS1hAC4AAAAAcmVjb3ZlcmFibGU=",
                Some("AQAAAA==")
            ))
        );
        assert_eq!(
            moved.old_target,
            item(
                "AAMkAGZpeHR1cmUtcm9vbS1hAEYAAAAAbWVldGluZy0xMDAz+/AAA=",
                "DwAAABYAAADmZXh0LWNrLTEwMDI="
            )
        );
        assert_eq!(moved.old_parent_folder_id, Some(r(CAL_A, Some("AQAAAA=="))));
        assert_eq!(moved.unread_count, None);
        assert_eq!(n.events[1].kind, EventKind::Modified);
        assert_eq!(n.events[1].target, folder(CAL_A, "AQAAAA=="));
    }

    #[test]
    fn the_mixed_body_yields_all_eight_kinds_in_document_order_with_more_events_set() {
        let n = single_notification(fixture!("send-notification-mixed-moreevents.xml"));
        assert!(n.more_events);
        assert_eq!(
            n.previous_watermark.as_deref(),
            Some("AQAAAHJvb20tYS13bS0wMDA4")
        );
        let kinds: Vec<&str> = n.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "copied",
                "created",
                "modified",
                "moved",
                "deleted",
                "new_mail",
                "free_busy_changed",
                "status"
            ]
        );
        let watermarks: Vec<&str> = n
            .events
            .iter()
            .filter_map(|e| e.watermark.as_deref())
            .collect();
        assert_eq!(
            watermarks,
            [
                "AQAAAHJvb20tYS13bS0wMDA5",
                "AQAAAHJvb20tYS13bS0wMDEw",
                "AQAAAHJvb20tYS13bS0wMDEx",
                "AQAAAHJvb20tYS13bS0wMDEy",
                "AQAAAHJvb20tYS13bS0wMDEz",
                "AQAAAHJvb20tYS13bS0wMDE0",
                "AQAAAHJvb20tYS13bS0wMDE1",
                "AQAAAHJvb20tYS13bS0wMDE2",
            ]
        );
        for (second, e) in (1..).zip(&n.events[..7]) {
            assert_eq!(e.timestamp, utc(2026, 3, 2, 13, 0, second), "{e:?}");
        }
        assert_eq!(n.events[7], status("AQAAAHJvb20tYS13bS0wMDE2"));

        let copied = &n.events[0];
        assert_eq!(
            copied.target,
            folder(
                "AAMkAGZpeHR1cmUtcm9vbS1hAC4AAAAAY29weS0yMDAx",
                "AQAAABYAAAA="
            )
        );
        assert_eq!(
            copied.old_target,
            folder(
                "AAMkAGZpeHR1cmUtcm9vbS1hAC4AAAAAb3JpZy0yMDAx",
                "AQAAABUAAAA="
            )
        );
        assert_eq!(
            copied.old_parent_folder_id,
            Some(r(ROOT_A, Some("AQAAAA==")))
        );
        assert_eq!(copied.item_id(), None);

        let moved = &n.events[3];
        assert_eq!(
            moved.item_id(),
            Some("AAMkAGZpeHR1cmUtcm9vbS1hAEYAAAAAZGVsZXRlZC0yMDA0")
        );
        assert_eq!(
            moved.old_target.as_ref().and_then(ObjectRef::item_id),
            Some("AAMkAGZpeHR1cmUtcm9vbS1hAEYAAAAAbWVldGluZy0yMDA0")
        );

        let deleted = &n.events[4];
        assert_eq!(
            deleted.target,
            Some(ObjectRef::Item(r(
                "AAMkAGZpeHR1cmUtcm9vbS1hAEYAAAAAbWVldGluZy0yMDA1",
                None
            )))
        );
        assert_eq!(
            n.events[5].parent_folder_id,
            Some(r(
                "AAMkAGZpeHR1cmUtcm9vbS1hAC4AAAAAaW5ib3g=",
                Some("AQAAAA==")
            ))
        );
        assert_eq!(
            n.events[6].target,
            item(
                "AAMkAGZpeHR1cmUtcm9vbS1hAEYAAAAAbWVldGluZy0yMDAy",
                "DwAAABYAAAAyMDA3"
            )
        );
    }

    #[test]
    fn two_response_messages_yield_two_notifications_for_two_subscriptions() {
        let parsed = parse(fixture!("send-notification-multiple-messages.xml"));
        let sub_c = "KABzcnYtbWJ4MDIucm9vbXMuZXhhbXBsZRAAAAB+c3ViLXJvb20tYy0wMDM=";
        assert_eq!(
            parsed.subscription_ids().collect::<Vec<_>>(),
            [SUB_A, sub_c]
        );
        let [
            NotificationMessage::Notification(a),
            NotificationMessage::Notification(c),
        ] = parsed.messages.as_slice()
        else {
            panic!("expected two notifications: {parsed:?}");
        };
        assert_eq!(a.events.len(), 1);
        assert_eq!(a.events[0].kind, EventKind::Modified);
        assert_eq!(
            a.events[0].item_id(),
            Some("AAMkAGZpeHR1cmUtcm9vbS1hAEYAAAAAbWVldGluZy0yMDAy")
        );
        assert_eq!(a.events[0].timestamp, utc(2026, 3, 2, 15, 45, 30));
        assert_eq!(
            c,
            &Notification {
                subscription_id: sub_c.to_owned(),
                previous_watermark: Some("AQAAAHJvb20tYy13bS0wMTAw".to_owned()),
                more_events: false,
                events: vec![status("AQAAAHJvb20tYy13bS0wMTAx")],
            }
        );
    }

    #[test]
    fn an_error_message_yields_its_code_its_text_and_the_subscription_id_from_message_xml() {
        let parsed = parse(fixture!("send-notification-error-readeventsfailed.xml"));
        assert_eq!(
            parsed.messages,
            vec![NotificationMessage::Error(ErrorMessage {
                response_code: "ErrorReadEventsFailed".to_owned(),
                message_text: Some(
                    "The events for this subscription could not be read. \
                     The subscription has been removed."
                        .to_owned()
                ),
                subscription_id: Some(SUB_A.to_owned()),
            })]
        );
        assert_eq!(parsed.subscription_ids().collect::<Vec<_>>(), [SUB_A]);
    }

    #[test]
    fn the_exchange_2007_legacy_header_and_default_namespaces_parse() {
        let n = single_notification(fixture!("send-notification-status-legacy-header.xml"));
        assert_eq!(
            n,
            Notification {
                subscription_id: "8f2a6c1e-0b3d-4e5f-9a7b-5c4d3e2f1a0b".to_owned(),
                previous_watermark: Some("AgAAAGxlZ2FjeS13bS0wMDAx".to_owned()),
                more_events: false,
                events: vec![status("AgAAAGxlZ2FjeS13bS0wMDAy")],
            }
        );
    }

    #[test]
    fn a_notification_in_the_types_namespace_parses() {
        let n = single_notification(fixture!("send-notification-notification-types-ns.xml"));
        assert_eq!(
            n,
            Notification {
                subscription_id: "KABzcnYtbWJ4MDEucm9vbXMuZXhhbXBsZRAAAAB+c3ViLXJvb20tZC0wMDQ="
                    .to_owned(),
                previous_watermark: Some("AQAAAHJvb20tZC13bS0wMjAw".to_owned()),
                more_events: false,
                events: vec![changed(
                    EventKind::Created,
                    "AQAAAHJvb20tZC13bS0wMjAx",
                    utc(2026, 3, 3, 8, 0, 0),
                    item(
                        "AAMkAGZpeHR1cmUtcm9vbS1kAEYAAAAAbWVldGluZy0zMDAx",
                        "DwAAABYAAAAzMDAx"
                    ),
                    r(
                        "AAMkAGZpeHR1cmUtcm9vbS1kAC4AAAAAY2FsZW5kYXI=",
                        Some("AQAAAA==")
                    ),
                )],
            }
        );
    }

    // ---- prefixes and namespaces --------------------------------------

    /// One notification with the prefixes and declarations of a variant:
    /// `e`/`m`/`t` are the element prefixes (with colon, or empty), `e_decl`
    /// goes on the Envelope, `m_decl` on SendNotification, `t_decl` on each
    /// child of Notification.
    fn variant(e: &str, e_decl: &str, m: &str, m_decl: &str, t: &str, t_decl: &str) -> String {
        format!(
            r#"<{e}Envelope {e_decl}>
  <{e}Header><t:RequestServerVersion xmlns:t="{types}" Version="Exchange2013_SP1"/></{e}Header>
  <{e}Body>
    <{m}SendNotification {m_decl}>
      <{m}ResponseMessages>
        <{m}SendNotificationResponseMessage ResponseClass="Success">
          <{m}ResponseCode>NoError</{m}ResponseCode>
          <{m}Notification>
            <{t}SubscriptionId{t_decl}>{SUB_A}</{t}SubscriptionId>
            <{t}PreviousWatermark{t_decl}>AQAAAHByZWZpeA==</{t}PreviousWatermark>
            <{t}MoreEvents{t_decl}>true</{t}MoreEvents>
            <{t}MovedEvent{t_decl}>
              <{t}Watermark>AQAAAHByZWZpeC0x</{t}Watermark>
              <{t}TimeStamp>2026-03-02T10:30:45Z</{t}TimeStamp>
              <{t}ItemId Id="new+id/1=" ChangeKey="ck1"/>
              <{t}ParentFolderId Id="deleted-items"/>
              <{t}OldItemId Id="old+id/1=" ChangeKey="ck0"/>
              <{t}OldParentFolderId Id="{CAL_A}" ChangeKey="AQAAAA=="/>
            </{t}MovedEvent>
            <{t}StatusEvent{t_decl}><{t}Watermark>AQAAAHByZWZpeC0y</{t}Watermark></{t}StatusEvent>
          </{m}Notification>
        </{m}SendNotificationResponseMessage>
      </{m}ResponseMessages>
    </{m}SendNotification>
  </{e}Body>
</{e}Envelope>"#,
            types = crate::ews::NS_TYPES,
        )
    }

    fn prefixed(e: &str, soap_ns: &str) -> String {
        variant(
            &format!("{e}:"),
            &format!(r#"xmlns:{e}="{soap_ns}""#),
            "m:",
            &format!(
                r#"xmlns:m="{}" xmlns:t="{}""#,
                crate::ews::NS_MESSAGES,
                crate::ews::NS_TYPES
            ),
            "t:",
            "",
        )
    }

    #[test]
    fn the_same_document_parses_equal_with_soap11_soap_s_default_and_redeclared_prefixes() {
        use crate::ews::{NS_MESSAGES, NS_SOAP11, NS_SOAP12, NS_TYPES};
        let expected = parse(prefixed("soap11", NS_SOAP11).as_bytes());
        let n = match expected.messages.as_slice() {
            [NotificationMessage::Notification(n)] => n,
            other => panic!("{other:?}"),
        };
        assert!(n.more_events);
        assert_eq!(n.events.len(), 2);
        assert_eq!(n.events[0].item_id(), Some("new+id/1="));
        assert_eq!(
            n.events[0].old_target,
            Some(ObjectRef::Item(r("old+id/1=", Some("ck0"))))
        );
        assert_eq!(n.events[0].parent_folder_id, Some(r("deleted-items", None)));

        let default_ns = variant(
            "",
            &format!(r#"xmlns="{NS_SOAP11}""#),
            "",
            &format!(r#"xmlns="{NS_MESSAGES}""#),
            "",
            &format!(r#" xmlns="{NS_TYPES}""#),
        );
        // `x` is the envelope prefix outside and the messages prefix inside.
        let redeclared = variant(
            "x:",
            &format!(r#"xmlns:x="{NS_SOAP11}" xmlns:t="urn:not-ews""#),
            "x:",
            &format!(r#"xmlns:x="{NS_MESSAGES}" xmlns:y="{NS_TYPES}""#),
            "y:",
            "",
        );
        let variants = [
            ("soap", prefixed("soap", NS_SOAP11)),
            ("s", prefixed("s", NS_SOAP11)),
            ("soap12 env", prefixed("env", NS_SOAP12)),
            ("default namespaces", default_ns),
            ("redeclared prefixes", redeclared),
        ];
        for (name, body) in variants {
            assert_eq!(
                parse_send_notification(body.as_bytes()),
                Ok(expected.clone()),
                "{name}"
            );
        }
    }

    #[test]
    fn a_prefix_bound_to_another_namespace_is_not_taken_for_ews() {
        // Right local names, wrong namespace: nothing is a SendNotification.
        let body = variant(
            "s:",
            &format!(r#"xmlns:s="{}""#, crate::ews::NS_SOAP11),
            "m:",
            r#"xmlns:m="urn:elsewhere" xmlns:t="urn:elsewhere""#,
            "t:",
            "",
        );
        assert_eq!(err(body.as_bytes()), SoapError::NotSendNotification);
    }

    #[test]
    fn the_header_is_skipped_whatever_it_holds() {
        let body = std::str::from_utf8(fixture!("send-notification-status.xml"))
            .unwrap()
            .replace(
                "</soap11:Header>",
                r#"<RequestServerVersion xmlns="http://schemas.microsoft.com/exchange/services/2006/messages" Version="Exchange2099"/>
    <x:Anything xmlns:x="urn:x"><x:Deeper><m:Notification xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><t:SubscriptionId xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">HEADER</t:SubscriptionId></m:Notification></x:Deeper>text</x:Anything>
  </soap11:Header>"#,
            );
        assert_eq!(
            parse(body.as_bytes()),
            parse(fixture!("send-notification-status.xml"))
        );
    }

    #[test]
    fn unknown_elements_inside_known_ones_are_skipped() {
        let extra = r#"<t:Future xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" Flag="1"><t:ItemId Id="not-this-one"/><t:Nested>x</t:Nested></t:Future>"#;
        let body = std::str::from_utf8(fixture!("send-notification-created.xml"))
            .unwrap()
            .replace("<t:TimeStamp>", &format!("{extra}<t:TimeStamp>"))
            .replace("<t:MoreEvents>", &format!("{extra}<t:MoreEvents>"))
            .replace("<m:ResponseCode>", &format!("{extra}<m:ResponseCode>"))
            .replace(
                "<m:ResponseMessages>",
                &format!("<m:ResponseMessages>{extra}"),
            )
            .replace(
                "<m:SendNotification ",
                &format!("{extra}<m:SendNotification "),
            )
            .replace("<soap11:Body>", "<soap11:Body><!-- c --><?pi data?>");
        assert_eq!(body.matches("<t:Future").count(), 6);
        assert_eq!(
            parse(body.as_bytes()),
            parse(fixture!("send-notification-created.xml"))
        );
    }

    #[test]
    fn a_bom_comments_and_processing_instructions_around_the_root_are_fine() {
        let mut body = b"\xEF\xBB\xBF".to_vec();
        body.extend_from_slice(fixture!("send-notification-status.xml"));
        body.extend_from_slice(b"<!-- trailer --><?done?>\n");
        assert_eq!(
            parse(&body),
            parse(fixture!("send-notification-status.xml"))
        );
    }

    // ---- values ---------------------------------------------------------

    fn with_more_events(value: &str) -> Vec<u8> {
        std::str::from_utf8(fixture!("send-notification-status.xml"))
            .unwrap()
            .replace(
                "<t:MoreEvents>false</t:MoreEvents>",
                &format!("<t:MoreEvents>{value}</t:MoreEvents>"),
            )
            .into_bytes()
    }

    #[test]
    fn more_events_takes_every_xs_boolean_form_and_nothing_else() {
        for (text, expected) in [
            ("true", true),
            ("1", true),
            (" false\n", false),
            ("0", false),
        ] {
            assert_eq!(
                single_notification(&with_more_events(text)).more_events,
                expected,
                "{text:?}"
            );
        }
        for text in ["TRUE", "yes", "", "2"] {
            assert_invalid(&with_more_events(text), "MoreEvents");
        }
        let absent = std::str::from_utf8(fixture!("send-notification-status.xml"))
            .unwrap()
            .replace("<t:MoreEvents>false</t:MoreEvents>", "");
        assert!(!single_notification(absent.as_bytes()).more_events);
    }

    #[test]
    fn timestamps_with_fractions_or_offsets_are_converted_to_utc() {
        let base = utc(2026, 3, 2, 10, 30, 45).unwrap();
        let half = base + chrono::Duration::milliseconds(500);
        for (text, expected) in [
            ("2026-03-02T10:30:45Z", base),
            ("2026-03-02T10:30:45.5Z", half),
            ("2026-03-02T10:30:45.5000000Z", half),
            ("2026-03-02T11:30:45+01:00", base),
            ("2026-03-02T05:30:45.500-05:00", half),
            ("2026-03-02T10:30:45", base),
        ] {
            assert_eq!(parse_timestamp(text), Ok(expected), "{text}");
        }
        for text in [
            "",
            "2026-03-02",
            "2026-13-02T10:30:45Z",
            "10:30:45",
            "yesterday",
        ] {
            assert!(
                matches!(parse_timestamp(text), Err(SoapError::Invalid(m)) if m.contains("TimeStamp")),
                "{text}"
            );
        }
        let body = std::str::from_utf8(fixture!("send-notification-created.xml"))
            .unwrap()
            .replace("2026-03-02T10:30:45Z", "2026-03-02T12:30:45.25+02:00");
        let n = single_notification(body.as_bytes());
        assert_eq!(
            n.events[0].timestamp,
            Some(base + chrono::Duration::milliseconds(250))
        );
    }

    #[test]
    fn entities_and_character_references_in_ids_are_decoded() {
        let body = std::str::from_utf8(fixture!("send-notification-created.xml"))
            .unwrap()
            .replace(
                r#"Id="AAMkAGZpeHR1cmUtcm9vbS1hAEYAAAAAbWVldGluZy0xMDAx+/AAA=""#,
                r#"Id="a&amp;b&#x2B;c&#61;""#,
            )
            .replace(
                &format!("<t:SubscriptionId>{SUB_A}</t:SubscriptionId>"),
                "<t:SubscriptionId> sub&lt;1&gt;<![CDATA[&raw]]> </t:SubscriptionId>",
            );
        let n = single_notification(body.as_bytes());
        assert_eq!(n.events[0].item_id(), Some("a&b+c="));
        assert_eq!(n.subscription_id, "sub<1>&raw");
    }

    #[test]
    fn unread_count_must_be_an_xs_int() {
        let body = |count: &str| {
            std::str::from_utf8(fixture!("send-notification-created.xml"))
                .unwrap()
                .replace(
                    "<t:UnreadCount>0</t:UnreadCount>",
                    &format!("<t:UnreadCount>{count}</t:UnreadCount>"),
                )
        };
        assert_eq!(
            single_notification(body("-7").as_bytes()).events[1].unread_count,
            Some(-7)
        );
        assert_invalid(body("many").as_bytes(), "UnreadCount");
        assert_invalid(body("99999999999").as_bytes(), "UnreadCount");
    }

    #[test]
    fn event_kinds_have_stable_names() {
        let all = [
            (EventKind::Copied, "copied", "CopiedEvent"),
            (EventKind::Created, "created", "CreatedEvent"),
            (EventKind::Deleted, "deleted", "DeletedEvent"),
            (EventKind::Modified, "modified", "ModifiedEvent"),
            (EventKind::Moved, "moved", "MovedEvent"),
            (EventKind::NewMail, "new_mail", "NewMailEvent"),
            (EventKind::Status, "status", "StatusEvent"),
            (
                EventKind::FreeBusyChanged,
                "free_busy_changed",
                "FreeBusyChangedEvent",
            ),
        ];
        for (kind, name, element) in all {
            assert_eq!(kind.as_str(), name);
            assert_eq!(kind.element_name(), element);
            assert_eq!(EventKind::from_element_name(element), Some(kind));
        }
        assert_eq!(EventKind::from_element_name("SomethingEvent"), None);
    }

    // ---- schema violations ------------------------------------------------

    #[test]
    fn the_bad_fixtures_are_refused_with_the_matching_reason() {
        assert_eq!(
            err(fixture!("bad/doctype-billion-laughs.xml")),
            SoapError::DoctypeForbidden
        );
        assert_eq!(
            err(fixture!("bad/xxe-external-entity.xml")),
            SoapError::DoctypeForbidden
        );
        assert!(matches!(
            err(fixture!("bad/truncated.xml")),
            SoapError::Malformed(_)
        ));
        assert_eq!(
            err(fixture!("bad/wrong-body.xml")),
            SoapError::NotSendNotification
        );
        assert_invalid(
            fixture!("bad/missing-subscription-id.xml"),
            "SubscriptionId",
        );
        assert_invalid(fixture!("bad/bad-timestamp.xml"), "TimeStamp");
        assert!(matches!(
            err(fixture!("bad/not-xml.txt")),
            SoapError::Malformed(_)
        ));
    }

    #[test]
    fn a_billion_laughs_body_is_refused_as_a_doctype_and_its_entity_is_never_seen() {
        // Without the DTD the same reference is an undeclared entity: the
        // refusal above came from the DOCTYPE, before any entity was looked at.
        let e = err(fixture!("bad/doctype-billion-laughs.xml"));
        assert_eq!(e, SoapError::DoctypeForbidden);
        assert_eq!(
            e.to_string(),
            "DTD and entity declarations are not accepted"
        );
        let body = std::str::from_utf8(fixture!("send-notification-status.xml"))
            .unwrap()
            .replace(SUB_A, "&l9;");
        assert!(matches!(err(body.as_bytes()), SoapError::Malformed(m) if m.contains("&l9;")));
    }

    #[test]
    fn nesting_ten_thousand_deep_is_refused_as_too_deep() {
        let depth = 10_000;
        let mut body = String::with_capacity(depth * 8);
        body.push_str(
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>"#,
        );
        body.push_str(&"<a>".repeat(depth));
        body.push_str(&"</a>".repeat(depth));
        body.push_str("</s:Body></s:Envelope>");
        assert_eq!(err(body.as_bytes()), SoapError::TooDeep);
        assert_eq!(
            SoapError::TooDeep.to_string(),
            format!("XML nesting deeper than {MAX_DEPTH} levels")
        );
    }

    #[test]
    fn empty_and_non_envelope_bodies_are_refused() {
        assert!(matches!(err(b""), SoapError::Malformed(_)));
        assert!(matches!(err(b"  \n "), SoapError::Malformed(_)));
        assert_invalid(b"<Envelope/>", "Envelope");
        assert_invalid(
            br#"<m:SendNotification xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"/>"#,
            "Envelope",
        );
        assert_invalid(
            br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header/></s:Envelope>"#,
            "Body",
        );
        assert_eq!(
            err(br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body/></s:Envelope>"#),
            SoapError::NotSendNotification
        );
        let mut trailing = fixture!("send-notification-status.xml").to_vec();
        trailing.extend_from_slice(b"<again/>");
        assert!(matches!(err(&trailing), SoapError::Malformed(_)));
    }

    fn replaced(fixture: &[u8], from: &str, to: &str) -> Vec<u8> {
        let text = std::str::from_utf8(fixture).unwrap();
        assert!(text.contains(from), "{from}");
        text.replacen(from, to, 1).into_bytes()
    }

    #[test]
    fn success_and_warning_need_a_notification_with_a_subscription_id_and_events() {
        let status = fixture!("send-notification-status.xml");
        let warning = replaced(
            status,
            r#"ResponseClass="Success""#,
            r#"ResponseClass="Warning""#,
        );
        assert_eq!(
            parse(&warning),
            parse(status),
            "a Warning with a Notification is a notification"
        );
        let no_notification = std::str::from_utf8(status)
            .unwrap()
            .lines()
            .filter(|l| !l.contains("Notification>") && !l.contains("<t:") && !l.contains("</t:"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(no_notification.contains("ResponseCode"));
        assert_invalid(no_notification.as_bytes(), "no Notification");
        let warning_without =
            no_notification.replace(r#"ResponseClass="Success""#, r#"ResponseClass="Warning""#);
        assert_invalid(warning_without.as_bytes(), "no Notification");

        let no_events = std::str::from_utf8(status)
            .unwrap()
            .lines()
            .filter(|l| {
                !l.contains("StatusEvent>") && !l.contains("Watermark>AQAAAHJvb20tYS13bS0wMDAy")
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_invalid(no_events.as_bytes(), "no event");
        assert_invalid(&replaced(status, SUB_A, " "), "SubscriptionId is empty");
    }

    #[test]
    fn response_class_must_be_present_and_known() {
        let status = fixture!("send-notification-status.xml");
        assert_invalid(
            &replaced(status, r#" ResponseClass="Success""#, ""),
            "ResponseClass",
        );
        assert_invalid(
            &replaced(
                status,
                r#"ResponseClass="Success""#,
                r#"ResponseClass="Fine""#,
            ),
            "ResponseClass Fine",
        );
    }

    #[test]
    fn singletons_that_occur_twice_are_invalid() {
        let status = fixture!("send-notification-status.xml");
        let sub = format!("<t:SubscriptionId>{SUB_A}</t:SubscriptionId>");
        assert_invalid(
            &replaced(status, &sub, &format!("{sub}{sub}")),
            "more than one SubscriptionId",
        );
        let created = fixture!("send-notification-created.xml");
        assert_invalid(
            &replaced(
                created,
                "<t:ParentFolderId ",
                r#"<t:FolderId Id="x"/><t:ParentFolderId "#,
            ),
            "more than one ItemId or FolderId",
        );
        assert_invalid(
            &replaced(
                created,
                "<t:TimeStamp>",
                "<t:TimeStamp>2026-03-02T10:30:45Z</t:TimeStamp><t:TimeStamp>",
            ),
            "more than one TimeStamp",
        );
    }

    #[test]
    fn item_and_folder_events_need_an_id_with_an_id_attribute() {
        let created = fixture!("send-notification-created.xml");
        let without_target = std::str::from_utf8(created)
            .unwrap()
            .lines()
            .filter(|l| !l.contains("<t:ItemId "))
            .collect::<Vec<_>>()
            .join("\n");
        assert_invalid(
            without_target.as_bytes(),
            "CreatedEvent has no ItemId or FolderId",
        );
        assert_invalid(
            &replaced(
                created,
                r#"<t:ItemId Id="AAMkAGZpeHR1cmUtcm9vbS1hAEYAAAAAbWVldGluZy0xMDAx+/AAA=""#,
                "<t:ItemId",
            ),
            "ItemId has no Id",
        );
        assert_invalid(
            &replaced(
                created,
                r#"<t:ItemId Id="AAMkAGZpeHR1cmUtcm9vbS1hAEYAAAAAbWVldGluZy0xMDAx+/AAA=""#,
                r#"<t:ItemId Id="""#,
            ),
            "ItemId has no Id",
        );
        assert_invalid(
            &replaced(
                created,
                "<t:Watermark>AQAAAHJvb20tYS13bS0wMDAz</t:Watermark>",
                "<t:Watermark><t:Inner/></t:Watermark>",
            ),
            "Watermark must hold text only",
        );
    }

    #[test]
    fn ids_past_the_bound_are_refused_so_that_whatever_parses_can_be_stored() {
        let created = fixture!("send-notification-created.xml");
        let at_bound = "i".repeat(MAX_ID_BYTES);
        let past = "i".repeat(MAX_ID_BYTES + 1);
        let item = "AAMkAGZpeHR1cmUtcm9vbS1hAEYAAAAAbWVldGluZy0xMDAx+/AAA=";
        let n = single_notification(&replaced(created, item, &at_bound));
        assert_eq!(n.events[0].item_id(), Some(at_bound.as_str()));
        assert_invalid(
            &replaced(created, item, &past),
            "ItemId Id is longer than 1024 bytes",
        );
        assert_eq!(
            single_notification(&replaced(created, SUB_A, &at_bound)).subscription_id,
            at_bound
        );
        assert_invalid(
            &replaced(created, SUB_A, &past),
            "SubscriptionId is longer than 1024 bytes",
        );
        assert_invalid(
            &replaced(created, CAL_A, &past),
            "ParentFolderId Id is longer than 1024 bytes",
        );
        let error = fixture!("send-notification-error-readeventsfailed.xml");
        let id = parse(error).subscription_ids().next().unwrap().to_owned();
        assert_invalid(
            &replaced(error, &id, &past),
            "SubscriptionId is longer than 1024 bytes",
        );
    }

    #[test]
    fn an_error_message_needs_a_response_code_and_may_take_its_id_from_a_notification() {
        let error = fixture!("send-notification-error-readeventsfailed.xml");
        assert_invalid(
            &replaced(
                error,
                "<m:ResponseCode>ErrorReadEventsFailed</m:ResponseCode>",
                "",
            ),
            "ResponseCode",
        );
        let from_notification = replaced(
            error,
            "<m:MessageXml>",
            "<m:Notification><t:SubscriptionId>from-notification</t:SubscriptionId></m:Notification><m:MessageXml>",
        );
        let from_notification = std::str::from_utf8(&from_notification)
            .unwrap()
            .replace(r#"Name="SubscriptionId""#, r#"Name="Other""#);
        let parsed = parse(from_notification.as_bytes());
        assert_eq!(
            parsed.subscription_ids().collect::<Vec<_>>(),
            ["from-notification"]
        );
        let no_id = replaced(error, r#"Name="SubscriptionId""#, r#"Name="Other""#);
        let parsed = parse(&no_id);
        assert_eq!(parsed.subscription_ids().count(), 0);
        assert!(matches!(
            &parsed.messages[..],
            [NotificationMessage::Error(ErrorMessage { response_code, subscription_id: None, .. })]
                if response_code == "ErrorReadEventsFailed"
        ));
    }

    #[test]
    fn error_texts_never_echo_large_input() {
        let huge = "9".repeat(100_000);
        let body = replaced(
            fixture!("send-notification-created.xml"),
            "2026-03-02T10:30:45Z",
            &huge,
        );
        let message = err(&body).to_string();
        assert!(message.len() < 200, "{} bytes", message.len());
        let body = replaced(
            fixture!("send-notification-status.xml"),
            SUB_A,
            &format!("&{huge};"),
        );
        let message = err(&body).to_string();
        assert!(message.len() < 200, "{} bytes", message.len());
    }

    // ---- robustness -----------------------------------------------------

    const VALID: [&[u8]; 10] = [
        fixture!("send-notification-status.xml"),
        fixture!("send-notification-created.xml"),
        fixture!("send-notification-modified-compact.xml"),
        fixture!("send-notification-deleted.xml"),
        fixture!("send-notification-moved.xml"),
        fixture!("send-notification-mixed-moreevents.xml"),
        fixture!("send-notification-multiple-messages.xml"),
        fixture!("send-notification-error-readeventsfailed.xml"),
        fixture!("send-notification-status-legacy-header.xml"),
        fixture!("send-notification-notification-types-ns.xml"),
    ];

    #[test]
    fn every_valid_fixture_parses_and_names_its_subscription() {
        for body in VALID {
            let parsed = parse(body);
            assert!(!parsed.messages.is_empty());
            assert!(parsed.subscription_ids().all(|id| !id.is_empty()));
            assert!(parsed.subscription_ids().count() >= 1);
        }
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        FlipBit { at: usize, bit: u8 },
        Truncate { at: usize },
        Insert { at: usize, bytes: Vec<u8> },
        DuplicateElement { nth: usize },
        DeleteRange { at: usize, len: usize },
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let snippet = prop_oneof![
            proptest::collection::vec(any::<u8>(), 1..8),
            Just(b"<".to_vec()),
            Just(b"&".to_vec()),
            Just(b"<!DOCTYPE x>".to_vec()),
            Just(b"&amp;".to_vec()),
            Just(b"</t:StatusEvent>".to_vec()),
            Just(b"<t:ItemId Id=\"x\"/>".to_vec()),
            Just(b"<![CDATA[x]]>".to_vec()),
            Just(b"xmlns:t=\"urn:x\" ".to_vec()),
        ];
        prop_oneof![
            (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
            any::<usize>().prop_map(|at| Mutation::Truncate { at }),
            (any::<usize>(), snippet).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
            any::<usize>().prop_map(|nth| Mutation::DuplicateElement { nth }),
            (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::DeleteRange { at, len }),
        ]
    }

    /// Byte span of the `nth` (modulo count) element start tag and its
    /// matching end, found naively by name; `None` if there is none.
    fn element_span(doc: &[u8], nth: usize) -> Option<(usize, usize)> {
        let starts: Vec<usize> = doc
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w[0] == b'<' && w[1].is_ascii_alphabetic())
            .map(|(i, _)| i)
            .collect();
        let start = *starts.get(nth % starts.len().max(1))?;
        let rest = doc.get(start + 1..)?;
        let name_len = rest
            .iter()
            .position(|b| matches!(b, b' ' | b'>' | b'/' | b'\n' | b'\t' | b'\r'))?;
        let name = rest.get(..name_len)?;
        let tag_end = start + 1 + rest.iter().position(|&b| b == b'>')?;
        if doc.get(tag_end.checked_sub(1)?) == Some(&b'/') {
            return Some((start, tag_end + 1));
        }
        let mut close = b"</".to_vec();
        close.extend_from_slice(name);
        close.push(b'>');
        let after = doc.get(tag_end..)?;
        let pos = after
            .windows(close.len())
            .position(|w| w == close.as_slice())?;
        Some((start, tag_end + pos + close.len()))
    }

    fn apply(doc: &mut Vec<u8>, m: &Mutation) {
        let len = doc.len().max(1);
        match m {
            Mutation::FlipBit { at, bit } => {
                if let Some(b) = doc.get_mut(at % len) {
                    *b ^= 1 << bit;
                }
            }
            Mutation::Truncate { at } => doc.truncate(at % len),
            Mutation::Insert { at, bytes } => {
                let at = at % (doc.len() + 1);
                doc.splice(at..at, bytes.iter().copied());
            }
            Mutation::DuplicateElement { nth } => {
                if let Some((start, end)) = element_span(doc, *nth) {
                    let copy = doc[start..end].to_vec();
                    doc.splice(end..end, copy);
                }
            }
            Mutation::DeleteRange { at, len: n } => {
                let at = at % len;
                let end = (at + n).min(doc.len());
                if at < end {
                    doc.drain(at..end);
                }
            }
        }
    }

    #[test]
    fn duplicating_an_event_element_yields_one_more_event() {
        let body = fixture!("send-notification-status.xml");
        let nth = (0..200)
            .find(|&n| {
                element_span(body, n).is_some_and(|(s, _)| body[s..].starts_with(b"<t:StatusEvent"))
            })
            .unwrap();
        let mut doc = body.to_vec();
        apply(&mut doc, &Mutation::DuplicateElement { nth });
        let n = single_notification(&doc);
        assert_eq!(n.events.len(), 2);
        assert_eq!(n.events[0], n.events[1]);
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 512,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = parse_send_notification(&bytes);
        }

        #[test]
        fn random_bytes_behind_an_envelope_prefix_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512)
        ) {
            let mut doc = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:SendNotification xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><m:ResponseMessages>"#.to_vec();
            doc.extend_from_slice(&bytes);
            let _ = parse_send_notification(&doc);
        }

        #[test]
        fn mutated_fixtures_never_panic(
            which in 0..VALID.len(),
            mutations in proptest::collection::vec(mutation(), 1..5),
        ) {
            let mut doc = VALID[which].to_vec();
            for m in &mutations {
                apply(&mut doc, m);
            }
            if let Ok(parsed) = parse_send_notification(&doc) {
                prop_assert!(!parsed.messages.is_empty());
                for message in &parsed.messages {
                    if let NotificationMessage::Notification(n) = message {
                        prop_assert!(!n.subscription_id.is_empty());
                        prop_assert!(n.subscription_id.len() <= MAX_ID_BYTES);
                        prop_assert!(!n.events.is_empty());
                        for e in &n.events {
                            prop_assert!(e.kind == EventKind::Status || e.target.is_some());
                            prop_assert!(e.item_id().is_none_or(|id| id.len() <= MAX_ID_BYTES));
                        }
                    }
                }
            }
        }
    }
}
