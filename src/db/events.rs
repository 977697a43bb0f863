//! `notification_events`: every statement on the event table.

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::PgExecutor;

use super::subscriptions::EwsUpdate;
use crate::domain::{Backend, EventStatus, RejectReason};

/// An event as ingress stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub backend: Backend,
    pub remote_subscription_id: Option<String>,
    pub subscription_id: Option<i64>,
    pub mailbox_id: Option<i64>,
    pub kind: String,
    pub item_id: Option<String>,
    pub status: EventStatus,
    pub reject_reason: Option<RejectReason>,
    pub dedupe_key: String,
    /// How long `dedupe_key` stands. `None`: for ever (it names one change: an EWS watermark,
    /// an item version). `Some(window)`: the event names nothing that differs between two
    /// occurrences (a Graph lifecycle notification), so a copy arriving more than `window`
    /// after the stored one is a new event and is stored again.
    pub dedupe_window: Option<Duration>,
    /// JSON text of the event as received.
    pub payload: String,
}

/// The redelivery index's entry for an event: SHA-256 over `backend`, `remote_subscription_id`
/// and `dedupe_key`, each after its length in bytes (big-endian `u64`; a missing subscription
/// id is the length `u64::MAX` with no bytes). The same bytes as the schema's
/// `notification_events_redelivery_digest`, which the migration backfilled stored rows with.
#[must_use]
pub fn redelivery_digest(
    backend: Backend,
    remote_subscription_id: Option<&str>,
    dedupe_key: &str,
) -> [u8; 32] {
    digest_parts([
        Some(backend.as_str()),
        remote_subscription_id,
        Some(dedupe_key),
    ])
}

/// SHA-256 over `parts`, each after its length in bytes as a big-endian `u64` (a missing part
/// is the length `u64::MAX` with no bytes), so that no two lists of parts share their bytes.
/// The scheme of the redelivery digest and of ingest's dedupe keys: both are stored, so its
/// output must never change.
#[must_use]
pub fn digest_parts<'a>(parts: impl IntoIterator<Item = Option<&'a str>>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        match part {
            Some(text) => {
                hasher.update((text.len() as u64).to_be_bytes());
                hasher.update(text.as_bytes());
            }
            None => hasher.update(u64::MAX.to_be_bytes()),
        }
    }
    hasher.finalize().into()
}

/// How many watermarks `subscriptions.recent_watermarks` keeps.
const RECENT_WATERMARKS: usize = 16;

/// Stores a batch in one statement, so in one round trip and one commit: inserts `events`
/// (skipping redeliveries: same backend, subscription and dedupe key, found by
/// [`redelivery_digest`]), applies `ews` to the EWS watermark chains (and records losses
/// reported by Exchange), and stamps the Graph subscriptions of `graph_touched` with their last
/// notification time (each stamp locks the row until commit; a row stamped within the last 5 s
/// is left alone, and ingest names only those it has not stamped itself within that time, see
/// `ingest::stamps`).
/// Returns how many events of each `(backend, kind)` were actually inserted.
///
/// The watermark chain of a subscription only moves forward. A batch moves it only if it
/// inserted at least one event of that subscription and does not end on a watermark the chain
/// has already passed (its stored end, or one of `recent_watermarks`); it records a gap when
/// its `PreviousWatermark` is neither the stored end nor the watermark of a stored event of the
/// subscription (acted on, or a keep-alive). The stored end may lag behind the chain: ingest
/// sends an update only when it cannot tell continuity itself, when Exchange reported a loss,
/// or every few seconds (see `ingest::chains`); a resubscription that resumes from it costs a
/// few redeliveries, which are stored once. A batch that inserted nothing is a redelivery whose
/// first copy was stored (and answered) already: Exchange sends a subscription's next
/// notification only once the previous one was answered, and that answer follows the commit
/// that inserted it, so whatever moved the chain since is newer.
///
/// Events with a `dedupe_window` first retire the key of an identical stored event older than
/// the window (a second statement before the insert, only when the batch has such events): the
/// old row leaves the redelivery index (its key gets its id appended, for the reader), so the
/// new occurrence is inserted under the plain key and its own redeliveries still collide with
/// it. Done outside the insert's transaction on purpose: if the insert then fails, the old
/// row's key has lapsed just the same.
///
/// # Errors
/// Database errors, including a statement timeout.
pub async fn store_batch<'c>(
    executor: impl PgExecutor<'c> + Copy,
    events: &[NewEvent],
    ews: &[EwsUpdate],
    graph_touched: &[i64],
) -> Result<Vec<(Backend, String, i64)>, sqlx::Error> {
    retire_lapsed_keys(executor, events).await?;
    insert_batch(executor, events, ews, graph_touched).await
}

