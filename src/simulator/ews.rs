//! EWS at `POST /EWS/Exchange.asmx` (SOAP 1.1): push `Subscribe`, `GetItem`,
//! `FindItem` with a `CalendarView`, and `SyncFolderItems`, read by namespace and local
//! name with the project's XML reader, answered in Exchange's envelope shapes; plus the
//! `SendNotification` bodies pushed to subscribers and the reading of their replies.
//! `GetFolder` and `ConvertId` ([`folders`]) and `CreateItem`/`UpdateItem`/`DeleteItem` of
//! calendar items ([`items`]) serve what client libraries such as exchangelib need to open
//! a room's calendar and book in it.
//!
//! Who may reach which mailbox follows Exchange Online: an app-only bearer token (issued for
//! `https://outlook.office365.com`; a Graph token gets HTTP 401) must impersonate a mailbox
//! with the `ExchangeImpersonation` header, and its `X-AnchorMailbox` must name that same
//! mailbox; without them Exchange faults or misroutes the call (see `handle`). HTTP Basic
//! with the service account ([`EWS_BASIC_USER`], on-premises style) needs impersonation too,
//! since the service account is not a room. Naming a room only in a folder's `Mailbox` is
//! delegate access, which push subscriptions refuse. Items belong to their room: `GetItem`
//! finds only the impersonated room's.
//!
//! Items are written in the shape the request asks for, as Exchange does: `IdOnly` gives the
//! `ItemId` and only the properties listed in `AdditionalProperties`; `Default` gives the
//! usual calendar properties and `AllProperties` adds the series' recurrence and its
//! first, last, modified and deleted occurrences. `FindItem` gives the organizer's name but
//! never its address, and none of those series properties, whatever the shape.
//!
//! Series follow Exchange's model: occurrences share the series `UID`, carry their
//! `RecurrenceId` (and exceptions their `OriginalStart`), keep their id when they become
//! exceptions, and `SyncFolderItems` reports only the master when any part of a series
//! changes.
//!
//! Watermarks and sync states are opaque strings that encode the room and a position in the
//! change log, so any watermark the simulator never issued (or issued for another room) is
//! refused the way Exchange refuses one from another mailbox database. Watermarks also carry
//! an epoch that [`Fault::ExpireEwsWatermarks`](super::Fault::ExpireEwsWatermarks) bumps,
//! making every one issued before unknown.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, NaiveDateTime, Utc};

use super::calendar::{EwsLogEvent, EwsTarget, Instance, InstanceKind, Item, Room, weekday_name};
use super::control::{EwsEnd, EwsSubscriptionSnapshot};
use super::oauth::TokenResource;
use super::{AppState, BearerCheck, Shared, check_bearer, ews_datetime, push};
use crate::ews::tree::{self as xml, Node, esc};
use crate::ews::{EventKind, NS_MESSAGES, NS_SOAP11, NS_TYPES, Ns, SubscriptionStatus, Tok, XmlIn};

mod folders;
mod items;

/// The service account EWS accepts with HTTP Basic (`EwsAuth=basic`), besides bearer tokens.
pub const EWS_BASIC_USER: &str = "sim-ews@sim.example";
/// Password of [`EWS_BASIC_USER`].
pub const EWS_BASIC_PASSWORD: &str = "sim-ews-password";

/// `StatusFrequency` when the request omits it (the documented default).
const DEFAULT_STATUS_FREQUENCY: u32 = 30;
/// Live push subscriptions one mailbox may have: Exchange Online's `EwsMaxSubscriptions`
/// throttling budget (20), charged to the impersonated mailbox. Subscribing beyond it answers
/// `ErrorExceededSubscriptionCount`, so a client that resubscribes without letting the old
/// subscription end (answering `Unsubscribe` to its next push) runs out.
pub(crate) const MAX_SUBSCRIPTIONS_PER_MAILBOX: usize = 20;
/// `MaxChangesReturned` bounds.
const MAX_SYNC_CHANGES: usize = 512;
/// Longest `CalendarView` range Exchange accepts (two years).
const MAX_VIEW_DAYS: i64 = 2 * 366;
/// `FindItem` result cap (`EWSFindCountLimit`).
const FIND_COUNT_LIMIT: usize = 1000;
/// Change key Exchange shows on folder ids in notifications.
pub(crate) const FOLDER_CHANGE_KEY: &str = "AQAAAA==";

/// An EWS push subscription.
#[derive(Debug, Clone)]
pub(crate) struct EwsSub {
    pub(crate) id: String,
    pub(crate) room: String,
    pub(crate) room_number: u32,
    pub(crate) url: String,
    pub(crate) status_frequency: u32,
    pub(crate) event_types: Vec<EventKind>,
    pub(crate) impersonated: Option<String>,
    pub(crate) anchor: Option<String>,
    /// Position of the last event delivered (or the start point).
    pub(crate) cursor: u64,
    /// The watermark the Subscribe request carried.
    pub(crate) subscribed_with: Option<String>,
    pub(crate) last_watermark: String,
    pub(crate) alive: bool,
    pub(crate) ended_by: Option<EwsEnd>,
    /// Distinguishes the watermarks of successive status events at one position.
    pub(crate) status_nonce: u32,
}

impl EwsSub {
    pub(crate) fn snapshot(&self) -> EwsSubscriptionSnapshot {
        EwsSubscriptionSnapshot {
            id: self.id.clone(),
            room: self.room.clone(),
            url: self.url.clone(),
            status_frequency_minutes: self.status_frequency,
            event_types: self
                .event_types
                .iter()
                .map(|k| k.element_name().to_owned())
                .collect(),
            impersonated: self.impersonated.clone(),
            anchor_mailbox: self.anchor.clone(),
            subscribed_with_watermark: self.subscribed_with.clone(),
            last_watermark: self.last_watermark.clone(),
            alive: self.alive,
            ended_by: self.ended_by,
        }
    }
}

/// The opaque watermark of event position `pos` in room `room`, issued in watermark epoch
/// `epoch`; `nonce` > 0 marks a status event at that position.
pub(crate) fn watermark(epoch: u32, room: u32, pos: u64, nonce: u32) -> String {
    format!("AQAAAA{epoch:08X}{room:08X}{pos:016X}{nonce:08X}")
}

/// A watermark the simulator issued, read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Watermark {
    pub(crate) epoch: u32,
    pub(crate) room: u32,
    pub(crate) pos: u64,
}

/// Reads a watermark the simulator issued; `None` for any other text.
pub(crate) fn parse_watermark(text: &str) -> Option<Watermark> {
    let hex = text.strip_prefix("AQAAAA")?;
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(Watermark {
        epoch: u32::from_str_radix(hex.get(..8)?, 16).ok()?,
        room: u32::from_str_radix(hex.get(8..16)?, 16).ok()?,
        pos: u64::from_str_radix(hex.get(16..32)?, 16).ok()?,
    })
}

/// A `SyncFolderItems` state: the room, the change-log position reported up to, and the
/// position the client had seen everything up to when its paging began (the same once a
/// round is complete). An item created after `base` is new to the client, even when it
/// shows up on a later page because it changed again meanwhile.
fn sync_state(room: u32, seq: u64, base: u64) -> String {
    format!("H4sIAAAAAAAEAO0SIM{room:08x}{seq:016x}{base:016x}")
}

