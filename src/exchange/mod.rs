//! The outbound side: every call the service makes to Exchange goes through [`ExchangeClient`].
//! No SQL here and no knowledge of the service's tables: callers hand in what to send and get
//! typed answers or an [`ExchangeError`] that says whether, and after how long, to try again.
//!
//! What the layer guarantees for every call:
//! - one `reqwest` client with connect and request timeouts;
//! - OAuth tokens from a per-(authority, tenant, client, scope) cache (see [`token`]); after a
//!   401 the token is dropped and the call is made once more with a fresh one; on-premises EWS
//!   can use Basic auth instead; credentials never reach a log line;
//! - at most [`Limits::per_mailbox`] requests in flight per mailbox (Graph allows four per app
//!   and mailbox) and [`Limits::global`] in all;
//! - throttling (Graph `429`/`503` with `Retry-After`, EWS `ErrorServerBusy` with
//!   `BackOffMilliseconds`) and transient failures (5xx, transport errors) are retried in place
//!   when the wait is short, with exponential back-off and jitter; a longer wait is returned
//!   to the caller as [`ExchangeError::Throttled`] so it can reschedule instead of sleeping;
//! - a throttled mailbox is paused for every caller, not only the throttled call: the
//!   subscription upkeep and the sync of one room wait out Exchange's back-off together.

pub mod ews;
pub mod graph;
pub mod throttle;
pub mod token;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{AzureSettings, ExchangeSettings};
use token::{TokenCache, TokenKey};

/// Why a call to Exchange did not give the answer asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// Exchange asked us to slow down; try again after `retry_after`.
    #[error("throttled by Exchange, retry after {retry_after:?}: {detail}")]
    Throttled {
        retry_after: Duration,
        detail: String,
    },
    /// A failure that may pass: 5xx, a timeout, a refused connection, a busy mailbox server.
    #[error("transient failure: {detail}")]
    Transient { detail: String },
    /// Exchange refused the request itself (4xx, or an EWS error response).
    #[error("refused ({status} {code}): {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// An answer that cannot be read.
    #[error("unreadable answer: {0}")]
    Protocol(String),
    /// The settings lack what the call needs (e.g. credentials).
    #[error("not configured: {0}")]
    Config(String),
}

impl ExchangeError {
    pub(crate) fn transport(what: &str, error: &reqwest::Error) -> Self {
        // reqwest's Display names the URL but never headers, so no credential can leak here.
        let kind = if error.is_timeout() {
            "timed out"
        } else if error.is_connect() {
            "could not connect"
        } else {
            "failed"
        };
        Self::Transient {
            detail: format!("{what}: request {kind} ({error})"),
        }
    }

    /// How long to wait before the same call may succeed, when waiting can help at all.
    #[must_use]
    pub fn retry_hint(&self, attempt: u32) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after, .. } => Some(*retry_after),
            Self::Transient { .. } => Some(throttle::backoff(
                attempt,
                Duration::from_secs(1),
                Duration::from_secs(30),
            )),
            Self::Rejected { .. } | Self::Protocol(_) | Self::Config(_) => None,
        }
    }
}

/// Concurrency and retry limits of the client.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests in flight to one mailbox.
    pub per_mailbox: usize,
    /// Requests in flight in all.
    pub global: usize,
    /// Attempts of one call, the first included, when failures are retried in place.
    pub attempts: u32,
    /// The longest wait taken in place; longer ones go back to the caller.
    pub max_inline_wait: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_mailbox: 4,
            global: 32,
            attempts: 3,
            max_inline_wait: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            // EWS ends a batch request after a minute; anything slower is a hung connection.
            request_timeout: Duration::from_secs(70),
        }
    }
}

/// The client. One per process, shared behind an `Arc`.
#[derive(Debug)]
pub struct ExchangeClient {
    http: reqwest::Client,
    tokens: TokenCache,
    settings: ExchangeSettings,
    limits: Limits,
    global: Arc<Semaphore>,
    mailboxes: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Mailboxes Exchange asked to back off, until when.
    paused: Mutex<HashMap<String, tokio::time::Instant>>,
}

/// Credentials for one call.
#[derive(Debug, Clone)]
pub(crate) enum Auth {
    Bearer(TokenKey),
    Basic { username: String },
}

