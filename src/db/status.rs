//! The operator commands' statements: what `rooms-sync status` reads and what
//! `rooms-sync events replay` changes. They are kept apart from the worker's statements because
//! they run from a one-shot process next to a running `serve`, on a single connection.

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, PgExecutor};

use crate::domain::{Backend, Coverage, EventStatus, SubscriptionState};

/// One mailbox as `rooms-sync status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MailboxStatus {
    pub address: String,
    pub backend: Backend,
    pub enabled: bool,
    pub coverage: Coverage,
    /// The active subscription, else the most recently requested one; `None`: never subscribed.
    pub subscription_state: Option<SubscriptionState>,
    pub subscription_remote_id: Option<String>,
    /// Graph only: EWS subscriptions do not expire, they lapse when notifications stop.
    pub subscription_expires_at: Option<DateTime<Utc>>,
    /// The latest notification of any of the mailbox's subscriptions (EWS keep-alives included).
    pub last_notification_at: Option<DateTime<Utc>>,
    /// The end of the last successful sync round.
    pub last_synced_at: Option<DateTime<Utc>>,
    /// The error of the last round, only while rounds are failing.
    pub last_sync_error: Option<String>,
    /// Events waiting for a sync (`pending`) or in one (`processing`).
    pub pending_events: i64,
    pub dead_events: i64,
}

/// Events that no mailbox was matched to (yet), which no mailbox row would show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, sqlx::FromRow)]
pub struct UnassignedEvents {
    pub pending_events: i64,
    pub dead_events: i64,
}

/// Everything `rooms-sync status` shows, read from one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overview {
    /// The database's clock at the snapshot, so times are judged against the clock that wrote
    /// them rather than the operator's machine.
    pub generated_at: DateTime<Utc>,
    /// Ordered by address.
    pub mailboxes: Vec<MailboxStatus>,
    pub unassigned: UnassignedEvents,
}

/// Reads the overview in a read-only repeatable-read transaction, so the per-mailbox rows and
/// the unassigned counts agree even while `serve` keeps writing. Takes no locks a running
/// service would wait on.
///
/// # Errors
/// Database errors; an undefined table or column (SQLSTATE 42P01/42703) means the schema is
/// missing or older than this binary.
pub async fn overview(connection: &mut PgConnection) -> Result<Overview, sqlx::Error> {
    let mut tx = connection.begin().await?;
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;
    let generated_at: DateTime<Utc> = sqlx::query_scalar("select now()")
        .fetch_one(&mut *tx)
        .await?;
    let mailboxes = mailbox_rows(&mut *tx).await?;
    let unassigned = unassigned_events(&mut *tx).await?;
    tx.commit().await?;
    Ok(Overview {
        generated_at,
        mailboxes,
        unassigned,
    })
}

/// One row per mailbox. Event counts are aggregated once over the waiting and dead events
/// rather than per mailbox, as `notification_events` keeps every event ever received.
async fn mailbox_rows(executor: impl PgExecutor<'_>) -> Result<Vec<MailboxStatus>, sqlx::Error> {
    sqlx::query_as(
        "with counts as (
             select mailbox_id,
                    count(*) filter (where status in ('pending', 'processing')) as pending_events,
                    count(*) filter (where status = 'dead') as dead_events
             from notification_events
             where status in ('pending', 'processing', 'dead') and mailbox_id is not null
             group by mailbox_id
         )
         select m.address, m.backend, m.enabled, m.coverage,
                s.status as subscription_state, s.remote_id as subscription_remote_id,
                s.expires_at as subscription_expires_at,
                n.last_notification_at,
                m.synced_at as last_synced_at,
                case when m.sync_failures > 0 then m.sync_error end as last_sync_error,
                coalesce(c.pending_events, 0) as pending_events,
                coalesce(c.dead_events, 0) as dead_events
         from mailboxes m
         left join lateral (
             select status, remote_id, expires_at from subscriptions
             where mailbox_id = m.id
             order by status = 'active' desc, requested_at desc, id desc
             limit 1
         ) s on true
         left join lateral (
             select max(last_notification_at) as last_notification_at from subscriptions
             where mailbox_id = m.id
         ) n on true
         left join counts c on c.mailbox_id = m.id
         order by m.address",
    )
    .fetch_all(executor)
    .await
}

async fn unassigned_events(executor: impl PgExecutor<'_>) -> Result<UnassignedEvents, sqlx::Error> {
    sqlx::query_as(
        "select count(*) filter (where status in ('pending', 'processing')) as pending_events,
                count(*) filter (where status = 'dead') as dead_events
         from notification_events
         where status in ('pending', 'processing', 'dead') and mailbox_id is null",
    )
    .fetch_one(executor)
    .await
}

/// An event's id and status, as `events replay` checks the ids it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct EventState {
    pub id: i64,
    pub status: EventStatus,
}

/// The events among `ids` that exist, ordered by id, locked until the transaction ends so their
/// status cannot change between this check and [`replay_dead`].
///
/// # Errors
/// Database errors.
pub async fn lock_events(
    executor: impl PgExecutor<'_>,
    ids: &[i64],
) -> Result<Vec<EventState>, sqlx::Error> {
    sqlx::query_as(
        "select id, status from notification_events where id = any($1) order by id for update",
    )
    .bind(ids)
    .fetch_all(executor)
    .await
}

/// What [`replay_dead`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Replayed {
    pub events: i64,
    /// Mailboxes made due for a sync now.
    pub mailboxes: i64,
}

/// Puts dead events (all of them, or those among `ids`) back to `pending` for the worker, as
/// new: no attempts, due now, no lease. `last_error` is kept for forensics. The mailboxes of
/// the replayed events are made due for a sync now with their failure count cleared, so a
/// mailbox backing off after failed rounds does not sit on the replayed events.
///
/// # Errors
/// Database errors.
pub async fn replay_dead(
    executor: impl PgExecutor<'_>,
    ids: Option<&[i64]>,
) -> Result<Replayed, sqlx::Error> {
    sqlx::query_as(
        "with replayed as (
             update notification_events
             set status = 'pending', attempts = 0, run_at = now(), locked_until = null
             where status = 'dead' and ($1::bigint[] is null or id = any($1))
             returning mailbox_id
         ),
         due as (
             update mailboxes set sync_due_at = now(), sync_failures = 0
             where id in (select mailbox_id from replayed)
             returning id
         )
         select (select count(*) from replayed) as events, (select count(*) from due) as mailboxes",
    )
    .bind(ids)
    .fetch_one(executor)
    .await
}