fn parse_sync_state(text: &str) -> Option<(u32, u64, u64)> {
    let hex = text.strip_prefix("H4sIAAAAAAAEAO0SIM")?;
    if hex.len() != 40 {
        return None;
    }
    let room = u32::from_str_radix(hex.get(..8)?, 16).ok()?;
    let seq = u64::from_str_radix(hex.get(8..24)?, 16).ok()?;
    let base = u64::from_str_radix(hex.get(24..)?, 16).ok()?;
    Some((room, seq, base))
}

pub(crate) fn routes(_shared: AppState) -> Router<AppState> {
    Router::new()
        .route("/EWS/Exchange.asmx", post(handle))
        .route("/ews/exchange.asmx", post(handle))
}

fn xml_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    r
}

/// A response envelope around `body` (which holds the `m:…Response` element).
fn envelope(body: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{NS_SOAP11}"><s:Header><h:ServerVersionInfo MajorVersion="15" MinorVersion="20" MajorBuildNumber="8" MinorBuildNumber="0" Version="V2018_01_08" xmlns:h="{NS_TYPES}" xmlns="{NS_TYPES}"/></s:Header><s:Body>{body}</s:Body></s:Envelope>"#
    )
}

/// A SOAP fault with HTTP 500, e.g. `ErrorServerBusy`; `message_xml` goes into the detail.
fn soap_fault(code: &str, message: &str, message_xml: &str) -> Response {
    let body = format!(
        r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{NS_SOAP11}"><s:Body><s:Fault><faultcode xmlns:a="{NS_TYPES}">a:{code}</faultcode><faultstring xml:lang="en-US">{msg}</faultstring><detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">{code}</e:ResponseCode><e:Message xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">{msg}</e:Message>{message_xml}</detail></s:Fault></s:Body></s:Envelope>"#,
        msg = esc(message)
    );
    xml_response(StatusCode::INTERNAL_SERVER_ERROR, body)
}

/// An error response message (`ResponseClass="Error"`) of operation `op`.
fn error_message(op: &str, code: &str, text: &str, extra: &str) -> String {
    format!(
        r#"<m:{op}ResponseMessage ResponseClass="Error"><m:MessageText>{}</m:MessageText><m:ResponseCode>{code}</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>{extra}</m:{op}ResponseMessage>"#,
        esc(text)
    )
}

fn operation_response(op: &str, messages: &str) -> Response {
    xml_response(
        StatusCode::OK,
        envelope(&format!(
            r#"<m:{op}Response xmlns:m="{NS_MESSAGES}" xmlns:t="{NS_TYPES}"><m:ResponseMessages>{messages}</m:ResponseMessages></m:{op}Response>"#
        )),
    )
}

/// Standard base64 (with or without padding) to bytes; `None` on any other character.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

/// HTTP Basic with the simulator's EWS service account.
fn basic_ok(headers: &HeaderMap) -> bool {
    let Some((scheme, encoded)) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
    else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Some(decoded) = base64_decode(encoded.trim()).and_then(|b| String::from_utf8(b).ok())
    else {
        return false;
    };
    let expected = format!("{EWS_BASIC_USER}:{EWS_BASIC_PASSWORD}");
    bool::from(subtle::ConstantTimeEq::ct_eq(
        decoded.as_bytes(),
        expected.as_bytes(),
    ))
}

/// How an EWS call authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// An app-only bearer token for Exchange (Exchange Online with `full_access_as_app`).
    AppOnly,
    /// HTTP Basic with the simulator's service account (on-premises style).
    ServiceAccount,
}

/// HTTP 401 as Exchange sends it; `diagnostics` is its `x-ms-diagnostics` reason. Both
/// schemes the simulator accepts are offered, each in its own `WWW-Authenticate`: clients
/// that pick their scheme from the challenge (exchangelib without an `auth_type`) find
/// Basic there, as they do on an Exchange server that allows it.
fn unauthorized(diagnostics: Option<String>) -> Response {
    let mut r = StatusCode::UNAUTHORIZED.into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer client_id=\"00000002-0000-0ff1-ce00-000000000000\", trusted_issuers=\"00000001-0000-0000-c000-000000000000@*\", error=\"invalid_token\""),
    );
    r.headers_mut().append(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"sim.example\""),
    );
    if let Some(value) = diagnostics.and_then(|d| HeaderValue::from_str(&d).ok()) {
        r.headers_mut().insert("x-ms-diagnostics", value);
    }
    r
}

/// Authenticates the call; `Err` holds the 401 to answer.
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<Auth, Box<Response>> {
    match check_bearer(shared, headers, TokenResource::Ews) {
        BearerCheck::Valid => return Ok(Auth::AppOnly),
        BearerCheck::WrongResource(other) => {
            // Exchange Online checks the token's audience and says so in a diagnostic header.
            return Err(Box::new(unauthorized(Some(format!(
                "2000003;reason=\"The audience claim value is invalid '{}'.\";error_category=\"invalid_resource\"",
                other.audience()
            )))));
        }
        BearerCheck::Expired | BearerCheck::Invalid => {}
    }
    if basic_ok(headers) {
        Ok(Auth::ServiceAccount)
    } else {
        Err(Box::new(unauthorized(None)))
    }
}

/// The EWS endpoint: authentication, injected faults, the envelope, impersonation, then the
/// operation.
///
/// With an app-only token, a request without `ExchangeImpersonation` gets the SOAP fault
/// `ErrorInvalidExchangeImpersonationHeaderData`, as Exchange Online answers; one whose
/// `X-AnchorMailbox` is missing or names another mailbox than the impersonated one gets an
/// HTTP 500 `ErrorInternalServerError` fault: Exchange Online routes such a call by the
/// anchor (or by the caller, which has no mailbox) and answers misrouted impersonated calls
/// with 500s. Impersonating an address that has no mailbox is an `ErrorNonExistentMailbox`
/// fault.
async fn handle(State(shared): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let parsed = xml::parse(&body);
    // Named on the response, whatever it is, so the request log can tell operations apart.
    let operation = parsed.as_ref().ok().and_then(|root| {
        root.child("Body")
            .and_then(|b| b.children.iter().find(|c| c.ns.is_ews()))
            .map(|op| op.local.clone())
    });
    let mut response = respond(&shared, &headers, &body, parsed);
    if let Some(operation) = operation {
        response
            .extensions_mut()
            .insert(super::SoapOperation(operation));
    }
    response
}