impl ExchangeClient {
    /// Builds the client.
    ///
    /// # Errors
    /// When the TLS backend cannot be set up.
    pub fn new(settings: ExchangeSettings, limits: Limits) -> Result<Self, ExchangeError> {
        let http = reqwest::Client::builder()
            .connect_timeout(limits.connect_timeout)
            .timeout(limits.request_timeout)
            .user_agent(concat!("rooms-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ExchangeError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            tokens: TokenCache::default(),
            settings,
            limits,
            global: Arc::new(Semaphore::new(limits.global)),
            mailboxes: Mutex::new(HashMap::new()),
            paused: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) const fn settings(&self) -> &ExchangeSettings {
        &self.settings
    }

    pub(crate) const fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Waits out a back-off Exchange asked of `mailbox`, then for a slot for it (and a global
    /// one). Dropping the permits frees them.
    pub(crate) async fn permits(
        &self,
        mailbox: &str,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), ExchangeError> {
        loop {
            let until = self
                .paused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&mailbox.to_ascii_lowercase())
                .copied();
            match until {
                Some(until) if until > tokio::time::Instant::now() => {
                    tokio::time::sleep_until(until).await;
                }
                _ => break,
            }
        }
        let per_mailbox = {
            let mut map = self
                .mailboxes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Arc::clone(
                map.entry(mailbox.to_ascii_lowercase())
                    .or_insert_with(|| Arc::new(Semaphore::new(self.limits.per_mailbox))),
            )
        };
        let closed = |_| ExchangeError::Transient {
            detail: "the client is shutting down".into(),
        };
        let mailbox_permit = per_mailbox.acquire_owned().await.map_err(closed)?;
        let global_permit = Arc::clone(&self.global)
            .acquire_owned()
            .await
            .map_err(closed)?;
        Ok((mailbox_permit, global_permit))
    }

    /// The token-cache key for `scope` with the configured app registration.
    pub(crate) fn token_key(&self, scope: &str) -> Result<TokenKey, ExchangeError> {
        let AzureSettings {
            authority_host,
            tenant_id,
            client_id,
            ..
        } = &self.settings.azure;
        let (Some(tenant), Some(client)) = (tenant_id, client_id) else {
            return Err(ExchangeError::Config(
                "AzureTenantId and AzureClientId are required for OAuth".into(),
            ));
        };
        Ok(TokenKey {
            token_url: format!(
                "{}/{tenant}/oauth2/v2.0/token",
                authority_host.as_str().trim_end_matches('/')
            ),
            client_id: client.clone(),
            scope: scope.to_owned(),
        })
    }

    /// A bearer token for `key`.
    pub(crate) async fn bearer(&self, key: &TokenKey) -> Result<SecretString, ExchangeError> {
        let Some(secret) = &self.settings.azure.client_secret else {
            return Err(ExchangeError::Config(
                "AzureClientSecret is required for OAuth".into(),
            ));
        };
        self.tokens.get(&self.http, key, secret).await
    }

    /// Forgets a token Exchange refused.
    pub(crate) async fn refused(&self, key: &TokenKey, token: &SecretString) {
        self.tokens.invalidate(key, token).await;
    }

    /// Pauses every call to `mailbox` for `wait`.
    fn pause(&self, mailbox: &str, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        let mut paused = self.paused.lock().unwrap_or_else(PoisonError::into_inner);
        paused.retain(|_, at| *at > tokio::time::Instant::now());
        let entry = paused.entry(mailbox.to_ascii_lowercase()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Runs `call` (a request concerning `mailbox`) until it succeeds, fails for good, or needs
    /// a wait longer than [`Limits::max_inline_wait`], sleeping the hinted time between
    /// attempts. Throttling pauses the whole mailbox for the time Exchange asked.
    pub(crate) async fn with_retries<T, F, Fut>(
        &self,
        mailbox: &str,
        mut call: F,
    ) -> Result<T, ExchangeError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ExchangeError>>,
    {
        let mut attempt = 1;
        loop {
            let outcome = call().await;
            if let Err(ExchangeError::Throttled { retry_after, .. }) = &outcome {
                self.pause(mailbox, *retry_after);
            }
            match outcome {
                Err(error) if attempt < self.limits.attempts => match error.retry_hint(attempt) {
                    Some(wait) if wait <= self.limits.max_inline_wait => {
                        tracing::debug!(%error, ?wait, attempt, "retrying an Exchange call");
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                    }
                    _ => return Err(error),
                },
                other => return other,
            }
        }
    }
}

/// How EWS calls authenticate, from the settings.
pub(crate) fn ews_auth(client: &ExchangeClient) -> Result<Auth, ExchangeError> {
    let ews = &client.settings().ews;
    match ews.auth {
        crate::config::EwsAuth::OAuth => Ok(Auth::Bearer(client.token_key(ews::EWS_SCOPE)?)),
        crate::config::EwsAuth::Basic => {
            let Some(username) = ews.username.clone() else {
                return Err(ExchangeError::Config(
                    "EwsUsername is required for basic".into(),
                ));
            };
            Ok(Auth::Basic { username })
        }
    }
}
