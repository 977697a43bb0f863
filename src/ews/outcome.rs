//! How an EWS call turned out, read the same way for every operation: a SOAP `Fault` (the
//! whole request failed, usually with HTTP 500), or per response message a `ResponseClass`
//! with a `ResponseCode`, `MessageText` and `MessageXml` details. Both become an
//! [`EwsError`] with a typed [`ResponseCode`], the server's back-off when it gave one, and
//! whether retrying later can help.
//!
//! Operation parsers call [`read_envelope`] and [`response_messages`] and then
//! [`message_status`] on each message; they never look at HTTP status codes, so a body is
//! read the same whether it came with 200 or 500.

use std::fmt;
use std::time::Duration;

use super::tree::{self, Node};
use super::{Ns, SoapError, quote};

/// The EWS response codes this service acts on; any other code is kept as [`Self::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ResponseCode {
    /// `NoError`.
    NoError,
    /// `ErrorServerBusy`: throttled; wait for the back-off before retrying.
    ErrorServerBusy,
    /// `ErrorInvalidWatermark`: the watermark a subscription was to resume from is unknown
    /// (too old, or from another mailbox database).
    ErrorInvalidWatermark,
    /// `ErrorItemNotFound`.
    ErrorItemNotFound,
    /// `ErrorInvalidSyncStateData`: the sync state is corrupt or from another folder.
    ErrorInvalidSyncStateData,
    /// `ErrorSubscriptionNotFound`.
    ErrorSubscriptionNotFound,
    /// `ErrorInvalidSubscription`.
    ErrorInvalidSubscription,
    /// `ErrorImpersonateUserDenied`: the service account may not impersonate the room.
    ErrorImpersonateUserDenied,
    /// `ErrorNonExistentMailbox`.
    ErrorNonExistentMailbox,
    /// `ErrorAccessDenied`.
    ErrorAccessDenied,
    /// `ErrorExceededSubscriptionCount`.
    ErrorExceededSubscriptionCount,
    /// `ErrorInvalidPushSubscriptionUrl`.
    ErrorInvalidPushSubscriptionUrl,
    /// `ErrorCalendarViewRangeTooBig`.
    ErrorCalendarViewRangeTooBig,
    /// `ErrorInvalidExchangeImpersonationHeaderData`.
    ErrorInvalidExchangeImpersonationHeaderData,
    /// `ErrorInternalServerError`; may wrap a more precise code in `MessageXml`.
    ErrorInternalServerError,
    /// `ErrorMailboxMoveInProgress`.
    ErrorMailboxMoveInProgress,
    /// `ErrorMailboxStoreUnavailable`.
    ErrorMailboxStoreUnavailable,
    /// Any other code, as sent.
    Other(String),
}

/// Every named code with its wire name, for both directions of the mapping.
const NAMED_CODES: [(ResponseCode, &str); 17] = [
    (ResponseCode::NoError, "NoError"),
    (ResponseCode::ErrorServerBusy, "ErrorServerBusy"),
    (ResponseCode::ErrorInvalidWatermark, "ErrorInvalidWatermark"),
    (ResponseCode::ErrorItemNotFound, "ErrorItemNotFound"),
    (
        ResponseCode::ErrorInvalidSyncStateData,
        "ErrorInvalidSyncStateData",
    ),
    (
        ResponseCode::ErrorSubscriptionNotFound,
        "ErrorSubscriptionNotFound",
    ),
    (
        ResponseCode::ErrorInvalidSubscription,
        "ErrorInvalidSubscription",
    ),
    (
        ResponseCode::ErrorImpersonateUserDenied,
        "ErrorImpersonateUserDenied",
    ),
    (
        ResponseCode::ErrorNonExistentMailbox,
        "ErrorNonExistentMailbox",
    ),
    (ResponseCode::ErrorAccessDenied, "ErrorAccessDenied"),
    (
        ResponseCode::ErrorExceededSubscriptionCount,
        "ErrorExceededSubscriptionCount",
    ),
    (
        ResponseCode::ErrorInvalidPushSubscriptionUrl,
        "ErrorInvalidPushSubscriptionUrl",
    ),
    (
        ResponseCode::ErrorCalendarViewRangeTooBig,
        "ErrorCalendarViewRangeTooBig",
    ),
    (
        ResponseCode::ErrorInvalidExchangeImpersonationHeaderData,
        "ErrorInvalidExchangeImpersonationHeaderData",
    ),
    (
        ResponseCode::ErrorInternalServerError,
        "ErrorInternalServerError",
    ),
    (
        ResponseCode::ErrorMailboxMoveInProgress,
        "ErrorMailboxMoveInProgress",
    ),
    (
        ResponseCode::ErrorMailboxStoreUnavailable,
        "ErrorMailboxStoreUnavailable",
    ),
];

