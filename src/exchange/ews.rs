//! EWS calls. Every request impersonates the room it concerns (the `ExchangeImpersonation` SOAP
//! header) and names it in `X-AnchorMailbox`, as Exchange Online requires of app-only callers
//! and as routes the request to the room's mailbox server on premises. Authentication is an
//! OAuth token for the Exchange Online resource, or Basic with a service account on premises.
//!
//! Calls: `Subscribe` (push), and what the sync worker reads: `SyncFolderItems`, `GetItem`
//! and `FindItem` with a `CalendarView`.

use bytes::Bytes;
use reqwest::{StatusCode, header};
use secrecy::ExposeSecret;

use super::{Auth, ExchangeClient, ExchangeError, ews_auth};
use crate::ews::{
    CONTENT_TYPE, CalendarViewPage, EventType, EwsError, FetchedItem, FindCalendarView,
    GetCalendarItems, ResponseCode, ResponseError, ServerVersion, SyncChanges, SyncFolderItems,
    parse_find_item_response, parse_get_item_response, parse_subscribe_response,
    parse_sync_folder_items_response,
};
use crate::offload;

/// The scope of app-only tokens for EWS in Exchange Online.
pub const EWS_SCOPE: &str = "https://outlook.office365.com/.default";

/// The changes a room's calendar subscription asks for: everything that can add, change or
/// remove a booking (a delete in Exchange Online arrives as a move to the dumpster).
pub const ROOM_EVENT_TYPES: [EventType; 5] = [
    EventType::Created,
    EventType::Modified,
    EventType::Deleted,
    EventType::Moved,
    EventType::Copied,
];

/// A push subscription request for a room's calendar.
#[derive(Debug, Clone, Copy)]
pub struct PushSubscribe<'a> {
    pub room: &'a str,
    /// Resume from this watermark (replaying what was missed) instead of from now.
    pub watermark: Option<&'a str>,
    pub status_frequency_minutes: u32,
    /// The push callback URL.
    pub url: &'a str,
}

/// What Exchange answered to a Subscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeOutcome {
    Subscribed {
        subscription_id: String,
        /// Where the subscription starts; the resume point until a notification arrives.
        watermark: Option<String>,
    },
    /// The watermark is too old or from another mailbox database: subscribe without one and
    /// resync the room.
    InvalidWatermark,
}

/// EWS calls, borrowed from an [`ExchangeClient`].
#[derive(Debug, Clone, Copy)]
pub struct EwsClient<'a> {
    client: &'a ExchangeClient,
}

impl ExchangeClient {
    /// The EWS side of the client.
    #[must_use]
    pub const fn ews(&self) -> EwsClient<'_> {
        EwsClient { client: self }
    }
}