/// [`handle`] once the body is parsed (or not).
fn respond(
    shared: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    parsed: Result<Node, crate::ews::SoapError>,
) -> Response {
    let auth = match authenticate(shared, headers) {
        Ok(auth) => auth,
        Err(refusal) => return *refusal,
    };
    let busy = {
        let mut state = shared.lock();
        if state.faults.ews_busy > 0 {
            state.faults.ews_busy -= 1;
            Some(state.faults.ews_backoff_ms)
        } else {
            None
        }
    };
    if let Some(ms) = busy {
        return soap_fault(
            "ErrorServerBusy",
            "The server cannot service this request right now. Try again later.",
            &format!(
                r#"<t:MessageXml xmlns:t="{NS_TYPES}"><t:Value Name="BackOffMilliseconds">{ms}</t:Value></t:MessageXml>"#
            ),
        );
    }
    let root = match parsed {
        Ok(root) if root.ns == Ns::Soap && root.local == "Envelope" => root,
        Ok(_) => {
            return soap_fault(
                "ErrorInvalidRequest",
                "The request is not a SOAP envelope.",
                "",
            );
        }
        Err(e) => {
            return soap_fault(
                "ErrorSchemaValidation",
                &format!("The request failed schema validation: {e}"),
                "",
            );
        }
    };
    let Some(op) = root
        .child("Body")
        .and_then(|b| b.children.iter().find(|c| c.ns.is_ews()))
    else {
        return soap_fault(
            "ErrorInvalidRequest",
            "The SOAP body holds no EWS operation.",
            "",
        );
    };
    let impersonated = root
        .path(&["Header", "ExchangeImpersonation", "ConnectingSID"])
        .and_then(|sid| {
            ["SmtpAddress", "PrimarySmtpAddress", "PrincipalName"]
                .iter()
                .find_map(|n| sid.child(n))
        })
        .map(|n| n.text.trim().to_owned());
    let anchor = headers
        .get("x-anchormailbox")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned());
    if auth == Auth::AppOnly {
        let Some(target) = &impersonated else {
            return soap_fault(
                "ErrorInvalidExchangeImpersonationHeaderData",
                "ExchangeImpersonation SOAP header must be present for this type of OAuth token.",
                "",
            );
        };
        if !anchor
            .as_deref()
            .is_some_and(|a| a.eq_ignore_ascii_case(target))
        {
            tracing::debug!(
                impersonated = %target,
                anchor = ?anchor,
                "simulated EWS refuses an app-only call whose X-AnchorMailbox is not the impersonated mailbox"
            );
            return soap_fault(
                "ErrorInternalServerError",
                "An internal server error occurred. The operation failed.",
                "",
            );
        }
    }
    let mailbox = match &impersonated {
        None => None,
        Some(address) => match shared.lock().cal.room(address) {
            Some(r) => Some(r.address.clone()),
            None => {
                return soap_fault(
                    "ErrorNonExistentMailbox",
                    &format!("The SMTP address has no mailbox associated with it: {address}"),
                    "",
                );
            }
        },
    };
    let who = Caller {
        impersonated,
        mailbox,
        anchor,
    };
    match op.local.as_str() {
        "Subscribe" => subscribe(shared, op, &who),
        "GetItem" => get_item(shared, op, &who),
        "FindItem" => find_item(shared, op, &who),
        "SyncFolderItems" => sync_folder_items(shared, op, &who),
        "GetFolder" => folders::get_folder(shared, op, &who),
        "ConvertId" => folders::convert_id(shared, body, &who),
        "CreateItem" => items::create_item(shared, op, body, &who),
        "UpdateItem" => items::update_item(shared, op, body, &who),
        "DeleteItem" => items::delete_item(shared, op, body, &who),
        // Not ErrorInvalidRequest: clients such as exchangelib read that as a schema
        // version mismatch, retry under every older version and hide this message.
        other => soap_fault(
            "ErrorInvalidOperation",
            &format!("The simulator does not implement {other}."),
            "",
        ),
    }
}

/// Who the call is made for.
#[derive(Debug)]
struct Caller {
    /// The address in the `ExchangeImpersonation` header, as sent.
    impersonated: Option<String>,
    /// The impersonated room (its key), if the call impersonates one.
    mailbox: Option<String>,
    anchor: Option<String>,
}

/// Which mailbox a distinguished folder of a call resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// The impersonated room (its key).
    Own(String),
    /// Another mailbox named in the folder's `Mailbox`: delegate access.
    Delegate(String),
    /// Neither impersonation nor a `Mailbox`: the caller's own mailbox, which the service
    /// account does not have.
    NoMailbox,
}

impl Caller {
    /// The mailbox a `DistinguishedFolderId` of this call points at.
    fn target(&self, folder: Option<&Node>) -> Target {
        let named = folder
            .and_then(|f| f.path(&["Mailbox", "EmailAddress"]))
            .map(|n| n.text.trim().to_owned())
            .filter(|n| !n.is_empty());
        match (&self.mailbox, named) {
            (Some(own), None) => Target::Own(own.clone()),
            (Some(own), Some(n)) if n.eq_ignore_ascii_case(own) => Target::Own(own.clone()),
            (_, Some(n)) => Target::Delegate(n),
            (None, None) => Target::NoMailbox,
        }
    }
}

/// The error a read (`FindItem`, `SyncFolderItems`) of a folder that is not the impersonated
/// room's gets: the caller has no rights there (or no mailbox at all).
fn unreachable_folder(shared: &Shared, target: &Target) -> (&'static str, String) {
    match target {
        Target::Delegate(other) if shared.lock().cal.room(other).is_none() => (
            "ErrorNonExistentMailbox",
            format!("The SMTP address has no mailbox associated with it: {other}"),
        ),
        Target::Delegate(_) => (
            "ErrorFolderNotFound",
            "The specified folder could not be found in the store.".to_owned(),
        ),
        Target::NoMailbox | Target::Own(_) => {
            ("ErrorMissingEmailAddress", MISSING_EMAIL_ADDRESS.to_owned())
        }
    }
}

const MISSING_EMAIL_ADDRESS: &str = "When making a request as an account that does not have a mailbox, you must specify the mailbox primary SMTP address for any distinguished folder Ids.";

fn event_kind(name: &str) -> Option<EventKind> {
    [
        EventKind::Copied,
        EventKind::Created,
        EventKind::Deleted,
        EventKind::Modified,
        EventKind::Moved,
        EventKind::NewMail,
        EventKind::FreeBusyChanged,
    ]
    .into_iter()
    .find(|k| k.element_name() == name)
}

fn push_url_ok(text: &str) -> bool {
    text.len() < 2083 && url::Url::parse(text).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
}

