//! Microsoft Graph calls: subscriptions (create, renew, delete, list) and the pages of a room's
//! `calendarView/delta` rounds. Every request asks for immutable ids, so the ids in
//! notifications and in later reads of the same events agree.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode, header};

use super::{ExchangeClient, ExchangeError, throttle};
use crate::graph::delta::{DeltaPage, parse_delta_page};
use crate::graph::subscription::{
    CreateSubscription, ErrorBody, RenewSubscription, Subscription, SubscriptionPage,
};
use crate::offload;

/// The scope of app-only tokens for Graph.
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
/// Sent on every request: ids stay the same when an event moves between folders, and
/// notifications of a subscription created with it carry the same ids.
pub const PREFER_IMMUTABLE_IDS: &str = "IdType=\"ImmutableId\"";
/// Asked of every delta page: immutable ids, times in UTC, and pages of a size that keeps one
/// response small.
const PREFER_DELTA: &str =
    "IdType=\"ImmutableId\", outlook.timezone=\"UTC\", odata.maxpagesize=100";
/// List pages followed at most, against a server that keeps answering with a next page.
const MAX_LIST_PAGES: usize = 200;

/// Graph calls, borrowed from an [`ExchangeClient`].
#[derive(Debug, Clone, Copy)]
pub struct GraphClient<'a> {
    client: &'a ExchangeClient,
}

impl ExchangeClient {
    /// The Graph side of the client.
    #[must_use]
    pub const fn graph(&self) -> GraphClient<'_> {
        GraphClient { client: self }
    }
}

