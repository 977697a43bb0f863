//! Graph subscriptions on the wire: the body of a create (`POST /subscriptions`) and a renewal
//! (`PATCH /subscriptions/{id}`), the subscription resource Graph answers with (also in list
//! pages), and Graph's error body.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// The change types a room subscription asks for.
pub const ROOM_CHANGE_TYPES: &str = "created,updated,deleted";

/// The body of `POST /subscriptions`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSubscription<'a> {
    pub change_type: &'a str,
    pub notification_url: &'a str,
    /// Set at creation or never: Graph sends lifecycle events only to subscriptions that
    /// named this URL when they were created.
    pub lifecycle_notification_url: &'a str,
    pub resource: &'a str,
    #[serde(serialize_with = "graph_time")]
    pub expiration_date_time: DateTime<Utc>,
    /// The per-subscription secret Graph echoes in every notification.
    pub client_state: &'a str,
    pub latest_supported_tls_version: &'a str,
}

/// The body of `PATCH /subscriptions/{id}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewSubscription {
    #[serde(serialize_with = "graph_time")]
    pub expiration_date_time: DateTime<Utc>,
}

// Graph documents UTC times with seven fractional digits; whole seconds are accepted too.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn graph_time<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// A subscription as Graph returns it. `clientState` is never read back: Graph does not
/// return it when listing, and the service keeps its own copy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: String,
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub change_type: String,
    #[serde(default)]
    pub notification_url: String,
    #[serde(default)]
    pub lifecycle_notification_url: Option<String>,
    pub expiration_date_time: DateTime<Utc>,
    #[serde(default)]
    pub application_id: Option<String>,
}

/// One page of `GET /subscriptions`.
#[derive(Debug, Clone, Deserialize)]
pub struct SubscriptionPage {
    #[serde(default)]
    pub value: Vec<Subscription>,
    #[serde(rename = "@odata.nextLink", default)]
    pub next_link: Option<String>,
}

/// Graph's error body: `{"error":{"code","message"}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ErrorDetail {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

impl ErrorBody {
    /// Reads an error body; anything unreadable gives an empty code and message.
    #[must_use]
    pub fn parse(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }
}

/// The resource a room's subscription watches: every event of the room's mailbox.
#[must_use]
pub fn room_events_resource(room: &str) -> String {
    format!("/users/{room}/events")
}

/// Whether two resource paths name the same thing: Graph compares them without regard to
/// case or a leading slash.
#[must_use]
pub fn same_resource(a: &str, b: &str) -> bool {
    a.trim_start_matches('/')
        .eq_ignore_ascii_case(b.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::TimeZone;

    use super::*;

    #[test]
    fn a_create_body_carries_both_urls_the_secret_and_a_utc_expiry() {
        let body = serde_json::to_value(CreateSubscription {
            change_type: ROOM_CHANGE_TYPES,
            notification_url: "https://h.example/api/webhooks/exchange",
            lifecycle_notification_url: "https://h.example/api/webhooks/exchange",
            resource: &room_events_resource("room1@example.com"),
            expiration_date_time: Utc.with_ymd_and_hms(2026, 12, 1, 8, 30, 0).unwrap(),
            client_state: "s3cret",
            latest_supported_tls_version: "v1_2",
        })
        .unwrap();
        assert_eq!(body["changeType"], "created,updated,deleted");
        assert_eq!(body["resource"], "/users/room1@example.com/events");
        assert_eq!(
            body["lifecycleNotificationUrl"],
            "https://h.example/api/webhooks/exchange"
        );
        assert_eq!(body["expirationDateTime"], "2026-12-01T08:30:00.000Z");
        assert_eq!(body["clientState"], "s3cret");
    }

    #[test]
    fn a_listed_subscription_without_client_state_parses() {
        let page: SubscriptionPage = serde_json::from_str(
            r#"{"@odata.context":"x","value":[{"id":"7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
            "resource":"Users/a1b2/Events","applicationId":"24d3b144","changeType":"created,updated,deleted",
            "clientState":null,"notificationUrl":"https://h.example/api/webhooks/exchange",
            "lifecycleNotificationUrl":null,"expirationDateTime":"2026-12-03T18:23:45.9356913Z",
            "creatorId":"8ee44408"}],"@odata.nextLink":"https://graph.microsoft.com/v1.0/subscriptions?$skiptoken=abc"}"#,
        )
        .unwrap();
        assert_eq!(page.value.len(), 1);
        assert_eq!(page.value[0].id, "7f105c7d-2dc5-4530-97cd-4e7ae6534c07");
        assert_eq!(
            page.value[0].expiration_date_time,
            Utc.with_ymd_and_hms(2026, 12, 3, 18, 23, 45).unwrap()
                + chrono::Duration::nanoseconds(935_691_300)
        );
        assert!(page.next_link.unwrap().ends_with("skiptoken=abc"));
    }

    #[test]
    fn error_bodies_give_code_and_message_and_garbage_gives_nothing() {
        let e = ErrorBody::parse(
            br#"{"error":{"code":"ResourceNotFound","message":"The object was not found.","innerError":{}}}"#,
        );
        assert_eq!(e.error.code, "ResourceNotFound");
        assert_eq!(ErrorBody::parse(b"<html>").error.code, "");
    }

    #[test]
    fn resources_match_without_regard_to_case_or_leading_slash() {
        assert!(same_resource(
            "/users/Room1@x.example/events",
            "Users/room1@x.example/Events"
        ));
        assert!(!same_resource(
            "/users/room1@x.example/events",
            "/users/room2@x.example/events"
        ));
    }
}