fn subscribe(shared: &Arc<Shared>, op: &Node, who: &Caller) -> Response {
    let fail = |code: &str, text: &str| {
        operation_response("Subscribe", &error_message("Subscribe", code, text, ""))
    };
    let Some(req) = op.child("PushSubscriptionRequest") else {
        return fail(
            "ErrorInvalidSubscriptionRequest",
            "The simulator supports push subscriptions only.",
        );
    };
    let folder = req.path(&["FolderIds", "DistinguishedFolderId"]);
    if folder.and_then(|f| f.attr("Id")) != Some("calendar") {
        return fail(
            "ErrorInvalidSubscriptionRequest",
            "Subscribe to the calendar DistinguishedFolderId.",
        );
    }
    let mut event_types = Vec::new();
    for t in req
        .child("EventTypes")
        .into_iter()
        .flat_map(|e| e.children_named("EventType"))
    {
        match event_kind(&t.text) {
            Some(k) => event_types.push(k),
            None => {
                return fail(
                    "ErrorInvalidSubscriptionRequest",
                    &format!("Unknown EventType {}.", t.text),
                );
            }
        }
    }
    if event_types.is_empty() {
        return fail(
            "ErrorInvalidSubscriptionRequest",
            "At least one EventType is required.",
        );
    }
    let status_frequency = match req.child("StatusFrequency").map(|n| n.text.parse::<u32>()) {
        None => DEFAULT_STATUS_FREQUENCY,
        Some(Ok(n)) if (1..=1440).contains(&n) => n,
        Some(_) => {
            return fail(
                "ErrorInvalidSubscriptionRequest",
                "StatusFrequency must be between 1 and 1440 minutes.",
            );
        }
    };
    let url = req.child("URL").map(|n| n.text.clone()).unwrap_or_default();
    if !push_url_ok(&url) {
        return fail(
            "ErrorInvalidPushSubscriptionUrl",
            "The push subscription URL is invalid.",
        );
    }
    let room = match who.target(folder) {
        Target::Own(room) => room,
        Target::Delegate(_) => {
            return fail(
                "ErrorSubscriptionDelegateAccessNotSupported",
                "Subscriptions are not supported for delegate user access.",
            );
        }
        Target::NoMailbox => return fail("ErrorMissingEmailAddress", MISSING_EMAIL_ADDRESS),
    };
    let given = req
        .child("Watermark")
        .map(|n| n.text.trim().to_owned())
        .filter(|w| !w.is_empty());
    let sub = {
        let mut state = shared.lock();
        let Some((room_key, number)) = state.cal.room(&room).map(|r| (r.address.clone(), r.number))
        else {
            drop(state);
            return fail(
                "ErrorNonExistentMailbox",
                &format!("The SMTP address has no mailbox associated with it: {room}"),
            );
        };
        let live = state
            .ews_subs
            .values()
            .filter(|s| s.alive && s.room == room_key)
            .count();
        if live >= MAX_SUBSCRIPTIONS_PER_MAILBOX {
            drop(state);
            return fail(
                "ErrorExceededSubscriptionCount",
                "You have exceeded the available subscriptions for your account. Remove unnecessary subscriptions and try your request again.",
            );
        }
        let epoch = state.ews_watermark_epoch;
        let (cursor, last_watermark) = match &given {
            None => {
                let pos = state.cal.ews_pos;
                (pos, watermark(epoch, number, pos, 0))
            }
            Some(w) => match parse_watermark(w) {
                Some(m) if m.epoch == epoch && m.room == number && m.pos <= state.cal.ews_pos => {
                    (m.pos, w.clone())
                }
                _ => {
                    drop(state);
                    return fail(
                        "ErrorInvalidWatermark",
                        "The watermark used for creating this subscription was not found.",
                    );
                }
            },
        };
        let id = format!("JgBzaW0tbWJ4MDEuc2ltLmV4YW1wbGUQAAAA{}", state.rng.hex(16));
        let sub = EwsSub {
            id: id.clone(),
            room: room_key,
            room_number: number,
            url,
            status_frequency,
            event_types,
            impersonated: who.impersonated.clone(),
            anchor: who.anchor.clone(),
            cursor,
            subscribed_with: given,
            last_watermark,
            alive: true,
            ended_by: None,
            status_nonce: 0,
        };
        state.ews_subs.insert(id, sub.clone());
        sub
    };
    push::spawn_ews_subscription(shared, sub.id.clone());
    operation_response(
        "Subscribe",
        &format!(
            r#"<m:SubscribeResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:SubscriptionId>{}</m:SubscriptionId><m:Watermark>{}</m:Watermark></m:SubscribeResponseMessage>"#,
            esc(&sub.id),
            esc(&sub.last_watermark)
        ),
    )
}

/// The shape's base: which properties come without being listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BaseShape {
    IdOnly,
    Default,
    AllProperties,
}

/// A calendar item property an `ItemShape` can name, by its `FieldURI`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prop {
    ParentFolderId,
    ItemClass,
    Subject,
    DateTimeCreated,
    LastModifiedTime,
    Uid,
    RecurrenceId,
    Start,
    End,
    OriginalStart,
    IsAllDayEvent,
    LegacyFreeBusyStatus,
    Location,
    IsMeeting,
    IsCancelled,
    IsRecurring,
    CalendarItemType,
    Organizer,
    AppointmentSequenceNumber,
    Recurrence,
    FirstOccurrence,
    LastOccurrence,
    ModifiedOccurrences,
    DeletedOccurrences,
}

/// Every property the simulator writes, with its `FieldURI`.
const PROPS: [(Prop, &str); 24] = [
    (Prop::ParentFolderId, "item:ParentFolderId"),
    (Prop::ItemClass, "item:ItemClass"),
    (Prop::Subject, "item:Subject"),
    (Prop::DateTimeCreated, "item:DateTimeCreated"),
    (Prop::LastModifiedTime, "item:LastModifiedTime"),
    (Prop::Uid, "calendar:UID"),
    (Prop::RecurrenceId, "calendar:RecurrenceId"),
    (Prop::Start, "calendar:Start"),
    (Prop::End, "calendar:End"),
    (Prop::OriginalStart, "calendar:OriginalStart"),
    (Prop::IsAllDayEvent, "calendar:IsAllDayEvent"),
    (Prop::LegacyFreeBusyStatus, "calendar:LegacyFreeBusyStatus"),
    (Prop::Location, "calendar:Location"),
    (Prop::IsMeeting, "calendar:IsMeeting"),
    (Prop::IsCancelled, "calendar:IsCancelled"),
    (Prop::IsRecurring, "calendar:IsRecurring"),
    (Prop::CalendarItemType, "calendar:CalendarItemType"),
    (Prop::Organizer, "calendar:Organizer"),
    (
        Prop::AppointmentSequenceNumber,
        "calendar:AppointmentSequenceNumber",
    ),
    (Prop::Recurrence, "calendar:Recurrence"),
    (Prop::FirstOccurrence, "calendar:FirstOccurrence"),
    (Prop::LastOccurrence, "calendar:LastOccurrence"),
    (Prop::ModifiedOccurrences, "calendar:ModifiedOccurrences"),
    (Prop::DeletedOccurrences, "calendar:DeletedOccurrences"),
];

impl Prop {
    fn from_field_uri(uri: &str) -> Option<Self> {
        PROPS.iter().find(|(_, u)| *u == uri).map(|(p, _)| *p)
    }

    /// The series properties a master computes from its recurrence: only `AllProperties`
    /// or naming them brings them, and `FindItem` never returns them.
    fn of_series(self) -> bool {
        matches!(
            self,
            Self::Recurrence
                | Self::FirstOccurrence
                | Self::LastOccurrence
                | Self::ModifiedOccurrences
                | Self::DeletedOccurrences
        )
    }
}

/// What a request's `ItemShape` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    base: BaseShape,
    /// The known properties named in `AdditionalProperties` (others are left out).
    additional: Vec<Prop>,
}

