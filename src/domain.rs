//! The service's vocabulary: backends, event and subscription statuses, the reasons an event is
//! not acted on, and why a mailbox needs a full resync. Each is an enum stored as `text` (the
//! contract tables spell them as strings), and this module holds the only spelling of each.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A string that names no value of the enum it was parsed as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown value {0:?}")]
pub struct UnknownValue(pub String);

/// Which Exchange API a mailbox is reached through.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Backend {
    /// EWS push subscriptions (Exchange Server on premises, or Exchange Online while it lasts).
    Ews,
    /// Microsoft Graph change notifications (Exchange Online).
    Graph,
}

impl Backend {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ews => "ews",
            Self::Graph => "graph",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ews" => Ok(Self::Ews),
            "graph" => Ok(Self::Graph),
            _ => Err(UnknownValue(s.to_owned())),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a stored notification event is in its processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum EventStatus {
    /// Waiting for the worker.
    Pending,
    /// Claimed by a worker under a lease.
    Processing,
    /// Acted on.
    Done,
    /// Failed too often; kept with its last error until replayed.
    Dead,
    /// Stored for the record, never acted on (see [`RejectReason`]).
    Ignored,
}

impl EventStatus {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Done => "done",
            Self::Dead => "dead",
            Self::Ignored => "ignored",
        }
    }
}

/// Where a subscription is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum SubscriptionState {
    /// Recorded (with its secret) before Exchange was asked; notifications for it are welcome.
    Pending,
    /// The one in use for its mailbox.
    Active,
    /// Replaced by a newer one; EWS notifications for it are answered `Unsubscribe`.
    Superseded,
    /// Lapsed without renewal.
    Expired,
    /// Ended on purpose (mailbox disabled) or removed by Exchange.
    Removed,
    /// Exchange refused to create it.
    Failed,
}

impl SubscriptionState {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Superseded => "superseded",
            Self::Expired => "expired",
            Self::Removed => "removed",
            Self::Failed => "failed",
        }
    }

    /// Notifications on a subscription in this state are welcome.
    #[must_use]
    pub const fn is_wanted(self) -> bool {
        matches!(self, Self::Active | Self::Pending)
    }
}

impl std::str::FromStr for SubscriptionState {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::Pending,
            Self::Active,
            Self::Superseded,
            Self::Expired,
            Self::Removed,
            Self::Failed,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or_else(|| UnknownValue(s.to_owned()))
    }
}

impl fmt::Display for SubscriptionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a stored event is not acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum RejectReason {
    /// A Graph item whose `clientState` is not the subscription's secret.
    ClientStateMismatch,
    /// The subscription was superseded or removed.
    InactiveSubscription,
    /// No subscription of ours has this id.
    UnknownSubscription,
    /// A Graph `changeType` or `lifecycleEvent` this service does not know.
    UnknownChangeType,
    /// An EWS `StatusEvent`: liveness only, nothing changed.
    KeepAlive,
}

impl RejectReason {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ClientStateMismatch => "client_state_mismatch",
            Self::InactiveSubscription => "inactive_subscription",
            Self::UnknownSubscription => "unknown_subscription",
            Self::UnknownChangeType => "unknown_change_type",
            Self::KeepAlive => "keep_alive",
        }
    }
}

/// Why a mailbox's reservations must be rebuilt from a full read of its calendar window rather
/// than from incremental changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum ResyncReason {
    /// Exchange no longer knew the EWS watermark: events in between are lost.
    InvalidWatermark,
    /// Graph said notifications were not delivered (`missed`).
    Missed,
    /// Graph removed the subscription (`subscriptionRemoved`, or a renewal answered 404).
    SubscriptionRemoved,
    /// The subscription was replaced with no continuity (callback moved, backend moved, lapse).
    Resubscribed,
}

impl ResyncReason {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidWatermark => "invalid_watermark",
            Self::Missed => "missed",
            Self::SubscriptionRemoved => "subscription_removed",
            Self::Resubscribed => "resubscribed",
        }
    }
}

/// Whether a mailbox is covered by a working subscription, as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Coverage {
    /// An active subscription that is alive.
    Covered,
    /// No working subscription yet, or it is being replaced; `coverage_reason` says why.
    Uncovered,
    /// Not configured any more: no subscription is wanted.
    Disabled,
}

impl Coverage {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Covered => "covered",
            Self::Uncovered => "uncovered",
            Self::Disabled => "disabled",
        }
    }
}

impl fmt::Display for Coverage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One occurrence of a calendar item in a room's calendar as Exchange holds it now: what a row
/// of `reservations` is made from, whichever backend it was read through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    /// The Exchange id of the occurrence (EWS `ItemId`, Graph immutable event id).
    pub item_id: String,
    /// The item's iCalendar UID as the backend reports it for this occurrence.
    pub ical_uid: Option<String>,
    /// The UID of the meeting across backends: the series' UID for an occurrence, the
    /// item's own for a single meeting.
    pub series_uid: Option<String>,
    /// The series master's id, for occurrences and exceptions.
    pub series_master_id: Option<String>,
    /// Where the series pattern put the occurrence (before it was moved, if it was).
    pub original_start: Option<chrono::DateTime<chrono::Utc>>,
    pub subject: Option<String>,
    pub organizer: Option<String>,
    pub location: Option<String>,
    pub starts_at: chrono::DateTime<chrono::Utc>,
    pub ends_at: chrono::DateTime<chrono::Utc>,
    pub is_all_day: bool,
    pub is_cancelled: bool,
    /// Exchange's version of the item (EWS `ChangeKey`, Graph `changeKey`).
    pub change_key: Option<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn each_value_is_spelled_as_the_contract_tables_spell_it() {
        assert_eq!(Backend::Ews.as_str(), "ews");
        assert_eq!(serde_json::to_string(&Backend::Graph).unwrap(), "\"graph\"");
        assert_eq!(EventStatus::Ignored.as_str(), "ignored");
        assert_eq!(SubscriptionState::Superseded.as_str(), "superseded");
        assert_eq!(RejectReason::KeepAlive.as_str(), "keep_alive");
        assert_eq!(
            serde_json::to_string(&ResyncReason::InvalidWatermark).unwrap(),
            "\"invalid_watermark\""
        );
    }

    #[test]
    fn only_pending_and_active_subscriptions_are_wanted() {
        assert!(SubscriptionState::Pending.is_wanted());
        assert!(SubscriptionState::Active.is_wanted());
        assert!(!SubscriptionState::Superseded.is_wanted());
        assert!(!SubscriptionState::Removed.is_wanted());
    }
}
