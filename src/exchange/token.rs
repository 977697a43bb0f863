//! OAuth client-credentials tokens, cached per (authority, tenant, client, scope): a token is
//! refreshed a while before it expires, one caller fetches while the others wait for its
//! result (single flight), and a token Exchange refused (401) is dropped so that the next
//! caller fetches a fresh one. Tokens never reach a log line.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::ExchangeError;

/// A token is refreshed when less than this is left of its life (Entra tokens live about an
/// hour; a request that starts with a token about to expire could fail half-way).
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Where and as whom to ask for tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    pub token_url: String,
    pub client_id: String,
    /// e.g. `https://graph.microsoft.com/.default`.
    pub scope: String,
}

#[derive(Debug, Clone)]
struct Token {
    value: SecretString,
    refresh_after: Instant,
}

type Slot = Arc<tokio::sync::Mutex<Option<Token>>>;

/// The token cache. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct TokenCache {
    slots: Mutex<HashMap<TokenKey, Slot>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize, Default)]
struct TokenError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl TokenCache {
    fn slot(&self, key: &TokenKey) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(slots.entry(key.clone()).or_default())
    }

    /// A valid token for `key`, fetched with `secret` when the cached one is missing or near
    /// its end.
    ///
    /// # Errors
    /// The token endpoint refused (bad credentials: [`ExchangeError::Rejected`]) or could not be
    /// reached ([`ExchangeError::Transient`]).
    pub async fn get(
        &self,
        http: &reqwest::Client,
        key: &TokenKey,
        secret: &SecretString,
    ) -> Result<SecretString, ExchangeError> {
        let slot = self.slot(key);
        // Holding the slot's lock while fetching is the single flight: callers that arrive
        // meanwhile wait here and then find the fresh token.
        let mut cached = slot.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.refresh_after
        {
            return Ok(token.value.clone());
        }
        let token = fetch(http, key, secret).await?;
        let value = token.value.clone();
        *cached = Some(token);
        Ok(value)
    }

    /// Drops `refused` from the cache if it is still the cached token for `key`, so the next
    /// [`TokenCache::get`] fetches a new one (and a token another caller already replaced is
    /// kept).
    pub async fn invalidate(&self, key: &TokenKey, refused: &SecretString) {
        let slot = self.slot(key);
        let mut cached = slot.lock().await;
        if cached
            .as_ref()
            .is_some_and(|t| t.value.expose_secret() == refused.expose_secret())
        {
            *cached = None;
        }
    }
}

async fn fetch(
    http: &reqwest::Client,
    key: &TokenKey,
    secret: &SecretString,
) -> Result<Token, ExchangeError> {
    let asked = Instant::now();
    let response = http
        .post(&key.token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", key.client_id.as_str()),
            ("client_secret", secret.expose_secret()),
            ("scope", key.scope.as_str()),
        ])
        .send()
        .await
        .map_err(|e| ExchangeError::transport("token endpoint", &e))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| ExchangeError::transport("token endpoint", &e))?;
    if status.is_success() {
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            ExchangeError::Protocol("the token endpoint answered without an access_token".into())
        })?;
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(3599));
        // Refresh at the margin, or half-way through for (unusually) short-lived tokens.
        let refresh_in = lifetime.checked_sub(REFRESH_MARGIN).unwrap_or(lifetime / 2);
        return Ok(Token {
            value: SecretString::from(parsed.access_token),
            refresh_after: asked + refresh_in,
        });
    }
    let error: TokenError = serde_json::from_slice(&body).unwrap_or_default();
    // The description names the problem (e.g. AADSTS7000215: invalid client secret) and never
    // carries the secret itself.
    let message = format!(
        "{} {}",
        error.error,
        error.error_description.lines().next().unwrap_or("")
    );
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        Err(ExchangeError::Transient {
            detail: format!("token endpoint answered {status}: {}", message.trim()),
        })
    } else {
        Err(ExchangeError::Rejected {
            status: status.as_u16(),
            code: error.error,
            message: format!("token endpoint refused: {}", message.trim()),
        })
    }
}