impl Shape {
    fn wants(&self, prop: Prop) -> bool {
        match self.base {
            BaseShape::AllProperties => true,
            BaseShape::Default => !prop.of_series() || self.additional.contains(&prop),
            BaseShape::IdOnly => self.additional.contains(&prop),
        }
    }
}

/// The first child in namespace `ns` with this local name.
fn child_in<'a>(node: &'a Node, ns: Ns, local: &str) -> Option<&'a Node> {
    node.children
        .iter()
        .find(|c| c.ns == ns && c.local == local)
}

/// The `ItemShape` of an operation; `Err` holds the schema-validation fault Exchange
/// answers a request without one (or with an unknown `BaseShape`) with.
fn item_shape(op: &Node) -> Result<Shape, Box<Response>> {
    let invalid = |what: String| {
        Box::new(soap_fault(
            "ErrorSchemaValidation",
            &format!("The request failed schema validation: {what}"),
            "",
        ))
    };
    let Some(shape) = child_in(op, Ns::Messages, "ItemShape") else {
        return Err(invalid(format!(
            "The element '{}' in namespace '{NS_MESSAGES}' has incomplete content. List of possible elements expected: 'ItemShape' in namespace '{NS_MESSAGES}'.",
            op.local
        )));
    };
    let base = match child_in(shape, Ns::Types, "BaseShape").map(|b| b.text.as_str()) {
        Some("IdOnly") => BaseShape::IdOnly,
        Some("Default") => BaseShape::Default,
        Some("AllProperties") => BaseShape::AllProperties,
        Some(other) => {
            return Err(invalid(format!(
                "The '{NS_TYPES}:BaseShape' element is invalid - The value '{other}' is invalid according to its datatype '{NS_TYPES}:DefaultShapeNamesType' - The Enumeration constraint failed."
            )));
        }
        None => {
            return Err(invalid(format!(
                "The element 'ItemShape' in namespace '{NS_MESSAGES}' has incomplete content. List of possible elements expected: 'BaseShape' in namespace '{NS_TYPES}'."
            )));
        }
    };
    let additional = child_in(shape, Ns::Types, "AdditionalProperties")
        .into_iter()
        .flat_map(|a| a.children.iter())
        .filter(|f| f.ns == Ns::Types && f.local == "FieldURI")
        .filter_map(|f| f.attr("FieldURI"))
        .filter_map(Prop::from_field_uri)
        .collect();
    Ok(Shape { base, additional })
}

/// Which operation an item is written for: `FindItem` returns less than the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    GetItem,
    FindItem,
    SyncFolderItems,
}

/// `xs:date` as EWS writes a recurrence's dates, in UTC.
fn ews_date(date: chrono::NaiveDate) -> String {
    format!("{}Z", date.format("%Y-%m-%d"))
}

/// A master's `t:Recurrence`: the pattern, then the range.
fn recurrence_xml(item: &Item) -> String {
    let Some(r) = item.recurrence else {
        return String::new();
    };
    let start = item.meeting.start.date_naive();
    let pattern = if r.is_weekly() {
        format!(
            "<t:WeeklyRecurrence><t:Interval>1</t:Interval><t:DaysOfWeek>{}</t:DaysOfWeek><t:FirstDayOfWeek>Sunday</t:FirstDayOfWeek></t:WeeklyRecurrence>",
            weekday_name(start)
        )
    } else {
        "<t:DailyRecurrence><t:Interval>1</t:Interval></t:DailyRecurrence>".to_owned()
    };
    let range = match item.last_pattern_date() {
        Some(last) if item.ends_by_date => format!(
            "<t:EndDateRecurrence><t:StartDate>{}</t:StartDate><t:EndDate>{}</t:EndDate></t:EndDateRecurrence>",
            ews_date(start),
            ews_date(last)
        ),
        _ => format!(
            "<t:NumberedRecurrence><t:StartDate>{}</t:StartDate><t:NumberOfOccurrences>{}</t:NumberOfOccurrences></t:NumberedRecurrence>",
            ews_date(start),
            r.count()
        ),
    };
    format!("<t:Recurrence>{pattern}{range}</t:Recurrence>")
}

/// An `OccurrenceInfoType` body: id, times and original start.
fn occurrence_info(name: &str, inst: &Instance) -> String {
    format!(
        r#"<t:{name}><t:ItemId Id="{}" ChangeKey="{}"/><t:Start>{}</t:Start><t:End>{}</t:End><t:OriginalStart>{}</t:OriginalStart></t:{name}>"#,
        esc(&inst.id),
        esc(&inst.change_key()),
        ews_datetime(inst.start),
        ews_datetime(inst.end),
        ews_datetime(inst.original_start().unwrap_or(inst.start)),
    )
}

/// The master's computed series properties the shape asks for, in schema order.
fn series_xml(item: &Item, shape: &Shape) -> String {
    let mut out = String::new();
    if item.recurrence.is_none() {
        return out;
    }
    if shape.wants(Prop::Recurrence) {
        out.push_str(&recurrence_xml(item));
    }
    let live = item.expand();
    if shape.wants(Prop::FirstOccurrence)
        && let Some(first) = live.first()
    {
        out.push_str(&occurrence_info("FirstOccurrence", first));
    }
    if shape.wants(Prop::LastOccurrence)
        && let Some(last) = live.last()
    {
        out.push_str(&occurrence_info("LastOccurrence", last));
    }
    let modified: String = live
        .iter()
        .filter(|i| i.kind == InstanceKind::Exception)
        .map(|i| occurrence_info("Occurrence", i))
        .collect();
    // Both lists are left out when empty: the schema does not allow them empty.
    if shape.wants(Prop::ModifiedOccurrences) && !modified.is_empty() {
        out.push_str(&format!(
            "<t:ModifiedOccurrences>{modified}</t:ModifiedOccurrences>"
        ));
    }
    if shape.wants(Prop::DeletedOccurrences) && !item.deleted_occurrences.is_empty() {
        out.push_str("<t:DeletedOccurrences>");
        for start in item
            .deleted_occurrences
            .iter()
            .filter_map(|i| item.original_start(*i))
        {
            out.push_str(&format!(
                "<t:DeletedOccurrence><t:Start>{}</t:Start></t:DeletedOccurrence>",
                ews_datetime(start)
            ));
        }
        out.push_str("</t:DeletedOccurrences>");
    }
    out
}

