//! `subscriptions`: every statement on the subscription table.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

use crate::domain::{Backend, SubscriptionState};

/// What ingress needs to know of a subscription.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SubscriptionRow {
    pub id: i64,
    pub remote_id: String,
    pub backend: Backend,
    pub mailbox_id: i64,
    pub status: SubscriptionState,
    pub client_state: Option<String>,
}

impl SubscriptionRow {
    /// Notifications on this subscription are welcome (a pending one is being created).
    #[must_use]
    pub fn is_wanted(&self) -> bool {
        self.status.is_wanted()
    }
}

/// The bookkeeping EWS notifications cause on their subscription, folded over one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EwsUpdate {
    pub subscription_id: i64,
    /// `PreviousWatermark` of the batch's first notification: compared with the stored chain
    /// by the statement that applies the update, so no lock is held in between.
    pub first_previous: Option<String>,
    /// Where the event whose watermark is `first_previous` would be stored. The chain end on
    /// the subscription row is written only every few seconds, so continuity is judged by
    /// finding the notification `first_previous` came from among the stored events.
    pub previous_keys: Option<WatermarkKeys>,
    /// The watermark of the last event received in the batch.
    pub last_watermark: Option<String>,
    /// The chain broke between two notifications of the same batch.
    pub inner_gap: bool,
    /// Exchange reported the subscription lost (e.g. `ErrorReadEventsFailed`).
    pub lost_reason: Option<String>,
}

/// The redelivery-index entry of a stored EWS event that carried a given watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkKeys {
    pub remote_subscription_id: String,
    /// Its dedupe key as an event acted on.
    pub event: String,
    /// Its dedupe key as a keep-alive status event (stored as ignored).
    pub status: String,
}

impl EwsUpdate {
    #[must_use]
    pub const fn new(subscription_id: i64) -> Self {
        Self {
            subscription_id,
            first_previous: None,
            previous_keys: None,
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
    pub backend: Backend,
    pub remote_id: Option<&'a str>,
    pub status: SubscriptionState,
    pub client_state: Option<&'a str>,
    pub callback_url: &'a str,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_watermark: Option<&'a str>,
    /// Graph: the resource subscribed to.
    pub resource: Option<&'a str>,
    /// EWS: the StatusFrequency asked for.
    pub status_frequency_minutes: Option<i32>,
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
              last_watermark, resource, status_frequency_minutes)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
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
    .bind(new.resource)
    .bind(new.status_frequency_minutes)
    .fetch_one(executor)
    .await
}

/// The subscription a mailbox's upkeep works from: the active one, with everything ingress and
/// earlier upkeep passes recorded on it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ActiveSubscription {
    pub id: i64,
    pub backend: Backend,
    pub remote_id: String,
    pub callback_url: String,
    pub resource: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub renew_at: Option<DateTime<Utc>>,
    pub activated_at: Option<DateTime<Utc>>,
    pub last_watermark: Option<String>,
    pub subscribe_watermark: Option<String>,
    pub last_notification_at: Option<DateTime<Utc>>,
    pub gap_detected_at: Option<DateTime<Utc>>,
    pub lost_at: Option<DateTime<Utc>>,
    pub lost_reason: Option<String>,
    pub status_frequency_minutes: Option<i32>,
}

impl ActiveSubscription {
    /// Where an EWS resubscription resumes: the last event received, else the Subscribe
    /// response's watermark.
    #[must_use]
    pub fn resume_watermark(&self) -> Option<&str> {
        self.last_watermark
            .as_deref()
            .or(self.subscribe_watermark.as_deref())
    }
}

/// The active subscription of a mailbox, if any.
///
/// # Errors
/// Database errors.
pub async fn active_for_mailbox(
    executor: impl PgExecutor<'_>,
    mailbox_id: i64,
) -> Result<Option<ActiveSubscription>, sqlx::Error> {
    sqlx::query_as(
        "select id, backend, remote_id, callback_url, resource, expires_at, renew_at,
                activated_at, last_watermark, subscribe_watermark, last_notification_at,
                gap_detected_at, lost_at, lost_reason, status_frequency_minutes
         from subscriptions where mailbox_id = $1 and status = 'active'",
    )
    .bind(mailbox_id)
    .fetch_optional(executor)
    .await
}

/// What Exchange answered to a create or Subscribe request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation<'a> {
    pub remote_id: &'a str,
    pub expires_at: Option<DateTime<Utc>>,
    pub renew_at: Option<DateTime<Utc>>,
    pub subscribe_watermark: Option<&'a str>,
}