/// The second half of [`store_batch`], its one write: for callers that put a deadline on each
/// round trip of their own connection (the ingest flushers) and so call
/// [`retire_lapsed_keys`] and this one by one.
///
/// # Errors
/// Database errors, including a statement timeout.
pub async fn insert_batch<'c>(
    executor: impl PgExecutor<'c>,
    events: &[NewEvent],
    ews: &[EwsUpdate],
    graph_touched: &[i64],
) -> Result<Vec<(Backend, String, i64)>, sqlx::Error> {
    sqlx::query_as(insert_statement(!ews.is_empty(), !graph_touched.is_empty()))
        .bind(
            events
                .iter()
                .map(|e| e.backend.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.remote_subscription_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| e.subscription_id).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.mailbox_id).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| e.item_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| e.status.as_str()).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| e.reject_reason.map(RejectReason::as_str))
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.dedupe_key.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.payload.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(ews.iter().map(|u| u.subscription_id).collect::<Vec<_>>())
        .bind(
            ews.iter()
                .map(|u| u.first_previous.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            ews.iter()
                .map(|u| u.last_watermark.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(ews.iter().map(|u| u.inner_gap).collect::<Vec<_>>())
        .bind(
            ews.iter()
                .map(|u| u.lost_reason.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(graph_touched)
        .bind(i32::try_from(RECENT_WATERMARKS).unwrap_or(i32::MAX))
        .bind(
            ews.iter()
                .map(|u| {
                    u.previous_keys.as_ref().map(|k| {
                        redelivery_digest(Backend::Ews, Some(&k.remote_subscription_id), &k.event)
                    })
                })
                .collect::<Vec<_>>(),
        )
        .bind(
            ews.iter()
                .map(|u| {
                    u.previous_keys.as_ref().map(|k| {
                        redelivery_digest(Backend::Ews, Some(&k.remote_subscription_id), &k.status)
                    })
                })
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| {
                    redelivery_digest(
                        e.backend,
                        e.remote_subscription_id.as_deref(),
                        &e.dedupe_key,
                    )
                })
                .collect::<Vec<_>>(),
        )
        .fetch_all(executor)
        .await
}

/// The parts of [`insert_batch`]'s statement, put together by [`insert_statement`].
macro_rules! inserted_cte {
    () => {
        "with inserted as (
             insert into notification_events
                 (backend, remote_subscription_id, subscription_id, mailbox_id, kind, item_id,
                  status, reject_reason, dedupe_key, payload, redelivery_digest)
             select backend, remote_subscription_id, subscription_id, mailbox_id, kind, item_id,
                    status, reject_reason, dedupe_key, payload, redelivery_digest
             from unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[],
                         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                         $20::bytea[])
                  as e(backend, remote_subscription_id, subscription_id, mailbox_id, kind,
                       item_id, status, reject_reason, dedupe_key, payload, redelivery_digest)
             on conflict (redelivery_digest) do nothing
             returning backend, kind, subscription_id
         )"
    };
}
macro_rules! ews_cte {
    () => {
        ",
         ews as (
             -- The chain is judged inside the row update, on the row as it is when this
             -- statement gets its lock (a concurrent batch may just have moved it). A batch
             -- applies to a subscription when it inserted one of its events (`i`) and does not
             -- end on a watermark the chain has passed; it moves the chain when it also carries
             -- a watermark. The stored end may lag behind the chain (ingest leaves out updates
             -- it knows to be continuous), so a PreviousWatermark that is not the stored end
             -- continues the chain when the event it came from is stored (`p`). Written out in
             -- each assignment rather than in a subquery, which Postgres would run once per row.
             update subscriptions s set
                 last_watermark = case when (i.subscription_id is not null
                                       and not coalesce(u.last_watermark = s.last_watermark
                                                        or u.last_watermark
                                                           = any(s.recent_watermarks),
                                                        false)) and u.last_watermark is not null
                                       then u.last_watermark else s.last_watermark end,
                 recent_watermarks = case when (i.subscription_id is not null
                                       and not coalesce(u.last_watermark = s.last_watermark
                                                        or u.last_watermark
                                                           = any(s.recent_watermarks),
                                                        false)) and u.last_watermark is not null
                                          then (array_remove(array[u.last_watermark,
                                                                   u.first_previous], null)
                                                || s.recent_watermarks)[1:$17]
                                          else s.recent_watermarks end,
                 gap_detected_at = case when (i.subscription_id is not null
                                       and not coalesce(u.last_watermark = s.last_watermark
                                                        or u.last_watermark
                                                           = any(s.recent_watermarks),
                                                        false))
                                         and (u.inner_gap
                                              or (u.first_previous is not null
                                                  and s.last_watermark is not null
                                                  and s.last_watermark <> u.first_previous
                                                  and p.found is null))
                                        then coalesce(s.gap_detected_at, now())
                                        else s.gap_detected_at end,
                 last_notification_at = now(),
                 lost_at = case when u.lost_reason is not null then coalesce(s.lost_at, now())
                                else s.lost_at end,
                 lost_reason = coalesce(u.lost_reason, s.lost_reason),
                 updated_at = now()
             from unnest($11::bigint[], $12::text[], $13::text[], $14::bool[], $15::text[],
                         $18::bytea[], $19::bytea[])
                      as u(id, first_previous, last_watermark, inner_gap, lost_reason,
                           previous_digest, previous_status_digest)
                  left join (select distinct subscription_id from inserted) i
                      on i.subscription_id = u.id
                  -- Is the event PreviousWatermark names stored? A probe of the redelivery
                  -- index per subscription, under each of its two entries (the second only
                  -- when the first finds nothing).
                  left join lateral (
                      select true as found
                      from (select from notification_events e
                            where e.redelivery_digest = u.previous_digest
                            union all
                            select from notification_events e
                            where e.redelivery_digest = u.previous_status_digest) stored
                      limit 1
                  ) p on true
             -- `s.id = any(...)` as well: lets the planner find the rows by primary key
             -- instead of scanning the whole table (the join alone offers only a hash join).
             where s.id = u.id and s.id = any($11) and s.backend = 'ews'
             returning s.id
         )"
    };
}
macro_rules! graph_cte {
    () => {
        ",
         graph as (
             update subscriptions set last_notification_at = now()
             where id = any($16) and backend = 'graph'
               and (last_notification_at is null
                    or last_notification_at < now() - interval '5 seconds')
             returning id
         )"
    };
}
macro_rules! inserted_counts {
    () => {
        "
         select backend, kind, count(*) from inserted group by backend, kind"
    };
}

/// The statement for a batch, with only the parts it has work for: most batches continue
/// chains this process already judged and stamp no Graph subscription (see `ingest::chains`
/// and `ingest::stamps`), and Postgres sets up every part of a statement on each run, empty
/// or not. Four statements, each prepared once per connection; all take the same parameters.
const fn insert_statement(chains: bool, stamps: bool) -> &'static str {
    match (chains, stamps) {
        (false, false) => concat!(inserted_cte!(), inserted_counts!()),
        (true, false) => concat!(inserted_cte!(), ews_cte!(), inserted_counts!()),
        (false, true) => concat!(inserted_cte!(), graph_cte!(), inserted_counts!()),
        (true, true) => concat!(
            inserted_cte!(),
            ews_cte!(),
            graph_cte!(),
            inserted_counts!()
        ),
    }
}