impl EwsClient<'_> {
    /// Creates a push subscription on the room's calendar.
    ///
    /// # Errors
    /// Throttling, transient failures and refusals, as [`ExchangeError`].
    pub async fn subscribe(
        &self,
        request: &PushSubscribe<'_>,
    ) -> Result<SubscribeOutcome, ExchangeError> {
        let body = crate::ews::PushSubscribe {
            room: request.room,
            event_types: &ROOM_EVENT_TYPES,
            watermark: request.watermark,
            status_frequency_minutes: request.status_frequency_minutes,
            callback_url: request.url,
        }
        .to_xml(ServerVersion::default())
        .map_err(|e| ExchangeError::Config(format!("cannot write Subscribe: {e}")))?;
        self.client
            .with_retries(request.room, || async {
                let (status, bytes) = self.post(request.room, body.clone()).await?;
                match offload::parse(bytes, parse_subscribe_response).await {
                    Ok(Ok(s)) => Ok(SubscribeOutcome::Subscribed {
                        subscription_id: s.subscription_id,
                        watermark: s.watermark,
                    }),
                    Ok(Err(e)) if *e.effective_code() == ResponseCode::ErrorInvalidWatermark => {
                        Ok(SubscribeOutcome::InvalidWatermark)
                    }
                    Ok(Err(e)) => Err(from_ews_error(status, e)),
                    Err(e) => Err(from_response_error(status, e)),
                }
            })
            .await
    }

    /// One `SyncFolderItems` call on the room's calendar from `sync_state` (`None`: from the
    /// beginning).
    ///
    /// # Errors
    /// Throttling, transient failures and refusals, as [`ExchangeError`].
    pub async fn sync_folder_items(
        &self,
        room: &str,
        sync_state: Option<&str>,
        max_changes: u32,
    ) -> Result<SyncOutcome, ExchangeError> {
        let body = SyncFolderItems {
            room,
            sync_state,
            max_changes,
        }
        .to_xml(ServerVersion::default())
        .map_err(|e| ExchangeError::Config(format!("cannot write SyncFolderItems: {e}")))?;
        self.client
            .with_retries(room, || async {
                let (status, bytes) = self.post(room, body.clone()).await?;
                match offload::parse(bytes, parse_sync_folder_items_response).await {
                    Ok(Ok(changes)) => Ok(SyncOutcome::Changes(changes)),
                    Ok(Err(e)) if sync_state_rejected(&e) => Ok(SyncOutcome::StateRejected {
                        detail: e.to_string(),
                    }),
                    Ok(Err(e)) => Err(from_ews_error(status, e)),
                    Err(e) => Err(from_response_error(status, e)),
                }
            })
            .await
    }

    /// `GetItem` of a batch of items with the properties a reservation needs: one answer per
    /// id, in order.
    ///
    /// # Errors
    /// Throttling, transient failures and refusals of the whole request, as [`ExchangeError`];
    /// per-item errors (`ErrorItemNotFound`) are answers, not errors.
    pub async fn get_items(
        &self,
        room: &str,
        item_ids: &[&str],
    ) -> Result<Vec<FetchedItem>, ExchangeError> {
        let body = GetCalendarItems { room, item_ids }
            .to_xml(ServerVersion::default())
            .map_err(|e| ExchangeError::Config(format!("cannot write GetItem: {e}")))?;
        self.client
            .with_retries(room, || async {
                let (status, bytes) = self.post(room, body.clone()).await?;
                let items = offload::parse(bytes, parse_get_item_response)
                    .await
                    .map_err(|e| from_response_error(status, e))?;
                // A busy server answers each message with ErrorServerBusy: retry the batch.
                if let Some(FetchedItem::Error(e)) = items
                    .iter()
                    .find(|i| matches!(i, FetchedItem::Error(e) if e.is_busy() || e.is_transient()))
                {
                    return Err(from_ews_error(status, e.clone()));
                }
                if items.len() != item_ids.len() {
                    return Err(ExchangeError::Protocol(format!(
                        "GetItem answered {} messages for {} ids",
                        items.len(),
                        item_ids.len()
                    )));
                }
                Ok(items)
            })
            .await
    }

    /// `FindItem` with a `CalendarView` of `[start, end)`: the items and occurrences in it.
    /// The window must not exceed [`crate::ews::MAX_CALENDAR_VIEW`].
    ///
    /// # Errors
    /// Throttling, transient failures and refusals, as [`ExchangeError`].
    pub async fn calendar_view(
        &self,
        room: &str,
        start: chrono::DateTime<chrono::Utc>,
        end: chrono::DateTime<chrono::Utc>,
        max_entries: u32,
    ) -> Result<CalendarViewPage, ExchangeError> {
        let body = FindCalendarView {
            room,
            start,
            end,
            max_entries: Some(max_entries),
        }
        .to_xml(ServerVersion::default())
        .map_err(|e| ExchangeError::Config(format!("cannot write FindItem: {e}")))?;
        self.client
            .with_retries(room, || async {
                let (status, bytes) = self.post(room, body.clone()).await?;
                match offload::parse(bytes, parse_find_item_response).await {
                    Ok(Ok(page)) => Ok(page),
                    Ok(Err(e)) => Err(from_ews_error(status, e)),
                    Err(e) => Err(from_response_error(status, e)),
                }
            })
            .await
    }

    /// One POST of a SOAP request for `room` (plus one more with a fresh token after a 401).
    /// Returns the HTTP status and body of any answer that carries SOAP (200, or 500 with a
    /// fault); other statuses become errors here.
    async fn post(&self, room: &str, body: Vec<u8>) -> Result<(StatusCode, Bytes), ExchangeError> {
        let auth = ews_auth(self.client)?;
        let url = self.client.settings().ews.url.as_str();
        let _permits = self.client.permits(room).await?;
        let mut refreshed = false;
        loop {
            let mut request = self
                .client
                .http()
                .post(url)
                .header(header::CONTENT_TYPE, CONTENT_TYPE)
                .header(header::ACCEPT, "text/xml")
                .header("X-AnchorMailbox", room)
                .body(body.clone());
            let token = match &auth {
                Auth::Bearer(key) => {
                    let token = self.client.bearer(key).await?;
                    request = request.bearer_auth(token.expose_secret());
                    Some((key, token))
                }
                Auth::Basic { username } => {
                    let password = self.client.settings().ews.password.as_ref();
                    request =
                        request.basic_auth(username, password.map(ExposeSecret::expose_secret));
                    None
                }
            };
            let response = request
                .send()
                .await
                .map_err(|e| ExchangeError::transport("EWS", &e))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED
                && !refreshed
                && let Some((key, token)) = &token
            {
                self.client.refused(key, token).await;
                refreshed = true;
                continue;
            }
            let bytes = response
                .bytes()
                .await
                .map_err(|e| ExchangeError::transport("EWS", &e))?;
            return match status {
                s if s.is_success() || s == StatusCode::INTERNAL_SERVER_ERROR => Ok((s, bytes)),
                s if s.is_server_error() => Err(ExchangeError::Transient {
                    detail: format!("EWS answered {s}"),
                }),
                s => Err(ExchangeError::Rejected {
                    status: s.as_u16(),
                    code: String::new(),
                    message: format!("EWS answered {s}"),
                }),
            };
        }
    }
}