impl GraphClient<'_> {
    fn url(&self, path: &str) -> String {
        format!(
            "{}{path}",
            self.client
                .settings()
                .graph
                .base_url
                .as_str()
                .trim_end_matches('/')
        )
    }

    /// One request with retries: `mailbox` names the concurrency bucket.
    async fn request(
        &self,
        mailbox: &str,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ExchangeError> {
        self.client
            .with_retries(mailbox, || {
                self.attempt(
                    mailbox,
                    method.clone(),
                    url,
                    body.clone(),
                    PREFER_IMMUTABLE_IDS,
                )
            })
            .await
    }

    /// One attempt (plus one more with a fresh token after a 401).
    async fn attempt(
        &self,
        mailbox: &str,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
        prefer: &str,
    ) -> Result<(StatusCode, Bytes), ExchangeError> {
        use secrecy::ExposeSecret;
        let key = self.client.token_key(GRAPH_SCOPE)?;
        let _permits = self.client.permits(mailbox).await?;
        let mut refreshed = false;
        loop {
            let token = self.client.bearer(&key).await?;
            let mut request = self
                .client
                .http()
                .request(method.clone(), url)
                .bearer_auth(token.expose_secret())
                .header("Prefer", prefer)
                .header(header::ACCEPT, "application/json");
            if let Some(body) = &body {
                request = request
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            let response = request
                .send()
                .await
                .map_err(|e| ExchangeError::transport("Graph", &e))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                self.client.refused(&key, &token).await;
                refreshed = true;
                continue;
            }
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| throttle::parse_retry_after(v, Utc::now()));
            let bytes = response
                .bytes()
                .await
                .map_err(|e| ExchangeError::transport("Graph", &e))?;
            return classify(status, retry_after, bytes);
        }
    }

    /// `POST /subscriptions`.
    ///
    /// # Errors
    /// As Graph answers; `409` (a subscription for this resource exists) and `400` (e.g. the
    /// validation handshake failed) come back as [`ExchangeError::Rejected`].
    pub async fn create_subscription(
        &self,
        mailbox: &str,
        create: &CreateSubscription<'_>,
    ) -> Result<Subscription, ExchangeError> {
        let body = json_body(create)?;
        let (_, bytes) = self
            .request(
                mailbox,
                Method::POST,
                &self.url("/subscriptions"),
                Some(body),
            )
            .await?;
        parse(&bytes)
    }

    /// `PATCH /subscriptions/{id}` with a new expiry (which also reauthorizes it).
    ///
    /// # Errors
    /// As Graph answers; `404` means the subscription is gone.
    pub async fn renew_subscription(
        &self,
        mailbox: &str,
        id: &str,
        expires: DateTime<Utc>,
    ) -> Result<Subscription, ExchangeError> {
        let body = json_body(&RenewSubscription {
            expiration_date_time: expires,
        })?;
        let url = self.url(&format!("/subscriptions/{}", path_segment(id)));
        let (_, bytes) = self
            .request(mailbox, Method::PATCH, &url, Some(body))
            .await?;
        parse(&bytes)
    }

    /// `DELETE /subscriptions/{id}`; a subscription Graph no longer has counts as deleted.
    ///
    /// # Errors
    /// As Graph answers.
    pub async fn delete_subscription(&self, mailbox: &str, id: &str) -> Result<(), ExchangeError> {
        let url = self.url(&format!("/subscriptions/{}", path_segment(id)));
        match self.request(mailbox, Method::DELETE, &url, None).await {
            Ok(_) => Ok(()),
            Err(ExchangeError::Rejected { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every subscription this app holds, following `@odata.nextLink`.
    ///
    /// # Errors
    /// As Graph answers; more than a sane number of pages is a protocol error.
    pub async fn list_subscriptions(&self) -> Result<Vec<Subscription>, ExchangeError> {
        let mut url = self.url("/subscriptions");
        let mut all = Vec::new();
        for _ in 0..MAX_LIST_PAGES {
            // Listing is app-wide, not per mailbox: it has a bucket of its own.
            let (_, bytes) = self.request("<list>", Method::GET, &url, None).await?;
            let page: SubscriptionPage = parse(&bytes)?;
            all.extend(page.value);
            match page.next_link {
                Some(next) if next != url => url = next,
                _ => return Ok(all),
            }
        }
        Err(ExchangeError::Protocol(
            "Graph kept answering with another page of subscriptions".into(),
        ))
    }
}

/// What a delta request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaOutcome {
    Page(DeltaPage),
    /// The link's sync state is gone (`410`, `SyncStateNotFound`, `resyncRequired`): start
    /// a new round from the window.
    Reset {
        detail: String,
    },
}

impl GraphClient<'_> {
    /// The URL that starts a delta round over `[start, end)` of the room's calendar.
    #[must_use]
    pub fn delta_start_url(
        &self,
        mailbox: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> String {
        let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut url = self.url(&format!(
            "/users/{}/calendarView/delta",
            path_segment(mailbox)
        ));
        url.push_str("?startDateTime=");
        url.push_str(&time(start));
        url.push_str("&endDateTime=");
        url.push_str(&time(end));
        url
    }

    /// GETs one page of a delta round: `url` is the start URL, or a next or delta link used
    /// verbatim.
    ///
    /// # Errors
    /// As Graph answers; an unreadable page is a protocol error.
    pub async fn delta_page(
        &self,
        mailbox: &str,
        url: &str,
    ) -> Result<DeltaOutcome, ExchangeError> {
        let answer = self
            .client
            .with_retries(mailbox, || {
                self.attempt(mailbox, Method::GET, url, None, PREFER_DELTA)
            })
            .await;
        match answer {
            Ok((_, bytes)) => offload::parse(bytes, parse_delta_page)
                .await
                .map(DeltaOutcome::Page)
                .map_err(|e| ExchangeError::Protocol(format!("Graph delta page: {e}"))),
            Err(ExchangeError::Rejected {
                status,
                code,
                message,
            }) if sync_state_lost(status, &code) => Ok(DeltaOutcome::Reset {
                detail: format!("Graph answered {status} {code}: {message}"),
            }),
            Err(e) => Err(e),
        }
    }
}

impl GraphClient<'_> {
    /// The `iCalUId` of one event (a series master, to recognise its occurrences across
    /// backends); `None` when the event is gone.
    ///
    /// # Errors
    /// As Graph answers.
    pub async fn event_ical_uid(
        &self,
        mailbox: &str,
        event_id: &str,
    ) -> Result<Option<String>, ExchangeError> {
        #[derive(serde::Deserialize)]
        struct Uid {
            #[serde(rename = "iCalUId")]
            ical_uid: Option<String>,
        }
        let url = self.url(&format!(
            "/users/{}/events/{}?$select=iCalUId",
            path_segment(mailbox),
            path_segment(event_id)
        ));
        match self.request(mailbox, Method::GET, &url, None).await {
            Ok((_, bytes)) => Ok(parse::<Uid>(&bytes)?.ical_uid),
            Err(ExchangeError::Rejected { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Graph's ways of saying a delta or paging link can no longer be used: `410 Gone`, or a 4xx
/// whose code is `SyncStateNotFound` (in either casing), `syncStateInvalid` or
/// `resyncRequired`.
fn sync_state_lost(status: u16, code: &str) -> bool {
    status == 410
        || ["syncstatenotfound", "syncstateinvalid", "resyncrequired"]
            .iter()
            .any(|c| code.eq_ignore_ascii_case(c))
}

fn json_body(value: &impl serde::Serialize) -> Result<Vec<u8>, ExchangeError> {
    serde_json::to_vec(value).map_err(|e| ExchangeError::Protocol(e.to_string()))
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ExchangeError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ExchangeError::Protocol(format!("Graph answered unreadable JSON: {e}")))
}

/// Subscription ids are GUIDs; anything else is escaped rather than trusted in a path.
fn path_segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Sorts an answer into success, throttling, transient failure or refusal.
fn classify(
    status: StatusCode,
    retry_after: Option<std::time::Duration>,
    body: Bytes,
) -> Result<(StatusCode, Bytes), ExchangeError> {
    if status.is_success() {
        return Ok((status, body));
    }
    let error = ErrorBody::parse(&body).error;
    let detail = format!("Graph answered {status} {}: {}", error.code, error.message);
    if status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::SERVICE_UNAVAILABLE && retry_after.is_some())
    {
        return Err(ExchangeError::Throttled {
            retry_after: retry_after.unwrap_or(std::time::Duration::from_secs(5)),
            detail,
        });
    }
    if status.is_server_error() {
        return Err(ExchangeError::Transient { detail });
    }
    Err(ExchangeError::Rejected {
        status: status.as_u16(),
        code: error.code,
        message: error.message,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    #[test]
    fn a_429_without_retry_after_is_still_throttling_and_a_503_without_it_is_transient() {
        let e = classify(StatusCode::TOO_MANY_REQUESTS, None, Bytes::new()).unwrap_err();
        assert!(matches!(e, ExchangeError::Throttled { .. }));
        let e = classify(StatusCode::SERVICE_UNAVAILABLE, None, Bytes::new()).unwrap_err();
        assert!(matches!(e, ExchangeError::Transient { .. }));
        let e = classify(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Duration::from_millis(1500)),
            Bytes::new(),
        )
        .unwrap_err();
        assert_eq!(e.retry_hint(1), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn a_gone_or_lost_sync_state_in_any_spelling_restarts_the_round() {
        assert!(sync_state_lost(410, ""));
        assert!(sync_state_lost(400, "SyncStateNotFound"));
        assert!(sync_state_lost(400, "syncStateNotFound"));
        assert!(sync_state_lost(400, "resyncRequired"));
        assert!(!sync_state_lost(404, "ErrorItemNotFound"));
        assert!(!sync_state_lost(403, "ErrorAccessDenied"));
    }

    #[test]
    fn a_4xx_keeps_graphs_code_and_message() {
        let e = classify(
            StatusCode::CONFLICT,
            None,
            Bytes::from_static(
                br#"{"error":{"code":"ExtensionError","message":"Subscription Id 1 already exists"}}"#,
            ),
        )
        .unwrap_err();
        assert_eq!(
            e,
            ExchangeError::Rejected {
                status: 409,
                code: "ExtensionError".into(),
                message: "Subscription Id 1 already exists".into()
            }
        );
        assert_eq!(e.retry_hint(1), None);
    }
}
