//! Subscribing the demo's rooms, the way the subscription worker will once it exists: the
//! secret and a pending row are stored first, then Exchange (the simulator) is asked over real
//! HTTP, then the answer is recorded. Until that worker lands, the demo does this itself.

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::config::{Backend, Settings};
use crate::db;
use crate::db::subscriptions::NewSubscription;
use crate::ews::tree as xml;

/// Subscribes every configured room; returns how many were subscribed.
pub(super) async fn subscribe_all(settings: &Settings, pool: &PgPool) -> anyhow::Result<usize> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let mut done = 0;
    for mailbox in &settings.exchange.mailboxes {
        let mailbox_id =
            db::mailboxes::upsert(pool, &mailbox.address, mailbox.backend.as_str()).await?;
        match mailbox.backend {
            Backend::Graph => {
                subscribe_graph(settings, pool, &client, mailbox_id, &mailbox.address).await
            }
            Backend::Ews => {
                subscribe_ews(settings, pool, &client, mailbox_id, &mailbox.address).await
            }
        }
        .with_context(|| format!("subscribing {}", mailbox.address))?;
        done += 1;
    }
    Ok(done)
}

async fn token(
    settings: &Settings,
    client: &reqwest::Client,
    scope: &str,
) -> anyhow::Result<String> {
    use secrecy::ExposeSecret;
    let azure = &settings.exchange.azure;
    let (Some(tenant), Some(id), Some(secret)) =
        (&azure.tenant_id, &azure.client_id, &azure.client_secret)
    else {
        bail!("the demo settings lack Azure credentials");
    };
    let url = format!(
        "{}/{tenant}/oauth2/v2.0/token",
        azure.authority_host.as_str().trim_end_matches('/')
    );
    let body: Value = client
        .post(url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", id.as_str()),
            ("client_secret", secret.expose_secret()),
            ("scope", scope),
        ])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    body["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("the token response has no access_token")
}

async fn subscribe_graph(
    settings: &Settings,
    pool: &PgPool,
    client: &reqwest::Client,
    mailbox_id: i64,
    room: &str,
) -> anyhow::Result<()> {
    // 256 bits of randomness from two v4 UUIDs: Graph allows up to 128 characters.
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let id = db::subscriptions::insert(
        pool,
        &NewSubscription {
            mailbox_id,
            backend: "graph",
            remote_id: None,
            status: "pending",
            client_state: Some(&secret),
            callback_url: &settings.callback_url,
            expires_at: None,
            last_watermark: None,
        },
    )
    .await?;
    let minutes = i64::from(settings.exchange.graph.subscription_lifetime_minutes);
    let expires = chrono::Utc::now() + chrono::Duration::minutes(minutes);
    let bearer = token(settings, client, "https://graph.microsoft.com/.default").await?;
    let response = client
        .post(format!(
            "{}/subscriptions",
            settings
                .exchange
                .graph
                .base_url
                .as_str()
                .trim_end_matches('/')
        ))
        .bearer_auth(bearer)
        .json(&json!({
            "changeType": "created,updated,deleted",
            "notificationUrl": settings.callback_url,
            "lifecycleNotificationUrl": settings.callback_url,
            "resource": format!("/users/{room}/events"),
            "expirationDateTime": expires.to_rfc3339(),
            "clientState": secret,
        }))
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        db::subscriptions::set_status(pool, id, "failed").await?;
        bail!(
            "Graph refused the subscription ({status}): {}",
            body["error"]["message"]
        );
    }
    let remote = body["id"].as_str().context("the subscription has no id")?;
    db::subscriptions::activate(pool, id, remote, Some(expires), None).await?;
    crate::ingest::rematch(pool, remote).await?;
    Ok(())
}

async fn subscribe_ews(
    settings: &Settings,
    pool: &PgPool,
    client: &reqwest::Client,
    mailbox_id: i64,
    room: &str,
) -> anyhow::Result<()> {
    // The pending row opens the grace window for a notification that beats the response.
    let id = db::subscriptions::insert(
        pool,
        &NewSubscription {
            mailbox_id,
            backend: "ews",
            remote_id: None,
            status: "pending",
            client_state: None,
            callback_url: &settings.callback_url,
            expires_at: None,
            last_watermark: None,
        },
    )
    .await?;
    let bearer = token(settings, client, "https://outlook.office365.com/.default").await?;
    let envelope = format!(
        concat!(
            r#"<?xml version="1.0" encoding="utf-8"?>"#,
            r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" "#,
            r#"xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" "#,
            r#"xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">"#,
            r#"<soap:Header><t:RequestServerVersion Version="Exchange2016"/>"#,
            r#"<t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress>{room}</t:SmtpAddress>"#,
            r#"</t:ConnectingSID></t:ExchangeImpersonation></soap:Header><soap:Body>"#,
            r#"<m:Subscribe><m:PushSubscriptionRequest><t:FolderIds>"#,
            r#"<t:DistinguishedFolderId Id="calendar"/></t:FolderIds><t:EventTypes>"#,
            r#"<t:EventType>CreatedEvent</t:EventType><t:EventType>ModifiedEvent</t:EventType>"#,
            r#"<t:EventType>DeletedEvent</t:EventType><t:EventType>MovedEvent</t:EventType>"#,
            r#"</t:EventTypes><t:StatusFrequency>{frequency}</t:StatusFrequency><t:URL>{url}</t:URL>"#,
            r#"</m:PushSubscriptionRequest></m:Subscribe></soap:Body></soap:Envelope>"#
        ),
        room = room,
        frequency = settings.exchange.ews.status_frequency_minutes,
        url = settings.callback_url,
    );
    let response = client
        .post(settings.exchange.ews.url.as_str())
        .bearer_auth(bearer)
        .header("content-type", "text/xml; charset=utf-8")
        .header("x-anchormailbox", room)
        .body(envelope)
        .send()
        .await?;
    let bytes = response.bytes().await?;
    let parsed =
        xml::parse(&bytes).map_err(|e| anyhow::anyhow!("unreadable Subscribe response: {e}"))?;
    let message = parsed
        .path(&[
            "Body",
            "SubscribeResponse",
            "ResponseMessages",
            "SubscribeResponseMessage",
        ])
        .context("no SubscribeResponseMessage")?;
    if message.attr("ResponseClass") != Some("Success") {
        db::subscriptions::set_status(pool, id, "failed").await?;
        bail!(
            "EWS refused the subscription: {}",
            message
                .child("ResponseCode")
                .map_or("", |c| c.text.as_str())
        );
    }
    let remote = message
        .child("SubscriptionId")
        .map(|c| c.text.clone())
        .context("no SubscriptionId")?;
    let watermark = message.child("Watermark").map(|c| c.text.clone());
    db::subscriptions::activate(pool, id, &remote, None, watermark.as_deref()).await?;
    crate::ingest::rematch(pool, &remote).await?;
    Ok(())
}
