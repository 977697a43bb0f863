//! The Microsoft identity platform's client-credentials token endpoint
//! (`POST /{tenant}/oauth2/v2.0/token`), issuing opaque bearer tokens that Graph and EWS
//! calls must present. Tokens expire after `expires_in` seconds of scaled time.
//!
//! Each token remembers the resource its scope named (its audience): a Graph token is
//! refused by EWS and an Exchange token by Graph, as Microsoft's services check `aud`.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use serde::Serialize;
use serde_json::json;

use super::{AppState, json_response};

/// What Microsoft returns as `expires_in` for app tokens.
pub(crate) const TOKEN_LIFETIME_SECS: u64 = 3599;

/// The resource an access token was issued for (its `aud` claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TokenResource {
    /// `https://graph.microsoft.com`: good for Graph routes only.
    Graph,
    /// `https://outlook.office365.com`: good for EWS only.
    Ews,
}

impl TokenResource {
    /// The resource a client-credentials scope names; `None` for a scope the simulator
    /// does not grant.
    pub(crate) fn from_scope(scope: &str) -> Option<Self> {
        match scope {
            "https://graph.microsoft.com/.default" => Some(Self::Graph),
            "https://outlook.office365.com/.default" => Some(Self::Ews),
            _ => None,
        }
    }

    /// The audience URI, as Exchange quotes it when it refuses a token.
    pub(crate) fn audience(self) -> &'static str {
        match self {
            Self::Graph => "https://graph.microsoft.com",
            Self::Ews => "https://outlook.office365.com",
        }
    }
}

/// An issued access token.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub(crate) expires_at: tokio::time::Instant,
    pub(crate) resource: TokenResource,
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/{tenant}/oauth2/v2.0/token", post(token))
}

/// An AAD-style error body (`error`, `error_description`, `error_codes`...).
fn aad_error(status: StatusCode, error: &str, code: u32, description: &str) -> Response {
    let now = chrono::Utc::now();
    json_response(
        status,
        &json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {description} Timestamp: {}", now.format("%Y-%m-%d %H:%M:%SZ")),
            "error_codes": [code],
            "timestamp": now.format("%Y-%m-%d %H:%M:%SZ").to_string(),
            "trace_id": "00000000-0000-0000-0000-000000000000",
            "correlation_id": "00000000-0000-0000-0000-000000000000",
        }),
    )
}

async fn token(
    State(shared): State<AppState>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    // Parsed by hand: the main crate builds axum without its `form` feature.
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let config = &shared.config;
    if tenant != config.tenant_id {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            "Tenant not found.",
        );
    }
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if field("grant_type") != "client_credentials" {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    let secret_ok = bool::from(subtle::ConstantTimeEq::ct_eq(
        field("client_secret").as_bytes(),
        config.client_secret.as_bytes(),
    ));
    if field("client_id") != config.client_id || !secret_ok {
        return aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7_000_215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
        );
    }
    let Some(resource) = TokenResource::from_scope(field("scope")) else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1_002_012,
            "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.",
        );
    };
    // The lifetime is scaled like every other clock in the simulator and the scaled value
    // is what `expires_in` reports, so a client that honours it refreshes in time.
    let lifetime = shared.scaled(Duration::from_secs(TOKEN_LIFETIME_SECS));
    let expires_in = lifetime.as_secs().max(1);
    let access_token = {
        let mut state = shared.lock();
        let token = format!("eyJ0eXAiOiJKV1QiLCJzaW0iOnRydWV9.{}", state.rng.hex(32));
        state.tokens.insert(
            token.clone(),
            Token {
                expires_at: tokio::time::Instant::now() + lifetime,
                resource,
            },
        );
        token
    };
    json_response(
        StatusCode::OK,
        &json!({
            "token_type": "Bearer",
            "expires_in": expires_in,
            "ext_expires_in": expires_in,
            "access_token": access_token,
        }),
    )
}
