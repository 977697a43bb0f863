//! Over-the-wire tests of the simulator: a real simulator on loopback, real HTTP clients,
//! and a tiny axum receiver playing the callback that Graph and EWS push to. Time runs 600
//! times faster than Exchange's (30 s of retry delay is 50 ms here).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::ews::tree::{self as xml, Node};
use crate::ews::{
    EventKind, NotificationMessage, SubscriptionStatus, parse_send_notification,
    send_notification_result,
};
use crate::graph::notification::{GraphKind, parse_notification_collection, validation_token};

const SCALE: f64 = 600.0;
const ROOM: &str = "room1@sim.example";
const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
const EWS_SCOPE: &str = "https://outlook.office365.com/.default";

// ---- harness ---------------------------------------------------------------

struct Sim {
    handle: SimulatorHandle,
    http: reqwest::Client,
    _stop: tokio_util::sync::DropGuard,
}

impl Sim {
    async fn start() -> Self {
        Self::start_with_latency(Duration::ZERO).await
    }

    async fn start_with_latency(latency: Duration) -> Self {
        Self::start_with(SCALE, latency).await
    }

    async fn start_with(time_scale: f64, latency: Duration) -> Self {
        let shutdown = CancellationToken::new();
        let config = SimulatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            time_scale,
            latency,
            ..SimulatorConfig::default()
        };
        let handle = Simulator::start(config, shutdown.clone()).await.unwrap();
        Self {
            handle,
            http: reqwest::Client::new(),
            _stop: shutdown.drop_guard(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.handle.base_url())
    }

    fn control(&self) -> &Control {
        self.handle.control()
    }

    async fn token_with(&self, secret: &str, scope: &str) -> reqwest::Response {
        self.http
            .post(self.url("/sim-tenant/oauth2/v2.0/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "sim-client"),
                ("client_secret", secret),
                ("scope", scope),
            ])
            .send()
            .await
            .unwrap()
    }

    /// A Graph token.
    async fn token(&self) -> String {
        self.token_for(GRAPH_SCOPE).await
    }