/// What a `SyncFolderItems` call got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    Changes(SyncChanges),
    /// Exchange no longer accepts the sync state: start again without one (and reconcile).
    StateRejected {
        detail: String,
    },
}

/// The sync state cannot be used: corrupt, from another folder, or from before a mailbox move.
fn sync_state_rejected(e: &EwsError) -> bool {
    *e.effective_code() == ResponseCode::ErrorInvalidSyncStateData
}

/// An error EWS reported, sorted into throttling, transient failure or refusal.
fn from_ews_error(status: StatusCode, e: EwsError) -> ExchangeError {
    let detail = e.to_string();
    if e.is_busy() {
        ExchangeError::Throttled {
            retry_after: e
                .back_off
                .unwrap_or(std::time::Duration::from_secs(5))
                .min(super::throttle::MAX_HINT),
            detail,
        }
    } else if e.is_transient() {
        ExchangeError::Transient { detail }
    } else {
        ExchangeError::Rejected {
            status: status.as_u16(),
            code: e.effective_code().to_string(),
            message: detail,
        }
    }
}

fn from_response_error(status: StatusCode, e: ResponseError) -> ExchangeError {
    match e {
        ResponseError::Fault(fault) => from_ews_error(status, fault),
        // A 500 without a readable fault: a load balancer or a failing server.
        other if status == StatusCode::INTERNAL_SERVER_ERROR => ExchangeError::Transient {
            detail: format!("EWS answered 500: {other}"),
        },
        other => ExchangeError::Protocol(other.to_string()),
    }
}