impl ResponseCode {
    /// The code as EWS spells it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Other(code) => code,
            named => NAMED_CODES
                .iter()
                .find(|(code, _)| code == named)
                .map_or("", |(_, name)| name),
        }
    }

    /// Whether the same request may succeed later without change: the server is busy or
    /// failed internally, or the mailbox is being moved or its store is offline.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::ErrorServerBusy
                | Self::ErrorInternalServerError
                | Self::ErrorMailboxMoveInProgress
                | Self::ErrorMailboxStoreUnavailable
        )
    }
}

impl From<&str> for ResponseCode {
    fn from(code: &str) -> Self {
        NAMED_CODES
            .iter()
            .find(|(_, name)| *name == code)
            .map_or_else(|| Self::Other(code.to_owned()), |(named, _)| named.clone())
    }
}

impl fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an [`EwsError`] was reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// A SOAP `Fault`: the whole request failed.
    Fault,
    /// A response message with `ResponseClass="Error"`.
    Error,
    /// A response message with `ResponseClass="Warning"`: the server did not process it
    /// (a store offline mid-batch, a moved mailbox...).
    Warning,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fault => "fault",
            Self::Error => "error",
            Self::Warning => "warning",
        })
    }
}

/// An error EWS reported, from a SOAP fault or from one response message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("EWS {class} {code}{}", .message.as_deref().map(|m| format!(": {}", quote(m))).unwrap_or_default())]
pub struct EwsError {
    /// Fault, error or warning.
    pub class: ErrorClass,
    /// `ResponseCode` (from the fault's `detail`, else from its `faultcode`).
    pub code: ResponseCode,
    /// `MessageText` or `faultstring`.
    pub message: Option<String>,
    /// `MessageXml/Value[@Name="InnerErrorResponseCode"]`: what an
    /// `ErrorInternalServerError` actually was.
    pub inner_code: Option<ResponseCode>,
    /// `MessageXml/Value[@Name="BackOffMilliseconds"]`: how long the server asks us to wait.
    pub back_off: Option<Duration>,
}

impl EwsError {
    /// The code that says what happened: the inner code of an `ErrorInternalServerError`
    /// that carries one, else [`Self::code`].
    pub fn effective_code(&self) -> &ResponseCode {
        match (&self.code, &self.inner_code) {
            (ResponseCode::ErrorInternalServerError, Some(inner)) => inner,
            (code, _) => code,
        }
    }

    /// Throttled: `ErrorServerBusy`, directly or inside an `ErrorInternalServerError`, or any
    /// error that comes with a back-off (Exchange sends one only when it throttles).
    pub fn is_busy(&self) -> bool {
        *self.effective_code() == ResponseCode::ErrorServerBusy || self.back_off.is_some()
    }

    /// Whether retrying the same request later may succeed (see
    /// [`ResponseCode::is_transient`]); wait [`Self::back_off`] first when there is one.
    pub fn is_transient(&self) -> bool {
        self.is_busy() || self.effective_code().is_transient()
    }
}