/// A `t:CalendarItem` with the properties `shape` asks for, in schema order.
fn calendar_item(room: &Room, inst: &Instance, shape: &Shape, reader: Reader) -> String {
    let item = &inst.item;
    let m = &item.meeting;
    let cancelled = inst.cancelled();
    let mut out = format!(
        r#"<t:CalendarItem><t:ItemId Id="{}" ChangeKey="{}"/>"#,
        esc(&inst.id),
        esc(&inst.change_key())
    );
    let mut put = |prop: Prop, value: &str| {
        if shape.wants(prop) {
            out.push_str(value);
        }
    };
    put(
        Prop::ParentFolderId,
        &format!(
            r#"<t:ParentFolderId Id="{}" ChangeKey="{FOLDER_CHANGE_KEY}"/>"#,
            esc(&room.calendar_folder_id())
        ),
    );
    put(
        Prop::ItemClass,
        "<t:ItemClass>IPM.Appointment</t:ItemClass>",
    );
    put(
        Prop::Subject,
        &format!("<t:Subject>{}</t:Subject>", esc(&m.subject)),
    );
    put(
        Prop::DateTimeCreated,
        &format!(
            "<t:DateTimeCreated>{}</t:DateTimeCreated>",
            ews_datetime(item.created_at)
        ),
    );
    put(
        Prop::LastModifiedTime,
        &format!(
            "<t:LastModifiedTime>{}</t:LastModifiedTime>",
            ews_datetime(inst.modified_at())
        ),
    );
    // Every instance of a series shares the series' UID in EWS.
    put(Prop::Uid, &format!("<t:UID>{}</t:UID>", esc(&item.uid)));
    if let Some(original) = inst.original_start() {
        put(
            Prop::RecurrenceId,
            &format!(
                "<t:RecurrenceId>{}</t:RecurrenceId>",
                ews_datetime(original)
            ),
        );
    }
    put(
        Prop::Start,
        &format!("<t:Start>{}</t:Start>", ews_datetime(inst.start)),
    );
    put(
        Prop::End,
        &format!("<t:End>{}</t:End>", ews_datetime(inst.end)),
    );
    if inst.kind == InstanceKind::Exception
        && let Some(original) = inst.original_start()
    {
        put(
            Prop::OriginalStart,
            &format!(
                "<t:OriginalStart>{}</t:OriginalStart>",
                ews_datetime(original)
            ),
        );
    }
    put(
        Prop::IsAllDayEvent,
        &format!("<t:IsAllDayEvent>{}</t:IsAllDayEvent>", m.is_all_day),
    );
    put(
        Prop::LegacyFreeBusyStatus,
        &format!(
            "<t:LegacyFreeBusyStatus>{}</t:LegacyFreeBusyStatus>",
            if cancelled { "Free" } else { "Busy" }
        ),
    );
    put(
        Prop::Location,
        &format!("<t:Location>{}</t:Location>", esc(&m.location)),
    );
    put(Prop::IsMeeting, "<t:IsMeeting>true</t:IsMeeting>");
    put(
        Prop::IsCancelled,
        &format!("<t:IsCancelled>{cancelled}</t:IsCancelled>"),
    );
    // Exchange reports IsRecurring for the instances of a series, not for its master.
    put(
        Prop::IsRecurring,
        &format!("<t:IsRecurring>{}</t:IsRecurring>", inst.kind.in_series()),
    );
    put(
        Prop::CalendarItemType,
        &format!(
            "<t:CalendarItemType>{}</t:CalendarItemType>",
            inst.kind.ews()
        ),
    );
    let name = esc(&super::graph::display_name(&m.organizer));
    let organizer = if reader == Reader::FindItem {
        // FindItem returns the organizer's name only, never its address.
        format!("<t:Organizer><t:Mailbox><t:Name>{name}</t:Name></t:Mailbox></t:Organizer>")
    } else {
        format!(
            "<t:Organizer><t:Mailbox><t:Name>{name}</t:Name><t:EmailAddress>{}</t:EmailAddress><t:RoutingType>SMTP</t:RoutingType><t:MailboxType>Mailbox</t:MailboxType></t:Mailbox></t:Organizer>",
            esc(&m.organizer)
        )
    };
    put(Prop::Organizer, &organizer);
    put(
        Prop::AppointmentSequenceNumber,
        &format!(
            "<t:AppointmentSequenceNumber>{}</t:AppointmentSequenceNumber>",
            inst.sequence()
        ),
    );
    if inst.kind == InstanceKind::Master && reader != Reader::FindItem {
        out.push_str(&series_xml(item, shape));
    }
    out.push_str("</t:CalendarItem>");
    out
}

fn get_item(shared: &Arc<Shared>, op: &Node, who: &Caller) -> Response {
    let shape = match item_shape(op) {
        Ok(shape) => shape,
        Err(fault) => return *fault,
    };
    let state = shared.lock();
    // Items belong to their mailbox: only the impersonated room's are found.
    let room = who.mailbox.as_deref().and_then(|m| state.cal.room(m));
    let mut messages = String::new();
    let ids = op
        .child("ItemIds")
        .into_iter()
        .flat_map(|n| n.children_named("ItemId"));
    for id in ids {
        let wanted = id.attr("Id").unwrap_or_default();
        let found = room.and_then(|r| r.instance(wanted).map(|i| (r, i)));
        match found {
            Some((room, inst)) => {
                messages.push_str(r#"<m:GetItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Items>"#);
                messages.push_str(&calendar_item(room, &inst, &shape, Reader::GetItem));
                messages.push_str("</m:Items></m:GetItemResponseMessage>");
            }
            None if room.is_some_and(|r| r.is_deleted_occurrence(wanted)) => {
                messages.push_str(&error_message(
                    "GetItem",
                    "ErrorCalendarOccurrenceIsDeletedFromRecurrence",
                    "Occurrence with this index was previously deleted from the recurrence.",
                    "<m:Items/>",
                ));
            }
            None => messages.push_str(&error_message(
                "GetItem",
                "ErrorItemNotFound",
                "The specified object was not found in the store., The process failed to get the correct properties.",
                "<m:Items/>",
            )),
        }
    }
    drop(state);
    operation_response("GetItem", &messages)
}

fn parse_ews_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| n.and_utc())
        })
}

fn find_item(shared: &Arc<Shared>, op: &Node, who: &Caller) -> Response {
    let fail = |code: &str, text: &str| {
        operation_response("FindItem", &error_message("FindItem", code, text, ""))
    };
    let shape = match item_shape(op) {
        Ok(shape) => shape,
        Err(fault) => return *fault,
    };
    let room = match who.target(op.path(&["ParentFolderIds", "DistinguishedFolderId"])) {
        Target::Own(room) => room,
        other => {
            let (code, text) = unreachable_folder(shared, &other);
            return fail(code, &text);
        }
    };
    let state = shared.lock();
    let Some(r) = state.cal.room(&room) else {
        return fail(
            "ErrorNonExistentMailbox",
            &format!("The SMTP address has no mailbox associated with it: {room}"),
        );
    };
    let (instances, max) = if let Some(view) = op.child("CalendarView") {
        let from = view.attr("StartDate").and_then(parse_ews_time);
        let to = view.attr("EndDate").and_then(parse_ews_time);
        let (Some(from), Some(to)) = (from, to) else {
            drop(state);
            return fail(
                "ErrorInvalidRequest",
                "CalendarView needs StartDate and EndDate.",
            );
        };
        if to <= from {
            drop(state);
            return fail(
                "ErrorCalendarEndDateIsEarlierThanStartDate",
                "EndDate is earlier than StartDate",
            );
        }
        if (to - from).num_days() > MAX_VIEW_DAYS {
            drop(state);
            return fail(
                "ErrorCalendarViewRangeTooBig",
                "The time window specified is larger than the maximum allowed.",
            );
        }
        let max = view
            .attr("MaxEntriesReturned")
            .and_then(|m| m.parse::<usize>().ok())
            .unwrap_or(FIND_COUNT_LIMIT)
            .min(FIND_COUNT_LIMIT);
        (r.view(from, to), max)
    } else {
        // Without a CalendarView, FindItem has no calendaring logic: masters, not occurrences.
        (
            r.items
                .values()
                .map(super::calendar::Item::as_instance)
                .collect(),
            FIND_COUNT_LIMIT,
        )
    };
    let total = instances.len();
    let includes_last = total <= max;
    let items: String = instances
        .iter()
        .take(max)
        .map(|i| calendar_item(r, i, &shape, Reader::FindItem))
        .collect();
    drop(state);
    operation_response(
        "FindItem",
        &format!(
            r#"<m:FindItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:RootFolder TotalItemsInView="{total}" IncludesLastItemInRange="{includes_last}"><t:Items>{items}</t:Items></m:RootFolder></m:FindItemResponseMessage>"#
        ),
    )
}

