//! `mailboxes`: every statement on the mailbox table: the configured list reconciled into rows,
//! and the upkeep schedule (claim a due mailbox under a lease, finish it, back it off).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::domain::{Backend, Coverage, ResyncReason};

/// Records a room mailbox (or updates its backend); returns its id.
///
/// # Errors
/// Database errors.
pub async fn upsert(
    executor: impl PgExecutor<'_>,
    address: &str,
    backend: Backend,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "insert into mailboxes (address, backend) values (lower($1), $2)
         on conflict on constraint mailboxes_address_key
         do update set backend = excluded.backend, updated_at = now()
         returning id",
    )
    .bind(address)
    .bind(backend)
    .fetch_one(executor)
    .await
}

/// What reconciling the configured list changed, one row per mailbox touched.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReconciledMailbox {
    pub address: String,
    pub backend: Backend,
    /// `added`, `moved` (backend changed), `enabled` (listed again) or `disabled`.
    pub change: String,
}

/// Makes the table match the configured mailboxes in one statement: listed ones are added,
/// re-enabled or moved to their configured backend, the others are disabled (never deleted:
/// their subscriptions are ended by upkeep, their reservations kept). Every touched mailbox is
/// due for upkeep at once. Addresses are compared in lower case.
///
/// # Errors
/// Database errors.
pub async fn reconcile(
    executor: impl PgExecutor<'_>,
    wanted: &[(String, Backend)],
) -> Result<Vec<ReconciledMailbox>, sqlx::Error> {
    sqlx::query_as(
        "with wanted as (
             select distinct on (lower(address)) lower(address) as address, backend
             from unnest($1::text[], $2::text[]) as w(address, backend)
         ),
         before as (select id, address, backend, enabled from mailboxes),
         upserted as (
             insert into mailboxes (address, backend, upkeep_due_at)
             select address, backend, now() from wanted
             on conflict on constraint mailboxes_address_key do update
                 set backend = excluded.backend, enabled = true, upkeep_due_at = now(),
                     updated_at = now()
                 where mailboxes.backend <> excluded.backend or not mailboxes.enabled
             returning id, address, backend
         ),
         disabled as (
             update mailboxes set enabled = false, upkeep_due_at = now(), updated_at = now()
             where enabled and address not in (select address from wanted)
             returning id, address, backend
         )
         select u.address, u.backend,
                case when b.id is null then 'added'
                     when b.backend <> u.backend then 'moved'
                     else 'enabled' end as change
         from upserted u left join before b on b.id = u.id
         union all
         select d.address, d.backend, 'disabled' from disabled d
         order by 1",
    )
    .bind(wanted.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>())
    .bind(wanted.iter().map(|(_, b)| b.as_str()).collect::<Vec<_>>())
    .fetch_all(executor)
    .await
}

/// A mailbox claimed for upkeep.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UpkeepClaim {
    pub id: i64,
    pub address: String,
    pub backend: Backend,
    pub enabled: bool,
    /// Consecutive failed upkeep attempts before this one.
    pub upkeep_failures: i32,
    pub coverage: Coverage,
}

/// Claims up to `limit` mailboxes that need upkeep, each under a lease of `lease`: those whose
/// scheduled time has come, and (unless backing off after a failure) those that ingress has
/// flagged since: a lost or broken EWS subscription, or a pending Graph lifecycle event.
/// Disabled mailboxes are due only while they still have a live subscription to end. A mailbox
/// leased by another worker is skipped, so no two workers act on one mailbox at once.
///
/// # Errors
/// Database errors.
pub async fn claim_due(
    executor: impl PgExecutor<'_>,
    limit: i64,
    lease: Duration,
) -> Result<Vec<UpkeepClaim>, sqlx::Error> {
    sqlx::query_as(
        "with due as (
             select m.id from mailboxes m
             where (m.upkeep_locked_until is null or m.upkeep_locked_until < now())
               and (m.enabled or exists (
                       select 1 from subscriptions s
                       where s.mailbox_id = m.id and s.status in ('active', 'pending')))
               and (m.upkeep_due_at <= now()
                    or (m.upkeep_failures = 0 and (
                        exists (select 1 from subscriptions s
                                where s.mailbox_id = m.id and s.status = 'active'
                                  and (s.lost_at is not null or s.gap_detected_at is not null))
                        or exists (select 1 from notification_events e
                                   where e.mailbox_id = m.id and e.status = 'pending'
                                     and e.kind in ('reauthorization_required',
                                                    'subscription_removed', 'missed')))))
             order by m.upkeep_due_at
             limit $1
             for update of m skip locked
         )
         update mailboxes m set upkeep_locked_until = now() + make_interval(secs => $2)
         from due where m.id = due.id
         returning m.id, m.address, m.backend, m.enabled, m.upkeep_failures, m.coverage",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .fetch_all(executor)
    .await
}