/// Takes out of the redelivery index (appending its id to its key) every stored event that
/// shares the key of one of `events` with a `dedupe_window` and was received longer than that
/// window ago (see [`store_batch`]); no round trip when none of `events` has a window.
///
/// # Errors
/// Database errors, including a statement timeout.
pub async fn retire_lapsed_keys<'c>(
    executor: impl PgExecutor<'c>,
    events: &[NewEvent],
) -> Result<(), sqlx::Error> {
    let windowed: Vec<(&NewEvent, Duration)> = events
        .iter()
        .filter_map(|e| e.dedupe_window.map(|w| (e, w)))
        .collect();
    if windowed.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "update notification_events n
         set dedupe_key = n.dedupe_key || ':' || n.id, redelivery_digest = null
         from unnest($1::bytea[], $2::float8[]) as r(redelivery_digest, window_seconds)
         where n.redelivery_digest = r.redelivery_digest
           and n.received_at < now() - make_interval(secs => r.window_seconds)",
    )
    .bind(
        windowed
            .iter()
            .map(|(e, _)| {
                redelivery_digest(
                    e.backend,
                    e.remote_subscription_id.as_deref(),
                    &e.dedupe_key,
                )
            })
            .collect::<Vec<_>>(),
    )
    .bind(
        windowed
            .iter()
            .map(|(_, w)| w.as_secs_f64())
            .collect::<Vec<_>>(),
    )
    .execute(executor)
    .await?;
    Ok(())
}

