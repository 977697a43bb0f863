//! The push `Subscribe` request for a room's calendar folder, and the reading of its
//! response: the subscription id and starting watermark, or the error Exchange gave for the
//! one `SubscribeResponseMessage` (such as `ErrorInvalidWatermark` when resuming from a
//! watermark the mailbox no longer knows).

use std::ops::RangeInclusive;

use super::notification::EventKind;
use super::outcome::{
    EwsError, ResponseError, ews_text, invalid, message_status, read_envelope, response_messages,
};
use super::request::{Out, RequestError, ServerVersion, envelope, non_empty};

/// `StatusFrequency` bounds, in minutes, that Exchange accepts.
pub const STATUS_FREQUENCY_MINUTES: RangeInclusive<u32> = 1..=1440;

/// An event type a subscription asks for. Status events cannot be asked for: Exchange sends
/// them to every push subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// `CopiedEvent`.
    Copied,
    /// `CreatedEvent`.
    Created,
    /// `DeletedEvent`.
    Deleted,
    /// `ModifiedEvent`.
    Modified,
    /// `MovedEvent`.
    Moved,
    /// `NewMailEvent`.
    NewMail,
    /// `FreeBusyChangedEvent` (Exchange 2010 SP1 and later).
    FreeBusyChanged,
}

impl EventType {
    /// The `EventType` value, e.g. `CreatedEvent`.
    pub fn element_name(self) -> &'static str {
        EventKind::from(self).element_name()
    }
}

impl From<EventType> for EventKind {
    fn from(t: EventType) -> Self {
        match t {
            EventType::Copied => Self::Copied,
            EventType::Created => Self::Created,
            EventType::Deleted => Self::Deleted,
            EventType::Modified => Self::Modified,
            EventType::Moved => Self::Moved,
            EventType::NewMail => Self::NewMail,
            EventType::FreeBusyChanged => Self::FreeBusyChanged,
        }
    }
}

/// A push subscription to the calendar folder of `room`, made while impersonating it.
#[derive(Debug, Clone, Copy)]
pub struct PushSubscribe<'a> {
    /// The room's primary SMTP address.
    pub room: &'a str,
    /// What to be notified of (at least one; repeats are sent once).
    pub event_types: &'a [EventType],
    /// Resume after this watermark instead of starting from now.
    pub watermark: Option<&'a str>,
    /// Minutes between status (keep-alive) notifications, within
    /// [`STATUS_FREQUENCY_MINUTES`].
    pub status_frequency_minutes: u32,
    /// Where Exchange POSTs notifications: an absolute `http` or `https` URL.
    pub callback_url: &'a str,
}

impl PushSubscribe<'_> {
    /// The request body, or why it cannot be sent.
    pub fn to_xml(&self, version: ServerVersion) -> Result<Vec<u8>, RequestError> {
        if !STATUS_FREQUENCY_MINUTES.contains(&self.status_frequency_minutes) {
            return Err(RequestError::OutOfRange {
                what: "t:StatusFrequency",
                value: u64::from(self.status_frequency_minutes),
                min: u64::from(*STATUS_FREQUENCY_MINUTES.start()),
                max: u64::from(*STATUS_FREQUENCY_MINUTES.end()),
            });
        }
        let mut event_types: Vec<EventType> = Vec::with_capacity(self.event_types.len());
        for t in self.event_types {
            if !event_types.contains(t) {
                event_types.push(*t);
            }
        }
        if event_types.is_empty() {
            return Err(RequestError::Empty {
                what: "t:EventTypes",
            });
        }
        if let Some(watermark) = self.watermark {
            non_empty("t:Watermark", watermark)?;
        }
        let url_ok = url::Url::parse(self.callback_url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
        if !url_ok {
            return Err(RequestError::InvalidUrl);
        }
        envelope(version, self.room, |out| self.write_body(out, &event_types))
    }

    /// `m:Subscribe/m:PushSubscriptionRequest`, children in the schema's order.
    fn write_body(&self, out: &mut Out, event_types: &[EventType]) -> Result<(), RequestError> {
        out.open("m:Subscribe", &[])?;
        out.open("m:PushSubscriptionRequest", &[])?;
        out.calendar_folder("t:FolderIds")?;
        out.open("t:EventTypes", &[])?;
        for t in event_types {
            out.text("t:EventType", t.element_name())?;
        }
        out.close("t:EventTypes")?;
        if let Some(watermark) = self.watermark {
            out.text("t:Watermark", watermark)?;
        }
        out.text(
            "t:StatusFrequency",
            &self.status_frequency_minutes.to_string(),
        )?;
        out.text("t:URL", self.callback_url)?;
        out.close("m:PushSubscriptionRequest")?;
        out.close("m:Subscribe")
    }
}

/// A subscription Exchange created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// `SubscriptionId`, as notifications will carry it.
    pub subscription_id: String,
    /// `Watermark`: where the subscription starts (optional in the schema).
    pub watermark: Option<String>,
}

/// What the one `SubscribeResponseMessage` said.
pub type SubscribeResult = Result<Subscription, EwsError>;

/// Reads a `Subscribe` response body (whatever its HTTP status). A SOAP fault, or a body
/// that is not a `SubscribeResponse`, is a [`ResponseError`]; an error response message is
/// the inner `Err`.
pub fn parse_subscribe_response(body: &[u8]) -> Result<SubscribeResult, ResponseError> {
    let root = read_envelope(body)?;
    let messages = response_messages(&root, "Subscribe")?;
    let [message] = messages.as_slice() else {
        return Err(invalid(format!(
            "SubscribeResponse holds {} response messages, not one",
            messages.len()
        )));
    };
    if let Some(error) = message_status(message)? {
        return Ok(Err(error));
    }
    // Both are in the messages namespace per the schema; the types namespace is accepted too.
    let subscription_id = ews_text(message, "SubscriptionId")
        .ok_or_else(|| invalid("a successful SubscribeResponseMessage has no SubscriptionId"))?;
    Ok(Ok(Subscription {
        subscription_id: subscription_id.to_owned(),
        watermark: ews_text(message, "Watermark").map(str::to_owned),
    }))
}

#[cfg(test)]
mod tests;