/// The coverage a mailbox had before [`finish_upkeep`] or [`fail_upkeep`] changed it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CoverageChange {
    pub previous: Coverage,
    pub previous_reason: Option<String>,
}

/// Ends a successful upkeep pass: releases the lease, clears the failure count, records the
/// coverage and schedules the next look at `next_due`. Returns what the coverage was before.
///
/// # Errors
/// Database errors.
pub async fn finish_upkeep(
    executor: impl PgExecutor<'_>,
    id: i64,
    next_due: DateTime<Utc>,
    coverage: Coverage,
    reason: Option<&str>,
) -> Result<Option<CoverageChange>, sqlx::Error> {
    sqlx::query_as(
        "update mailboxes m set
             upkeep_locked_until = null, upkeep_due_at = $2, upkeep_failures = 0,
             upkeep_error = null, coverage = $3, coverage_reason = $4,
             coverage_changed_at = case when m.coverage <> $3 then now()
                                        else m.coverage_changed_at end
         from (select coverage, coverage_reason from mailboxes where id = $1) old
         where m.id = $1
         returning old.coverage as previous, old.coverage_reason as previous_reason",
    )
    .bind(id)
    .bind(next_due)
    .bind(coverage)
    .bind(reason)
    .fetch_optional(executor)
    .await
}

/// Ends a failed upkeep pass: releases the lease, counts the failure, keeps the error and
/// backs off until `next_due`. The mailbox is uncovered while it fails, with the error as the
/// reason. Returns what the coverage was before.
///
/// # Errors
/// Database errors.
pub async fn fail_upkeep(
    executor: impl PgExecutor<'_>,
    id: i64,
    next_due: DateTime<Utc>,
    error: &str,
) -> Result<Option<CoverageChange>, sqlx::Error> {
    sqlx::query_as(
        "update mailboxes m set
             upkeep_locked_until = null, upkeep_due_at = $2,
             upkeep_failures = m.upkeep_failures + 1, upkeep_error = $3,
             coverage = case when m.enabled then 'uncovered' else m.coverage end,
             coverage_reason = case when m.enabled then $3 else m.coverage_reason end,
             coverage_changed_at = case when m.enabled and m.coverage <> 'uncovered' then now()
                                        else m.coverage_changed_at end
         from (select coverage, coverage_reason from mailboxes where id = $1) old
         where m.id = $1
         returning old.coverage as previous, old.coverage_reason as previous_reason",
    )
    .bind(id)
    .bind(next_due)
    .bind(error)
    .fetch_optional(executor)
    .await
}

/// Asks for a full resync of the mailbox's reservation window. The request is stamped now even
/// when one is already owed: a full round clears only requests older than its claim, so one
/// made while a round runs is not swallowed by it.
///
/// # Errors
/// Database errors.
pub async fn request_resync(
    executor: impl PgExecutor<'_>,
    id: i64,
    reason: ResyncReason,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update mailboxes set resync_requested_at = now(), resync_reason = $2,
                              updated_at = now()
         where id = $1",
    )
    .bind(id)
    .bind(reason)
    .execute(executor)
    .await?;
    Ok(())
}

/// Makes every enabled mailbox due for upkeep now (e.g. when the callback URL changed).
///
/// # Errors
/// Database errors.
pub async fn make_all_due(executor: impl PgExecutor<'_>) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("update mailboxes set upkeep_due_at = now() where enabled")
            .execute(executor)
            .await?
            .rows_affected(),
    )
}