/// Events and reservations per mailbox, for the demo's view.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MailboxCounts {
    pub address: String,
    pub backend: String,
    /// The active subscription's status, or the latest one's.
    pub subscription_status: Option<String>,
    pub events: i64,
    /// Events waiting for a sync round (or in one).
    pub queued: i64,
    /// Reservation rows that are not deleted.
    pub reservations: i64,
    pub synced_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Per configured mailbox: its subscription status, how many events were stored and wait for
/// the sync, its live reservations and its last sync.
///
/// # Errors
/// Database errors.
pub async fn counts_by_mailbox(
    executor: impl PgExecutor<'_>,
) -> Result<Vec<MailboxCounts>, sqlx::Error> {
    sqlx::query_as(
        "select m.address, m.backend,
                (select s.status from subscriptions s where s.mailbox_id = m.id
                 order by (s.status = 'active') desc, s.id desc limit 1) as subscription_status,
                (select count(*) from notification_events e
                 where e.mailbox_id = m.id and e.kind <> 'status') as events,
                (select count(*) from notification_events e
                 where e.mailbox_id = m.id and e.status in ('pending', 'processing')) as queued,
                (select count(*) from reservations r
                 where r.mailbox_id = m.id and r.deleted_at is null) as reservations,
                m.synced_at
         from mailboxes m order by m.address",
    )
    .fetch_all(executor)
    .await
}

/// A stored event as status views show it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RecentEvent {
    pub received_at: chrono::DateTime<chrono::Utc>,
    pub backend: String,
    pub kind: String,
    pub item_id: Option<String>,
    pub address: Option<String>,
}

/// The latest events that name an item, newest first.
///
/// # Errors
/// Database errors.
pub async fn recent_item_events(
    executor: impl PgExecutor<'_>,
    limit: i64,
) -> Result<Vec<RecentEvent>, sqlx::Error> {
    sqlx::query_as(
        "select e.received_at, e.backend, e.kind, e.item_id, m.address
         from notification_events e left join mailboxes m on m.id = e.mailbox_id
         where e.item_id is not null
         order by e.id desc limit $1",
    )
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// When the first event naming `item_id` arrived at or after `since`.
///
/// # Errors
/// Database errors.
pub async fn first_seen_since(
    executor: impl PgExecutor<'_>,
    item_id: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "select min(received_at) from notification_events
         where item_id = $1 and received_at >= $2",
    )
    .bind(item_id)
    .bind(since)
    .fetch_one(executor)
    .await
}

/// An event stored before its subscription was known.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UnmatchedEvent {
    pub id: i64,
    /// The `clientState` the item carried (Graph), for the check at re-match time.
    pub client_state: Option<String>,
}

