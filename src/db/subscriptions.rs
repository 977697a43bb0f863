//! `subscriptions`: every statement on the subscription table.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, Postgres, Transaction};

/// What ingress needs to know of a subscription.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SubscriptionRow {
    pub id: i64,
    pub remote_id: String,
    pub backend: String,
    pub mailbox_id: i64,
    pub status: String,
    pub client_state: Option<String>,
    pub last_watermark: Option<String>,
}

impl SubscriptionRow {
    /// Notifications on this subscription are welcome (a pending one is being created).
    #[must_use]
    pub fn is_wanted(&self) -> bool {
        matches!(self.status.as_str(), "active" | "pending")
    }
}

/// The bookkeeping one EWS notification causes on its subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EwsUpdate {
    pub subscription_id: i64,
    /// The watermark of the last event received, if the notification carried one.
    pub last_watermark: Option<String>,
    /// `PreviousWatermark` did not continue the stored chain.
    pub gap: bool,
    /// Exchange reported the subscription lost (e.g. `ErrorReadEventsFailed`).
    pub lost_reason: Option<String>,
}

const INGEST_COLUMNS: &str =
    "id, remote_id, backend, mailbox_id, status, client_state, last_watermark";

/// Locks the named subscriptions of `backend` for this transaction, in id order (so concurrent
/// transactions cannot deadlock), and returns them.
///
/// # Errors
/// Database errors.
pub async fn lock_for_ingest(
    conn: &mut PgConnection,
    backend: &str,
    remote_ids: &[&str],
) -> Result<Vec<SubscriptionRow>, sqlx::Error> {
    if remote_ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(&format!(
        "select {INGEST_COLUMNS} from subscriptions
         where backend = $1 and remote_id = any($2) order by id for update"
    ))
    .bind(backend)
    .bind(remote_ids)
    .fetch_all(conn)
    .await
}

/// The named subscriptions of `backend`, without locking them.
///
/// # Errors
/// Database errors.
pub async fn find_for_ingest(
    conn: &mut PgConnection,
    backend: &str,
    remote_ids: &[&str],
) -> Result<Vec<SubscriptionRow>, sqlx::Error> {
    if remote_ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(&format!(
        "select {INGEST_COLUMNS} from subscriptions where backend = $1 and remote_id = any($2)"
    ))
    .bind(backend)
    .bind(remote_ids)
    .fetch_all(conn)
    .await
}

/// Whether the service asked EWS for a subscription within `window`.
///
/// # Errors
/// Database errors.
pub async fn ews_subscribed_within(
    conn: &mut PgConnection,
    window: Duration,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (select 1 from subscriptions
                        where backend = 'ews' and requested_at > now() - make_interval(secs => $1))",
    )
    .bind(window.as_secs_f64())
    .fetch_one(conn)
    .await
}

/// Advances the watermark chain, stamps the time of the last notification, and records gaps and
/// losses for the worker.
///
/// # Errors
/// Database errors.
pub async fn record_ews_notifications(
    tx: &mut Transaction<'_, Postgres>,
    updates: &[EwsUpdate],
) -> Result<(), sqlx::Error> {
    if updates.is_empty() {
        return Ok(());
    }
    let conn: &mut PgConnection = tx;
    sqlx::query(
        "update subscriptions s set
             last_watermark = coalesce(u.last_watermark, s.last_watermark),
             last_notification_at = now(),
             gap_detected_at = case when u.gap then coalesce(s.gap_detected_at, now())
                                    else s.gap_detected_at end,
             lost_at = case when u.lost_reason is not null then coalesce(s.lost_at, now())
                            else s.lost_at end,
             lost_reason = coalesce(u.lost_reason, s.lost_reason),
             updated_at = now()
         from unnest($1::bigint[], $2::text[], $3::bool[], $4::text[])
              as u(id, last_watermark, gap, lost_reason)
         where s.id = u.id",
    )
    .bind(
        updates
            .iter()
            .map(|u| u.subscription_id)
            .collect::<Vec<_>>(),
    )
    .bind(
        updates
            .iter()
            .map(|u| u.last_watermark.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(updates.iter().map(|u| u.gap).collect::<Vec<_>>())
    .bind(
        updates
            .iter()
            .map(|u| u.lost_reason.as_deref())
            .collect::<Vec<_>>(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Stamps the last notification time of Graph subscriptions, at most every few seconds per row:
/// every stamp locks the row until commit, and Graph may deliver for one subscription on many
/// connections at once.
///
/// # Errors
/// Database errors.
pub async fn touch_graph(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[i64],
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let conn: &mut PgConnection = tx;
    sqlx::query(
        "update subscriptions set last_notification_at = now()
         where id = any($1)
           and (last_notification_at is null or last_notification_at < now() - interval '5 seconds')",
    )
    .bind(ids)
    .execute(conn)
    .await?;
    Ok(())
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