/// Mailboxes by backend and coverage, for metrics.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CoverageCount {
    pub backend: Backend,
    pub coverage: Coverage,
    pub mailboxes: i64,
}

/// How many mailboxes there are per backend and coverage.
///
/// # Errors
/// Database errors.
pub async fn coverage_counts(
    executor: impl PgExecutor<'_>,
) -> Result<Vec<CoverageCount>, sqlx::Error> {
    sqlx::query_as(
        "select backend, coverage, count(*) as mailboxes from mailboxes
         group by backend, coverage order by 1, 2",
    )
    .fetch_all(executor)
    .await
}

/// Makes one mailbox due for upkeep now.
///
/// # Errors
/// Database errors.
pub async fn make_due(executor: impl PgExecutor<'_>, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("update mailboxes set upkeep_due_at = now() where id = $1")
        .bind(id)
        .execute(executor)
        .await?;
    Ok(())
}

/// The lifecycle kinds upkeep owns; the sync leaves those events alone.
const LIFECYCLE_KINDS: &str = "('reauthorization_required', 'subscription_removed', 'missed')";

/// A mailbox claimed for a sync round, with what the round starts from.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SyncClaim {
    pub id: i64,
    pub address: String,
    pub backend: Backend,
    /// The lease's token: [`extend_sync_lease`], [`finish_sync`] and [`fail_sync`] only act
    /// while it is still the mailbox's.
    pub lease_token: uuid::Uuid,
    /// When the claim was made (database clock): resync requests made later still count.
    pub claimed_at: DateTime<Utc>,
    pub sync_cursor: Option<String>,
    pub sync_cursor_backend: Option<Backend>,
    pub sync_window_start: Option<DateTime<Utc>>,
    pub sync_window_end: Option<DateTime<Utc>>,
    pub full_synced_at: Option<DateTime<Utc>>,
    pub resync_requested_at: Option<DateTime<Utc>>,
    pub resync_reason: Option<ResyncReason>,
    pub sync_failures: i32,
    /// Events claimed with the mailbox (now `processing`).
    pub events: i64,
    /// The most attempts any of them has had, this one included.
    pub max_attempts: i32,
}

/// Claims up to `limit` mailboxes that need a sync round, in one statement: those whose
/// scheduled round is due (first sight, safety net, window roll, retry after a failure) and,
/// unless backing off after a failure, those with pending events or an owed full resync. Each
/// gets a lease, and every pending (or orphaned `processing`) event of it is claimed with it:
/// status `processing`, one more attempt. Events arriving later stay pending and make the
/// mailbox due again once this round ends, which is what turns any burst into at most one
/// follow-up round. A leased mailbox is skipped, so one mailbox is never synced twice at once,
/// across replicas too; an expired lease is claimable again (crash recovery).
///
/// # Errors
/// Database errors.
pub async fn claim_sync(
    executor: impl PgExecutor<'_>,
    limit: i64,
    lease: Duration,
) -> Result<Vec<SyncClaim>, sqlx::Error> {
    let sql = format!(
        "with due as (
             select m.id from mailboxes m
             where m.enabled
               and (m.sync_locked_until is null or m.sync_locked_until < now())
               and (m.sync_due_at <= now()
                    or (m.sync_failures = 0 and (
                        m.resync_requested_at is not null
                        or exists (select 1 from notification_events e
                                   where e.mailbox_id = m.id
                                     and e.status in ('pending', 'processing')
                                     and e.kind not in {LIFECYCLE_KINDS}))))
             order by m.sync_due_at
             limit $1
             for update of m skip locked
         ),
         claimed_events as (
             update notification_events e
             set status = 'processing', attempts = e.attempts + 1,
                 locked_until = now() + make_interval(secs => $2)
             from due
             where e.mailbox_id = due.id and e.status in ('pending', 'processing')
               and e.kind not in {LIFECYCLE_KINDS}
             returning e.mailbox_id, e.attempts
         ),
         locked as (
             update mailboxes m
             set sync_locked_until = now() + make_interval(secs => $2),
                 sync_lease_token = gen_random_uuid()
             from due where m.id = due.id
             returning m.*
         )
         select l.id, l.address, l.backend, l.sync_lease_token as lease_token,
                now() as claimed_at, l.sync_cursor, l.sync_cursor_backend,
                l.sync_window_start, l.sync_window_end, l.full_synced_at,
                l.resync_requested_at, l.resync_reason, l.sync_failures,
                (select count(*) from claimed_events c where c.mailbox_id = l.id) as events,
                coalesce((select max(c.attempts) from claimed_events c
                          where c.mailbox_id = l.id), 0) as max_attempts
         from locked l"
    );
    sqlx::query_as(&sql)
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(executor)
        .await
}