fn sync_folder_items(shared: &Arc<Shared>, op: &Node, who: &Caller) -> Response {
    let fail = |code: &str, text: &str| {
        operation_response(
            "SyncFolderItems",
            &error_message("SyncFolderItems", code, text, ""),
        )
    };
    let shape = match item_shape(op) {
        Ok(shape) => shape,
        Err(fault) => return *fault,
    };
    let room = match who.target(op.path(&["SyncFolderId", "DistinguishedFolderId"])) {
        Target::Own(room) => room,
        other => {
            let (code, text) = unreachable_folder(shared, &other);
            return fail(code, &text);
        }
    };
    let max = match op
        .child("MaxChangesReturned")
        .map(|n| n.text.parse::<usize>())
    {
        None => MAX_SYNC_CHANGES,
        Some(Ok(n)) if (1..=MAX_SYNC_CHANGES).contains(&n) => n,
        Some(_) => {
            return fail(
                "ErrorInvalidRequest",
                "MaxChangesReturned must be between 1 and 512.",
            );
        }
    };
    let state = shared.lock();
    let Some(r) = state.cal.room(&room) else {
        return fail(
            "ErrorNonExistentMailbox",
            &format!("The SMTP address has no mailbox associated with it: {room}"),
        );
    };
    let (since, base) = match op
        .child("SyncState")
        .map(|n| n.text.as_str())
        .filter(|s| !s.is_empty())
    {
        None => (0, 0),
        Some(s) => match parse_sync_state(s) {
            Some((number, seq, base))
                if number == r.number && base <= seq && seq <= state.cal.seq =>
            {
                (seq, base)
            }
            _ => {
                drop(state);
                return fail(
                    "ErrorInvalidSyncStateData",
                    "Synchronization state data is corrupt or otherwise invalid.",
                );
            }
        },
    };
    let mut changes = String::new();
    let mut taken = 0;
    let mut next_seq = state.cal.seq;
    let mut includes_last = true;
    // The log names masters, never occurrences: a change to any occurrence of a series
    // is reported as an update of its master, as Exchange does.
    for changed in r.changed_since(since) {
        let (id, seq) = (changed.item_id, changed.seq);
        let entry = if let Some(item) = r.items.get(&id) {
            let verb = if item.created_seq > base {
                "Create"
            } else {
                "Update"
            };
            format!(
                "<t:{verb}>{}</t:{verb}>",
                calendar_item(r, &item.as_instance(), &shape, Reader::SyncFolderItems)
            )
        } else if let Some(item) = r.deleted.get(&id) {
            if item.created_seq > base {
                // Created and deleted since the client last saw the folder: nothing to tell.
                continue;
            }
            format!(
                r#"<t:Delete><t:ItemId Id="{}" ChangeKey="{}"/></t:Delete>"#,
                esc(&item.id),
                esc(&item.change_key())
            )
        } else {
            continue;
        };
        if taken == max {
            includes_last = false;
            break;
        }
        changes.push_str(&entry);
        taken += 1;
        next_seq = seq;
    }
    let next_base = if includes_last {
        next_seq = state.cal.seq;
        next_seq
    } else {
        base
    };
    let new_state = sync_state(r.number, next_seq, next_base);
    drop(state);
    operation_response(
        "SyncFolderItems",
        &format!(
            r#"<m:SyncFolderItemsResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:SyncState>{new_state}</m:SyncState><m:IncludesLastItemInRange>{includes_last}</m:IncludesLastItemInRange><m:Changes>{changes}</m:Changes></m:SyncFolderItemsResponseMessage>"#
        ),
    )
}

// ---- push ------------------------------------------------------------------

/// An event as pushed: the log entry (or `None` for a status event) and its watermark.
#[derive(Debug, Clone)]
pub(crate) struct OutEvent {
    pub(crate) event: Option<EwsLogEvent>,
    pub(crate) watermark: String,
}

fn event_xml(room: &Room, e: &OutEvent) -> String {
    let wm = esc(&e.watermark);
    let Some(ev) = &e.event else {
        return format!("<t:StatusEvent><t:Watermark>{wm}</t:Watermark></t:StatusEvent>");
    };
    let name = ev.kind.element_name();
    let at = ews_datetime(ev.at);
    let cal = esc(&room.calendar_folder_id());
    let body = match &ev.target {
        EwsTarget::Folder => format!(
            r#"<t:FolderId Id="{cal}" ChangeKey="{FOLDER_CHANGE_KEY}"/><t:ParentFolderId Id="{}" ChangeKey="{FOLDER_CHANGE_KEY}"/><t:UnreadCount>0</t:UnreadCount>"#,
            esc(&room.top_of_store_folder_id())
        ),
        EwsTarget::Item { id, change_key } => match &ev.moved_from {
            Some(old) => format!(
                r#"<t:ItemId Id="{}" ChangeKey="{}"/><t:ParentFolderId Id="{}" ChangeKey="{FOLDER_CHANGE_KEY}"/><t:OldItemId Id="{}"/><t:OldParentFolderId Id="{cal}" ChangeKey="{FOLDER_CHANGE_KEY}"/>"#,
                esc(id),
                esc(change_key),
                esc(&room.deleted_items_folder_id()),
                esc(old)
            ),
            None => format!(
                r#"<t:ItemId Id="{}" ChangeKey="{}"/><t:ParentFolderId Id="{cal}" ChangeKey="{FOLDER_CHANGE_KEY}"/>"#,
                esc(id),
                esc(change_key)
            ),
        },
    };
    format!(
        "<t:{name}><t:Watermark>{wm}</t:Watermark><t:TimeStamp>{at}</t:TimeStamp>{body}</t:{name}>"
    )
}