    async fn token_for(&self, scope: &str) -> String {
        let body: Value = self
            .token_with("sim-secret", scope)
            .await
            .json()
            .await
            .unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    async fn graph_get(&self, url: &str, prefer: Option<&str>) -> (StatusCode, Value) {
        let token = self.token().await;
        let mut req = self.http.get(url).bearer_auth(token);
        if let Some(p) = prefer {
            req = req.header("Prefer", p);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn create_subscription(&self, body: &Value) -> (StatusCode, Value) {
        let token = self.token().await;
        let r = self
            .http
            .post(self.url("/v1.0/subscriptions"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Sends an EWS operation with an Exchange token, impersonating `room` and anchored
    /// on it, as a correct app-only client does; returns the status and the parsed body.
    async fn ews(&self, room: &str, operation: &str) -> (StatusCode, Node) {
        let token = self.token_for(EWS_SCOPE).await;
        self.ews_as(
            &format!("Bearer {token}"),
            Some(room),
            Some(room),
            operation,
        )
        .await
    }

    /// Sends an EWS operation with the given `Authorization`, `ExchangeImpersonation`
    /// address and `X-AnchorMailbox` (each left out when `None`).
    async fn ews_as(
        &self,
        authorization: &str,
        impersonate: Option<&str>,
        anchor: Option<&str>,
        operation: &str,
    ) -> (StatusCode, Node) {
        let impersonation = impersonate.map_or_else(String::new, |room| {
            format!(
                "<t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress>{room}</t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>"
            )
        });
        let body = format!(
            r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><soap:Header><t:RequestServerVersion Version="Exchange2016"/>{impersonation}</soap:Header><soap:Body>{operation}</soap:Body></soap:Envelope>"#
        );
        let mut req = self
            .http
            .post(self.url("/EWS/Exchange.asmx"))
            .header("Authorization", authorization)
            .header("Content-Type", "text/xml; charset=utf-8");
        if let Some(anchor) = anchor {
            req = req.header("X-AnchorMailbox", anchor);
        }
        let r = req.body(body).send().await.unwrap();
        let status = r.status();
        let text = r.bytes().await.unwrap();
        let parsed = if text.is_empty() {
            xml::parse(b"<empty/>").unwrap()
        } else {
            xml::parse(&text).unwrap()
        };
        (status, parsed)
    }

    async fn ews_subscribe(&self, url: &str, frequency: u32, watermark: Option<&str>) -> Node {
        let wm = watermark
            .map(|w| format!("<t:Watermark>{w}</t:Watermark>"))
            .unwrap_or_default();
        let op = format!(
            r#"<m:Subscribe><m:PushSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="calendar"/></t:FolderIds><t:EventTypes><t:EventType>CreatedEvent</t:EventType><t:EventType>ModifiedEvent</t:EventType><t:EventType>DeletedEvent</t:EventType><t:EventType>MovedEvent</t:EventType></t:EventTypes>{wm}<t:StatusFrequency>{frequency}</t:StatusFrequency><t:URL>{url}</t:URL></m:PushSubscriptionRequest></m:Subscribe>"#
        );
        let (status, body) = self.ews(ROOM, &op).await;
        assert_eq!(status, StatusCode::OK);
        body.path(&[
            "Body",
            "SubscribeResponse",
            "ResponseMessages",
            "SubscribeResponseMessage",
        ])
        .unwrap()
        .clone()
    }
}

/// Waits until the simulator has recorded `n` push attempts: it records an attempt only
/// after the answer arrived, which is after the receiver saw the request.
async fn wait_pushes(control: &Control, n: usize) -> Vec<PushRecord> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pushes = control.pushes();
        if pushes.len() >= n {
            return pushes;
        }
        assert!(Instant::now() < deadline, "only {pushes:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn at(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, day, hour, 0, 0).unwrap()
}

fn meeting(subject: &str, day: u32, hour: u32) -> Meeting {
    Meeting {
        subject: subject.to_owned(),
        organizer: "alice@sim.example".to_owned(),
        start: at(day, hour),
        end: at(day, hour + 1),
        is_all_day: false,
        location: "Room 1".to_owned(),
    }
}

fn expiration(minutes: i64) -> String {
    (Utc::now() + TimeDelta::minutes(minutes)).to_rfc3339()
}

/// What the callback answers to notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Ok,
    Unsubscribe,
    Fail,
}

#[derive(Debug, Clone)]
struct Received {
    path: String,
    query: String,
    content_type: String,
    body: String,
    at: Instant,
}

#[derive(Debug)]
struct RxState {
    received: Vec<Received>,
    /// Paths whose handshake is answered with the wrong text.
    wrong_echo: Vec<String>,
    reply: Reply,
    /// How long the next Graph notifications (not handshakes) wait before their answer,
    /// one entry per notification, first in first used.
    slow: Vec<Duration>,
}

#[derive(Clone)]
struct Receiver {
    base: String,
    state: Arc<Mutex<RxState>>,
}

impl Receiver {
    async fn start() -> Self {
        let state = Arc::new(Mutex::new(RxState {
            received: Vec::new(),
            wrong_echo: Vec::new(),
            reply: Reply::Ok,
            slow: Vec::new(),
        }));
        let app = Router::new()
            .fallback(receive)
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, state }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn set_reply(&self, reply: Reply) {
        self.state.lock().unwrap().reply = reply;
    }

    /// The next Graph notification is answered only after `delay`.
    fn answer_next_after(&self, delay: Duration) {
        self.state.lock().unwrap().slow.push(delay);
    }

    fn wrong_echo_on(&self, path: &str) {
        self.state.lock().unwrap().wrong_echo.push(path.to_owned());
    }

    fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Notifications (not handshakes) received on `path`.
    fn notifications(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path && !r.query.contains("validationToken"))
            .collect()
    }

    async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.received();
            if done(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {got:#?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn receive(
    State(state): State<Arc<Mutex<RxState>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = uri.query().unwrap_or_default().to_owned();
    let path = uri.path().to_owned();
    let (wrong, reply) = {
        let mut s = state.lock().unwrap();
        s.received.push(Received {
            path: path.clone(),
            query: query.clone(),
            content_type: headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            body: String::from_utf8_lossy(&body).into_owned(),
            at: Instant::now(),
        });
        (s.wrong_echo.contains(&path), s.reply)
    };
    if let Ok(Some(token)) = validation_token(&query) {
        let echo = if wrong {
            "not the token".to_owned()
        } else {
            token
        };
        return (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], echo).into_response();
    }
    if path.starts_with("/ews") {
        return match reply {
            Reply::Ok => (
                StatusCode::OK,
                send_notification_result(SubscriptionStatus::Ok),
            )
                .into_response(),
            Reply::Unsubscribe => (
                StatusCode::OK,
                send_notification_result(SubscriptionStatus::Unsubscribe),
            )
                .into_response(),
            Reply::Fail => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        };
    }
    let slow = {
        let mut s = state.lock().unwrap();
        (!s.slow.is_empty()).then(|| s.slow.remove(0))
    };
    if let Some(delay) = slow {
        tokio::time::sleep(delay).await;
    }
    match reply {
        Reply::Fail => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Reply::Ok | Reply::Unsubscribe => StatusCode::ACCEPTED.into_response(),
    }
}

fn subscription_body(rx: &Receiver, minutes: i64) -> Value {
    subscription_body_for(rx, ROOM, minutes)
}

fn subscription_body_for(rx: &Receiver, room: &str, minutes: i64) -> Value {
    json!({
        "changeType": "created,updated,deleted",
        "notificationUrl": rx.url("/graph"),
        "lifecycleNotificationUrl": rx.url("/lifecycle"),
        "resource": format!("/users/{room}/events"),
        "expirationDateTime": expiration(minutes),
        "clientState": "secret-client-state",
    })
}

// ---- OAuth -----------------------------------------------------------------

#[tokio::test]
async fn the_token_endpoint_refuses_a_wrong_secret_with_invalid_client() {
    let sim = Sim::start().await;
    let r = sim.token_with("wrong", GRAPH_SCOPE).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    let ok: Value = sim
        .token_with("sim-secret", GRAPH_SCOPE)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ok["token_type"], "Bearer");
    assert!(ok["expires_in"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn graph_and_ews_calls_without_a_valid_token_get_401() {
    let sim = Sim::start().await;
    let r = sim
        .http
        .get(sim.url("/v1.0/subscriptions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    let r = sim
        .http
        .get(sim.url("/v1.0/subscriptions"))
        .bearer_auth("forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = sim
        .http
        .post(sim.url("/EWS/Exchange.asmx"))
        .body("<x/>")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn revoked_tokens_are_refused_until_a_new_one_is_fetched() {
    let sim = Sim::start().await;
    let token = sim.token().await;
    sim.control().inject(Fault::WrongTokens).unwrap();
    let r = sim
        .http
        .get(sim.url("/v1.0/subscriptions"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = sim.graph_get(&sim.url("/v1.0/subscriptions"), None).await;
    assert_eq!(status, StatusCode::OK);
}

// ---- Graph subscriptions -----------------------------------------------------

#[tokio::test]
async fn the_handshake_is_really_performed_on_both_urls_and_a_wrong_echo_fails_creation() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let (status, body) = sim.create_subscription(&subscription_body(&rx, 4200)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["clientState"], "secret-client-state");
    let handshakes: Vec<Received> = rx
        .received()
        .into_iter()
        .filter(|r| r.query.starts_with("validationToken="))
        .collect();
    assert_eq!(
        handshakes
            .iter()
            .map(|r| r.path.as_str())
            .collect::<Vec<_>>(),
        ["/graph", "/lifecycle"]
    );
    assert!(handshakes[0].content_type.starts_with("text/plain"));
    let token = validation_token(&handshakes[0].query).unwrap().unwrap();
    assert!(token.contains(' '), "a real sentence, URL-encoded: {token}");

    let rx2 = Receiver::start().await;
    rx2.wrong_echo_on("/graph");
    // Other rooms: the same room and change types would be a duplicate (409) instead.
    let (status, body) = sim
        .create_subscription(&subscription_body_for(&rx2, "room2@sim.example", 4200))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "ValidationError");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Subscription validation request failed")
    );

    let rx3 = Receiver::start().await;
    rx3.wrong_echo_on("/lifecycle");
    let (status, _) = sim
        .create_subscription(&subscription_body_for(&rx3, "room3@sim.example", 4200))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(sim.control().graph_subscriptions().len(), 1);
}

#[tokio::test]
async fn a_lifetime_under_45_minutes_is_moved_up_to_45_and_one_beyond_10080_is_refused() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    for minutes in [10_081, 20_000] {
        let (status, body) = sim
            .create_subscription(&subscription_body(&rx, minutes))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{minutes}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("expiration"),
            "{body}"
        );
    }
    assert!(
        rx.received().is_empty(),
        "no handshake for a refused lifetime"
    );
    let before = Utc::now();
    let (status, body) = sim.create_subscription(&subscription_body(&rx, 10)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let kept: DateTime<Utc> = body["expirationDateTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(kept >= before + TimeDelta::minutes(45), "{kept}");
    assert!(kept <= Utc::now() + TimeDelta::minutes(45), "{kept}");
    // The answer shows 100 ns ticks of what the simulator holds.
    let held = sim.control().graph_subscriptions()[0].expiration_date_time;
    assert!(
        (held - kept).abs() < TimeDelta::microseconds(1),
        "{held} {kept}"
    );
}

#[tokio::test]
async fn renewals_follow_the_same_lifetime_rules_as_creation() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let (_, created) = sim.create_subscription(&subscription_body(&rx, 4200)).await;
    let id = created["id"].as_str().unwrap();
    let token = sim.token().await;
    let patch = |minutes: i64| {
        sim.http
            .patch(sim.url(&format!("/v1.0/subscriptions/{id}")))
            .bearer_auth(&token)
            .json(&json!({ "expirationDateTime": expiration(minutes) }))
            .send()
    };
    let r = patch(10_081).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expiration")
    );
    let before = Utc::now();
    let r = patch(5).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let kept = sim.control().graph_subscriptions()[0].expiration_date_time;
    assert!(kept >= before + TimeDelta::minutes(45), "{kept}");
    assert!(kept <= Utc::now() + TimeDelta::minutes(45), "{kept}");
}

#[tokio::test]
async fn a_second_subscription_to_the_same_change_types_and_room_gets_409_whatever_its_urls_and_however_the_room_is_named()
 {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let (status, first) = sim.create_subscription(&subscription_body(&rx, 4200)).await;
    assert_eq!(status, StatusCode::CREATED);
    let first_id = first["id"].as_str().unwrap();
    let object_id = sim.control().room_object_id(ROOM).unwrap();
    let other = Receiver::start().await;
    for resource in [
        format!("users/{}/events", ROOM.to_ascii_uppercase()),
        format!("/Users/{object_id}/Events"),
        format!("users/{}/events", object_id.to_ascii_uppercase()),
    ] {
        let mut body = subscription_body(&other, 4200);
        body["resource"] = json!(resource);
        body["changeType"] = json!("deleted,created,updated");
        let (status, answer) = sim.create_subscription(&body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{resource}: {answer}");
        assert_eq!(
            answer["error"]["message"],
            format!("Subscription Id {first_id} already exists for the requested combination")
        );
    }
    assert!(other.received().is_empty(), "no handshake for a duplicate");
    let mut only_created = subscription_body(&other, 4200);
    only_created["changeType"] = json!("created");
    let (status, _) = sim.create_subscription(&only_created).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "other change types are another combination"
    );
}

#[tokio::test]
async fn subscriptions_can_be_renewed_listed_and_deleted_and_unknown_ids_get_404() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let (_, created) = sim.create_subscription(&subscription_body(&rx, 60)).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let token = sim.token().await;
    let r = sim
        .http
        .patch(sim.url(&format!("/v1.0/subscriptions/{id}")))
        .bearer_auth(&token)
        .json(&json!({ "expirationDateTime": expiration(4000) }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let renewed = sim.control().graph_subscriptions()[0].expiration_date_time;
    assert!(renewed > Utc::now() + TimeDelta::minutes(3990));
    assert_eq!(rx.notifications("/graph").len(), 0);
    assert_eq!(
        rx.received().len(),
        3,
        "create validates two URLs, renew one"
    );
    let (status, list) = sim.graph_get(&sim.url("/v1.0/subscriptions"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["value"][0]["id"], id.as_str());
    assert_eq!(list["value"][0]["clientState"], Value::Null);
    let r = sim
        .http
        .delete(sim.url(&format!("/v1.0/subscriptions/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (status, body) = sim
        .graph_get(&sim.url(&format!("/v1.0/subscriptions/{id}")), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "ResourceNotFound");
}

#[tokio::test]
async fn a_created_meeting_pushes_a_graph_notification_that_the_project_parser_accepts() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let (_, sub) = sim.create_subscription(&subscription_body(&rx, 4200)).await;
    let id = sim
        .control()
        .create_meeting(ROOM, meeting("Planning", 2, 10))
        .unwrap();
    let got = rx
        .wait_for("a change notification", |r| {
            r.iter()
                .any(|r| r.path == "/graph" && !r.query.contains("validationToken"))
        })
        .await;
    let push = got
        .iter()
        .find(|r| r.path == "/graph" && r.query.is_empty())
        .unwrap();
    assert_eq!(push.content_type, "application/json");
    let parsed = parse_notification_collection(push.body.as_bytes()).unwrap();
    // The attendant's updates may travel in the same POST; the creation comes first.
    let n = &parsed[0];
    assert_eq!(n.subscription_id, sub["id"].as_str().unwrap());
    assert_eq!(n.client_state.as_deref(), Some("secret-client-state"));
    assert_eq!(n.kind, GraphKind::Created);
    assert_eq!(n.resource_id.as_deref(), Some(id.as_str()));
    assert_eq!(n.tenant_id.as_deref(), Some("sim-tenant"));
    let (status, event) = sim
        .graph_get(&sim.url(&format!("/v1.0/users/{ROOM}/events/{id}")), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(event["subject"], "Planning");
    assert_eq!(event["type"], "singleInstance");
    assert_eq!(event["start"]["timeZone"], "UTC");
    let (status, body) = sim
        .graph_get(&sim.url(&format!("/v1.0/users/{ROOM}/events/nope")), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "ErrorItemNotFound");
}

#[tokio::test]
async fn a_lifecycle_event_goes_to_the_lifecycle_url_and_parses_as_lifecycle() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let (_, sub) = sim.create_subscription(&subscription_body(&rx, 4200)).await;
    let id = sub["id"].as_str().unwrap().to_owned();
    sim.control()
        .inject(Fault::LifecycleEvent {
            subscription_id: id.clone(),
            lifecycle: LifecycleKind::SubscriptionRemoved,
        })
        .unwrap();
    let got = rx
        .wait_for("a lifecycle notification", |r| {
            r.iter()
                .any(|r| r.path == "/lifecycle" && r.query.is_empty())
        })
        .await;
    let body = &got
        .iter()
        .find(|r| r.path == "/lifecycle" && r.query.is_empty())
        .unwrap()
        .body;
    let parsed = parse_notification_collection(body.as_bytes()).unwrap();
    assert!(parsed[0].kind.is_lifecycle());
    assert_eq!(parsed[0].subscription_id, id);
    assert!(sim.control().graph_subscriptions().is_empty());
    assert!(
        sim.control()
            .inject(Fault::LifecycleEvent {
                subscription_id: id,
                lifecycle: LifecycleKind::Missed,
            })
            .is_err()
    );
}

/// A subscription of `room` to `created` only, so that the calendar attendant's updates
/// stay out of the way, delivering to `/graph`.
fn created_only(rx: &Receiver, room: &str) -> Value {
    let mut body = subscription_body_for(rx, room, 4200);
    body["changeType"] = json!("created");
    body
}

/// The `value[]` of every notification POST to `path`, in the order they arrived.
fn batches(rx: &Receiver, path: &str) -> Vec<Vec<Value>> {
    rx.notifications(path)
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_str(&r.body).unwrap();
            body["value"].as_array().unwrap().clone()
        })
        .collect()
}

#[tokio::test]
async fn a_failing_graph_notification_is_retried_with_back_off_until_four_hours_after_its_first_try()
 {
    // 4 hours are 400 ms here; the 30 s first back-off is under a millisecond.
    const FAST: f64 = 36_000.0;
    let sim = Sim::start_with(FAST, Duration::ZERO).await;
    let rx = Receiver::start().await;
    sim.create_subscription(&created_only(&rx, ROOM)).await;
    rx.set_reply(Reply::Fail);
    sim.control()
        .create_meeting(ROOM, meeting("Retry", 2, 10))
        .unwrap();
    let delays = push::outbox::retry_delays();
    let tries = delays.len() + 1;
    let got = rx
        .wait_for("every try", |r| {
            r.iter()
                .filter(|r| r.path == "/graph" && r.query.is_empty())
                .count()
                == tries
        })
        .await;
    let times: Vec<Instant> = got
        .iter()
        .filter(|r| r.path == "/graph" && r.query.is_empty())
        .map(|r| r.at)
        .collect();
    for (i, (pair, delay)) in times.windows(2).zip(&delays).enumerate() {
        let gap = pair[1] - pair[0];
        let expected = delay.div_f64(FAST);
        assert!(gap >= expected, "{i}: {gap:?} < {expected:?}");
    }
    // Well past the 4 hours: no further try.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(rx.notifications("/graph").len(), tries);
    let attempts: Vec<u32> = sim
        .control()
        .pushes()
        .iter()
        .filter(|p| p.backend == Backend::Graph && p.kind == "created")
        .map(|p| p.attempt)
        .collect();
    assert_eq!(
        attempts,
        (1..=u32::try_from(tries).unwrap()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_graph_notification_still_failing_after_two_hours_is_delivered_once_the_endpoint_recovers()
 {
    const FAST: f64 = 36_000.0;
    let sim = Sim::start_with(FAST, Duration::ZERO).await;
    let rx = Receiver::start().await;
    sim.create_subscription(&created_only(&rx, ROOM)).await;
    rx.set_reply(Reply::Fail);
    sim.control()
        .create_meeting(ROOM, meeting("Patience", 2, 10))
        .unwrap();
    // The 9th try comes 30+60+...+1920+3600 s = 2 h 7 min after the first.
    let failed = 8;
    let spent: Duration = push::outbox::retry_delays()[..failed].iter().sum();
    assert!(spent > Duration::from_secs(2 * 3600));
    rx.wait_for("eight failed tries", |r| {
        r.iter().filter(|r| r.path == "/graph").count() == 1 + failed
    })
    .await;
    rx.set_reply(Reply::Ok);
    let pushes = wait_pushes(sim.control(), 2 + failed + 1).await;
    let last = pushes.last().unwrap();
    assert_eq!(last.kind, "created");
    assert_eq!(last.attempt, u32::try_from(failed).unwrap() + 1);
    assert_eq!(last.status, Some(202));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rx.notifications("/graph").len(),
        failed + 1,
        "delivered once"
    );
}

#[tokio::test]
async fn a_graph_notification_answered_after_three_seconds_counts_as_failed_and_is_retried() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    sim.create_subscription(&created_only(&rx, ROOM)).await;
    // A 202, but too late: Graph has given up on this POST by then.
    rx.answer_next_after(Duration::from_millis(3300));
    sim.control()
        .create_meeting(ROOM, meeting("Slow", 2, 10))
        .unwrap();
    let pushes = wait_pushes(sim.control(), 4).await;
    let graph: Vec<&PushRecord> = pushes.iter().filter(|p| p.kind == "created").collect();
    assert_eq!(graph[0].attempt, 1);
    assert_eq!(graph[0].status, None, "late is lost");
    assert_eq!(graph[1].attempt, 2);
    assert_eq!(graph[1].status, Some(202));
    assert_eq!(graph[0].body, graph[1].body);
    // Answered in 2.5 s: in time, delivered at once.
    rx.answer_next_after(Duration::from_millis(2500));
    sim.control()
        .create_meeting(ROOM, meeting("Slow but in time", 3, 10))
        .unwrap();
    let pushes = wait_pushes(sim.control(), 5).await;
    let last = pushes.last().unwrap();
    assert_eq!((last.attempt, last.status), (1, Some(202)));
}

#[tokio::test]
async fn notifications_due_together_for_one_url_share_a_post_of_at_most_a_hundred() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    // Two rooms' subscriptions deliver to the same URL.
    let (_, one) = sim.create_subscription(&created_only(&rx, ROOM)).await;
    let (_, two) = sim
        .create_subscription(&created_only(&rx, "room2@sim.example"))
        .await;
    for i in 0..150 {
        let room = if i % 2 == 0 {
            ROOM
        } else {
            "room2@sim.example"
        };
        sim.control()
            .create_meeting(room, meeting(&format!("Batch {i}"), 2, 10))
            .unwrap();
    }
    rx.wait_for("150 notifications", |_| {
        batches(&rx, "/graph").iter().map(Vec::len).sum::<usize>() == 150
    })
    .await;
    let sizes: Vec<usize> = batches(&rx, "/graph").iter().map(Vec::len).collect();
    assert_eq!(sizes, [100, 50], "made within one batch window");
    let first = &batches(&rx, "/graph")[0];
    let subs: BTreeSet<&str> = first
        .iter()
        .map(|v| v["subscriptionId"].as_str().unwrap())
        .collect();
    assert_eq!(
        subs,
        BTreeSet::from([one["id"].as_str().unwrap(), two["id"].as_str().unwrap()])
    );
    // The project's parser reads a batch as it comes.
    let body = &rx.notifications("/graph")[0].body;
    assert_eq!(
        parse_notification_collection(body.as_bytes())
            .unwrap()
            .len(),
        100
    );
    // A push is recorded once its answer is in, just after the receiver has the body.
    let created = || -> Vec<PushRecord> {
        sim.control()
            .pushes()
            .into_iter()
            .filter(|p| p.kind == "created")
            .collect()
    };
    rx.wait_for("both pushes recorded", |_| created().len() >= 2)
        .await;
    let records = created();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].notifications, 100);
    assert_eq!(records[0].subscription_id.split(',').count(), 2);
}

#[tokio::test]
async fn a_booking_is_notified_as_created_then_updated_twice_each_time_with_a_new_etag() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    sim.create_subscription(&subscription_body(&rx, 4200)).await;
    sim.ews_subscribe(&rx.url("/ews"), 30, None).await;
    let id = sim
        .control()
        .create_meeting(ROOM, meeting("Attended", 2, 10))
        .unwrap();
    let rest = sim.control().graph_id(&id, false);
    let notified = |rx: &Receiver| -> Vec<Value> {
        batches(rx, "/graph")
            .into_iter()
            .flatten()
            .filter(|v| v["resourceData"]["id"] == rest.as_str())
            .collect()
    };
    rx.wait_for("three Graph notifications", |_| notified(&rx).len() == 3)
        .await;
    let values = notified(&rx);
    let kinds: Vec<&str> = values
        .iter()
        .map(|v| v["changeType"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["created", "updated", "updated"]);
    let etags: BTreeSet<&str> = values
        .iter()
        .map(|v| v["resourceData"]["@odata.etag"].as_str().unwrap())
        .collect();
    assert_eq!(etags.len(), 3, "each a new version: {etags:?}");
    // The reads show the attendant's version.
    let (_, event) = graph_event(&sim, &rest).await;
    assert_eq!(
        event["@odata.etag"],
        values[2]["resourceData"]["@odata.etag"]
    );
    let (_, delta) = sim
        .graph_get(
            &sim.url(&format!(
                "/v1.0/users/{ROOM}/calendarView/delta?{}",
                window_query()
            )),
            None,
        )
        .await;
    assert_eq!(delta["value"][0]["changeKey"], event["changeKey"]);
    // EWS subscribers see the same: created, then modified twice, each a new change key.
    let got = rx
        .wait_for("three EWS item events", |r| {
            r.iter()
                .filter(|r| r.path == "/ews")
                .flat_map(|r| notification_of(&r.body).events)
                .filter(|e| e.item_id() == Some(id.as_str()))
                .count()
                == 3
        })
        .await;
    let events: Vec<_> = got
        .iter()
        .filter(|r| r.path == "/ews")
        .flat_map(|r| notification_of(&r.body).events)
        .filter(|e| e.item_id() == Some(id.as_str()))
        .collect();
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::Created, EventKind::Modified, EventKind::Modified]
    );
}

#[tokio::test]
async fn an_injected_throttle_answers_429_with_retry_after_for_the_next_calls_only() {
    let sim = Sim::start().await;
    sim.control()
        .inject(Fault::GraphThrottle {
            count: 2,
            retry_after_secs: 7,
            retry_after: None,
        })
        .unwrap();
    let token = sim.token().await;
    for _ in 0..2 {
        let r = sim
            .http
            .get(sim.url("/v1.0/subscriptions"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "7");
    }
    let (status, _) = sim.graph_get(&sim.url("/v1.0/subscriptions"), None).await;
    assert_eq!(status, StatusCode::OK);
}

// ---- calendarView and delta ------------------------------------------------------

fn window_query() -> String {
    "startDateTime=2026-03-01T00:00:00Z&endDateTime=2026-04-01T00:00:00Z".to_owned()
}

/// Follows nextLinks to the end of a round; returns the values and the deltaLink.
async fn delta_round(sim: &Sim, first: &str, page: usize) -> (Vec<Value>, String, usize) {
    let mut url = first.to_owned();
    let mut values = Vec::new();
    let mut pages = 0;
    loop {
        let (status, body) = sim
            .graph_get(&url, Some(&format!("odata.maxpagesize={page}")))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        pages += 1;
        let items = body["value"].as_array().unwrap();
        assert!(items.len() <= page);
        values.extend(items.iter().cloned());
        if let Some(next) = body["@odata.nextLink"].as_str() {
            assert!(body.get("@odata.deltaLink").is_none());
            url = next.to_owned();
        } else {
            let link = body["@odata.deltaLink"].as_str().unwrap().to_owned();
            return (values, link, pages);
        }
    }
}

#[tokio::test]
async fn delta_rounds_return_exactly_the_changes_since_the_last_link() {
    let sim = Sim::start().await;
    let c = sim.control();
    let a = c.create_meeting(ROOM, meeting("A", 2, 9)).unwrap();
    let b = c.create_meeting(ROOM, meeting("B", 3, 9)).unwrap();
    let keep = c.create_meeting(ROOM, meeting("C", 4, 9)).unwrap();
    c.create_meeting("room2@sim.example", meeting("Elsewhere", 4, 9))
        .unwrap();
    // The attendant's updates of the bookings come first.
    c.until_attended().await;
    let first = sim.url(&format!(
        "/v1.0/users/{ROOM}/calendarView/delta?{}",
        window_query()
    ));
    let (values, link, pages) = delta_round(&sim, &first, 2).await;
    assert_eq!(pages, 2);
    let ids: Vec<&str> = values.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [a.as_str(), b.as_str(), keep.as_str()]);

    c.move_meeting(ROOM, &a, at(5, 9), at(5, 10)).unwrap();
    c.delete_meeting(ROOM, &b).unwrap();
    let d = c.create_meeting(ROOM, meeting("D", 6, 9)).unwrap();
    c.until_attended().await;
    let (values, link2, _) = delta_round(&sim, &link, 10).await;
    assert_eq!(values.len(), 3, "{values:#?}");
    assert_eq!(values[0]["id"], a.as_str());
    assert_eq!(
        values[0]["start"]["dateTime"],
        "2026-03-05T09:00:00.0000000"
    );
    assert_eq!(values[1]["id"], b.as_str());
    assert_eq!(values[1]["@removed"]["reason"], "deleted");
    assert_eq!(values[2]["id"], d.as_str());

    let (values, _, _) = delta_round(&sim, &link2, 10).await;
    assert!(values.is_empty(), "{values:#?}");

    let (status, body) = sim
        .graph_get(
            &sim.url(&format!(
                "/v1.0/users/{ROOM}/calendarView/delta?$deltatoken=unknown"
            )),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(body["error"]["code"], "SyncStateNotFound");
    c.inject(Fault::ExpireDeltaLinks).unwrap();
    let (status, _) = sim.graph_get(&link2, None).await;
    assert_eq!(status, StatusCode::GONE);
}

#[tokio::test]
async fn a_recurring_series_of_five_appears_as_five_occurrences_in_calendar_view_and_delta() {
    let sim = Sim::start().await;
    let master = sim
        .control()
        .create_series(ROOM, meeting("Daily", 2, 8), Recurrence::Daily { count: 5 })
        .unwrap();
    let (status, body) = sim
        .graph_get(
            &sim.url(&format!(
                "/v1.0/users/{ROOM}/calendarView?{}",
                window_query()
            )),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let view = body["value"].as_array().unwrap();
    assert_eq!(view.len(), 5);
    assert!(view.iter().all(|v| v["type"] == "occurrence"));
    assert!(view.iter().all(|v| v["seriesMasterId"] == master.as_str()));
    let mut ids: Vec<&str> = view.iter().map(|v| v["id"].as_str().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 5);
    let first = sim.url(&format!(
        "/v1.0/users/{ROOM}/calendarView/delta?{}",
        window_query()
    ));
    let (values, _, _) = delta_round(&sim, &first, 3).await;
    assert_eq!(values.len(), 5);
    let (status, occurrence) = sim
        .graph_get(
            &sim.url(&format!("/v1.0/users/{ROOM}/events/{}", ids[4])),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        occurrence["start"]["dateTime"],
        "2026-03-06T08:00:00.0000000"
    );
}

// ---- EWS push ----------------------------------------------------------------------

fn notification_of(body: &str) -> crate::ews::Notification {
    let parsed = parse_send_notification(body.as_bytes()).unwrap();
    match parsed.messages.into_iter().next().unwrap() {
        NotificationMessage::Notification(n) => n,
        NotificationMessage::Error(e) => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn an_ews_booking_yields_send_notifications_with_a_continuous_watermark_chain() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let msg = sim.ews_subscribe(&rx.url("/ews"), 1, None).await;
    assert_eq!(msg.attr("ResponseClass"), Some("Success"));
    let sub_id = msg.child("SubscriptionId").unwrap().text.clone();
    let start_wm = msg.child("Watermark").unwrap().text.clone();
    let id = sim
        .control()
        .create_meeting(ROOM, meeting("Booked", 2, 10))
        .unwrap();
    sim.control().until_attended().await;
    sim.control().cancel_meeting(ROOM, &id).unwrap();
    sim.control().soft_delete_meeting(ROOM, &id).unwrap();
    let got = rx
        .wait_for("the moved event", |r| {
            r.iter().any(|r| r.body.contains("MovedEvent"))
        })
        .await;
    let mut previous = start_wm;
    let mut kinds = Vec::new();
    for r in got.iter().filter(|r| r.path == "/ews") {
        assert!(r.content_type.starts_with("text/xml"));
        let n = notification_of(&r.body);
        assert_eq!(n.subscription_id, sub_id);
        assert_eq!(n.previous_watermark.as_deref(), Some(previous.as_str()));
        previous = n.events.last().unwrap().watermark.clone().unwrap();
        for e in &n.events {
            kinds.push((e.kind, e.item_id().is_some()));
            if e.item_id().is_some() {
                assert!(e.parent_folder_id.is_some());
            }
        }
    }
    let item_kinds: Vec<EventKind> = kinds.iter().filter(|k| k.1).map(|k| k.0).collect();
    assert_eq!(
        item_kinds,
        [
            EventKind::Created,
            // The calendar attendant's two updates, then the cancellation.
            EventKind::Modified,
            EventKind::Modified,
            EventKind::Modified,
            EventKind::Moved
        ]
    );
    assert!(
        kinds.contains(&(EventKind::Modified, false)),
        "folder noise"
    );
    let snapshot = &sim.control().ews_subscriptions()[0];
    assert_eq!(snapshot.impersonated.as_deref(), Some(ROOM));
    assert_eq!(snapshot.anchor_mailbox.as_deref(), Some(ROOM));
}

#[tokio::test]
async fn after_the_first_status_event_the_next_ones_arrive_at_the_scaled_status_frequency() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    sim.ews_subscribe(&rx.url("/ews"), 1, None).await;
    let got = rx
        .wait_for("three status events", |r| {
            r.iter().filter(|r| r.path == "/ews").count() >= 3
        })
        .await;
    let times: Vec<Instant> = got
        .iter()
        .filter(|r| r.path == "/ews")
        .map(|r| r.at)
        .collect();
    // One minute at 600x is 100 ms. The first one comes at once: see
    // `the_first_push_of_a_subscription_is_a_status_event_continuing_from_the_subscribe_watermark`.
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(95), "{gap:?}");
        assert!(gap < Duration::from_millis(1000), "{gap:?}");
    }
    for r in got.iter().filter(|r| r.path == "/ews") {
        let n = notification_of(&r.body);
        assert_eq!(n.events.len(), 1);
        assert_eq!(n.events[0].kind, EventKind::Status);
    }
}

#[tokio::test]
async fn ews_push_retries_follow_the_scaled_doubling_schedule_until_beyond_status_frequency() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    rx.set_reply(Reply::Fail);
    sim.ews_subscribe(&rx.url("/ews"), 1, None).await;
    sim.control()
        .create_meeting(ROOM, meeting("Unlucky", 2, 10))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.control().ews_subscriptions()[0].alive {
        assert!(Instant::now() < deadline, "never gave up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let snap = &sim.control().ews_subscriptions()[0];
    assert_eq!(snap.ended_by, Some(EwsEnd::RetriesExhausted));
    let times: Vec<Instant> = rx.notifications("/ews").iter().map(|r| r.at).collect();
    // StatusFrequency 1 min: retries after 30 s and 60 s; 120 s would exceed it.
    assert_eq!(times.len(), 3);
    assert!(times[1] - times[0] >= Duration::from_millis(45));
    assert!(times[2] - times[1] >= Duration::from_millis(95));
    let attempts: Vec<u32> = sim.control().pushes().iter().map(|p| p.attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
}

#[tokio::test]
async fn an_unsubscribe_reply_ends_the_ews_subscription() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    rx.set_reply(Reply::Unsubscribe);
    sim.ews_subscribe(&rx.url("/ews"), 1, None).await;
    sim.control()
        .create_meeting(ROOM, meeting("Bye", 2, 10))
        .unwrap();
    rx.wait_for("one notification", |r| r.iter().any(|r| r.path == "/ews"))
        .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(rx.notifications("/ews").len(), 1);
    let snap = &sim.control().ews_subscriptions()[0];
    assert!(!snap.alive);
    assert_eq!(snap.ended_by, Some(EwsEnd::Unsubscribe));
}

#[tokio::test]
async fn an_injected_push_failure_is_retried_and_then_delivered() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    sim.ews_subscribe(&rx.url("/ews"), 1, None).await;
    // The first status event is delivered before the fault is armed.
    wait_pushes(sim.control(), 1).await;
    sim.control()
        .inject(Fault::FailPushes { count: 1 })
        .unwrap();
    sim.control()
        .create_meeting(ROOM, meeting("Dropped once", 2, 10))
        .unwrap();
    rx.wait_for("the redelivery", |r| {
        r.iter().any(|r| r.body.contains("CreatedEvent"))
    })
    .await;
    let pushes: Vec<PushRecord> = wait_pushes(sim.control(), 3)
        .await
        .into_iter()
        .filter(|p| p.kind == "notification")
        .collect();
    assert_eq!(pushes[0].status, None);
    assert_eq!(pushes[1].attempt, 2);
    assert_eq!(pushes[1].status, Some(200));
}

#[tokio::test]
async fn subscribing_with_a_watermark_replays_later_events_and_an_unknown_one_is_refused() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let (_, body) = sim
        .ews(
            ROOM,
            r#"<m:Subscribe><m:PushSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="calendar"/></t:FolderIds><t:EventTypes><t:EventType>CreatedEvent</t:EventType></t:EventTypes><t:Watermark>AQAAAHJvb20tYS13bS0wMDAy</t:Watermark><t:StatusFrequency>1</t:StatusFrequency><t:URL>http://127.0.0.1:1/x</t:URL></m:PushSubscriptionRequest></m:Subscribe>"#,
        )
        .await;
    let msg = body.find("SubscribeResponseMessage").unwrap();
    assert_eq!(msg.attr("ResponseClass"), Some("Error"));
    assert_eq!(
        msg.child("ResponseCode").unwrap().text,
        "ErrorInvalidWatermark"
    );

    let first = sim.ews_subscribe(&rx.url("/ignored"), 30, None).await;
    let wm = first.child("Watermark").unwrap().text.clone();
    sim.control()
        .create_meeting(ROOM, meeting("Replayed", 2, 10))
        .unwrap();
    let second = sim.ews_subscribe(&rx.url("/ews"), 30, Some(&wm)).await;
    assert_eq!(second.attr("ResponseClass"), Some("Success"));
    let got = rx
        .wait_for("the replay", |r| {
            r.iter()
                .any(|r| r.path == "/ews" && r.body.contains("CreatedEvent"))
        })
        .await;
    let pushed: Vec<_> = got
        .iter()
        .filter(|r| r.path == "/ews")
        .map(|r| notification_of(&r.body))
        .collect();
    // The status event that opens every subscription continues from the watermark given,
    // and the replay continues from it.
    assert_eq!(pushed[0].previous_watermark.as_deref(), Some(wm.as_str()));
    assert_eq!(pushed[0].events[0].kind, EventKind::Status);
    assert_eq!(
        pushed[1].previous_watermark,
        pushed[0].events[0].watermark.clone()
    );
    assert_eq!(pushed[1].events[0].kind, EventKind::Created);
    let snapshot = sim
        .control()
        .ews_subscriptions()
        .into_iter()
        .find(|s| s.url.ends_with("/ews"))
        .unwrap();
    assert_eq!(
        snapshot.subscribed_with_watermark.as_deref(),
        Some(wm.as_str())
    );
}

// ---- EWS reads ---------------------------------------------------------------------

fn response_message<'a>(body: &'a Node, op: &str) -> &'a Node {
    body.find(&format!("{op}ResponseMessage")).unwrap()
}

#[tokio::test]
async fn get_item_returns_the_booked_properties_and_item_not_found_per_missing_id() {
    let sim = Sim::start().await;
    let id = sim
        .control()
        .create_meeting(ROOM, meeting("Board & <review>", 2, 10))
        .unwrap();
    let (status, body) = sim
        .ews(
            ROOM,
            &format!(
                r#"<m:GetItem><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="{id}"/><t:ItemId Id="gone"/></m:ItemIds></m:GetItem>"#
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let messages: Vec<&Node> = body
        .find("ResponseMessages")
        .unwrap()
        .children_named("GetItemResponseMessage")
        .collect();
    assert_eq!(messages.len(), 2);
    let item = messages[0].find("CalendarItem").unwrap();
    assert_eq!(item.child("ItemId").unwrap().attr("Id"), Some(id.as_str()));
    assert!(item.child("ItemId").unwrap().attr("ChangeKey").is_some());
    assert_eq!(item.child("Subject").unwrap().text, "Board & <review>");
    assert_eq!(item.child("Start").unwrap().text, "2026-03-02T10:00:00Z");
    assert_eq!(item.child("End").unwrap().text, "2026-03-02T11:00:00Z");
    assert_eq!(item.child("IsAllDayEvent").unwrap().text, "false");
    assert_eq!(item.child("IsCancelled").unwrap().text, "false");
    assert_eq!(item.child("CalendarItemType").unwrap().text, "Single");
    assert!(!item.child("UID").unwrap().text.is_empty());
    assert_eq!(
        item.path(&["Organizer", "Mailbox", "EmailAddress"])
            .unwrap()
            .text,
        "alice@sim.example"
    );
    assert_eq!(
        item.path(&["Organizer", "Mailbox", "Name"]).unwrap().text,
        "Alice"
    );
    assert_eq!(messages[1].attr("ResponseClass"), Some("Error"));
    assert_eq!(
        messages[1].child("ResponseCode").unwrap().text,
        "ErrorItemNotFound"
    );
}

#[tokio::test]
async fn find_item_with_a_calendar_view_expands_series_and_honours_max_entries() {
    let sim = Sim::start().await;
    sim.control()
        .create_series(
            ROOM,
            meeting("Weekly", 2, 8),
            Recurrence::Weekly { count: 3 },
        )
        .unwrap();
    sim.control()
        .create_meeting(ROOM, meeting("One-off", 3, 9))
        .unwrap();
    let find = |max: u32| {
        format!(
            r#"<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="calendar:CalendarItemType"/></t:AdditionalProperties></m:ItemShape><m:CalendarView MaxEntriesReturned="{max}" StartDate="2026-03-01T00:00:00Z" EndDate="2026-04-01T00:00:00Z"/><m:ParentFolderIds><t:DistinguishedFolderId Id="calendar"><t:Mailbox><t:EmailAddress>{ROOM}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId></m:ParentFolderIds></m:FindItem>"#
        )
    };
    let (_, body) = sim.ews(ROOM, &find(100)).await;
    let root = response_message(&body, "FindItem")
        .child("RootFolder")
        .unwrap();
    assert_eq!(root.attr("TotalItemsInView"), Some("4"));
    assert_eq!(root.attr("IncludesLastItemInRange"), Some("true"));
    let items: Vec<&Node> = root
        .child("Items")
        .unwrap()
        .children_named("CalendarItem")
        .collect();
    assert_eq!(items.len(), 4);
    let kinds: Vec<&str> = items
        .iter()
        .map(|i| i.child("CalendarItemType").unwrap().text.as_str())
        .collect();
    assert_eq!(kinds, ["Occurrence", "Single", "Occurrence", "Occurrence"]);
    let (_, body) = sim.ews(ROOM, &find(2)).await;
    let root = response_message(&body, "FindItem")
        .child("RootFolder")
        .unwrap();
    assert_eq!(root.attr("IncludesLastItemInRange"), Some("false"));
    assert_eq!(root.child("Items").unwrap().children.len(), 2);
}

#[tokio::test]
async fn sync_folder_items_pages_through_changes_and_reports_updates_and_deletes_later() {
    let sim = Sim::start().await;
    let c = sim.control();
    let ids: Vec<String> = (0..3)
        .map(|i| c.create_meeting(ROOM, meeting("S", 2 + i, 9)).unwrap())
        .collect();
    c.until_attended().await;
    let sync = |state: &str, max: u32| {
        format!(
            r#"<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:SyncFolderId><t:DistinguishedFolderId Id="calendar"/></m:SyncFolderId><m:SyncState>{state}</m:SyncState><m:MaxChangesReturned>{max}</m:MaxChangesReturned></m:SyncFolderItems>"#
        )
    };
    let (_, body) = sim.ews(ROOM, &sync("", 2)).await;
    let msg = response_message(&body, "SyncFolderItems");
    assert_eq!(msg.child("IncludesLastItemInRange").unwrap().text, "false");
    assert_eq!(
        msg.child("Changes")
            .unwrap()
            .children_named("Create")
            .count(),
        2
    );
    let state = msg.child("SyncState").unwrap().text.clone();
    let (_, body) = sim.ews(ROOM, &sync(&state, 2)).await;
    let msg = response_message(&body, "SyncFolderItems");
    assert_eq!(msg.child("IncludesLastItemInRange").unwrap().text, "true");
    let created = msg.child("Changes").unwrap().child("Create").unwrap();
    assert_eq!(
        created.find("ItemId").unwrap().attr("Id"),
        Some(ids[2].as_str())
    );
    let state = msg.child("SyncState").unwrap().text.clone();

    c.move_meeting(ROOM, &ids[0], at(9, 9), at(9, 10)).unwrap();
    c.delete_meeting(ROOM, &ids[1]).unwrap();
    let (_, body) = sim.ews(ROOM, &sync(&state, 10)).await;
    let changes = response_message(&body, "SyncFolderItems")
        .child("Changes")
        .unwrap();
    let verbs: Vec<&str> = changes.children.iter().map(|c| c.local.as_str()).collect();
    assert_eq!(verbs, ["Update", "Delete"]);
    assert_eq!(
        changes
            .child("Delete")
            .unwrap()
            .child("ItemId")
            .unwrap()
            .attr("Id"),
        Some(ids[1].as_str())
    );
    let (_, body) = sim.ews(ROOM, &sync("bogus", 10)).await;
    assert_eq!(
        response_message(&body, "SyncFolderItems")
            .child("ResponseCode")
            .unwrap()
            .text,
        "ErrorInvalidSyncStateData"
    );
}

#[tokio::test]
async fn an_injected_server_busy_fault_carries_back_off_milliseconds() {
    let sim = Sim::start().await;
    sim.control()
        .inject(Fault::EwsServerBusy {
            count: 1,
            backoff_ms: 5000,
        })
        .unwrap();
    let op = r#"<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="x"/></m:ItemIds></m:GetItem>"#;
    let (status, body) = sim.ews(ROOM, op).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let fault = body.find("Fault").unwrap();
    assert_eq!(fault.child("faultcode").unwrap().text, "a:ErrorServerBusy");
    let value = fault.find("Value").unwrap();
    assert_eq!(value.attr("Name"), Some("BackOffMilliseconds"));
    assert_eq!(value.text, "5000");
    let (status, _) = sim.ews(ROOM, op).await;
    assert_eq!(status, StatusCode::OK);
}

// ---- control API and CLI ------------------------------------------------------------

#[tokio::test]
async fn the_http_control_api_books_meetings_and_reports_requests() {
    let sim = Sim::start().await;
    let r = sim
        .http
        .post(sim.url(&format!("/_sim/rooms/{ROOM}/meetings")))
        .json(&json!({
            "subject": "Via HTTP",
            "organizer": "bob@sim.example",
            "start": "2026-03-02T10:00:00Z",
            "end": "2026-03-02T11:00:00Z",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = sim
        .http
        .post(sim.url(&format!("/_sim/rooms/{ROOM}/series")))
        .json(&json!({
            "subject": "Series",
            "organizer": "bob@sim.example",
            "start": "2026-03-03T10:00:00Z",
            "end": "2026-03-03T11:00:00Z",
            "recurrence": { "pattern": "daily", "count": 2 },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = sim
        .http
        .patch(sim.url(&format!("/_sim/rooms/{ROOM}/meetings/{id}")))
        .json(&json!({ "cancel": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = sim
        .http
        .post(sim.url("/_sim/faults"))
        .json(&json!({ "kind": "graphThrottle", "count": 1, "retryAfterSecs": 3 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (status, _) = sim
        .graph_get(&sim.url(&format!("/v1.0/users/{ROOM}/events/{id}")), None)
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (_, event) = sim
        .graph_get(&sim.url(&format!("/v1.0/users/{ROOM}/events/{id}")), None)
        .await;
    assert_eq!(event["isCancelled"], true);
    let r = sim
        .http
        .delete(sim.url(&format!("/_sim/rooms/{ROOM}/meetings/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let requests: Value = sim
        .http
        .get(sim.url("/_sim/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let statuses: Vec<u64> = requests
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["path"].as_str().unwrap().contains("/events/"))
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [429, 200]);
    let subs: Value = sim
        .http
        .get(sim.url("/_sim/subscriptions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(subs["graph"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn the_simulator_refuses_to_listen_beyond_loopback() {
    let config = SimulatorConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..SimulatorConfig::default()
    };
    assert!(matches!(
        Simulator::start(config, CancellationToken::new()).await,
        Err(SimError::NotLoopback(_))
    ));
    let args = SimulateArgs {
        listen: "192.0.2.1:7070".parse().unwrap(),
        seed: 1,
        time_scale: 1.0,
        rooms: vec![ROOM.to_owned()],
        latency_ms: 0,
        busy_rooms: 0,
        busy_rate: 6.0,
    };
    assert!(run(args, CancellationToken::new()).await.is_err());
}

#[test]
fn the_banner_prints_the_settings_the_service_account_and_the_control_and_health_urls() {
    let banner = banner("http://127.0.0.1:7070", &SimulatorConfig::default());
    for line in [
        "Exchange simulator listening on http://127.0.0.1:7070",
        "EwsUrl=http://127.0.0.1:7070/EWS/Exchange.asmx",
        "(for EwsAuth=basic: EwsUsername=sim-ews@sim.example EwsPassword=sim-ews-password)",
        "Control API: http://127.0.0.1:7070/_sim (health: http://127.0.0.1:7070/_sim/health)",
    ] {
        assert!(banner.lines().any(|l| l == line), "{line} in {banner}");
    }
}

#[tokio::test]
async fn the_health_check_answers_ok_without_a_token_and_is_not_recorded() {
    let sim = Sim::start().await;
    let r = sim.http.get(sim.url("/_sim/health")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["baseUrl"], sim.handle.base_url());
    assert_eq!(body["rooms"], 3);
    assert!(sim.control().requests().is_empty());
}

#[test]
fn the_printed_environment_points_serve_at_every_endpoint() {
    let env = serve_environment("http://127.0.0.1:7070", &SimulatorConfig::default());
    for line in [
        "GraphBaseUrl=http://127.0.0.1:7070/v1.0",
        "AzureAuthorityHost=http://127.0.0.1:7070",
        "EwsUrl=http://127.0.0.1:7070/EWS/Exchange.asmx",
        "AzureTenantId=sim-tenant",
        "AzureClientId=sim-client",
        "AzureClientSecret=sim-secret",
        "ExchangeRoomMailboxes=room1@sim.example,room2@sim.example,room3@sim.example",
    ] {
        assert!(env.lines().any(|l| l == line), "{line}");
    }
}

#[tokio::test]
async fn busy_office_mode_books_moves_and_cancels_deterministically_for_a_seed() {
    async fn run_busy(seed: u64) -> Vec<String> {
        let shutdown = CancellationToken::new();
        let config = SimulatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            seed,
            ..SimulatorConfig::default()
        };
        let handle = Simulator::start(config, shutdown.clone()).await.unwrap();
        let rooms = vec![ROOM.to_owned(), "room2@sim.example".to_owned()];
        let mut booked = Vec::new();
        for _ in 0..40 {
            busy::busy_step(handle.control(), &rooms, &mut booked);
        }
        let state = handle.control().shared();
        let state = state.lock();
        shutdown.cancel();
        state
            .cal
            .rooms
            .values()
            .flat_map(|r| r.items.values())
            .map(|i| {
                format!(
                    "{} {} {} {}",
                    i.id, i.meeting.subject, i.version, i.cancelled
                )
            })
            .collect()
    }
    let a = run_busy(9).await;
    assert!(!a.is_empty());
    assert_eq!(a, run_busy(9).await);
    assert_ne!(a, run_busy(10).await);
}

#[tokio::test]
async fn tokens_expire_after_their_scaled_lifetime() {
    let shutdown = CancellationToken::new();
    let config = SimulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        // 3599 s of token lifetime become about 0.1 s.
        time_scale: 35_990.0,
        ..SimulatorConfig::default()
    };
    let handle = Simulator::start(config, shutdown.clone()).await.unwrap();
    let _stop = shutdown.drop_guard();
    let http = reqwest::Client::new();
    let body: Value = http
        .post(format!(
            "{}/sim-tenant/oauth2/v2.0/token",
            handle.base_url()
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "sim-client"),
            ("client_secret", "sim-secret"),
            ("scope", GRAPH_SCOPE),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["expires_in"], 1);
    let token = body["access_token"].as_str().unwrap();
    let url = format!("{}/v1.0/subscriptions", handle.base_url());
    let fresh = http.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(fresh.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let stale = http.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(stale.status(), StatusCode::UNAUTHORIZED);
    let body: Value = stale.json().await.unwrap();
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
}

#[tokio::test]
async fn reauthorize_revalidates_the_endpoint_and_answers_204() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let (_, sub) = sim.create_subscription(&subscription_body(&rx, 4200)).await;
    let id = sub["id"].as_str().unwrap();
    let before = rx.received().len();
    let token = sim.token().await;
    let r = sim
        .http
        .post(sim.url(&format!("/v1.0/subscriptions/{id}/reauthorize")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(rx.received().len(), before + 1);
    let r = sim
        .http
        .post(sim.url("/v1.0/subscriptions/unknown/reauthorize"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_injected_duplicate_delivers_the_same_graph_notification_twice() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    sim.create_subscription(&created_only(&rx, ROOM)).await;
    sim.control()
        .inject(Fault::DuplicatePushes { count: 1 })
        .unwrap();
    sim.control()
        .create_meeting(ROOM, meeting("Twice", 2, 10))
        .unwrap();
    let got = rx
        .wait_for("two copies", |r| {
            r.iter()
                .filter(|r| r.path == "/graph" && r.query.is_empty())
                .count()
                == 2
        })
        .await;
    let copies: Vec<&Received> = got
        .iter()
        .filter(|r| r.path == "/graph" && r.query.is_empty())
        .collect();
    assert_eq!(copies[0].body, copies[1].body);
    // Two handshakes, the delivery and its duplicate.
    let kinds: Vec<String> = wait_pushes(sim.control(), 4)
        .await
        .into_iter()
        .map(|p| p.kind)
        .collect();
    assert!(
        kinds.contains(&"created (duplicate)".to_owned()),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn run_serves_with_busy_office_mode_until_cancelled() {
    let shutdown = CancellationToken::new();
    let args = SimulateArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        seed: 3,
        time_scale: 60.0,
        rooms: vec![ROOM.to_owned(), "room2@sim.example".to_owned()],
        latency_ms: 5,
        busy_rooms: 1,
        busy_rate: 6000.0,
    };
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.cancel();
    });
    tokio::time::timeout(Duration::from_secs(5), run(args, shutdown))
        .await
        .unwrap()
        .unwrap();
}

// ---- strictness: tokens, impersonation, identities -----------------------------------

const GET_ITEM_X: &str = r#"<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="x"/></m:ItemIds></m:GetItem>"#;

/// `Basic` credentials of the simulator's EWS service account.
fn basic_service_account() -> String {
    // "sim-ews@sim.example:sim-ews-password"
    "Basic c2ltLWV3c0BzaW0uZXhhbXBsZTpzaW0tZXdzLXBhc3N3b3Jk".to_owned()
}

fn find_calendar(mailbox: Option<&str>) -> String {
    let mailbox = mailbox.map_or_else(String::new, |m| {
        format!("<t:Mailbox><t:EmailAddress>{m}</t:EmailAddress></t:Mailbox>")
    });
    format!(
        r#"<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:CalendarView StartDate="2026-03-01T00:00:00Z" EndDate="2026-04-01T00:00:00Z"/><m:ParentFolderIds><t:DistinguishedFolderId Id="calendar">{mailbox}</t:DistinguishedFolderId></m:ParentFolderIds></m:FindItem>"#
    )
}

fn subscribe_op(mailbox: Option<&str>, url: &str) -> String {
    let mailbox = mailbox.map_or_else(String::new, |m| {
        format!("<t:Mailbox><t:EmailAddress>{m}</t:EmailAddress></t:Mailbox>")
    });
    format!(
        r#"<m:Subscribe><m:PushSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="calendar">{mailbox}</t:DistinguishedFolderId></t:FolderIds><t:EventTypes><t:EventType>CreatedEvent</t:EventType></t:EventTypes><t:StatusFrequency>30</t:StatusFrequency><t:URL>{url}</t:URL></m:PushSubscriptionRequest></m:Subscribe>"#
    )
}

fn response_code(body: &Node, op: &str) -> String {
    response_message(body, op)
        .child("ResponseCode")
        .unwrap()
        .text
        .clone()
}

fn fault_code(body: &Node) -> String {
    body.find("Fault")
        .unwrap()
        .child("faultcode")
        .unwrap()
        .text
        .clone()
}

#[tokio::test]
async fn a_graph_token_is_refused_by_ews_and_an_exchange_token_by_graph() {
    let sim = Sim::start().await;
    let exchange = sim.token_for(EWS_SCOPE).await;
    let r = sim
        .http
        .get(sim.url("/v1.0/subscriptions"))
        .bearer_auth(&exchange)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Invalid audience")
    );

    let graph = sim.token().await;
    let r = sim
        .http
        .post(sim.url("/EWS/Exchange.asmx"))
        .bearer_auth(&graph)
        .header("X-AnchorMailbox", ROOM)
        .body("<x/>")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let diagnostics = r.headers()["x-ms-diagnostics"].to_str().unwrap();
    assert!(diagnostics.contains("audience"), "{diagnostics}");
    assert!(
        diagnostics.contains("https://graph.microsoft.com"),
        "{diagnostics}"
    );

    // Each token works where it belongs; Basic with the service account works for EWS.
    let (status, _) = sim.graph_get(&sim.url("/v1.0/subscriptions"), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = sim.ews(ROOM, GET_ITEM_X).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(response_code(&body, "GetItem"), "ErrorItemNotFound");
    let (status, _) = sim
        .ews_as(&basic_service_account(), Some(ROOM), None, GET_ITEM_X)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn an_app_only_ews_call_without_impersonation_gets_the_impersonation_header_fault() {
    let sim = Sim::start().await;
    let bearer = format!("Bearer {}", sim.token_for(EWS_SCOPE).await);
    let (status, body) = sim.ews_as(&bearer, None, Some(ROOM), GET_ITEM_X).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        fault_code(&body),
        "a:ErrorInvalidExchangeImpersonationHeaderData"
    );
    assert_eq!(
        body.find("faultstring").unwrap().text,
        "ExchangeImpersonation SOAP header must be present for this type of OAuth token."
    );
    // Naming the room in the folder does not stand in for impersonation.
    let (status, body) = sim
        .ews_as(&bearer, None, Some(ROOM), &find_calendar(Some(ROOM)))
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        fault_code(&body),
        "a:ErrorInvalidExchangeImpersonationHeaderData"
    );
}

#[tokio::test]
async fn an_app_only_ews_call_must_anchor_on_the_impersonated_mailbox_in_any_case() {
    let sim = Sim::start().await;
    let bearer = format!("Bearer {}", sim.token_for(EWS_SCOPE).await);
    for anchor in [None, Some("room2@sim.example")] {
        let (status, body) = sim.ews_as(&bearer, Some(ROOM), anchor, GET_ITEM_X).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{anchor:?}");
        assert_eq!(fault_code(&body), "a:ErrorInternalServerError");
    }
    let (status, body) = sim
        .ews_as(&bearer, Some(ROOM), Some("Room1@SIM.example"), GET_ITEM_X)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(response_code(&body, "GetItem"), "ErrorItemNotFound");
    // Impersonating an address that has no mailbox fails whatever the anchor.
    let (status, body) = sim
        .ews_as(
            &bearer,
            Some("nobody@sim.example"),
            Some("nobody@sim.example"),
            GET_ITEM_X,
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(fault_code(&body), "a:ErrorNonExistentMailbox");
}

#[tokio::test]
async fn naming_the_room_only_in_the_folder_mailbox_is_delegate_access_which_subscribe_refuses() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let url = rx.url("/ews");
    // The service account without impersonation, naming the room: delegate access.
    let (status, body) = sim
        .ews_as(
            &basic_service_account(),
            None,
            Some(ROOM),
            &subscribe_op(Some(ROOM), &url),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let message = response_message(&body, "Subscribe");
    assert_eq!(message.attr("ResponseClass"), Some("Error"));
    assert_eq!(
        response_code(&body, "Subscribe"),
        "ErrorSubscriptionDelegateAccessNotSupported"
    );
    assert_eq!(
        message.child("MessageText").unwrap().text,
        "Subscriptions are not supported for delegate user access."
    );
    // Impersonating one room while naming another is delegate access too.
    let bearer = format!("Bearer {}", sim.token_for(EWS_SCOPE).await);
    let (_, body) = sim
        .ews_as(
            &bearer,
            Some("room2@sim.example"),
            Some("room2@sim.example"),
            &subscribe_op(Some(ROOM), &url),
        )
        .await;
    assert_eq!(
        response_code(&body, "Subscribe"),
        "ErrorSubscriptionDelegateAccessNotSupported"
    );
    assert!(sim.control().ews_subscriptions().is_empty());
    // Impersonating the room it names is not.
    let (_, body) = sim
        .ews_as(
            &bearer,
            Some(ROOM),
            Some(ROOM),
            &subscribe_op(Some(ROOM), &url),
        )
        .await;
    assert_eq!(response_code(&body, "Subscribe"), "NoError");
}

#[tokio::test]
async fn basic_auth_reaches_a_room_only_by_impersonating_it() {
    let sim = Sim::start().await;
    sim.control()
        .create_meeting(ROOM, meeting("Visible", 2, 10))
        .unwrap();
    let basic = basic_service_account();
    let (_, body) = sim.ews_as(&basic, None, None, &find_calendar(None)).await;
    assert_eq!(response_code(&body, "FindItem"), "ErrorMissingEmailAddress");
    let (_, body) = sim
        .ews_as(&basic, None, None, &find_calendar(Some(ROOM)))
        .await;
    assert_eq!(response_code(&body, "FindItem"), "ErrorFolderNotFound");
    // On-premises style: impersonation without an anchor is enough.
    let (status, body) = sim
        .ews_as(&basic, Some(ROOM), None, &find_calendar(None))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(response_code(&body, "FindItem"), "NoError");
    assert_eq!(
        response_message(&body, "FindItem")
            .find("RootFolder")
            .unwrap()
            .attr("TotalItemsInView"),
        Some("1")
    );
}

#[tokio::test]
async fn get_item_finds_only_the_items_of_the_impersonated_room() {
    let sim = Sim::start().await;
    let theirs = sim
        .control()
        .create_meeting("room2@sim.example", meeting("Elsewhere", 2, 10))
        .unwrap();
    let mine = sim
        .control()
        .create_meeting(ROOM, meeting("Here", 2, 11))
        .unwrap();
    let op = format!(
        r#"<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="{theirs}"/><t:ItemId Id="{mine}"/></m:ItemIds></m:GetItem>"#
    );
    let (_, body) = sim.ews(ROOM, &op).await;
    let codes: Vec<String> = body
        .find("ResponseMessages")
        .unwrap()
        .children_named("GetItemResponseMessage")
        .map(|m| m.child("ResponseCode").unwrap().text.clone())
        .collect();
    assert_eq!(codes, ["ErrorItemNotFound", "NoError"]);
    let (_, body) = sim.ews("room2@sim.example", &op).await;
    let codes: Vec<String> = body
        .find("ResponseMessages")
        .unwrap()
        .children_named("GetItemResponseMessage")
        .map(|m| m.child("ResponseCode").unwrap().text.clone())
        .collect();
    assert_eq!(codes, ["NoError", "ErrorItemNotFound"]);
}

#[tokio::test]
async fn writes_and_graph_reads_reach_an_item_only_through_the_room_that_holds_it() {
    let sim = Sim::start().await;
    let theirs = sim
        .control()
        .create_meeting("room2@sim.example", meeting("Elsewhere", 2, 10))
        .unwrap();
    sim.control().until_attended().await;
    // EWS impersonating room1 cannot move or delete room2's item.
    let update = update_op(
        "AlwaysOverwrite",
        &format!(
            r#"<t:ItemChange><t:ItemId Id="{theirs}"/>{}</t:ItemChange>"#,
            set_times("2026-03-05T09:00:00Z", "2026-03-05T10:00:00Z")
        ),
    );
    let answer = ews_write(&sim, "UpdateItem", &update).await;
    assert_eq!(
        answer[0].child("ResponseCode").unwrap().text,
        "ErrorItemNotFound"
    );
    let delete = format!(
        r#"<m:DeleteItem DeleteType="HardDelete" SendMeetingCancellations="SendToNone"><m:ItemIds><t:ItemId Id="{theirs}"/></m:ItemIds></m:DeleteItem>"#
    );
    let answer = ews_write(&sim, "DeleteItem", &delete).await;
    assert_eq!(
        answer[0].child("ResponseCode").unwrap().text,
        "ErrorItemNotFound"
    );
    // Graph under room1 does not find it either, in any id format.
    for id in [
        theirs.clone(),
        sim.control().graph_id(&theirs, false),
        sim.control().graph_id(&theirs, true),
    ] {
        let path = format!("/v1.0/users/{ROOM}/events/{id}");
        let (status, _) = sim.graph_get(&sim.url(&path), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = graph_send(&sim, reqwest::Method::DELETE, &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    // It is where it was, untouched.
    let (status, event) = sim
        .graph_get(
            &sim.url(&format!("/v1.0/users/room2@sim.example/events/{theirs}")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(event["start"]["dateTime"], "2026-03-02T10:00:00.0000000");
}

#[tokio::test]
async fn the_first_push_of_a_subscription_is_a_status_event_continuing_from_the_subscribe_watermark()
 {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let started = Instant::now();
    // StatusFrequency 30 min is 3 s here: a push within it is the first notification.
    let msg = sim.ews_subscribe(&rx.url("/ews"), 30, None).await;
    let watermark = msg.child("Watermark").unwrap().text.clone();
    let sub_id = msg.child("SubscriptionId").unwrap().text.clone();
    let got = rx
        .wait_for("the first notification", |r| {
            r.iter().any(|r| r.path == "/ews")
        })
        .await;
    let first = got.iter().find(|r| r.path == "/ews").unwrap();
    assert!(first.at - started < Duration::from_secs(1));
    let n = notification_of(&first.body);
    assert_eq!(n.subscription_id, sub_id);
    assert_eq!(n.previous_watermark.as_deref(), Some(watermark.as_str()));
    assert_eq!(n.events.len(), 1);
    assert_eq!(n.events[0].kind, EventKind::Status);
    assert_ne!(n.events[0].watermark.as_deref(), Some(watermark.as_str()));
}

#[tokio::test]
async fn lifecycle_events_go_only_to_the_lifecycle_url_and_a_subscription_without_one_gets_none() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let mut without = subscription_body(&rx, 4200);
    without
        .as_object_mut()
        .unwrap()
        .remove("lifecycleNotificationUrl");
    let (status, bare) = sim.create_subscription(&without).await;
    assert_eq!(status, StatusCode::CREATED, "{bare}");
    let (_, with) = sim
        .create_subscription(&subscription_body_for(&rx, "room2@sim.example", 4200))
        .await;
    for lifecycle in [
        LifecycleKind::Missed,
        LifecycleKind::ReauthorizationRequired,
    ] {
        for sub in [&bare, &with] {
            sim.control()
                .inject(Fault::LifecycleEvent {
                    subscription_id: sub["id"].as_str().unwrap().to_owned(),
                    lifecycle,
                })
                .unwrap();
        }
    }
    // Due together for one URL, they may share a POST.
    rx.wait_for("two lifecycle notifications", |_| {
        batches(&rx, "/lifecycle")
            .iter()
            .map(Vec::len)
            .sum::<usize>()
            == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        rx.notifications("/graph").is_empty(),
        "never to notificationUrl"
    );
    for r in rx.notifications("/lifecycle") {
        let parsed = parse_notification_collection(r.body.as_bytes()).unwrap();
        assert!(
            parsed
                .iter()
                .all(|p| p.subscription_id == with["id"].as_str().unwrap())
        );
    }
    // subscriptionRemoved without a lifecycle URL still removes it, silently.
    sim.control()
        .inject(Fault::LifecycleEvent {
            subscription_id: bare["id"].as_str().unwrap().to_owned(),
            lifecycle: LifecycleKind::SubscriptionRemoved,
        })
        .unwrap();
    assert_eq!(sim.control().graph_subscriptions().len(), 1);
}

#[tokio::test]
async fn rooms_have_stable_object_ids_that_graph_accepts_wherever_it_takes_a_user_and_notifies_with()
 {
    let sim = Sim::start().await;
    let object_id = sim.control().room_object_id(ROOM).unwrap();
    assert_eq!(object_id.len(), 36);
    let again = Sim::start().await;
    assert_eq!(again.control().room_object_id(ROOM).unwrap(), object_id);
    assert_ne!(
        sim.control().room_object_id("room2@sim.example").unwrap(),
        object_id
    );
    for name in [ROOM.to_owned(), object_id.clone()] {
        let (status, user) = sim
            .graph_get(&sim.url(&format!("/v1.0/users/{name}")), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{user}");
        assert_eq!(user["id"], object_id.as_str());
        assert_eq!(user["userPrincipalName"], ROOM);
        assert_eq!(user["mail"], ROOM);
        assert!(user["displayName"].as_str().is_some_and(|d| !d.is_empty()));
    }
    let (status, body) = sim
        .graph_get(&sim.url("/v1.0/users/nobody@sim.example"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "Request_ResourceNotFound");

    let rx = Receiver::start().await;
    let mut body = subscription_body(&rx, 4200);
    body["resource"] = json!(format!("/users/{object_id}/events"));
    let (status, created) = sim.create_subscription(&body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(sim.control().graph_subscriptions()[0].room, ROOM);
    let id = sim
        .control()
        .create_meeting(ROOM, meeting("By id", 2, 10))
        .unwrap();
    let (status, event) = sim
        .graph_get(
            &sim.url(&format!("/v1.0/users/{object_id}/events/{id}")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(event["subject"], "By id");
    let (status, view) = sim
        .graph_get(
            &sim.url(&format!(
                "/v1.0/users/{}/calendarView?{}",
                object_id.to_ascii_uppercase(),
                window_query()
            )),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["value"][0]["id"], id.as_str());
    let got = rx
        .wait_for("the notification", |r| {
            r.iter().any(|r| r.path == "/graph" && r.query.is_empty())
        })
        .await;
    let push: Value = serde_json::from_str(
        &got.iter()
            .find(|r| r.path == "/graph" && r.query.is_empty())
            .unwrap()
            .body,
    )
    .unwrap();
    let expected = format!("Users/{object_id}/Events/{id}");
    assert_eq!(push["value"][0]["resource"], expected.as_str());
    assert_eq!(
        push["value"][0]["resourceData"]["@odata.id"],
        expected.as_str()
    );
}

#[tokio::test]
async fn request_records_show_prefer_anchor_mailbox_auth_scheme_and_token_resource_but_no_credential()
 {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let graph = sim.token().await;
    let r = sim
        .http
        .post(sim.url("/v1.0/subscriptions"))
        .bearer_auth(&graph)
        .header("Prefer", r#"IdType="ImmutableId""#)
        .json(&subscription_body(&rx, 4200))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(sim.control().graph_subscriptions()[0].prefer_immutable_id);
    sim.ews(ROOM, GET_ITEM_X).await;
    sim.ews_as(&basic_service_account(), Some(ROOM), None, GET_ITEM_X)
        .await;
    sim.http
        .get(sim.url("/v1.0/subscriptions"))
        .send()
        .await
        .unwrap();
    let records = sim.control().requests();
    let graph_create = records
        .iter()
        .find(|r| r.path == "/v1.0/subscriptions" && r.method == "POST")
        .unwrap();
    assert_eq!(
        graph_create.prefer.as_deref(),
        Some(r#"IdType="ImmutableId""#)
    );
    assert_eq!(graph_create.auth_scheme, AuthScheme::Bearer);
    assert_eq!(graph_create.token_resource, Some(TokenResource::Graph));
    let ews: Vec<&RequestRecord> = records
        .iter()
        .filter(|r| r.path == "/EWS/Exchange.asmx")
        .collect();
    assert_eq!(ews[0].anchor_mailbox.as_deref(), Some(ROOM));
    assert_eq!(ews[0].auth_scheme, AuthScheme::Bearer);
    assert_eq!(ews[0].token_resource, Some(TokenResource::Ews));
    assert_eq!(ews[1].anchor_mailbox, None);
    assert_eq!(ews[1].auth_scheme, AuthScheme::Basic);
    assert_eq!(ews[1].token_resource, None);
    let anonymous = records.last().unwrap();
    assert_eq!(anonymous.auth_scheme, AuthScheme::None);
    assert_eq!(anonymous.status, 401);
    let json = serde_json::to_string(&records).unwrap();
    assert!(!json.contains(&graph), "the token itself is never recorded");
    assert!(!json.contains("c2ltLWV3c0Bz"), "nor Basic credentials");
    assert!(json.contains(r#""authScheme":"bearer""#), "{json}");
    assert!(json.contains(r#""tokenResource":"ews""#), "{json}");
}

// ---- fault knobs ------------------------------------------------------------------------

#[tokio::test]
async fn a_forgotten_graph_subscription_vanishes_without_a_lifecycle_notification_and_then_answers_404()
 {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let (_, sub) = sim.create_subscription(&subscription_body(&rx, 4200)).await;
    let id = sub["id"].as_str().unwrap().to_owned();
    let before = rx.received().len();
    sim.control()
        .inject(Fault::ForgetGraphSubscription {
            subscription_id: id.clone(),
        })
        .unwrap();
    assert!(sim.control().graph_subscriptions().is_empty());
    let token = sim.token().await;
    let r = sim
        .http
        .patch(sim.url(&format!("/v1.0/subscriptions/{id}")))
        .bearer_auth(&token)
        .json(&json!({ "expirationDateTime": expiration(4000) }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ResourceNotFound");
    assert_eq!(body["error"]["message"], "The object was not found.");
    let (status, _) = sim
        .graph_get(&sim.url(&format!("/v1.0/subscriptions/{id}")), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    sim.control()
        .create_meeting(ROOM, meeting("Unheard", 2, 10))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.received().len(), before, "no lifecycle, no notification");
    assert!(matches!(
        sim.control().inject(Fault::ForgetGraphSubscription {
            subscription_id: id
        }),
        Err(SimError::UnknownSubscription(_))
    ));
}

#[tokio::test]
async fn an_injected_validation_failure_fails_create_and_renew_even_when_the_callback_echoes_correctly()
 {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let r = sim
        .http
        .post(sim.url("/_sim/faults"))
        .json(&json!({ "kind": "failValidation", "count": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (status, body) = sim.create_subscription(&subscription_body(&rx, 4200)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "ValidationError");
    assert_eq!(
        body["error"]["message"],
        "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request."
    );
    assert_eq!(rx.received().len(), 1, "the handshake really happened");
    assert!(sim.control().graph_subscriptions().is_empty());
    let (status, sub) = sim.create_subscription(&subscription_body(&rx, 4200)).await;
    assert_eq!(status, StatusCode::CREATED);
    sim.control()
        .inject(Fault::FailValidation { count: 1 })
        .unwrap();
    let token = sim.token().await;
    let before = sim.control().graph_subscriptions()[0].expiration_date_time;
    let r = sim
        .http
        .patch(sim.url(&format!(
            "/v1.0/subscriptions/{}",
            sub["id"].as_str().unwrap()
        )))
        .bearer_auth(&token)
        .json(&json!({ "expirationDateTime": expiration(8000) }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        sim.control().graph_subscriptions()[0].expiration_date_time,
        before,
        "a failed renewal changes nothing"
    );
}

#[tokio::test]
async fn a_mailbox_holds_twenty_live_push_subscriptions_and_the_next_gets_exceeded_subscription_count()
 {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let op = subscribe_op(None, &rx.url("/ews"));
    let mut ids = Vec::new();
    for _ in 0..ews::MAX_SUBSCRIPTIONS_PER_MAILBOX {
        let (_, body) = sim.ews(ROOM, &op).await;
        assert_eq!(response_code(&body, "Subscribe"), "NoError");
        ids.push(
            response_message(&body, "Subscribe")
                .child("SubscriptionId")
                .unwrap()
                .text
                .clone(),
        );
    }
    assert_eq!(ids.len(), 20);
    let (_, body) = sim.ews(ROOM, &op).await;
    assert_eq!(
        response_code(&body, "Subscribe"),
        "ErrorExceededSubscriptionCount"
    );
    assert_eq!(sim.control().ews_subscriptions().len(), 20, "none made");
    // The budget is the mailbox's: another room still subscribes.
    let (_, body) = sim.ews("room2@sim.example", &op).await;
    assert_eq!(response_code(&body, "Subscribe"), "NoError");
    // A subscription that ended no longer counts.
    sim.control()
        .inject(Fault::DropEwsSubscription {
            subscription_id: ids[0].clone(),
        })
        .unwrap();
    let (_, body) = sim.ews(ROOM, &op).await;
    assert_eq!(response_code(&body, "Subscribe"), "NoError");
}

#[tokio::test]
async fn a_dropped_ews_subscription_sends_nothing_more() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let msg = sim.ews_subscribe(&rx.url("/ews"), 1, None).await;
    let id = msg.child("SubscriptionId").unwrap().text.clone();
    wait_pushes(sim.control(), 1).await;
    sim.control()
        .inject(Fault::DropEwsSubscription {
            subscription_id: id.clone(),
        })
        .unwrap();
    let before = rx.notifications("/ews").len();
    sim.control()
        .create_meeting(ROOM, meeting("Lost", 2, 10))
        .unwrap();
    // Three status periods pass without a word.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(rx.notifications("/ews").len(), before);
    let snap = &sim.control().ews_subscriptions()[0];
    assert!(!snap.alive);
    assert_eq!(snap.ended_by, Some(EwsEnd::Dropped));
    assert!(
        sim.control()
            .inject(Fault::DropEwsSubscription {
                subscription_id: id
            })
            .is_err()
    );
}

#[tokio::test]
async fn read_events_failed_pushes_an_error_message_that_the_project_parser_reads_and_ends_the_subscription()
 {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let msg = sim.ews_subscribe(&rx.url("/ews"), 1, None).await;
    let id = msg.child("SubscriptionId").unwrap().text.clone();
    wait_pushes(sim.control(), 1).await;
    let r = sim
        .http
        .post(sim.url("/_sim/faults"))
        .json(&json!({ "kind": "ewsReadEventsFailed", "subscriptionId": id }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let got = rx
        .wait_for("the error message", |r| {
            r.iter().any(|r| r.body.contains("ErrorReadEventsFailed"))
        })
        .await;
    let body = &got
        .iter()
        .find(|r| r.body.contains("ErrorReadEventsFailed"))
        .unwrap()
        .body;
    assert!(
        !body.contains("<m:Notification>"),
        "no Notification element"
    );
    let parsed = parse_send_notification(body.as_bytes()).unwrap();
    match &parsed.messages[0] {
        NotificationMessage::Error(e) => {
            assert_eq!(e.response_code, "ErrorReadEventsFailed");
            assert_eq!(e.subscription_id.as_deref(), Some(id.as_str()));
        }
        NotificationMessage::Notification(n) => panic!("{n:?}"),
    }
    let snap = &sim.control().ews_subscriptions()[0];
    assert!(!snap.alive);
    assert_eq!(snap.ended_by, Some(EwsEnd::ReadEventsFailed));
    let count = rx.notifications("/ews").len();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(rx.notifications("/ews").len(), count, "nothing after it");
}

#[tokio::test]
async fn expired_watermarks_are_refused_by_subscribe_and_create_no_subscription() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let first = sim.ews_subscribe(&rx.url("/a"), 30, None).await;
    let old = first.child("Watermark").unwrap().text.clone();
    sim.control().inject(Fault::ExpireEwsWatermarks).unwrap();
    let refused = sim.ews_subscribe(&rx.url("/b"), 30, Some(&old)).await;
    assert_eq!(refused.attr("ResponseClass"), Some("Error"));
    assert_eq!(
        refused.child("ResponseCode").unwrap().text,
        "ErrorInvalidWatermark"
    );
    assert_eq!(sim.control().ews_subscriptions().len(), 1);
    // A watermark issued after the fault works.
    let fresh = sim.ews_subscribe(&rx.url("/c"), 30, None).await;
    let new = fresh.child("Watermark").unwrap().text.clone();
    let again = sim.ews_subscribe(&rx.url("/d"), 30, Some(&new)).await;
    assert_eq!(again.attr("ResponseClass"), Some("Success"));
}

#[tokio::test]
async fn an_injected_throttle_can_send_a_fractional_or_http_date_retry_after() {
    let sim = Sim::start().await;
    let token = sim.token().await;
    let r = sim
        .http
        .post(sim.url("/_sim/faults"))
        .json(&json!({ "kind": "graphThrottle", "count": 1, "retryAfter": "1.5" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = sim
        .http
        .get(sim.url("/v1.0/subscriptions"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "1.5");
    let date = "Wed, 21 Oct 2026 07:28:00 GMT";
    sim.control()
        .inject(Fault::GraphThrottle {
            count: 1,
            retry_after_secs: 0,
            retry_after: Some(date.to_owned()),
        })
        .unwrap();
    let r = sim
        .http
        .get(sim.url("/v1.0/subscriptions"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["retry-after"], date);
    assert!(matches!(
        sim.control().inject(Fault::GraphThrottle {
            count: 1,
            retry_after_secs: 0,
            retry_after: Some("bad\nvalue".to_owned()),
        }),
        Err(SimError::InvalidFault(_))
    ));
}

// ---- recurring series --------------------------------------------------------------

/// An `m:ItemShape` with a base shape and additional `FieldURI`s.
fn item_shape(base: &str, fields: &[&str]) -> String {
    let additional: String = fields
        .iter()
        .map(|f| format!(r#"<t:FieldURI FieldURI="{f}"/>"#))
        .collect();
    let additional = if additional.is_empty() {
        String::new()
    } else {
        format!("<t:AdditionalProperties>{additional}</t:AdditionalProperties>")
    };
    format!("<m:ItemShape><t:BaseShape>{base}</t:BaseShape>{additional}</m:ItemShape>")
}

/// `GetItem` of `ids` with `shape`; the response messages in order.
async fn ews_get_items(sim: &Sim, shape: &str, ids: &[&str]) -> Vec<Node> {
    let ids: String = ids
        .iter()
        .map(|id| format!(r#"<t:ItemId Id="{id}"/>"#))
        .collect();
    let (status, body) = sim
        .ews(
            ROOM,
            &format!("<m:GetItem>{shape}<m:ItemIds>{ids}</m:ItemIds></m:GetItem>"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    body.find("ResponseMessages")
        .unwrap()
        .children_named("GetItemResponseMessage")
        .cloned()
        .collect()
}

/// The one calendar item `GetItem` returns for `id`.
async fn ews_get_item(sim: &Sim, shape: &str, id: &str) -> Node {
    let messages = ews_get_items(sim, shape, &[id]).await;
    messages[0].find("CalendarItem").unwrap().clone()
}

/// `FindItem` with a March 2026 `CalendarView` and `shape`; the calendar items.
async fn ews_find_view(sim: &Sim, shape: &str) -> Vec<Node> {
    let (status, body) = sim
        .ews(
            ROOM,
            &format!(
                r#"<m:FindItem Traversal="Shallow">{shape}<m:CalendarView StartDate="2026-03-01T00:00:00Z" EndDate="2026-04-01T00:00:00Z"/><m:ParentFolderIds><t:DistinguishedFolderId Id="calendar"/></m:ParentFolderIds></m:FindItem>"#
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    response_message(&body, "FindItem")
        .path(&["RootFolder", "Items"])
        .unwrap()
        .children_named("CalendarItem")
        .cloned()
        .collect()
}

fn child_names(node: &Node) -> Vec<&str> {
    node.children.iter().map(|c| c.local.as_str()).collect()
}

fn text_of<'a>(node: &'a Node, local: &str) -> &'a str {
    node.child(local)
        .map_or_else(|| panic!("no {local} in {node:#?}"), |n| n.text.as_str())
}

/// The Graph calendar view of March 2026.
async fn graph_view(sim: &Sim) -> Vec<Value> {
    let (status, body) = sim
        .graph_get(
            &sim.url(&format!(
                "/v1.0/users/{ROOM}/calendarView?{}",
                window_query()
            )),
            Some("odata.maxpagesize=100"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["value"].as_array().unwrap().clone()
}

async fn graph_event(sim: &Sim, id: &str) -> (StatusCode, Value) {
    sim.graph_get(&sim.url(&format!("/v1.0/users/{ROOM}/events/{id}")), None)
        .await
}

fn delta_start(sim: &Sim) -> String {
    sim.url(&format!(
        "/v1.0/users/{ROOM}/calendarView/delta?{}",
        window_query()
    ))
}

#[tokio::test]
async fn a_moved_occurrence_becomes_an_exception_with_its_original_start_and_keeps_its_id() {
    let sim = Sim::start().await;
    let c = sim.control();
    let master = c
        .create_series(ROOM, meeting("Daily", 2, 8), Recurrence::Daily { count: 5 })
        .unwrap();
    let before = c.occurrence_ids(ROOM, &master).unwrap();
    assert_eq!(before.len(), 5);
    let moved = c
        .move_occurrence(ROOM, &master, 2, at(4, 14), at(4, 15))
        .unwrap();
    assert_eq!(moved, before[2]);
    assert_eq!(c.occurrence_ids(ROOM, &master).unwrap(), before);

    let view = graph_view(&sim).await;
    assert_eq!(view.len(), 5);
    let exception = view.iter().find(|v| v["id"] == moved.as_str()).unwrap();
    assert_eq!(exception["type"], "exception");
    assert_eq!(exception["seriesMasterId"], master.as_str());
    assert_eq!(exception["originalStart"], "2026-03-04T08:00:00Z");
    assert_eq!(
        exception["start"]["dateTime"],
        "2026-03-04T14:00:00.0000000"
    );
    let occurrence = view.iter().find(|v| v["id"] == before[0].as_str()).unwrap();
    assert_eq!(occurrence["type"], "occurrence");
    assert_eq!(occurrence["originalStart"], "2026-03-02T08:00:00Z");
    assert!(view.iter().all(|v| v["type"] != "seriesMaster"));
    let (status, event) = graph_event(&sim, &moved).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(event["type"], "exception");

    let item = ews_get_item(&sim, &item_shape("Default", &[]), &moved).await;
    assert_eq!(text_of(&item, "CalendarItemType"), "Exception");
    assert_eq!(text_of(&item, "RecurrenceId"), "2026-03-04T08:00:00Z");
    assert_eq!(text_of(&item, "OriginalStart"), "2026-03-04T08:00:00Z");
    assert_eq!(text_of(&item, "Start"), "2026-03-04T14:00:00Z");
    assert_eq!(text_of(&item, "IsRecurring"), "true");
    let plain = ews_get_item(&sim, &item_shape("Default", &[]), &before[1]).await;
    assert_eq!(text_of(&plain, "CalendarItemType"), "Occurrence");
    assert_eq!(text_of(&plain, "RecurrenceId"), "2026-03-03T08:00:00Z");
    assert!(plain.child("OriginalStart").is_none());
}

#[tokio::test]
async fn every_occurrence_has_its_own_stable_ical_uid_and_the_master_carries_the_series_uid() {
    let sim = Sim::start().await;
    let c = sim.control();
    let master = c
        .create_series(
            ROOM,
            meeting("Weekly", 2, 8),
            Recurrence::Weekly { count: 4 },
        )
        .unwrap();
    let uids = |view: &[Value]| -> Vec<String> {
        view.iter()
            .map(|v| v["iCalUId"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = uids(&graph_view(&sim).await);
    let mut distinct = first.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "{first:?}");
    c.move_occurrence(ROOM, &master, 1, at(10, 12), at(10, 13))
        .unwrap();
    c.cancel_occurrence(ROOM, &master, 3).unwrap();
    assert_eq!(uids(&graph_view(&sim).await), first);

    let (_, graph_master) = graph_event(&sim, &master).await;
    assert_eq!(graph_master["type"], "seriesMaster");
    let series_uid = graph_master["iCalUId"].as_str().unwrap().to_owned();
    assert!(!first.contains(&series_uid));
    let ews_master = ews_get_item(&sim, &item_shape("IdOnly", &["calendar:UID"]), &master).await;
    assert_eq!(text_of(&ews_master, "UID"), series_uid);
    for id in c.occurrence_ids(ROOM, &master).unwrap() {
        let occurrence = ews_get_item(&sim, &item_shape("IdOnly", &["calendar:UID"]), &id).await;
        assert_eq!(text_of(&occurrence, "UID"), series_uid);
    }
}

#[tokio::test]
async fn the_series_master_is_read_by_id_with_its_recurrence_in_graph_and_ews() {
    let sim = Sim::start().await;
    let c = sim.control();
    // 2 March 2026 is a Monday.
    let master = c
        .create_series(
            ROOM,
            meeting("Weekly", 2, 8),
            Recurrence::Weekly { count: 3 },
        )
        .unwrap();
    let (status, event) = graph_event(&sim, &master).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(event["type"], "seriesMaster");
    assert!(event.get("originalStart").is_none());
    assert_eq!(event["seriesMasterId"], Value::Null);
    let pattern = &event["recurrence"]["pattern"];
    assert_eq!(pattern["type"], "weekly");
    assert_eq!(pattern["interval"], 1);
    assert_eq!(pattern["daysOfWeek"], json!(["monday"]));
    let range = &event["recurrence"]["range"];
    assert_eq!(range["type"], "numbered");
    assert_eq!(range["startDate"], "2026-03-02");
    assert_eq!(range["numberOfOccurrences"], 3);

    let default = ews_get_item(&sim, &item_shape("Default", &[]), &master).await;
    assert_eq!(text_of(&default, "CalendarItemType"), "RecurringMaster");
    assert!(default.child("Recurrence").is_none());
    let all = ews_get_item(&sim, &item_shape("AllProperties", &[]), &master).await;
    let recurrence = all.child("Recurrence").unwrap();
    assert_eq!(
        recurrence
            .path(&["WeeklyRecurrence", "DaysOfWeek"])
            .unwrap()
            .text,
        "Monday"
    );
    assert_eq!(
        recurrence
            .path(&["NumberedRecurrence", "NumberOfOccurrences"])
            .unwrap()
            .text,
        "3"
    );
    assert_eq!(
        all.path(&["FirstOccurrence", "Start"]).unwrap().text,
        "2026-03-02T08:00:00Z"
    );
    assert_eq!(
        all.path(&["LastOccurrence", "Start"]).unwrap().text,
        "2026-03-16T08:00:00Z"
    );
    assert!(all.child("ModifiedOccurrences").is_none());
    assert!(all.child("DeletedOccurrences").is_none());
    let asked = ews_get_item(
        &sim,
        &item_shape("IdOnly", &["calendar:Recurrence"]),
        &master,
    )
    .await;
    assert_eq!(child_names(&asked), ["ItemId", "Recurrence"]);
}

#[tokio::test]
async fn a_cancelled_occurrence_stays_in_the_views_as_a_cancelled_exception() {
    let sim = Sim::start().await;
    let c = sim.control();
    let master = c
        .create_series(ROOM, meeting("Daily", 2, 8), Recurrence::Daily { count: 3 })
        .unwrap();
    let cancelled = c.cancel_occurrence(ROOM, &master, 1).unwrap();
    let view = graph_view(&sim).await;
    assert_eq!(view.len(), 3);
    for v in &view {
        let is_it = v["id"] == cancelled.as_str();
        assert_eq!(v["isCancelled"], is_it, "{v}");
        assert_eq!(v["type"], if is_it { "exception" } else { "occurrence" });
    }
    let items = ews_find_view(
        &sim,
        &item_shape(
            "IdOnly",
            &["calendar:IsCancelled", "calendar:CalendarItemType"],
        ),
    )
    .await;
    let flags: Vec<(&str, &str)> = items
        .iter()
        .map(|i| (text_of(i, "CalendarItemType"), text_of(i, "IsCancelled")))
        .collect();
    assert_eq!(
        flags,
        [
            ("Occurrence", "false"),
            ("Exception", "true"),
            ("Occurrence", "false")
        ]
    );
    let all = ews_get_item(&sim, &item_shape("AllProperties", &[]), &master).await;
    let modified: Vec<&Node> = all
        .child("ModifiedOccurrences")
        .unwrap()
        .children_named("Occurrence")
        .collect();
    assert_eq!(modified.len(), 1);
    assert_eq!(
        modified[0].child("ItemId").unwrap().attr("Id"),
        Some(cancelled.as_str())
    );
    assert_eq!(
        text_of(modified[0], "OriginalStart"),
        "2026-03-03T08:00:00Z"
    );
}

#[tokio::test]
async fn cancelling_a_series_master_cancels_every_occurrence() {
    let sim = Sim::start().await;
    let c = sim.control();
    let master = c
        .create_series(ROOM, meeting("Daily", 2, 8), Recurrence::Daily { count: 3 })
        .unwrap();
    c.cancel_meeting(ROOM, &master).unwrap();
    let view = graph_view(&sim).await;
    assert_eq!(view.len(), 3);
    assert!(view.iter().all(|v| v["isCancelled"] == true), "{view:#?}");
}

#[tokio::test]
async fn a_deleted_occurrence_leaves_the_views_and_the_master_lists_it() {
    let sim = Sim::start().await;
    let c = sim.control();
    let master = c
        .create_series(ROOM, meeting("Daily", 2, 8), Recurrence::Daily { count: 4 })
        .unwrap();
    let gone = c.delete_occurrence(ROOM, &master, 2).unwrap();
    let ids = c.occurrence_ids(ROOM, &master).unwrap();
    assert_eq!(ids.len(), 3);
    assert!(!ids.contains(&gone));
    let view = graph_view(&sim).await;
    assert_eq!(view.len(), 3);
    assert!(view.iter().all(|v| v["id"] != gone.as_str()));
    assert_eq!(
        ews_find_view(&sim, &item_shape("IdOnly", &[])).await.len(),
        3
    );
    let (status, _) = graph_event(&sim, &gone).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let messages = ews_get_items(&sim, &item_shape("IdOnly", &[]), &[&gone]).await;
    assert_eq!(
        text_of(&messages[0], "ResponseCode"),
        "ErrorCalendarOccurrenceIsDeletedFromRecurrence"
    );
    let all = ews_get_item(&sim, &item_shape("AllProperties", &[]), &master).await;
    let deleted: Vec<&str> = all
        .child("DeletedOccurrences")
        .unwrap()
        .children_named("DeletedOccurrence")
        .map(|d| text_of(d, "Start"))
        .collect();
    assert_eq!(deleted, ["2026-03-04T08:00:00Z"]);
    assert!(c.delete_occurrence(ROOM, &master, 2).is_err());
}

#[tokio::test]
async fn delta_reports_changed_occurrences_as_instances_and_deleted_or_cut_ones_as_removed() {
    let sim = Sim::start().await;
    let c = sim.control();
    let master = c
        .create_series(ROOM, meeting("Daily", 2, 8), Recurrence::Daily { count: 6 })
        .unwrap();
    c.until_attended().await;
    let ids = c.occurrence_ids(ROOM, &master).unwrap();
    let (values, link, _) = delta_round(&sim, &delta_start(&sim), 10).await;
    assert_eq!(values.len(), 6);
    assert!(values.iter().all(|v| v["type"] == "occurrence"));

    c.move_occurrence(ROOM, &master, 0, at(2, 12), at(2, 13))
        .unwrap();
    c.cancel_occurrence(ROOM, &master, 1).unwrap();
    c.delete_occurrence(ROOM, &master, 2).unwrap();
    let (values, link, _) = delta_round(&sim, &link, 10).await;
    assert_eq!(values.len(), 3, "{values:#?}");
    let by_id = |id: &str| values.iter().find(|v| v["id"] == id).unwrap().clone();
    assert_eq!(by_id(&ids[0])["type"], "exception");
    assert_eq!(
        by_id(&ids[0])["start"]["dateTime"],
        "2026-03-02T12:00:00.0000000"
    );
    assert_eq!(by_id(&ids[1])["isCancelled"], true);
    assert_eq!(by_id(&ids[2])["@removed"]["reason"], "deleted");

    c.end_series(ROOM, &master, 4).unwrap();
    let (values, link, _) = delta_round(&sim, &link, 10).await;
    let removed: Vec<&str> = values
        .iter()
        .filter(|v| v.get("@removed").is_some())
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(removed, [ids[4].as_str(), ids[5].as_str()]);
    assert_eq!(values.len(), 2, "{values:#?}");
    let (values, _, _) = delta_round(&sim, &link, 10).await;
    assert!(values.is_empty(), "{values:#?}");
}

#[tokio::test]
async fn ending_a_series_keeps_its_first_occurrences_and_switches_the_range_to_an_end_date() {
    let sim = Sim::start().await;
    let c = sim.control();
    let master = c
        .create_series(ROOM, meeting("Daily", 2, 8), Recurrence::Daily { count: 5 })
        .unwrap();
    let before = c.occurrence_ids(ROOM, &master).unwrap();
    c.move_occurrence(ROOM, &master, 4, at(6, 12), at(6, 13))
        .unwrap();
    c.end_series(ROOM, &master, 2).unwrap();
    assert_eq!(c.occurrence_ids(ROOM, &master).unwrap(), before[..2]);
    assert_eq!(graph_view(&sim).await.len(), 2);
    let (_, event) = graph_event(&sim, &master).await;
    let range = &event["recurrence"]["range"];
    assert_eq!(range["type"], "endDate");
    assert_eq!(range["endDate"], "2026-03-03");
    let all = ews_get_item(&sim, &item_shape("AllProperties", &[]), &master).await;
    assert_eq!(
        all.path(&["Recurrence", "EndDateRecurrence", "EndDate"])
            .unwrap()
            .text,
        "2026-03-03Z"
    );
    assert!(all.child("ModifiedOccurrences").is_none());
    assert!(matches!(
        c.end_series(ROOM, &master, 3),
        Err(SimError::InvalidMeeting(_))
    ));
    assert!(matches!(
        c.end_series(ROOM, &master, 0),
        Err(SimError::InvalidMeeting(_))
    ));
}

#[tokio::test]
async fn occurrence_operations_refuse_unknown_occurrences_and_moves_across_a_neighbour() {
    let sim = Sim::start().await;
    let c = sim.control();
    let single = c.create_meeting(ROOM, meeting("One-off", 2, 9)).unwrap();
    let master = c
        .create_series(ROOM, meeting("Daily", 2, 8), Recurrence::Daily { count: 3 })
        .unwrap();
    assert!(matches!(
        c.move_occurrence(ROOM, &master, 3, at(9, 8), at(9, 9)),
        Err(SimError::UnknownItem(_))
    ));
    assert!(matches!(
        c.cancel_occurrence(ROOM, "nope", 0),
        Err(SimError::UnknownItem(_))
    ));
    assert!(matches!(
        c.delete_occurrence(ROOM, &single, 0),
        Err(SimError::InvalidMeeting(_))
    ));
    assert!(matches!(
        c.occurrence_ids(ROOM, &single),
        Err(SimError::InvalidMeeting(_))
    ));
    // Occurrence 0 cannot jump past occurrence 1 (3 March, 08:00).
    assert!(matches!(
        c.move_occurrence(ROOM, &master, 0, at(3, 9), at(3, 10)),
        Err(SimError::InvalidMeeting(_))
    ));
    assert!(matches!(
        c.move_occurrence(ROOM, &master, 1, at(3, 10), at(3, 9)),
        Err(SimError::InvalidMeeting(_))
    ));
    // A refused change leaves the series untouched.
    let view = graph_view(&sim).await;
    assert!(view.iter().all(|v| v["type"] != "exception"), "{view:#?}");
}

#[tokio::test]
async fn the_existing_meeting_operations_act_on_one_occurrence_when_given_its_id() {
    let sim = Sim::start().await;
    let c = sim.control();
    let master = c
        .create_series(ROOM, meeting("Daily", 2, 8), Recurrence::Daily { count: 3 })
        .unwrap();
    let ids = c.occurrence_ids(ROOM, &master).unwrap();
    c.move_meeting(ROOM, &ids[0], at(2, 10), at(2, 11)).unwrap();
    c.cancel_meeting(ROOM, &ids[1]).unwrap();
    c.delete_meeting(ROOM, &ids[2]).unwrap();
    let view = graph_view(&sim).await;
    assert_eq!(view.len(), 2);
    assert_eq!(view[0]["type"], "exception");
    assert_eq!(view[0]["start"]["dateTime"], "2026-03-02T10:00:00.0000000");
    assert_eq!(view[1]["isCancelled"], true);
    assert_eq!(c.occurrence_ids(ROOM, &master).unwrap(), ids[..2]);
}

#[tokio::test]
async fn sync_folder_items_reports_only_the_master_when_an_occurrence_changes() {
    let sim = Sim::start().await;
    let c = sim.control();
    let master = c
        .create_series(ROOM, meeting("Daily", 2, 8), Recurrence::Daily { count: 3 })
        .unwrap();
    let sync = |state: &str| {
        format!(
            r#"<m:SyncFolderItems>{}<m:SyncFolderId><t:DistinguishedFolderId Id="calendar"/></m:SyncFolderId><m:SyncState>{state}</m:SyncState><m:MaxChangesReturned>100</m:MaxChangesReturned></m:SyncFolderItems>"#,
            item_shape("IdOnly", &["calendar:CalendarItemType"])
        )
    };
    let (_, body) = sim.ews(ROOM, &sync("")).await;
    let msg = response_message(&body, "SyncFolderItems");
    let creates: Vec<&Node> = msg.child("Changes").unwrap().children.iter().collect();
    assert_eq!(creates.len(), 1);
    assert_eq!(creates[0].local, "Create");
    let state = msg.child("SyncState").unwrap().text.clone();

    c.move_occurrence(ROOM, &master, 1, at(3, 12), at(3, 13))
        .unwrap();
    c.delete_occurrence(ROOM, &master, 2).unwrap();
    let (_, body) = sim.ews(ROOM, &sync(&state)).await;
    let changes = response_message(&body, "SyncFolderItems")
        .child("Changes")
        .unwrap();
    assert_eq!(child_names(changes), ["Update"]);
    let item = changes.find("CalendarItem").unwrap();
    assert_eq!(
        item.child("ItemId").unwrap().attr("Id"),
        Some(master.as_str())
    );
    assert_eq!(text_of(item, "CalendarItemType"), "RecurringMaster");
}

#[tokio::test]
async fn occurrence_changes_push_an_update_of_the_master_to_graph_and_ews() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let (status, _) = sim.create_subscription(&subscription_body(&rx, 4200)).await;
    assert_eq!(status, StatusCode::CREATED);
    sim.ews_subscribe(&rx.url("/ews"), 1, None).await;
    let c = sim.control();
    let master = c
        .create_series(ROOM, meeting("Daily", 2, 8), Recurrence::Daily { count: 3 })
        .unwrap();
    c.move_occurrence(ROOM, &master, 1, at(3, 12), at(3, 13))
        .unwrap();
    // The booking itself yields one item modification; the move yields the second.
    let ews_modified = |r: &[Received]| -> Vec<String> {
        r.iter()
            .filter(|r| r.path == "/ews")
            .flat_map(|r| notification_of(&r.body).events)
            .filter(|e| e.kind == EventKind::Modified)
            .filter_map(|e| e.item_id().map(str::to_owned))
            .collect()
    };
    let got = rx
        .wait_for("a Graph update and an EWS modification", |r| {
            r.iter()
                .any(|r| r.path == "/graph" && r.body.contains("\"updated\""))
                && ews_modified(r).len() >= 2
        })
        .await;
    let update = got
        .iter()
        .filter(|r| r.path == "/graph" && r.query.is_empty())
        .flat_map(|r| parse_notification_collection(r.body.as_bytes()).unwrap())
        .find(|n| n.kind == GraphKind::Updated)
        .unwrap();
    assert_eq!(update.resource_id.as_deref(), Some(master.as_str()));
    let modified = ews_modified(&got);
    assert!(modified.iter().all(|id| *id == master), "{modified:?}");
}

#[tokio::test]
async fn the_http_control_api_moves_cancels_and_deletes_occurrences_and_ends_series() {
    let sim = Sim::start().await;
    let http = &sim.http;
    let r = http
        .post(sim.url(&format!("/_sim/rooms/{ROOM}/series")))
        .json(&json!({
            "subject": "Daily", "organizer": "alice@sim.example",
            "start": "2026-03-02T08:00:00Z", "end": "2026-03-02T09:00:00Z",
            "recurrence": { "pattern": "daily", "count": 5 }
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let master = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let occurrences = sim.url(&format!("/_sim/rooms/{ROOM}/series/{master}/occurrences"));
    let ids: Value = http
        .get(&occurrences)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<String> = ids["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 5);

    let r = http
        .patch(format!("{occurrences}/0"))
        .json(&json!({ "start": "2026-03-02T12:00:00Z", "end": "2026-03-02T13:00:00Z" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], ids[0].as_str());
    let r = http
        .patch(format!("{occurrences}/1"))
        .json(&json!({ "cancel": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["id"], ids[1].as_str());
    let r = http
        .delete(format!("{occurrences}/2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], ids[2].as_str());
    let r = http
        .post(sim.url(&format!("/_sim/rooms/{ROOM}/series/{master}/end")))
        .json(&json!({ "count": 4 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = http
        .delete(format!("{occurrences}/4"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let view = graph_view(&sim).await;
    let kinds: Vec<(&str, bool)> = view
        .iter()
        .map(|v| (v["type"].as_str().unwrap(), v["isCancelled"] == true))
        .collect();
    assert_eq!(
        kinds,
        [
            ("exception", false),
            ("exception", true),
            ("occurrence", false)
        ]
    );
}

// ---- delta generations ---------------------------------------------------------------

#[tokio::test]
async fn only_the_newest_three_delta_generations_stay_valid_and_older_ones_get_410() {
    let sim = Sim::start().await;
    sim.control()
        .create_meeting(ROOM, meeting("A", 2, 9))
        .unwrap();
    sim.control().until_attended().await;
    let (_, link1, _) = delta_round(&sim, &delta_start(&sim), 10).await;
    let (_, link2, _) = delta_round(&sim, &link1, 10).await;
    let (_, link3, _) = delta_round(&sim, &link2, 10).await;
    // Generations 2, 3 and 4 remain; the first has died.
    let (_, link4, _) = delta_round(&sim, &link3, 10).await;
    let (status, body) = sim.graph_get(&link1, None).await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(body["error"]["code"], "SyncStateNotFound");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("The sync state generation is not found; generation=1;"),
        "{message}"
    );
    assert!(message.contains("[highest=4]"), "{message}");
    // An older link that is still kept can be used again (a client retrying a round)...
    let (values, _, _) = delta_round(&sim, &link2, 10).await;
    assert!(values.is_empty());
    // ...which issues generation 5, so generation 2 now dies too.
    let (status, _) = sim.graph_get(&link2, None).await;
    assert_eq!(status, StatusCode::GONE);
    let (status, _) = sim.graph_get(&link4, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_next_link_can_be_fetched_again_until_its_generation_dies() {
    let sim = Sim::start().await;
    for day in 2..6 {
        sim.control()
            .create_meeting(ROOM, meeting("M", day, 9))
            .unwrap();
    }
    let (status, first) = sim
        .graph_get(&delta_start(&sim), Some("odata.maxpagesize=2"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let next = first["@odata.nextLink"].as_str().unwrap().to_owned();
    let (_, again1) = sim.graph_get(&next, None).await;
    let (_, again2) = sim.graph_get(&next, None).await;
    assert_eq!(again1, again2);
    let link = again1["@odata.deltaLink"].as_str().unwrap().to_owned();
    let (_, link, _) = delta_round(&sim, &link, 10).await;
    let (_, link, _) = delta_round(&sim, &link, 10).await;
    let (status, _) = sim.graph_get(&next, None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "generation 1 is still among the last three"
    );
    delta_round(&sim, &link, 10).await;
    let (status, body) = sim.graph_get(&next, None).await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(body["error"]["code"], "SyncStateNotFound");
}

#[tokio::test]
async fn unknown_skip_and_delta_tokens_get_410_sync_state_not_found() {
    let sim = Sim::start().await;
    for query in [
        "$skiptoken=nope",
        "$deltatoken=nope",
        "$deltatoken=00000000000000000000000000000000ffffffff0000000000000001",
    ] {
        let (status, body) = sim
            .graph_get(
                &sim.url(&format!("/v1.0/users/{ROOM}/calendarView/delta?{query}")),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::GONE, "{query}");
        assert_eq!(body["error"]["code"], "SyncStateNotFound");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("The sync state generation is not found; generation=")
        );
    }
    let (status, body) = sim
        .graph_get(
            &sim.url(&format!("/v1.0/users/{ROOM}/calendarView?$skiptoken=nope")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(body["error"]["code"], "SyncStateNotFound");
}

#[tokio::test]
async fn the_odata_function_spelling_of_delta_is_served_with_page_size_preferences() {
    let sim = Sim::start().await;
    for day in 2..5 {
        sim.control()
            .create_meeting(ROOM, meeting("M", day, 9))
            .unwrap();
    }
    sim.control().until_attended().await;
    let token = sim.token().await;
    let r = sim
        .http
        .get(sim.url(&format!(
            "/v1.0/users/{ROOM}/calendarView/delta()?{}",
            window_query()
        )))
        .bearer_auth(&token)
        .header("Prefer", "odata.maxpagesize=2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()
            .get("preference-applied")
            .and_then(|v| v.to_str().ok()),
        Some("odata.maxpagesize=2")
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["value"].as_array().unwrap().len(), 2);
    let next = body["@odata.nextLink"].as_str().unwrap().to_owned();
    let (values, link, _) = delta_round(&sim, &next, 2).await;
    assert_eq!(values.len(), 1);
    sim.control()
        .create_meeting(ROOM, meeting("N", 6, 9))
        .unwrap();
    sim.control().until_attended().await;
    let (values, _, _) = delta_round(&sim, &link, 2).await;
    assert_eq!(values.len(), 1);
    assert_eq!(values[0]["subject"], "N");
}

// ---- EWS item shapes -----------------------------------------------------------------

#[tokio::test]
async fn get_item_with_id_only_returns_the_item_id_plus_only_the_listed_properties() {
    let sim = Sim::start().await;
    let id = sim
        .control()
        .create_meeting(ROOM, meeting("Shaped", 2, 10))
        .unwrap();
    let bare = ews_get_item(&sim, &item_shape("IdOnly", &[]), &id).await;
    assert_eq!(child_names(&bare), ["ItemId"]);
    let listed = ews_get_item(
        &sim,
        &item_shape(
            "IdOnly",
            &[
                "calendar:End",
                "item:Subject",
                "calendar:Organizer",
                "item:NotAProperty",
            ],
        ),
        &id,
    )
    .await;
    // Schema order, whatever the order asked in; unknown names are ignored.
    assert_eq!(
        child_names(&listed),
        ["ItemId", "Subject", "End", "Organizer"]
    );
    assert_eq!(
        listed
            .path(&["Organizer", "Mailbox", "EmailAddress"])
            .unwrap()
            .text,
        "alice@sim.example"
    );
    let full = ews_get_item(&sim, &item_shape("AllProperties", &[]), &id).await;
    for name in [
        "ParentFolderId",
        "Subject",
        "LastModifiedTime",
        "UID",
        "Start",
        "End",
        "IsAllDayEvent",
        "IsCancelled",
        "IsRecurring",
        "CalendarItemType",
        "Organizer",
        "Location",
        "AppointmentSequenceNumber",
    ] {
        assert!(full.child(name).is_some(), "{name} missing: {full:#?}");
    }
    assert!(full.child("RecurrenceId").is_none());
    assert!(full.child("Recurrence").is_none());
}

#[tokio::test]
async fn the_calendar_fields_the_worker_asks_for_all_come_back_on_an_exception() {
    let sim = Sim::start().await;
    let c = sim.control();
    let master = c
        .create_series(ROOM, meeting("Daily", 2, 8), Recurrence::Daily { count: 3 })
        .unwrap();
    let id = c
        .move_occurrence(ROOM, &master, 1, at(3, 12), at(3, 13))
        .unwrap();
    let fields = [
        "item:Subject",
        "item:ParentFolderId",
        "item:LastModifiedTime",
        "calendar:UID",
        "calendar:Start",
        "calendar:End",
        "calendar:IsAllDayEvent",
        "calendar:IsCancelled",
        "calendar:CalendarItemType",
        "calendar:Organizer",
        "calendar:Location",
        "calendar:IsRecurring",
        "calendar:RecurrenceId",
        "calendar:OriginalStart",
        "calendar:AppointmentSequenceNumber",
    ];
    let item = ews_get_item(&sim, &item_shape("IdOnly", &fields), &id).await;
    assert_eq!(
        child_names(&item),
        [
            "ItemId",
            "ParentFolderId",
            "Subject",
            "LastModifiedTime",
            "UID",
            "RecurrenceId",
            "Start",
            "End",
            "OriginalStart",
            "IsAllDayEvent",
            "Location",
            "IsCancelled",
            "IsRecurring",
            "CalendarItemType",
            "Organizer",
            "AppointmentSequenceNumber"
        ]
    );
    assert_eq!(text_of(&item, "AppointmentSequenceNumber"), "1");
}

#[tokio::test]
async fn find_item_gives_the_organizer_name_but_never_its_address_whatever_the_shape() {
    let sim = Sim::start().await;
    let c = sim.control();
    c.create_meeting(ROOM, meeting("One-off", 3, 9)).unwrap();
    c.create_series(ROOM, meeting("Daily", 2, 8), Recurrence::Daily { count: 2 })
        .unwrap();
    for shape in [
        item_shape("IdOnly", &["calendar:Organizer"]),
        item_shape("Default", &[]),
        item_shape("AllProperties", &[]),
    ] {
        let items = ews_find_view(&sim, &shape).await;
        assert_eq!(items.len(), 3);
        for item in &items {
            let mailbox = item.path(&["Organizer", "Mailbox"]).unwrap();
            assert_eq!(child_names(mailbox), ["Name"], "{shape}");
            assert_eq!(mailbox.child("Name").unwrap().text, "Alice");
        }
    }
    // Without a CalendarView FindItem lists masters, still without series properties.
    let (_, body) = sim
        .ews(
            ROOM,
            &format!(
                r#"<m:FindItem Traversal="Shallow">{}<m:ParentFolderIds><t:DistinguishedFolderId Id="calendar"/></m:ParentFolderIds></m:FindItem>"#,
                item_shape("AllProperties", &[])
            ),
        )
        .await;
    let items: Vec<&Node> = response_message(&body, "FindItem")
        .path(&["RootFolder", "Items"])
        .unwrap()
        .children_named("CalendarItem")
        .collect();
    let master = items
        .iter()
        .find(|i| text_of(i, "CalendarItemType") == "RecurringMaster")
        .unwrap();
    assert!(master.child("Recurrence").is_none());
    assert!(master.child("FirstOccurrence").is_none());
    assert!(master.find("EmailAddress").is_none());
}

#[tokio::test]
async fn sync_folder_items_with_id_only_returns_ids_and_the_requested_properties() {
    let sim = Sim::start().await;
    sim.control()
        .create_meeting(ROOM, meeting("Synced", 2, 9))
        .unwrap();
    let sync = |shape: &str| {
        format!(
            r#"<m:SyncFolderItems>{shape}<m:SyncFolderId><t:DistinguishedFolderId Id="calendar"/></m:SyncFolderId><m:MaxChangesReturned>10</m:MaxChangesReturned></m:SyncFolderItems>"#
        )
    };
    let (_, body) = sim.ews(ROOM, &sync(&item_shape("IdOnly", &[]))).await;
    let item = response_message(&body, "SyncFolderItems")
        .find("CalendarItem")
        .unwrap();
    assert_eq!(child_names(item), ["ItemId"]);
    let (_, body) = sim
        .ews(ROOM, &sync(&item_shape("IdOnly", &["item:Subject"])))
        .await;
    let item = response_message(&body, "SyncFolderItems")
        .find("CalendarItem")
        .unwrap();
    assert_eq!(child_names(item), ["ItemId", "Subject"]);
    assert_eq!(text_of(item, "Subject"), "Synced");
}

#[tokio::test]
async fn an_item_shape_is_required_and_its_base_shape_must_be_known() {
    let sim = Sim::start().await;
    let id = sim
        .control()
        .create_meeting(ROOM, meeting("M", 2, 9))
        .unwrap();
    for op in [
        format!(r#"<m:GetItem><m:ItemIds><t:ItemId Id="{id}"/></m:ItemIds></m:GetItem>"#),
        format!(
            r#"<m:GetItem><m:ItemShape><t:BaseShape>Everything</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="{id}"/></m:ItemIds></m:GetItem>"#
        ),
        r#"<m:SyncFolderItems><m:SyncFolderId><t:DistinguishedFolderId Id="calendar"/></m:SyncFolderId><m:MaxChangesReturned>10</m:MaxChangesReturned></m:SyncFolderItems>"#.to_owned(),
    ] {
        let (status, body) = sim.ews(ROOM, &op).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{op}");
        assert_eq!(fault_code(&body), "a:ErrorSchemaValidation", "{op}");
    }
}

// ---- id formats and latency --------------------------------------------------

const IMMUTABLE: &str = r#"IdType="ImmutableId""#;

#[tokio::test]
async fn control_graph_id_gives_the_rest_id_or_a_distinct_stable_immutable_id() {
    let sim = Sim::start().await;
    let c = sim.control();
    let single = c.create_meeting(ROOM, meeting("M", 2, 9)).unwrap();
    let master = c
        .create_series(ROOM, meeting("Daily", 3, 8), Recurrence::Daily { count: 2 })
        .unwrap();
    let occurrence = c.occurrence_ids(ROOM, &master).unwrap()[1].clone();
    // The simulator's EWS ids hold no `+` or `/`, so their URL-safe form is the same text.
    assert_eq!(c.graph_id(&single, false), single);
    assert_eq!(
        c.graph_id(
            "AAMkAGZpeHR1cmUtcm9vbS1hAEYAAAAAbWVldGluZy0xMDAx+/AAA=",
            false
        ),
        "AAMkAGZpeHR1cmUtcm9vbS1hAEYAAAAAbWVldGluZy0xMDAx-_AAA="
    );
    let immutable: Vec<String> = [&single, &master, &occurrence]
        .iter()
        .map(|id| c.graph_id(id, true))
        .collect();
    for (id, graph) in [&single, &master, &occurrence].iter().zip(&immutable) {
        assert_ne!(graph, *id);
        assert!(graph.starts_with("AAkALg"), "{graph}");
        assert_eq!(*graph, c.graph_id(id, true), "stable");
    }
    assert_ne!(
        immutable[1], immutable[2],
        "an occurrence is not its master"
    );
}

#[tokio::test]
async fn graph_answers_rest_ids_by_default_and_immutable_ids_when_the_request_asks() {
    let sim = Sim::start().await;
    let c = sim.control();
    let single = c.create_meeting(ROOM, meeting("M", 2, 9)).unwrap();
    let master = c
        .create_series(ROOM, meeting("Daily", 3, 8), Recurrence::Daily { count: 2 })
        .unwrap();
    let occurrences = c.occurrence_ids(ROOM, &master).unwrap();
    let view = |prefer: Option<&'static str>| {
        let url = sim.url(&format!(
            "/v1.0/users/{ROOM}/calendarView?{}",
            window_query()
        ));
        let sim = &sim;
        async move {
            let (status, body) = sim.graph_get(&url, prefer).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["value"].as_array().unwrap().clone()
        }
    };
    let rest = view(None).await;
    let rest_ids: Vec<&str> = rest.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(
        rest_ids,
        [
            c.graph_id(&single, false),
            c.graph_id(&occurrences[0], false),
            c.graph_id(&occurrences[1], false)
        ]
    );
    let immutable = view(Some(IMMUTABLE)).await;
    let ids: Vec<&str> = immutable
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            c.graph_id(&single, true),
            c.graph_id(&occurrences[0], true),
            c.graph_id(&occurrences[1], true)
        ]
    );
    assert_eq!(immutable[1]["seriesMasterId"], c.graph_id(&master, true));
    assert!(immutable[0]["seriesMasterId"].is_null());

    // Any format names the event in a path; the answer is in the format asked for.
    for path_id in [
        single.clone(),
        c.graph_id(&single, false),
        c.graph_id(&single, true),
    ] {
        let url = sim.url(&format!("/v1.0/users/{ROOM}/events/{path_id}"));
        let (status, body) = sim.graph_get(&url, Some(IMMUTABLE)).await;
        assert_eq!(status, StatusCode::OK, "{path_id}: {body}");
        assert_eq!(body["id"], c.graph_id(&single, true));
        let (_, body) = sim.graph_get(&url, None).await;
        assert_eq!(body["id"], c.graph_id(&single, false));
    }
    let url = sim.url(&format!(
        "/v1.0/users/{ROOM}/events/{}",
        c.graph_id(&master, true)
    ));
    let (status, body) = sim.graph_get(&url, Some(IMMUTABLE)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["type"], "seriesMaster");
    assert_eq!(body["id"], c.graph_id(&master, true));

    // Delta: changed and removed entries alike.
    let (status, first) = sim
        .graph_get(
            &delta_start(&sim),
            Some(r#"IdType="ImmutableId", odata.maxpagesize=100"#),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["value"][0]["id"], c.graph_id(&single, true));
    let link = first["@odata.deltaLink"].as_str().unwrap().to_owned();
    c.delete_meeting(ROOM, &single).unwrap();
    c.delete_occurrence(ROOM, &master, 1).unwrap();
    let (_, round) = sim.graph_get(&link, Some(IMMUTABLE)).await;
    let removed: Vec<&str> = round["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v.get("@removed").is_some())
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        removed,
        [c.graph_id(&single, true), c.graph_id(&occurrences[1], true)]
    );
}

#[tokio::test]
async fn notifications_name_items_in_the_id_format_their_subscription_was_created_with() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let token = sim.token().await;
    // Two subscriptions of one room need different change-type sets.
    for (change_type, path, prefer) in [
        ("created", "/immutable", Some(IMMUTABLE)),
        ("created,updated", "/rest", None),
    ] {
        let mut body = subscription_body(&rx, 4200);
        body["changeType"] = json!(change_type);
        body["notificationUrl"] = json!(rx.url(path));
        let mut request = sim
            .http
            .post(sim.url("/v1.0/subscriptions"))
            .bearer_auth(&token)
            .json(&body);
        if let Some(p) = prefer {
            request = request.header("Prefer", p);
        }
        assert_eq!(request.send().await.unwrap().status(), StatusCode::CREATED);
    }
    let c = sim.control();
    let id = c.create_meeting(ROOM, meeting("M", 2, 9)).unwrap();
    rx.wait_for("both notifications", |r| {
        ["/immutable", "/rest"].iter().all(|p| {
            r.iter()
                .any(|r| r.path == *p && !r.query.contains("validationToken"))
        })
    })
    .await;
    let object_id = c.room_object_id(ROOM).unwrap();
    for (path, immutable) in [("/immutable", true), ("/rest", false)] {
        let got: Value = serde_json::from_str(&rx.notifications(path)[0].body).unwrap();
        let graph = c.graph_id(&id, immutable);
        let n = &got["value"][0];
        assert_eq!(n["changeType"], "created");
        assert_eq!(n["resource"], format!("Users/{object_id}/Events/{graph}"));
        assert_eq!(n["resourceData"]["id"], graph.as_str());
        let parsed = parse_notification_collection(got.to_string().as_bytes()).unwrap();
        assert!(
            parsed
                .iter()
                .all(|p| p.resource_id.as_deref() == Some(graph.as_str())),
            "the project parser reads it: {parsed:?}"
        );
    }
}

/// Sends a GET of each path at once and returns their statuses and `Retry-After`s, in order.
async fn concurrently(sim: &Sim, paths: &[String]) -> Vec<(StatusCode, Option<String>)> {
    let token = sim.token().await;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, path) in paths.iter().enumerate() {
        let request = sim.http.get(sim.url(path)).bearer_auth(&token);
        tasks.spawn(async move {
            let r = request.send().await.unwrap();
            let retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            (i, r.status(), retry_after)
        });
    }
    let mut out = tasks.join_all().await;
    out.sort_by_key(|(i, _, _)| *i);
    out.into_iter().map(|(_, s, r)| (s, r)).collect()
}

#[tokio::test]
async fn a_fifth_concurrent_graph_request_for_one_mailbox_gets_429_application_throttled() {
    // Every request is in flight for 300 ms, so those sent together overlap.
    let sim = Sim::start_with_latency(Duration::from_millis(300)).await;
    let object_id = sim.control().room_object_id(ROOM).unwrap();
    let view = |user: &str| format!("/v1.0/users/{user}/calendarView?{}", window_query());
    // Four by address and one by object id: the same mailbox.
    let mut paths: Vec<String> = (0..4).map(|_| view(ROOM)).collect();
    paths.push(view(&object_id));
    let got = concurrently(&sim, &paths).await;
    let throttled: Vec<&(StatusCode, Option<String>)> = got
        .iter()
        .filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(throttled.len(), 1, "{got:?}");
    assert_eq!(throttled[0].1.as_deref(), Some("1"));
    assert_eq!(got.iter().filter(|(s, _)| *s == StatusCode::OK).count(), 4);
    // Four for each of two mailboxes, and the directory and subscriptions beside them:
    // nothing over a limit.
    let mut paths: Vec<String> = (0..4).map(|_| view(ROOM)).collect();
    paths.extend((0..4).map(|_| view("room2@sim.example")));
    paths.push(format!("/v1.0/users/{ROOM}"));
    paths.push("/v1.0/subscriptions".to_owned());
    let got = concurrently(&sim, &paths).await;
    assert!(got.iter().all(|(s, _)| *s == StatusCode::OK), "{got:?}");
    // Once they are answered the mailbox takes requests again.
    let (status, _) = sim.graph_get(&sim.url(&view(ROOM)), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = {
        let token = sim.token().await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..5 {
            let request = sim.http.get(sim.url(&view(ROOM))).bearer_auth(&token);
            tasks.spawn(async move { request.send().await.unwrap() });
        }
        let mut refused = None;
        for r in tasks.join_all().await {
            if r.status() == StatusCode::TOO_MANY_REQUESTS {
                refused = Some((r.status(), r.json::<Value>().await.unwrap()));
            }
        }
        refused.unwrap()
    };
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "ApplicationThrottled");
}

#[tokio::test]
async fn the_latency_delays_graph_ews_and_token_answers_but_not_the_control_api() {
    const LATENCY: Duration = Duration::from_millis(150);
    let sim = Sim::start_with_latency(LATENCY).await;
    let started = Instant::now();
    let token = sim.token().await;
    assert!(
        started.elapsed() >= LATENCY,
        "token: {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let r = sim
        .http
        .get(sim.url(&format!("/v1.0/users/{ROOM}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        started.elapsed() >= LATENCY,
        "graph: {:?}",
        started.elapsed()
    );

    let exchange = sim.token_for(EWS_SCOPE).await;
    let started = Instant::now();
    sim.ews_as(
        &format!("Bearer {exchange}"),
        Some(ROOM),
        Some(ROOM),
        GET_ITEM_X,
    )
    .await;
    assert!(started.elapsed() >= LATENCY, "ews: {:?}", started.elapsed());

    let started = Instant::now();
    let r = sim.http.get(sim.url("/_sim/rooms")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        started.elapsed() < LATENCY,
        "control API: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn request_records_carry_the_query_and_the_ews_operation() {
    let sim = Sim::start().await;
    sim.graph_get(&delta_start(&sim), None).await;
    sim.ews(ROOM, GET_ITEM_X).await;
    sim.ews(ROOM, &find_calendar(None)).await;
    let records = sim.control().requests();
    let delta = records
        .iter()
        .find(|r| r.path.ends_with("/calendarView/delta"))
        .unwrap();
    assert_eq!(delta.query.as_deref(), Some(window_query().as_str()));
    assert_eq!(delta.operation, None);
    let operations: Vec<Option<&str>> = records
        .iter()
        .filter(|r| r.path == "/EWS/Exchange.asmx")
        .map(|r| r.operation.as_deref())
        .collect();
    assert_eq!(operations, [Some("GetItem"), Some("FindItem")]);
}

// ---- EWS as client libraries drive it: folders, version guessing, writes ----------

fn folder_shape() -> &'static str {
    r#"<m:FolderShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="folder:DisplayName"/><t:FieldURI FieldURI="folder:ParentFolderId"/><t:FieldURI FieldURI="folder:FolderClass"/><t:FieldURI FieldURI="folder:TotalCount"/></t:AdditionalProperties></m:FolderShape>"#
}

fn get_folders(ids: &[&str]) -> String {
    let ids: String = ids
        .iter()
        .map(|id| {
            format!(
                r#"<t:DistinguishedFolderId Id="{id}"><t:Mailbox><t:EmailAddress>{ROOM}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>"#
            )
        })
        .collect();
    format!(
        "<m:GetFolder>{}<m:FolderIds>{ids}</m:FolderIds></m:GetFolder>",
        folder_shape()
    )
}

fn folder_of(message: &Node) -> Node {
    message.child("Folders").unwrap().children[0].clone()
}

fn messages(body: &Node, op: &str) -> Vec<Node> {
    let name = format!("{op}ResponseMessage");
    body.find("ResponseMessages")
        .unwrap()
        .children
        .iter()
        .filter(|c| c.local == name)
        .cloned()
        .collect()
}

#[tokio::test]
async fn get_folder_answers_root_msgfolderroot_and_calendar_under_the_server_version_header() {
    let sim = Sim::start().await;
    sim.control()
        .create_meeting(ROOM, meeting("Booked", 2, 9))
        .unwrap();
    let (status, body) = sim
        .ews_as(
            &basic_service_account(),
            Some(ROOM),
            None,
            &get_folders(&[
                "root",
                "msgfolderroot",
                "calendar",
                "inbox",
                "recoverableitemsdeletions",
            ]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.path(&["Header", "ServerVersionInfo"]).is_some());
    let answers = messages(&body, "GetFolder");
    assert_eq!(answers.len(), 5);
    assert_eq!(text_of(&folder_of(&answers[4]), "DisplayName"), "Deletions");
    let folder = |i: usize| folder_of(&answers[i]);
    let (root, top, calendar) = (folder(0), folder(1), folder(2));
    assert_eq!(root.local, "Folder");
    assert!(
        root.child("ParentFolderId").is_none(),
        "the root has no parent"
    );
    assert_eq!(text_of(&top, "DisplayName"), "Top of Information Store");
    assert_eq!(
        top.child("ParentFolderId").unwrap().attr("Id"),
        root.child("FolderId").unwrap().attr("Id")
    );
    assert_eq!(calendar.local, "CalendarFolder");
    assert_eq!(text_of(&calendar, "FolderClass"), "IPF.Appointment");
    assert_eq!(text_of(&calendar, "TotalCount"), "1");
    assert_eq!(
        calendar.child("ParentFolderId").unwrap().attr("Id"),
        top.child("FolderId").unwrap().attr("Id")
    );
    assert_eq!(
        answers[3].child("ResponseCode").unwrap().text,
        "ErrorFolderNotFound"
    );
    // The calendar is found again by its id, as a client refreshing it asks.
    let id = calendar.child("FolderId").unwrap().attr("Id").unwrap();
    let by_id = format!(
        r#"<m:GetFolder>{}<m:FolderIds><t:FolderId Id="{id}"/></m:FolderIds></m:GetFolder>"#,
        folder_shape()
    );
    let (_, body) = sim
        .ews_as(&basic_service_account(), Some(ROOM), None, &by_id)
        .await;
    assert_eq!(response_code(&body, "GetFolder"), "NoError");
}

#[tokio::test]
async fn convert_id_answers_each_id_under_the_version_header_so_a_client_can_learn_the_version() {
    let sim = Sim::start().await;
    let id = sim
        .control()
        .create_meeting(ROOM, meeting("Booked", 2, 9))
        .unwrap();
    // exchangelib's version probe: a dummy id in a dummy mailbox, no impersonation.
    let op = r#"<m:ConvertId DestinationFormat="EntryId"><m:SourceIds><t:AlternateId Id="DUMMY" Format="EwsId" Mailbox="DUMMY"/></m:SourceIds></m:ConvertId>"#;
    let (status, body) = sim.ews_as(&basic_service_account(), None, None, op).await;
    assert_eq!(status, StatusCode::OK);
    let version = body.path(&["Header", "ServerVersionInfo"]).unwrap();
    assert_eq!(version.attr("Version"), Some("V2018_01_08"));
    assert_eq!(response_code(&body, "ConvertId"), "ErrorInvalidIdMalformed");
    let op = format!(
        r#"<m:ConvertId DestinationFormat="EwsId"><m:SourceIds><t:AlternateId Id="{id}" Format="EwsId" Mailbox="{ROOM}"/></m:SourceIds></m:ConvertId>"#
    );
    let (_, body) = sim.ews_as(&basic_service_account(), None, None, &op).await;
    assert_eq!(response_code(&body, "ConvertId"), "NoError");
}

#[tokio::test]
async fn a_refused_ews_call_offers_basic_as_well_as_bearer() {
    let sim = Sim::start().await;
    let r = sim
        .http
        .post(sim.url("/EWS/Exchange.asmx"))
        .body(GET_ITEM_X)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let schemes: Vec<String> = r
        .headers()
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(' ').next())
        .map(str::to_owned)
        .collect();
    assert_eq!(schemes, ["Bearer", "Basic"]);
}

fn create_op(send: Option<&str>, items: &str) -> String {
    let send = send.map_or_else(String::new, |s| format!(r#" SendMeetingInvitations="{s}""#));
    format!(
        r#"<m:CreateItem MessageDisposition="SaveOnly"{send}><m:SavedItemFolderId><t:DistinguishedFolderId Id="calendar"><t:Mailbox><t:EmailAddress>{ROOM}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId></m:SavedItemFolderId><m:Items>{items}</m:Items></m:CreateItem>"#
    )
}

fn calendar_item_xml(subject: &str, start: &str, end: &str, extra: &str) -> String {
    format!(
        "<t:CalendarItem><t:Subject>{subject}</t:Subject><t:ReminderIsSet>0</t:ReminderIsSet><t:Start>{start}</t:Start><t:End>{end}</t:End><t:IsAllDayEvent>0</t:IsAllDayEvent><t:Location>Room 1</t:Location>{extra}</t:CalendarItem>"
    )
}

/// Sends an EWS write as the service account impersonating the room; returns the
/// response messages of `op`.
async fn ews_write(sim: &Sim, op: &str, xml: &str) -> Vec<Node> {
    let (status, body) = sim
        .ews_as(&basic_service_account(), Some(ROOM), None, xml)
        .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    messages(&body, op)
}

fn created_id(message: &Node) -> (String, String) {
    assert_eq!(
        message.attr("ResponseClass"),
        Some("Success"),
        "{message:?}"
    );
    let id = message.find("ItemId").unwrap();
    (
        id.attr("Id").unwrap().to_owned(),
        id.attr("ChangeKey").unwrap().to_owned(),
    )
}

#[tokio::test]
async fn an_ews_booking_pushes_to_graph_and_ews_exactly_like_a_control_api_booking() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let (status, _) = sim.create_subscription(&subscription_body(&rx, 60)).await;
    assert_eq!(status, StatusCode::CREATED);
    sim.ews_subscribe(&rx.url("/ews"), 30, None).await;
    rx.wait_for("the first status event", |r| {
        r.iter().any(|r| r.path == "/ews")
    })
    .await;
    let item = calendar_item_xml(
        "Booked over EWS",
        "2026-03-02T09:00:00Z",
        "2026-03-02T10:00:00Z",
        "",
    );
    let answer = ews_write(&sim, "CreateItem", &create_op(Some("SendToNone"), &item)).await;
    let (id, _) = created_id(&answer[0]);
    let got = rx
        .wait_for("a Graph created and an EWS CreatedEvent", |r| {
            r.iter()
                .any(|r| r.path == "/graph" && r.body.contains("\"created\""))
                && r.iter()
                    .any(|r| r.path == "/ews" && r.body.contains("CreatedEvent"))
        })
        .await;
    let graph = got
        .iter()
        .find(|r| r.path == "/graph" && r.body.contains("\"created\""))
        .unwrap();
    assert!(graph.body.contains(&sim.control().graph_id(&id, false)));
    let ews = got
        .iter()
        .find(|r| r.path == "/ews" && r.body.contains("CreatedEvent"))
        .unwrap();
    assert!(ews.body.contains(&id));
    // The change log has it: a first SyncFolderItems reports the creation, a calendar view
    // lists it, and the room organizes it.
    let sync = r#"<m:SyncFolderItems><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape><m:SyncFolderId><t:DistinguishedFolderId Id="calendar"/></m:SyncFolderId><m:MaxChangesReturned>10</m:MaxChangesReturned></m:SyncFolderItems>"#;
    let (_, body) = sim.ews(ROOM, sync).await;
    let create = body.find("Create").unwrap();
    assert_eq!(
        text_of(create.find("CalendarItem").unwrap(), "Subject"),
        "Booked over EWS"
    );
    let view = graph_view(&sim).await;
    assert_eq!(view.len(), 1);
    assert_eq!(view[0]["organizer"]["emailAddress"]["address"], ROOM);
}

#[tokio::test]
async fn create_item_without_send_meeting_invitations_is_refused_and_books_nothing() {
    let sim = Sim::start().await;
    let item = calendar_item_xml(
        "No attribute",
        "2026-03-02T09:00:00Z",
        "2026-03-02T10:00:00Z",
        "",
    );
    let answer = ews_write(&sim, "CreateItem", &create_op(None, &item)).await;
    assert_eq!(
        answer[0].child("ResponseCode").unwrap().text,
        "ErrorSendMeetingInvitationsRequired"
    );
    let backwards = calendar_item_xml(
        "Backwards",
        "2026-03-02T10:00:00Z",
        "2026-03-02T09:00:00Z",
        "",
    );
    let answer = ews_write(
        &sim,
        "CreateItem",
        &create_op(Some("SendToNone"), &backwards),
    )
    .await;
    assert_eq!(
        answer[0].child("ResponseCode").unwrap().text,
        "ErrorCalendarEndDateIsEarlierThanStartDate"
    );
    assert!(graph_view(&sim).await.is_empty());
}

const WEEKLY_MONDAYS_4: &str = "<t:Recurrence><t:WeeklyRecurrence><t:Interval>1</t:Interval><t:DaysOfWeek>Monday</t:DaysOfWeek></t:WeeklyRecurrence><t:NumberedRecurrence><t:StartDate>2026-03-02Z</t:StartDate><t:NumberOfOccurrences>4</t:NumberOfOccurrences></t:NumberedRecurrence></t:Recurrence>";

#[tokio::test]
async fn a_series_booked_over_ews_expands_into_its_occurrences_in_both_views() {
    let sim = Sim::start().await;
    // 2026-03-02 is a Monday.
    let item = calendar_item_xml(
        "Weekly",
        "2026-03-02T09:00:00Z",
        "2026-03-02T10:00:00Z",
        WEEKLY_MONDAYS_4,
    );
    let answer = ews_write(&sim, "CreateItem", &create_op(Some("SendToNone"), &item)).await;
    let (master, _) = created_id(&answer[0]);
    let occurrences = sim.control().occurrence_ids(ROOM, &master).unwrap();
    assert_eq!(occurrences.len(), 4);
    let view = graph_view(&sim).await;
    assert_eq!(view.len(), 4);
    assert!(view.iter().all(|e| e["type"] == "occurrence"));
    let master_xml = ews_get_item(&sim, &item_shape("AllProperties", &[]), &master).await;
    assert_eq!(text_of(&master_xml, "CalendarItemType"), "RecurringMaster");
}

fn update_op(conflict: &str, change: &str) -> String {
    format!(
        r#"<m:UpdateItem MessageDisposition="SaveOnly" ConflictResolution="{conflict}" SendMeetingInvitationsOrCancellations="SendToNone"><m:ItemChanges>{change}</m:ItemChanges></m:UpdateItem>"#
    )
}

fn set_times(start: &str, end: &str) -> String {
    format!(
        r#"<t:Updates><t:SetItemField><t:FieldURI FieldURI="calendar:Start"/><t:CalendarItem><t:Start>{start}</t:Start></t:CalendarItem></t:SetItemField><t:SetItemField><t:FieldURI FieldURI="calendar:End"/><t:CalendarItem><t:End>{end}</t:End></t:CalendarItem></t:SetItemField><t:SetItemField><t:FieldURI FieldURI="item:Sensitivity"/><t:CalendarItem><t:Sensitivity>Normal</t:Sensitivity></t:CalendarItem></t:SetItemField></t:Updates>"#
    )
}

#[tokio::test]
async fn update_item_moves_a_meeting_and_refuses_a_stale_change_key_unless_told_to_overwrite() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let (status, _) = sim.create_subscription(&subscription_body(&rx, 60)).await;
    assert_eq!(status, StatusCode::CREATED);
    let item = calendar_item_xml("Moving", "2026-03-02T09:00:00Z", "2026-03-02T10:00:00Z", "");
    let answer = ews_write(&sim, "CreateItem", &create_op(Some("SendToNone"), &item)).await;
    let (id, first_key) = created_id(&answer[0]);
    let change = |key: &str, start: &str, end: &str| {
        format!(
            r#"<t:ItemChange><t:ItemId Id="{id}" ChangeKey="{key}"/>{}</t:ItemChange>"#,
            set_times(start, end)
        )
    };
    let answer = ews_write(
        &sim,
        "UpdateItem",
        &update_op(
            "AutoResolve",
            &change(&first_key, "2026-03-02T11:00:00Z", "2026-03-02T12:00:00Z"),
        ),
    )
    .await;
    let (_, second_key) = created_id(&answer[0]);
    assert_ne!(first_key, second_key);
    let view = graph_view(&sim).await;
    assert_eq!(view[0]["start"]["dateTime"], "2026-03-02T11:00:00.0000000");
    rx.wait_for("a Graph updated", |r| {
        r.iter()
            .any(|r| r.path == "/graph" && r.body.contains("\"updated\""))
    })
    .await;
    // The first change key is stale now.
    let stale = change(&first_key, "2026-03-02T13:00:00Z", "2026-03-02T14:00:00Z");
    let answer = ews_write(&sim, "UpdateItem", &update_op("AutoResolve", &stale)).await;
    assert_eq!(
        answer[0].child("ResponseCode").unwrap().text,
        "ErrorIrresolvableConflict"
    );
    let answer = ews_write(&sim, "UpdateItem", &update_op("AlwaysOverwrite", &stale)).await;
    created_id(&answer[0]);
    let view = graph_view(&sim).await;
    assert_eq!(view[0]["start"]["dateTime"], "2026-03-02T13:00:00.0000000");
}

#[tokio::test]
async fn update_item_on_an_occurrence_turns_it_into_an_exception_of_its_series() {
    let sim = Sim::start().await;
    let item = calendar_item_xml(
        "Weekly",
        "2026-03-02T09:00:00Z",
        "2026-03-02T10:00:00Z",
        WEEKLY_MONDAYS_4,
    );
    let answer = ews_write(&sim, "CreateItem", &create_op(Some("SendToNone"), &item)).await;
    let (master, _) = created_id(&answer[0]);
    // The second occurrence, named as clients name one without its id.
    let change = format!(
        r#"<t:ItemChange><t:OccurrenceItemId RecurringMasterId="{master}" InstanceIndex="2"/>{}</t:ItemChange>"#,
        set_times("2026-03-10T15:00:00Z", "2026-03-10T16:00:00Z")
    );
    let answer = ews_write(&sim, "UpdateItem", &update_op("AlwaysOverwrite", &change)).await;
    let (id, _) = created_id(&answer[0]);
    assert_eq!(id, sim.control().occurrence_ids(ROOM, &master).unwrap()[1]);
    let exception = ews_get_item(&sim, &item_shape("Default", &[]), &id).await;
    assert_eq!(text_of(&exception, "CalendarItemType"), "Exception");
    assert_eq!(text_of(&exception, "Start"), "2026-03-10T15:00:00Z");
}

#[tokio::test]
async fn delete_item_removes_a_meeting_and_deletes_an_occurrence_from_its_series() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    sim.ews_subscribe(&rx.url("/ews"), 30, None).await;
    let single = calendar_item_xml("Single", "2026-03-03T09:00:00Z", "2026-03-03T10:00:00Z", "");
    let series = calendar_item_xml(
        "Weekly",
        "2026-03-02T09:00:00Z",
        "2026-03-02T10:00:00Z",
        WEEKLY_MONDAYS_4,
    );
    let answer = ews_write(
        &sim,
        "CreateItem",
        &create_op(Some("SendToNone"), &format!("{single}{series}")),
    )
    .await;
    let (single, _) = created_id(&answer[0]);
    let (master, _) = created_id(&answer[1]);
    let third = sim.control().occurrence_ids(ROOM, &master).unwrap()[2].clone();
    let delete = |send: &str| {
        format!(
            r#"<m:DeleteItem DeleteType="HardDelete"{send}><m:ItemIds><t:ItemId Id="{single}"/><t:ItemId Id="{third}"/></m:ItemIds></m:DeleteItem>"#
        )
    };
    let refused = ews_write(&sim, "DeleteItem", &delete("")).await;
    assert_eq!(
        refused[0].child("ResponseCode").unwrap().text,
        "ErrorSendMeetingCancellationsRequired"
    );
    let answer = ews_write(
        &sim,
        "DeleteItem",
        &delete(r#" SendMeetingCancellations="SendToNone""#),
    )
    .await;
    assert!(
        answer
            .iter()
            .all(|m| m.attr("ResponseClass") == Some("Success")),
        "{answer:?}"
    );
    assert_eq!(
        sim.control().occurrence_ids(ROOM, &master).unwrap().len(),
        3
    );
    let view = graph_view(&sim).await;
    assert_eq!(
        view.len(),
        3,
        "the single meeting and one occurrence are gone"
    );
    rx.wait_for("an EWS DeletedEvent for the single meeting", |r| {
        r.iter()
            .any(|r| r.body.contains("DeletedEvent") && r.body.contains(&single))
    })
    .await;
    let again = ews_write(
        &sim,
        "DeleteItem",
        &delete(r#" SendMeetingCancellations="SendToNone""#),
    )
    .await;
    assert_eq!(
        again[0].child("ResponseCode").unwrap().text,
        "ErrorItemNotFound"
    );
    assert_eq!(
        again[1].child("ResponseCode").unwrap().text,
        "ErrorCalendarOccurrenceIsDeletedFromRecurrence"
    );
}

// ---- Graph event writes ------------------------------------------------------------

async fn graph_send(
    sim: &Sim,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let token = sim.token().await;
    let mut req = sim.http.request(method, sim.url(path)).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(body);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn graph_event_body(subject: &str, start: &str, end: &str) -> Value {
    json!({
        "subject": subject,
        "start": { "dateTime": start, "timeZone": "UTC" },
        "end": { "dateTime": end, "timeZone": "UTC" },
        "location": { "displayName": "Room 1" },
        "attendees": [],
    })
}

#[tokio::test]
async fn graph_event_writes_push_and_show_in_delta_exactly_like_control_api_changes() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let (status, _) = sim.create_subscription(&subscription_body(&rx, 60)).await;
    assert_eq!(status, StatusCode::CREATED);
    sim.ews_subscribe(&rx.url("/ews"), 30, None).await;
    let events = format!("/v1.0/users/{ROOM}/events");
    let (status, created) = graph_send(
        &sim,
        reqwest::Method::POST,
        &events,
        Some(&graph_event_body(
            "Booked over Graph",
            "2026-03-02T09:00:00",
            "2026-03-02T10:00:00",
        )),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["organizer"]["emailAddress"]["address"], ROOM);
    assert_eq!(created["type"], "singleInstance");
    let id = created["id"].as_str().unwrap().to_owned();
    rx.wait_for(
        "a Graph created with its clientState and an EWS CreatedEvent",
        |r| {
            r.iter().any(|r| {
                r.path == "/graph"
                    && r.body.contains("\"created\"")
                    && r.body.contains("secret-client-state")
                    && r.body.contains(&id)
            }) && r
                .iter()
                .any(|r| r.path == "/ews" && r.body.contains("CreatedEvent"))
        },
    )
    .await;
    let (_, first) = sim.graph_get(&delta_start(&sim), None).await;
    let link = first["@odata.deltaLink"].as_str().unwrap().to_owned();
    let (status, patched) = graph_send(
        &sim,
        reqwest::Method::PATCH,
        &format!("{events}/{id}"),
        Some(&json!({
            "subject": "Moved over Graph",
            "start": { "dateTime": "2026-03-02T11:00:00", "timeZone": "UTC" },
            "end": { "dateTime": "2026-03-02T12:00:00", "timeZone": "UTC" },
        })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["subject"], "Moved over Graph");
    assert_ne!(patched["changeKey"], created["changeKey"]);
    let (_, second) = sim.graph_get(&link, None).await;
    let changed = second["value"].as_array().unwrap();
    assert_eq!(changed.len(), 1, "{second}");
    assert_eq!(
        changed[0]["start"]["dateTime"],
        "2026-03-02T11:00:00.0000000"
    );
    rx.wait_for("a Graph updated", |r| {
        r.iter()
            .any(|r| r.path == "/graph" && r.body.contains("\"updated\""))
    })
    .await;
    let (status, _) = graph_send(
        &sim,
        reqwest::Method::DELETE,
        &format!("{events}/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Graph's DELETE moves the event to Deleted Items: EWS sees a move.
    rx.wait_for("a Graph deleted and an EWS MovedEvent", |r| {
        r.iter()
            .any(|r| r.path == "/graph" && r.body.contains("\"deleted\""))
            && r.iter()
                .any(|r| r.path == "/ews" && r.body.contains("MovedEvent"))
    })
    .await;
    let (status, _) = graph_event(&sim, &id).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_series_posted_to_graph_expands_and_its_occurrences_can_be_moved_and_deleted() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    sim.ews_subscribe(&rx.url("/ews"), 30, None).await;
    let mut body = graph_event_body("Weekly", "2026-03-02T09:00:00", "2026-03-02T10:00:00");
    body["recurrence"] = json!({
        "pattern": { "type": "weekly", "interval": 1, "daysOfWeek": ["monday"], "firstDayOfWeek": "sunday" },
        "range": { "type": "endDate", "startDate": "2026-03-02", "endDate": "2026-03-23" },
    });
    let events = format!("/v1.0/users/{ROOM}/events");
    let (status, master) = graph_send(&sim, reqwest::Method::POST, &events, Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{master}");
    assert_eq!(master["type"], "seriesMaster");
    assert_eq!(master["recurrence"]["range"]["type"], "endDate");
    let view = graph_view(&sim).await;
    assert_eq!(view.len(), 4);
    let second = view[1]["id"].as_str().unwrap().to_owned();
    let third = view[2]["id"].as_str().unwrap().to_owned();
    let (status, moved) = graph_send(
        &sim,
        reqwest::Method::PATCH,
        &format!("{events}/{second}"),
        Some(&json!({
            "start": { "dateTime": "2026-03-10T15:00:00", "timeZone": "UTC" },
            "end": { "dateTime": "2026-03-10T16:00:00", "timeZone": "UTC" },
        })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    assert_eq!(moved["type"], "exception");
    assert_eq!(moved["id"], second);
    let (status, _) = graph_send(
        &sim,
        reqwest::Method::PATCH,
        &format!("{events}/{second}"),
        Some(&json!({ "subject": "Only this one" })),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the simulator keeps only times"
    );
    let (status, _) = graph_send(
        &sim,
        reqwest::Method::DELETE,
        &format!("{events}/{third}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(graph_view(&sim).await.len(), 3);
    // Each change of the series is a modification of its master in EWS.
    let master_id = master["id"].as_str().unwrap().to_owned();
    rx.wait_for("EWS ModifiedEvents of the master", |r| {
        r.iter()
            .filter(|r| r.body.contains("ModifiedEvent") && r.body.contains(&master_id))
            .count()
            >= 2
    })
    .await;
}

#[tokio::test]
async fn graph_event_writes_refuse_unreadable_zones_and_unknown_events_and_permanent_delete_removes()
 {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    sim.ews_subscribe(&rx.url("/ews"), 30, None).await;
    let events = format!("/v1.0/users/{ROOM}/events");
    let mut body = graph_event_body("Zoned", "2026-03-02T09:00:00", "2026-03-02T10:00:00");
    body["start"]["timeZone"] = json!("Pacific Standard Time");
    let (status, refused) = graph_send(&sim, reqwest::Method::POST, &events, Some(&body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(refused["error"]["code"], "TimeZoneNotSupportedException");
    let (status, _) = graph_send(
        &sim,
        reqwest::Method::PATCH,
        &format!("{events}/AAMkAGSIMunknown"),
        Some(&json!({ "subject": "x" })),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = graph_send(
        &sim,
        reqwest::Method::POST,
        "/v1.0/users/nobody@sim.example/events",
        Some(&graph_event_body(
            "x",
            "2026-03-02T09:00:00",
            "2026-03-02T10:00:00",
        )),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Booked in the room's default calendar, then removed for good.
    let (status, created) = graph_send(
        &sim,
        reqwest::Method::POST,
        &format!("/v1.0/users/{ROOM}/calendar/events"),
        Some(&graph_event_body(
            "Gone",
            "2026-03-02T09:00:00",
            "2026-03-02T10:00:00",
        )),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["id"].as_str().unwrap();
    let (status, _) = graph_send(
        &sim,
        reqwest::Method::POST,
        &format!("{events}/{id}/permanentDelete"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    rx.wait_for("an EWS DeletedEvent", |r| {
        r.iter().any(|r| r.body.contains("DeletedEvent"))
    })
    .await;
}

#[tokio::test]
async fn update_item_accepts_what_a_client_saving_every_property_sends() {
    let sim = Sim::start().await;
    let series = calendar_item_xml(
        "Weekly",
        "2026-03-02T09:00:00Z",
        "2026-03-02T10:00:00Z",
        WEEKLY_MONDAYS_4,
    );
    let single = calendar_item_xml("Single", "2026-03-03T09:00:00Z", "2026-03-03T10:00:00Z", "");
    let answer = ews_write(
        &sim,
        "CreateItem",
        &create_op(Some("SendToNone"), &format!("{series}{single}")),
    )
    .await;
    let (master, _) = created_id(&answer[0]);
    let (single, _) = created_id(&answer[1]);
    let second = sim.control().occurrence_ids(ROOM, &master).unwrap()[1].clone();
    // exchangelib's save() without update_fields: every property, the unset recurrence
    // deleted, the series' own subject and location repeated on an occurrence.
    let everything = |id: &str, start: &str, end: &str| {
        format!(
            r#"<t:ItemChange><t:ItemId Id="{id}"/><t:Updates><t:SetItemField><t:FieldURI FieldURI="item:Subject"/><t:CalendarItem><t:Subject>Weekly</t:Subject></t:CalendarItem></t:SetItemField><t:SetItemField><t:FieldURI FieldURI="calendar:Location"/><t:CalendarItem><t:Location>Room 1</t:Location></t:CalendarItem></t:SetItemField><t:SetItemField><t:FieldURI FieldURI="calendar:Start"/><t:CalendarItem><t:Start>{start}</t:Start></t:CalendarItem></t:SetItemField><t:SetItemField><t:FieldURI FieldURI="calendar:End"/><t:CalendarItem><t:End>{end}</t:End></t:CalendarItem></t:SetItemField><t:DeleteItemField><t:FieldURI FieldURI="calendar:Recurrence"/></t:DeleteItemField><t:DeleteItemField><t:FieldURI FieldURI="item:Body"/></t:DeleteItemField></t:Updates></t:ItemChange>"#
        )
    };
    let changes = format!(
        "{}{}{}",
        everything(&second, "2026-03-09T11:00:00Z", "2026-03-09T12:00:00Z"),
        everything(&single, "2026-03-03T11:00:00Z", "2026-03-03T12:00:00Z"),
        everything(&master, "2026-03-02T09:00:00Z", "2026-03-02T10:00:00Z"),
    );
    let answer = ews_write(&sim, "UpdateItem", &update_op("AlwaysOverwrite", &changes)).await;
    created_id(&answer[0]);
    created_id(&answer[1]);
    assert_eq!(
        answer[2].child("ResponseCode").unwrap().text,
        "ErrorInvalidOperation",
        "a series cannot become a single meeting"
    );
    let moved = ews_get_item(&sim, &item_shape("Default", &[]), &second).await;
    assert_eq!(text_of(&moved, "CalendarItemType"), "Exception");
    let single = ews_get_item(&sim, &item_shape("Default", &[]), &single).await;
    assert_eq!(text_of(&single, "Subject"), "Weekly");
    assert_eq!(text_of(&single, "CalendarItemType"), "Single");
    // A different subject on one occurrence is more than the simulator keeps.
    let renamed = format!(
        r#"<t:ItemChange><t:ItemId Id="{second}"/><t:Updates><t:SetItemField><t:FieldURI FieldURI="item:Subject"/><t:CalendarItem><t:Subject>Only this one</t:Subject></t:CalendarItem></t:SetItemField></t:Updates></t:ItemChange>"#
    );
    let answer = ews_write(&sim, "UpdateItem", &update_op("AlwaysOverwrite", &renamed)).await;
    assert_eq!(
        answer[0].child("ResponseCode").unwrap().text,
        "ErrorInvalidOperation"
    );
}

#[tokio::test]
async fn move_to_deleted_items_is_a_move_and_an_unknown_operation_says_so_without_a_version_fault()
{
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    sim.ews_subscribe(&rx.url("/ews"), 30, None).await;
    let item = calendar_item_xml(
        "Trashed",
        "2026-03-02T09:00:00Z",
        "2026-03-02T10:00:00Z",
        "",
    );
    let answer = ews_write(&sim, "CreateItem", &create_op(Some("SendToNone"), &item)).await;
    let (id, _) = created_id(&answer[0]);
    let delete = format!(
        r#"<m:DeleteItem DeleteType="MoveToDeletedItems" SendMeetingCancellations="SendToNone"><m:ItemIds><t:ItemId Id="{id}"/></m:ItemIds></m:DeleteItem>"#
    );
    let answer = ews_write(&sim, "DeleteItem", &delete).await;
    assert_eq!(answer[0].attr("ResponseClass"), Some("Success"));
    rx.wait_for("an EWS MovedEvent from the calendar", |r| {
        r.iter()
            .any(|r| r.body.contains("MovedEvent") && r.body.contains(&id))
    })
    .await;
    let (status, body) = sim
        .ews_as(
            &basic_service_account(),
            Some(ROOM),
            None,
            "<m:FindFolder Traversal=\"Shallow\"/>",
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    // ErrorInvalidRequest would read as a schema version mismatch to exchangelib.
    assert_eq!(fault_code(&body), "a:ErrorInvalidOperation");
}

// ---- time zones ----------------------------------------------------------------------

#[tokio::test]
async fn event_reads_write_times_in_the_preferred_zone_and_name_it_and_writes_read_it_back() {
    let sim = Sim::start().await;
    let id = sim
        .control()
        .create_meeting(ROOM, meeting("Zoned", 2, 10))
        .unwrap();
    let rest = sim.control().graph_id(&id, false);
    let tokyo = r#"outlook.timezone="Tokyo Standard Time""#;
    let event = format!("/v1.0/users/{ROOM}/events/{rest}");
    let view = format!("/v1.0/users/{ROOM}/calendarView?{}", window_query());
    let delta = format!("/v1.0/users/{ROOM}/calendarView/delta?{}", window_query());
    for path in [&event, &view, &delta] {
        let (status, body) = sim.graph_get(&sim.url(path), Some(tokyo)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let e = if body.get("value").is_some() {
            body["value"][0].clone()
        } else {
            body
        };
        // 10:00 UTC is 19:00 in Tokyo.
        assert_eq!(
            e["start"]["dateTime"], "2026-03-02T19:00:00.0000000",
            "{path}"
        );
        assert_eq!(e["start"]["timeZone"], "Tokyo Standard Time", "{path}");
        assert_eq!(
            e["end"]["dateTime"], "2026-03-02T20:00:00.0000000",
            "{path}"
        );
        // Without the preference, and asking UTC, it is UTC.
        for prefer in [None, Some(r#"outlook.timezone="UTC""#)] {
            let (_, body) = sim.graph_get(&sim.url(path), prefer).await;
            let e = if body.get("value").is_some() {
                body["value"][0].clone()
            } else {
                body
            };
            assert_eq!(e["start"]["dateTime"], "2026-03-02T10:00:00.0000000");
            assert_eq!(e["start"]["timeZone"], "UTC");
        }
    }
    // An IANA name too, with a half-hour offset, named as it was asked for.
    let (_, e) = sim
        .graph_get(
            &sim.url(&event),
            Some(r#"IdType="ImmutableId", outlook.timezone="Asia/Kolkata""#),
        )
        .await;
    assert_eq!(e["start"]["dateTime"], "2026-03-02T15:30:00.0000000");
    assert_eq!(e["start"]["timeZone"], "Asia/Kolkata");
    // A zone with daylight saving time, which the simulator cannot convert, is answered in
    // UTC and says so.
    let (_, e) = sim
        .graph_get(
            &sim.url(&event),
            Some(r#"outlook.timezone="Pacific Standard Time""#),
        )
        .await;
    assert_eq!(e["start"]["timeZone"], "UTC");
    assert_eq!(e["start"]["dateTime"], "2026-03-02T10:00:00.0000000");
    // A write in a fixed-offset zone lands at the instant it names.
    let mut body = graph_event_body("Bogota", "2026-03-03T09:00:00", "2026-03-03T10:00:00");
    body["start"]["timeZone"] = json!("SA Pacific Standard Time");
    body["end"]["timeZone"] = json!("SA Pacific Standard Time");
    let (status, created) = graph_send(
        &sim,
        reqwest::Method::POST,
        &format!("/v1.0/users/{ROOM}/events"),
        Some(&body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["start"]["dateTime"], "2026-03-03T14:00:00.0000000");
    assert_eq!(created["start"]["timeZone"], "UTC");
}