/// Makes the pending subscription `id` the active one of its mailbox, and ends the one it
/// replaces (`replaced`: its id and why), in one transaction: the mailbox never has two active
/// subscriptions, and never none in between. The replaced one becomes `superseded` (EWS
/// notifications for it are then answered `Unsubscribe`).
///
/// # Errors
/// Database errors, e.g. the remote id is already recorded.
pub async fn activate(
    pool: &PgPool,
    id: i64,
    activation: &Activation<'_>,
    replaced: Option<(i64, &str)>,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let Some((old, why)) = replaced {
        // First, so that the one-active-per-mailbox index never sees two.
        end(&mut *tx, old, SubscriptionState::Superseded, why).await?;
    }
    sqlx::query(
        "update subscriptions
         set remote_id = $2, status = 'active', expires_at = $3, renew_at = $4,
             subscribe_watermark = $5, activated_at = now(), updated_at = now()
         where id = $1",
    )
    .bind(id)
    .bind(activation.remote_id)
    .bind(activation.expires_at)
    .bind(activation.renew_at)
    .bind(activation.subscribe_watermark)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Ends a subscription: `state` is `removed`, `expired`, `failed` or `superseded`; `reason`
/// says why, for operators.
///
/// # Errors
/// Database errors.
pub async fn end(
    executor: impl PgExecutor<'_>,
    id: i64,
    state: SubscriptionState,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update subscriptions set status = $2, ended_at = now(), end_reason = $3,
                                  updated_at = now()
         where id = $1 and status in ('active', 'pending')",
    )
    .bind(id)
    .bind(state)
    .bind(reason)
    .execute(executor)
    .await?;
    Ok(())
}

/// Records a successful Graph renewal.
///
/// # Errors
/// Database errors.
pub async fn renewed(
    executor: impl PgExecutor<'_>,
    id: i64,
    expires_at: DateTime<Utc>,
    renew_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update subscriptions set expires_at = $2, renew_at = $3, renewed_at = now(),
                                  updated_at = now()
         where id = $1",
    )
    .bind(id)
    .bind(expires_at)
    .bind(renew_at)
    .execute(executor)
    .await?;
    Ok(())
}

/// Remote ids of the Graph subscriptions the service still wants (active or being created):
/// listing Graph's subscriptions, anything else at our callback is an orphan.
///
/// # Errors
/// Database errors.
pub async fn wanted_graph_remote_ids(
    executor: impl PgExecutor<'_>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "select remote_id from subscriptions
         where backend = 'graph' and status in ('active', 'pending') and remote_id is not null",
    )
    .fetch_all(executor)
    .await
}

/// Whether a Graph subscription was asked for within `window` and is not settled yet: its id
/// may show in Graph's list before the database knows it.
///
/// # Errors
/// Database errors.
pub async fn graph_create_in_flight(
    executor: impl PgExecutor<'_>,
    window: Duration,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (select 1 from subscriptions
                        where backend = 'graph' and status = 'pending'
                          and requested_at > now() - make_interval(secs => $1))",
    )
    .bind(window.as_secs_f64())
    .fetch_one(executor)
    .await
}

/// Active Graph subscriptions activated before `before` (listing started then), with their
/// mailbox: the ones Graph's list must contain.
///
/// # Errors
/// Database errors.
pub async fn active_graph_before(
    executor: impl PgExecutor<'_>,
    before: DateTime<Utc>,
) -> Result<Vec<(i64, i64, String)>, sqlx::Error> {
    sqlx::query_as(
        "select id, mailbox_id, remote_id from subscriptions
         where backend = 'graph' and status = 'active' and activated_at < $1",
    )
    .bind(before)
    .fetch_all(executor)
    .await
}

/// Soonest expiry of an active Graph subscription and the oldest last-notification time of an
/// active subscription (its activation when it has had none), for metrics.
///
/// # Errors
/// Database errors.
pub async fn liveness_extremes(
    executor: impl PgExecutor<'_>,
) -> Result<(Option<DateTime<Utc>>, Option<DateTime<Utc>>), sqlx::Error> {
    sqlx::query_as(
        "select min(expires_at), min(coalesce(last_notification_at, activated_at))
         from subscriptions where status = 'active'",
    )
    .fetch_one(executor)
    .await
}

/// Every Graph remote id the service ever recorded.
///
/// # Errors
/// Database errors.
pub async fn known_graph_remote_ids(
    executor: impl PgExecutor<'_>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "select remote_id from subscriptions where backend = 'graph' and remote_id is not null",
    )
    .fetch_all(executor)
    .await
}