/// A `SendNotification` request body as Exchange Online writes it.
pub(crate) fn send_notification_xml(
    room: &Room,
    subscription_id: &str,
    previous_watermark: &str,
    more_events: bool,
    events: &[OutEvent],
) -> String {
    let events: String = events.iter().map(|e| event_xml(room, e)).collect();
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="utf-8"?><soap11:Envelope xmlns:soap11="{soap}"><soap11:Header>"#,
            r#"<t:RequestServerVersion xmlns:m="{m}" Version="Exchange2016" xmlns:t="{t}"/></soap11:Header><soap11:Body>"#,
            r#"<m:SendNotification xmlns:t="{t}" xmlns:m="{m}"><m:ResponseMessages><m:SendNotificationResponseMessage ResponseClass="Success">"#,
            "<m:ResponseCode>NoError</m:ResponseCode><m:Notification><t:SubscriptionId>{id}</t:SubscriptionId>",
            "<t:PreviousWatermark>{prev}</t:PreviousWatermark><t:MoreEvents>{more}</t:MoreEvents>{events}",
            "</m:Notification></m:SendNotificationResponseMessage></m:ResponseMessages></m:SendNotification></soap11:Body></soap11:Envelope>"
        ),
        soap = NS_SOAP11,
        m = NS_MESSAGES,
        t = NS_TYPES,
        id = esc(subscription_id),
        prev = esc(previous_watermark),
        more = more_events,
        events = events,
    )
}

/// The `SendNotification` body Exchange pushes when it can no longer read a subscription's
/// events: `ResponseClass="Error"`, no `Notification`, the subscription id only in
/// `MessageXml`. The subscription is over after it.
pub(crate) fn read_events_failed_xml(subscription_id: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="utf-8"?><soap11:Envelope xmlns:soap11="{soap}"><soap11:Header>"#,
            r#"<t:RequestServerVersion xmlns:m="{m}" Version="Exchange2016" xmlns:t="{t}"/></soap11:Header><soap11:Body>"#,
            r#"<m:SendNotification xmlns:t="{t}" xmlns:m="{m}"><m:ResponseMessages><m:SendNotificationResponseMessage ResponseClass="Error">"#,
            "<m:MessageText>The events of this subscription could not be read. Create the subscription again.</m:MessageText>",
            "<m:ResponseCode>ErrorReadEventsFailed</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>",
            r#"<m:MessageXml><t:Value Name="SubscriptionId">{id}</t:Value></m:MessageXml>"#,
            "</m:SendNotificationResponseMessage></m:ResponseMessages></m:SendNotification></soap11:Body></soap11:Envelope>"
        ),
        soap = NS_SOAP11,
        m = NS_MESSAGES,
        t = NS_TYPES,
        id = esc(subscription_id),
    )
}

/// Reads the callback's `SendNotificationResult/SubscriptionStatus`; `None` when the body is
/// not such a reply (Exchange counts that as a failed delivery).
pub(crate) fn parse_reply(body: &[u8]) -> Option<SubscriptionStatus> {
    let mut x = XmlIn::new(body).ok()?;
    let mut status = None;
    let mut in_result = false;
    loop {
        match x.next().ok()? {
            Tok::Open(open)
                if open.ns == Ns::Messages && open.local() == "SendNotificationResult" =>
            {
                in_result = true;
            }
            Tok::Open(open)
                if in_result && open.ns.is_ews() && open.local() == "SubscriptionStatus" =>
            {
                let text = x.text("SubscriptionStatus").ok()?;
                status = match text.as_ref() {
                    "OK" => Some(SubscriptionStatus::Ok),
                    "Unsubscribe" => Some(SubscriptionStatus::Unsubscribe),
                    _ => return None,
                };
            }
            Tok::Eof => return status,
            Tok::Open(_) | Tok::Close | Tok::Text(_) | Tok::Char(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ews::{SubscriptionStatus, send_notification_result};

    #[test]
    fn basic_credentials_of_the_sim_account_are_accepted_and_others_refused() {
        let mut h = HeaderMap::new();
        // "sim-ews@sim.example:sim-ews-password"
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic c2ltLWV3c0BzaW0uZXhhbXBsZTpzaW0tZXdzLXBhc3N3b3Jk"),
        );
        assert!(basic_ok(&h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic c2ltLWV3c0BzaW0uZXhhbXBsZTp3cm9uZw=="),
        );
        assert!(!basic_ok(&h));
        assert_eq!(base64_decode("aGk=").as_deref(), Some(&b"hi"[..]));
        assert_eq!(base64_decode("a!"), None);
    }

    #[test]
    fn watermarks_round_trip_and_foreign_ones_are_refused() {
        let w = watermark(1, 3, 42, 7);
        assert_eq!(
            parse_watermark(&w),
            Some(Watermark {
                epoch: 1,
                room: 3,
                pos: 42
            })
        );
        assert_eq!(parse_watermark("AQAAAHJvb20tYS13bS0wMDAy"), None);
        assert_eq!(parse_watermark(""), None);
        assert_eq!(parse_sync_state(&sync_state(2, 9, 4)), Some((2, 9, 4)));
        assert_eq!(parse_sync_state("garbage"), None);
    }

    fn operation(inner: &str) -> Node {
        let xml = format!(
            r#"<m:GetItem xmlns:m="{NS_MESSAGES}" xmlns:t="{NS_TYPES}">{inner}</m:GetItem>"#
        );
        xml::parse(xml.as_bytes()).unwrap()
    }

    #[test]
    fn an_item_shape_reads_its_base_shape_and_the_known_field_uris_in_the_types_namespace() {
        let op = operation(
            r#"<m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="item:Subject"/><t:FieldURI FieldURI="calendar:Nope"/><m:FieldURI FieldURI="calendar:Start"/></t:AdditionalProperties></m:ItemShape>"#,
        );
        let shape = item_shape(&op).unwrap();
        assert_eq!(
            shape,
            Shape {
                base: BaseShape::IdOnly,
                additional: vec![Prop::Subject],
            }
        );
        assert!(shape.wants(Prop::Subject));
        assert!(!shape.wants(Prop::Start));
        // An ItemShape in the types namespace is not the operation's ItemShape.
        assert!(
            item_shape(&operation(
                r#"<t:ItemShape><t:BaseShape>IdOnly</t:BaseShape></t:ItemShape>"#
            ))
            .is_err()
        );
        assert!(item_shape(&operation("<m:ItemShape/>")).is_err());
    }

    #[test]
    fn default_leaves_out_the_series_properties_that_all_properties_gives() {
        let default = Shape {
            base: BaseShape::Default,
            additional: vec![Prop::DeletedOccurrences],
        };
        let all = Shape {
            base: BaseShape::AllProperties,
            additional: Vec::new(),
        };
        for (prop, uri) in PROPS {
            assert_eq!(Prop::from_field_uri(uri), Some(prop));
            assert!(all.wants(prop));
            let expected = !prop.of_series() || prop == Prop::DeletedOccurrences;
            assert_eq!(default.wants(prop), expected, "{uri}");
        }
    }

    #[test]
    fn the_projects_own_replies_are_read_back_as_ok_and_unsubscribe() {
        assert_eq!(
            parse_reply(send_notification_result(SubscriptionStatus::Ok).as_bytes()),
            Some(SubscriptionStatus::Ok)
        );
        assert_eq!(
            parse_reply(send_notification_result(SubscriptionStatus::Unsubscribe).as_bytes()),
            Some(SubscriptionStatus::Unsubscribe)
        );
        assert_eq!(parse_reply(b"OK"), None);
        assert_eq!(parse_reply(b"<a/>"), None);
    }
}