/// Why a response could not be used as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// The body is not acceptable XML (see [`SoapError`]).
    #[error(transparent)]
    Xml(#[from] SoapError),
    /// The server answered with a SOAP fault.
    #[error("{0}")]
    Fault(EwsError),
    /// Well-formed XML that is not the response expected (another operation, a required
    /// element missing, a value of the wrong type...).
    #[error("unexpected EWS response: {0}")]
    Invalid(String),
}

impl ResponseError {
    /// The fault's details, if the server sent a fault.
    pub fn fault(&self) -> Option<&EwsError> {
        match self {
            Self::Fault(e) => Some(e),
            Self::Xml(_) | Self::Invalid(_) => None,
        }
    }

    /// Whether retrying later may help: only for a transient fault. A body that cannot be
    /// read will not read better next time.
    pub fn is_transient(&self) -> bool {
        self.fault().is_some_and(EwsError::is_transient)
    }
}

pub(crate) fn invalid(reason: impl Into<String>) -> ResponseError {
    ResponseError::Invalid(reason.into())
}

/// The first child in an EWS namespace (messages or types: Exchange is not consistent
/// about which) with this local name.
pub(crate) fn ews_child<'a>(node: &'a Node, local: &str) -> Option<&'a Node> {
    node.children
        .iter()
        .find(|c| c.ns.is_ews() && c.local == local)
}

/// Every child in an EWS namespace with this local name, in document order.
pub(crate) fn ews_children<'a>(
    node: &'a Node,
    local: &'a str,
) -> impl Iterator<Item = &'a Node> + 'a {
    node.children
        .iter()
        .filter(move |c| c.ns.is_ews() && c.local == local)
}

/// The text of an EWS child, when present and not empty.
pub(crate) fn ews_text<'a>(node: &'a Node, local: &str) -> Option<&'a str> {
    ews_child(node, local)
        .map(|c| c.text.as_str())
        .filter(|t| !t.is_empty())
}

/// Parses a response body into its SOAP `Envelope`.
pub(crate) fn read_envelope(body: &[u8]) -> Result<Node, ResponseError> {
    let root = tree::parse(body)?;
    if root.ns != Ns::Soap || root.local != "Envelope" {
        return Err(invalid("the root element is not a SOAP Envelope"));
    }
    Ok(root)
}

/// The `{operation}ResponseMessage` elements of `{operation}Response/ResponseMessages`
/// (at least one), or the SOAP fault the body holds instead.
pub(crate) fn response_messages<'a>(
    envelope: &'a Node,
    operation: &str,
) -> Result<Vec<&'a Node>, ResponseError> {
    let body = envelope
        .children
        .iter()
        .find(|c| c.ns == Ns::Soap && c.local == "Body")
        .ok_or_else(|| invalid("the SOAP Envelope has no Body"))?;
    if let Some(fault) = body
        .children
        .iter()
        .find(|c| c.ns == Ns::Soap && c.local == "Fault")
    {
        return Err(ResponseError::Fault(read_fault(fault)?));
    }
    let response_name = format!("{operation}Response");
    let response = ews_child(body, &response_name)
        .ok_or_else(|| invalid(format!("the SOAP Body holds no {response_name}")))?;
    let message_name = format!("{operation}ResponseMessage");
    let messages: Vec<&Node> = ews_child(response, "ResponseMessages")
        .map(|m| {
            m.children
                .iter()
                .filter(|c| c.ns.is_ews() && c.local == message_name)
                .collect()
        })
        .unwrap_or_default();
    if messages.is_empty() {
        return Err(invalid(format!("{response_name} holds no {message_name}")));
    }
    Ok(messages)
}