/// Where the next incremental round of a mailbox starts, stored with the round's changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncCursor {
    /// The Graph delta link (verbatim) or the EWS `SyncState`.
    pub cursor: String,
    pub backend: Backend,
    /// The window a Graph delta link covers; for EWS, whose state is not windowed, the window
    /// its series were expanded over. A new window (a new day) makes the next round full.
    pub window: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// Ends a successful round, first thing in the transaction that writes its changes: stores
/// the cursor, clears failures, schedules the safety-net round at `next_due`, and, when the
/// round was full (`full_reason` says why), records that and clears an owed full resync
/// whose request predates the claim. Returns
/// `false`, changing nothing, when the lease is no longer ours (the round took too long and
/// another worker has the mailbox): the caller must then roll back.
///
/// # Errors
/// Database errors.
pub async fn finish_sync(
    executor: impl PgExecutor<'_>,
    claim: &SyncClaim,
    cursor: &SyncCursor,
    full_reason: Option<&str>,
    next_due: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let (from, to) = cursor.window.unzip();
    let full = full_reason.is_some();
    let updated = sqlx::query(
        "update mailboxes set
             sync_cursor = $3, sync_cursor_backend = $4, sync_window_start = $5,
             sync_window_end = $6, synced_at = now(),
             full_synced_at = case when $7 then now() else full_synced_at end,
             full_sync_reason = coalesce($10, full_sync_reason),
             resync_requested_at = case when $7 and resync_requested_at <= $8 then null
                                        else resync_requested_at end,
             resync_reason = case when $7 and resync_requested_at <= $8 then null
                                  else resync_reason end,
             sync_failures = 0, sync_error = null, sync_due_at = $9,
             sync_locked_until = null, sync_lease_token = null, updated_at = now()
         where id = $1 and sync_lease_token = $2",
    )
    .bind(claim.id)
    .bind(claim.lease_token)
    .bind(&cursor.cursor)
    .bind(cursor.backend)
    .bind(from)
    .bind(to)
    .bind(full)
    .bind(claim.claimed_at)
    .bind(next_due)
    .bind(full_reason)
    .execute(executor)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Records a failed round: one more failure, the error, the next try at `retry_at`, the lease
/// released. Does nothing when the lease is no longer ours.
///
/// # Errors
/// Database errors.
pub async fn fail_sync(
    executor: impl PgExecutor<'_>,
    claim: &SyncClaim,
    error: &str,
    retry_at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "update mailboxes set sync_failures = sync_failures + 1, sync_error = $3,
                              sync_due_at = $4, sync_locked_until = null,
                              sync_lease_token = null, updated_at = now()
         where id = $1 and sync_lease_token = $2",
    )
    .bind(claim.id)
    .bind(claim.lease_token)
    .bind(error)
    .bind(retry_at)
    .execute(executor)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Keeps a round's lease from running out while it works. Returns `false` when the lease is
/// no longer the round's.
///
/// # Errors
/// Database errors.
pub async fn extend_sync_lease(
    executor: impl PgExecutor<'_>,
    claim: &SyncClaim,
    lease: Duration,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "update mailboxes set sync_locked_until = now() + make_interval(secs => $3)
         where id = $1 and sync_lease_token = $2",
    )
    .bind(claim.id)
    .bind(claim.lease_token)
    .bind(lease.as_secs_f64())
    .execute(executor)
    .await?;
    Ok(updated.rows_affected() == 1)
}