/// Events of `backend` naming `remote_id` that no subscription was matched to yet.
///
/// # Errors
/// Database errors.
pub async fn unmatched(
    executor: impl PgExecutor<'_>,
    backend: Backend,
    remote_id: &str,
) -> Result<Vec<UnmatchedEvent>, sqlx::Error> {
    sqlx::query_as(
        "select id, payload::jsonb->>'clientState' as client_state from notification_events
         where remote_subscription_id = $1 and backend = $2 and subscription_id is null",
    )
    .bind(remote_id)
    .bind(backend)
    .fetch_all(executor)
    .await
}

/// Attaches events to their subscription; those in `rejected` are kept, never acted on, with
/// `reason`.
///
/// # Errors
/// Database errors.
pub async fn attach(
    executor: impl PgExecutor<'_>,
    subscription_id: i64,
    mailbox_id: i64,
    accepted: &[i64],
    rejected: &[i64],
    reason: RejectReason,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "update notification_events set
             subscription_id = $1, mailbox_id = $2,
             status = case when id = any($4) then 'ignored' else status end,
             reject_reason = case when id = any($4) then $5 else reject_reason end
         where (id = any($3) or id = any($4)) and subscription_id is null",
    )
    .bind(subscription_id)
    .bind(mailbox_id)
    .bind(accepted)
    .bind(rejected)
    .bind(reason.as_str())
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}

/// A Graph lifecycle notification waiting for subscription upkeep.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LifecycleEvent {
    pub id: i64,
    pub kind: String,
    /// The subscription it was matched to (the mailbox's active one, or an older one).
    pub subscription_id: Option<i64>,
}

/// The pending lifecycle notifications of a mailbox, oldest first.
///
/// # Errors
/// Database errors.
pub async fn pending_lifecycle(
    executor: impl PgExecutor<'_>,
    mailbox_id: i64,
) -> Result<Vec<LifecycleEvent>, sqlx::Error> {
    sqlx::query_as(
        "select id, kind, subscription_id from notification_events
         where mailbox_id = $1 and status = 'pending'
           and kind in ('reauthorization_required', 'subscription_removed', 'missed')
         order by id",
    )
    .bind(mailbox_id)
    .fetch_all(executor)
    .await
}

/// Marks events as acted on.
///
/// # Errors
/// Database errors.
pub async fn mark_done(executor: impl PgExecutor<'_>, ids: &[i64]) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "update notification_events
         set status = 'done', processed_at = now(), attempts = attempts + 1, locked_until = null
         where id = any($1) and status in ('pending', 'processing')",
    )
    .bind(ids)
    .execute(executor)
    .await?;
    Ok(())
}

/// Ends the events a successful sync round of `mailbox_id` covered: every event of it still
/// `processing` (the round holds the mailbox, so they are its own) becomes `done`. Events that
/// arrived during the round are `pending` and stay so. Returns how many.
///
/// # Errors
/// Database errors.
pub async fn finish_synced(
    executor: impl PgExecutor<'_>,
    mailbox_id: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "update notification_events
         set status = 'done', processed_at = now(), locked_until = null, last_error = null
         where mailbox_id = $1 and status = 'processing'",
    )
    .bind(mailbox_id)
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}

/// After a failed round of `mailbox_id`: its `processing` events go back to `pending` with the
/// error, or to `dead` once they have had `max_attempts`. A throttled round does not count as
/// an attempt (`count_attempt` false): waiting is not failing. Returns how many died.
///
/// # Errors
/// Database errors.
pub async fn fail_synced(
    executor: impl PgExecutor<'_>,
    mailbox_id: i64,
    error: &str,
    max_attempts: i32,
    count_attempt: bool,
) -> Result<u64, sqlx::Error> {
    let dead: i64 = sqlx::query_scalar(
        "with failed as (
             update notification_events
             set attempts = attempts - case when $4 then 0 else 1 end,
                 status = case when $4 and attempts >= $3 then 'dead' else 'pending' end,
                 last_error = $2, locked_until = null,
                 processed_at = case when $4 and attempts >= $3 then now() end
             where mailbox_id = $1 and status = 'processing'
             returning status
         )
         select count(*) from failed where status = 'dead'",
    )
    .bind(mailbox_id)
    .bind(error)
    .bind(max_attempts)
    .bind(count_attempt)
    .fetch_one(executor)
    .await?;
    Ok(u64::try_from(dead).unwrap_or(0))
}