/// `None` for a `ResponseClass="Success"` message, else the error it reports.
pub(crate) fn message_status(message: &Node) -> Result<Option<EwsError>, ResponseError> {
    let class = match message.attr("ResponseClass") {
        Some("Success") => return Ok(None),
        Some("Error") => ErrorClass::Error,
        Some("Warning") => ErrorClass::Warning,
        Some(other) => {
            return Err(invalid(format!(
                "{} has ResponseClass {}",
                message.local,
                quote(other)
            )));
        }
        None => return Err(invalid(format!("{} has no ResponseClass", message.local))),
    };
    let code = ews_text(message, "ResponseCode").ok_or_else(|| {
        invalid(format!(
            "{} with ResponseClass {class} has no ResponseCode",
            message.local
        ))
    })?;
    let (back_off, inner_code) = message_xml(ews_child(message, "MessageXml"), Ns::is_ews);
    Ok(Some(EwsError {
        class,
        code: ResponseCode::from(code),
        message: ews_text(message, "MessageText").map(str::to_owned),
        inner_code,
        back_off,
    }))
}

/// The first child with this local name in any namespace: the SOAP 1.1 fault's own
/// children are unqualified, and the `detail` content is in the EWS errors namespace.
fn any_child<'a>(node: &'a Node, local: &str) -> Option<&'a Node> {
    node.children.iter().find(|c| c.local == local)
}

fn any_text<'a>(node: &'a Node, local: &str) -> Option<&'a str> {
    any_child(node, local)
        .map(|c| c.text.as_str())
        .filter(|t| !t.is_empty())
}

/// A SOAP fault, 1.1 (`faultcode`, `faultstring`, `detail`) or 1.2 (`Code/Value`,
/// `Reason/Text`, `Detail`). The code is the `detail`'s `ResponseCode` when there is one,
/// else the local part of the fault code: `a:ErrorServerBusy` and `ErrorServerBusy` are the
/// same code whatever the prefix.
fn read_fault(fault: &Node) -> Result<EwsError, ResponseError> {
    let detail = any_child(fault, "detail").or_else(|| any_child(fault, "Detail"));
    let soap_code = any_text(fault, "faultcode").or_else(|| {
        let code = any_child(fault, "Code")?;
        any_child(code, "Subcode")
            .and_then(|sub| any_text(sub, "Value"))
            .or_else(|| any_text(code, "Value"))
    });
    let code = detail
        .and_then(|d| any_text(d, "ResponseCode"))
        .or_else(|| soap_code.map(|c| c.rsplit_once(':').map_or(c, |(_, local)| local)))
        .filter(|c| !c.is_empty())
        .ok_or_else(|| invalid("the SOAP Fault has no fault code"))?;
    let message = any_text(fault, "faultstring")
        .or_else(|| any_child(fault, "Reason").and_then(|r| any_text(r, "Text")))
        .or_else(|| detail.and_then(|d| any_text(d, "Message")));
    let (back_off, inner_code) =
        message_xml(detail.and_then(|d| any_child(d, "MessageXml")), |_| true);
    Ok(EwsError {
        class: ErrorClass::Fault,
        code: ResponseCode::from(code),
        message: message.map(str::to_owned),
        inner_code,
        back_off,
    })
}

/// `BackOffMilliseconds` and `InnerErrorResponseCode` from the `Value` children of a
/// `MessageXml` whose namespace `accept` allows. An unreadable back-off is ignored rather
/// than failing the response: the error itself is what matters.
fn message_xml(
    message_xml: Option<&Node>,
    accept: fn(Ns) -> bool,
) -> (Option<Duration>, Option<ResponseCode>) {
    let mut back_off = None;
    let mut inner = None;
    let values = message_xml
        .into_iter()
        .flat_map(|m| m.children.iter())
        .filter(|v| accept(v.ns) && v.local == "Value");
    for value in values {
        match value.attr("Name") {
            Some("BackOffMilliseconds") => {
                back_off = value.text.parse::<u64>().ok().map(Duration::from_millis);
            }
            Some("InnerErrorResponseCode") if !value.text.is_empty() => {
                inner = Some(ResponseCode::from(value.text.as_str()));
            }
            _ => {}
        }
    }
    (back_off, inner)
}

#[cfg(test)]
mod tests;
