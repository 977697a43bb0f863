//! `subscriptions`: every statement on the subscription table.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// What ingress needs to know of a subscription.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SubscriptionRow {
    pub id: i64,
    pub remote_id: String,
    pub backend: String,
    pub mailbox_id: i64,
    pub status: String,
    pub client_state: Option<String>,
}

impl SubscriptionRow {
    /// Notifications on this subscription are welcome (a pending one is being created).
    #[must_use]
    pub fn is_wanted(&self) -> bool {
        matches!(self.status.as_str(), "active" | "pending")
    }
}

/// The bookkeeping EWS notifications cause on their subscription, folded over one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EwsUpdate {
    pub subscription_id: i64,
    /// `PreviousWatermark` of the batch's first notification: compared with the stored chain
    /// by the statement that applies the update, so no lock is held in between.
    pub first_previous: Option<String>,
    /// The watermark of the last event received in the batch.
    pub last_watermark: Option<String>,
    /// The chain broke between two notifications of the same batch.
    pub inner_gap: bool,
    /// Exchange reported the subscription lost (e.g. `ErrorReadEventsFailed`).
    pub lost_reason: Option<String>,
}

impl EwsUpdate {
    #[must_use]
    pub const fn new(subscription_id: i64) -> Self {
        Self {
            subscription_id,
            first_previous: None,
            last_watermark: None,
            inner_gap: false,
            lost_reason: None,
        }
    }
}

const INGEST_COLUMNS: &str = "id, remote_id, backend, mailbox_id, status, client_state";

/// The subscriptions with these remote ids, of either backend.
///
/// # Errors
/// Database errors.
pub async fn find_by_remote_ids(
    executor: impl PgExecutor<'_>,
    remote_ids: &[&str],
) -> Result<Vec<SubscriptionRow>, sqlx::Error> {
    if remote_ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(&format!(
        "select {INGEST_COLUMNS} from subscriptions where remote_id = any($1)"
    ))
    .bind(remote_ids)
    .fetch_all(executor)
    .await
}

/// Whether the service asked EWS for a subscription within `window`.
///
/// # Errors
/// Database errors.
pub async fn ews_subscribed_within(
    executor: impl PgExecutor<'_>,
    window: Duration,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (select 1 from subscriptions
                        where backend = 'ews' and requested_at > now() - make_interval(secs => $1))",
    )
    .bind(window.as_secs_f64())
    .fetch_one(executor)
    .await
}

/// A subscription to record before (pending) or after (active) Exchange was asked for it.
#[derive(Debug, Clone)]
pub struct NewSubscription<'a> {
    pub mailbox_id: i64,
    pub backend: &'a str,
    pub remote_id: Option<&'a str>,
    pub status: &'a str,
    pub client_state: Option<&'a str>,
    pub callback_url: &'a str,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_watermark: Option<&'a str>,
}

/// Records a subscription; returns its id.
///
/// # Errors
/// Database errors, e.g. a duplicate remote id.
pub async fn insert(
    executor: impl PgExecutor<'_>,
    new: &NewSubscription<'_>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "insert into subscriptions
             (mailbox_id, backend, remote_id, status, client_state, callback_url, expires_at,
              last_watermark)
         values ($1, $2, $3, $4, $5, $6, $7, $8)
         returning id",
    )
    .bind(new.mailbox_id)
    .bind(new.backend)
    .bind(new.remote_id)
    .bind(new.status)
    .bind(new.client_state)
    .bind(new.callback_url)
    .bind(new.expires_at)
    .bind(new.last_watermark)
    .fetch_one(executor)
    .await
}

/// Sets a subscription's status (e.g. `superseded` once its replacement is active).
///
/// # Errors
/// Database errors.
pub async fn set_status(
    executor: impl PgExecutor<'_>,
    id: i64,
    status: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("update subscriptions set status = $2, updated_at = now() where id = $1")
        .bind(id)
        .bind(status)
        .execute(executor)
        .await?;
    Ok(())
}

/// Marks a pending subscription active once Exchange has answered with its id.
///
/// # Errors
/// Database errors, e.g. the remote id is already recorded.
pub async fn activate(
    executor: impl PgExecutor<'_>,
    id: i64,
    remote_id: &str,
    expires_at: Option<DateTime<Utc>>,
    last_watermark: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update subscriptions
         set remote_id = $2, status = 'active', expires_at = $3,
             last_watermark = coalesce($4, last_watermark), updated_at = now()
         where id = $1",
    )
    .bind(id)
    .bind(remote_id)
    .bind(expires_at)
    .bind(last_watermark)
    .execute(executor)
    .await?;
    Ok(())
}
