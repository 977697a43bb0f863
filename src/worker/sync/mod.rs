//! The sync worker: turns stored notifications into correct `reservations`.
//!
//! Notifications are hints, Exchange is the truth. A mailbox with pending events (or an owed
//! full resync, or a scheduled round) is claimed with all its pending events in one short
//! statement under a lease; the round then asks Exchange what changed (Graph
//! `calendarView/delta` from the stored delta link, EWS `SyncFolderItems` from the stored sync
//! state, then `GetItem` and a `CalendarView` for recurring series) with no transaction open,
//! and finally writes the changes, the new cursor and the events' `done` in one short
//! transaction. However many events a burst holds, it costs one round, plus at most one more
//! for the events that arrived while the round ran.
//!
//! The loop wakes on the signal ingress fires after each commit, and polls as the fallback
//! for events committed by other replicas. A failed round backs off (honouring Exchange's
//! `Retry-After` / `BackOffMilliseconds`); its events go back to pending, or to `dead` after
//! their last attempt, kept with the error for `rooms-sync events replay`.

mod ews;
mod graph;
mod occurrence;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::db;
use crate::db::mailboxes::{SyncClaim, SyncCursor};
use crate::domain::{Backend, Occurrence};
use crate::exchange::{ExchangeClient, ExchangeError};
use crate::metrics::{Metrics, SyncLabels};
use crate::worker::retry::{Retry, RetryPolicy};

/// Timing and limits of the sync worker. Production defaults; tests shrink them.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Mailboxes synced at once. Rounds mostly wait on Exchange, so this is set by how much
    /// Exchange may be asked at once (the client's global limit), not by the cores.
    pub concurrency: usize,
    /// How often to look for due mailboxes when nothing wakes the loop (events committed by
    /// another replica, scheduled rounds).
    pub poll: Duration,
    /// A claimed mailbox's lease; a round extends it while it works, so a crashed worker's
    /// mailbox is free again this long after the crash.
    pub lease: Duration,
    /// The longest one round may take.
    pub round_timeout: Duration,
    /// A round of every mailbox at least this often, notifications or not (a Graph outage or
    /// a lost `missed` signal is caught by it).
    pub safety_net: Duration,
    /// A full round at least this often: it rolls the window forward and expands new
    /// occurrences of series into it.
    pub full_every: Duration,
    /// Back-off of failed rounds, and how many attempts an event gets before it is `dead`.
    pub retry: RetryPolicy,
    /// Ids per `GetItem` request.
    pub get_item_batch: usize,
    /// The least time between two claim queries. Ingest wakes the loop after every commit;
    /// under heavy webhook load that could mean thousands of claim queries a second competing
    /// with ingest for Postgres. A few milliseconds of gap bounds that at no visible cost to
    /// freshness, and lets a burst's commits land before the claim that takes them all.
    pub claim_gap: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            concurrency: 32,
            poll: Duration::from_secs(2),
            lease: Duration::from_secs(10),
            round_timeout: Duration::from_secs(10 * 60),
            safety_net: Duration::from_secs(30 * 60),
            full_every: Duration::from_secs(24 * 3600),
            retry: RetryPolicy::SYNC,
            // Microsoft suggests small batches; each item in a batch is throttled on its own.
            get_item_batch: 50,
            claim_gap: Duration::from_millis(10),
        }
    }
}

/// Why a round failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("gave up after {0:?}")]
    TimedOut(Duration),
    /// The lease was lost (the round outlived it and another worker has the mailbox).
    #[error("the mailbox's lease was lost")]
    LeaseLost,
}

impl SyncError {
    /// Exchange's own wait, when it asked for one.
    fn retry_hint(&self) -> Option<Duration> {
        match self {
            Self::Exchange(e @ ExchangeError::Throttled { .. }) => e.retry_hint(1),
            _ => None,
        }
    }

    /// Throttling is waiting, not failing: it costs the events no attempt.
    const fn counts_as_attempt(&self) -> bool {
        !matches!(self, Self::Exchange(ExchangeError::Throttled { .. }))
    }
}

/// What a round read from Exchange, to be written in one transaction.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Changes {
    /// Occurrences as Exchange holds them now.
    pub(crate) upserts: Vec<Occurrence>,
    /// Ids (of occurrences, or of series masters: their occurrences go too) that left.
    pub(crate) deleted: Vec<String>,
    /// Deletions count only for rows overlapping this window (Graph reports removals
    /// outside the window it was asked about).
    pub(crate) delete_window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Series whose occurrences in the window were all read: their other rows are gone.
    pub(crate) series: Vec<(String, Vec<String>)>,
    /// A full read of this window: live rows in it that were not read are gone.
    pub(crate) full_window: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// The outcome of reading one round from Exchange.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub(crate) changes: Changes,
    pub(crate) cursor: SyncCursor,
    pub(crate) full: bool,
}

/// What a round needs, shared by the tasks.
#[derive(Debug, Clone)]
pub struct Syncer {
    pub(crate) pool: PgPool,
    pub(crate) client: Arc<ExchangeClient>,
    pub(crate) settings: Arc<Settings>,
    pub(crate) options: SyncOptions,
    pub(crate) metrics: Arc<Metrics>,
}

/// Runs the sync loop until `shutdown`; mailboxes being synced get `drain` to finish, and
/// what does not finish keeps its lease, which runs out.
pub async fn run(syncer: Syncer, wake: Arc<Notify>, drain: Duration, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(syncer.options.concurrency.max(1)));
    let mut running: JoinSet<()> = JoinSet::new();
    let mut last_claim = tokio::time::Instant::now() - syncer.options.claim_gap;
    loop {
        while running.try_join_next().is_some() {}
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep_until(last_claim + syncer.options.claim_gap) => {}
        }
        last_claim = tokio::time::Instant::now();
        let free = slots.available_permits();
        if free > 0 {
            match syncer.claim(free).await {
                Ok(claims) => {
                    for claim in claims {
                        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                            break;
                        };
                        let syncer = syncer.clone();
                        running.spawn(async move {
                            syncer.run_one(claim).await;
                            drop(permit);
                        });
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot claim mailboxes to sync"),
            }
        }
        // Fewer claims than free slots means nothing else is due; a full house looks again as
        // soon as a round ends. Either way a commit's signal or the poll also looks again.
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = wake.notified() => {}
            () = tokio::time::sleep(syncer.options.poll) => {}
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
    }
    let drained = tokio::time::timeout(drain, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            unfinished = running.len(),
            "sync stopped with rounds unfinished; their leases run out"
        );
        running.abort_all();
    }
}

impl Syncer {
    /// Claims up to `limit` mailboxes that need a round.
    ///
    /// # Errors
    /// Database errors.
    pub async fn claim(&self, limit: usize) -> Result<Vec<SyncClaim>, sqlx::Error> {
        db::mailboxes::claim_sync(
            &self.pool,
            i64::try_from(limit).unwrap_or(i64::MAX),
            self.options.lease,
        )
        .await
    }

    /// Runs one claimed mailbox's round and records the outcome; never fails (a failure is
    /// recorded on the mailbox and its events, and retried later).
    pub async fn run_one(&self, claim: SyncClaim) {
        let started = Instant::now();
        let timeout = self.options.round_timeout;
        let keep_lease = self.keep_lease(&claim);
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(timeout, self.round(&claim)) => {
                outcome.unwrap_or(Err(SyncError::TimedOut(timeout)))
            }
            () = keep_lease => Err(SyncError::LeaseLost),
        };
        self.metrics
            .sync_round_duration
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(report) => {
                self.count(&claim, report.full_reason.is_some(), "ok");
                tracing::debug!(
                    mailbox = %claim.address,
                    backend = %claim.backend,
                    full = report.full_reason.is_some(),
                    events = claim.events,
                    written = report.written,
                    elapsed_ms = started.elapsed().as_millis(),
                    "mailbox synced"
                );
                if let Some(reason) = report.full_reason {
                    tracing::info!(
                        mailbox = %claim.address,
                        backend = %claim.backend,
                        reason,
                        written = report.written,
                        "full sync of the mailbox's window done"
                    );
                }
            }
            Err(SyncError::LeaseLost) => {
                tracing::warn!(mailbox = %claim.address, "sync round outlived its lease; dropped");
            }
            Err(error) => {
                self.count(&claim, false, "failed");
                self.record_failure(&claim, &error).await;
            }
        }
    }

    fn count(&self, claim: &SyncClaim, full: bool, outcome: &'static str) {
        self.metrics
            .sync_rounds
            .get_or_create(&SyncLabels {
                backend: claim.backend.as_str(),
                round: if full { "full" } else { "incremental" },
                outcome,
            })
            .inc();
    }

    /// Extends the lease every third of its length; returns when it is lost.
    async fn keep_lease(&self, claim: &SyncClaim) {
        let lease = self.options.lease;
        loop {
            tokio::time::sleep(lease / 3).await;
            match db::mailboxes::extend_sync_lease(&self.pool, claim, lease).await {
                Ok(true) => {}
                Ok(false) => return,
                // The database may be back before the lease runs out.
                Err(error) => {
                    tracing::warn!(%error, mailbox = %claim.address, "cannot extend a sync lease")
                }
            }
        }
    }

    async fn record_failure(&self, claim: &SyncClaim, error: &SyncError) {
        let attempt = u32::try_from(claim.sync_failures)
            .unwrap_or(0)
            .saturating_add(1);
        let policy = self.options.retry;
        let wait = match policy.after_failure(attempt, error.retry_hint()) {
            Retry::After(wait) => wait,
            // The mailbox itself is never given up: its events are (below), it keeps trying.
            Retry::GiveUp => policy.cap.max(error.retry_hint().unwrap_or_default()),
        };
        let message = error.to_string();
        tracing::warn!(
            mailbox = %claim.address,
            backend = %claim.backend,
            attempt,
            events = claim.events,
            most_event_attempts = claim.max_attempts,
            retry_in = ?wait,
            error = %message,
            "sync round failed"
        );
        let retry_at = Utc::now() + TimeDelta::from_std(wait).unwrap_or_default();
        let recorded = async {
            let mut tx = self.pool.begin().await?;
            if !db::mailboxes::fail_sync(&mut *tx, claim, &message, retry_at).await? {
                return Ok(0);
            }
            let max = policy
                .max_attempts
                .map_or(i32::MAX, |m| i32::try_from(m).unwrap_or(i32::MAX));
            let dead = db::events::fail_synced(
                &mut *tx,
                claim.id,
                &message,
                max,
                error.counts_as_attempt(),
            )
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(dead)
        };
        match recorded.await {
            Ok(0) => {}
            Ok(dead) => {
                self.metrics.events_dead.inc_by(dead);
                tracing::error!(
                    mailbox = %claim.address,
                    dead,
                    error = %message,
                    "notification events gave up after their last attempt; `rooms-sync events replay` retries them"
                );
            }
            Err(e) => {
                tracing::error!(mailbox = %claim.address, error = %e, "cannot record a failed sync round")
            }
        }
    }

    /// The sync window at `now`: whole UTC days, `SyncWindowPastDays` back from today's start
    /// to `SyncWindowFutureDays` after the end of today. It moves once a day.
    pub(crate) fn window(&self, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let sync = self.settings.sync;
        let today = now
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .map_or(now, |t| t.and_utc());
        (
            today - TimeDelta::days(i64::from(sync.window_past_days)),
            today + TimeDelta::days(i64::from(sync.window_future_days) + 1),
        )
    }

    /// Reads the round from Exchange, then writes it.
    async fn round(&self, claim: &SyncClaim) -> Result<RoundReport, SyncError> {
        let window = self.window(Utc::now());
        let reason = full_reason(claim, window, self.options.full_every);
        let fetched = match claim.backend {
            Backend::Graph => graph::round(self, claim, window, reason.is_some()).await?,
            Backend::Ews => ews::round(self, claim, window, reason.is_some()).await?,
        };
        // A full round nobody asked for: Exchange no longer knew the cursor.
        let full_reason = fetched
            .full
            .then(|| reason.unwrap_or("sync state no longer accepted"));
        let written = self.apply(claim, &fetched, full_reason).await?;
        Ok(RoundReport {
            full_reason,
            written,
        })
    }

    /// Writes a round in one transaction: the lease check and the new cursor first, then the
    /// rows, then the events it covered.
    async fn apply(
        &self,
        claim: &SyncClaim,
        fetched: &Fetched,
        full_reason: Option<&str>,
    ) -> Result<u64, SyncError> {
        let next_due = Utc::now()
            + TimeDelta::from_std(self.options.safety_net).unwrap_or_else(|_| TimeDelta::hours(1));
        let changes = &fetched.changes;
        let mut tx = self.pool.begin().await?;
        if !db::mailboxes::finish_sync(&mut *tx, claim, &fetched.cursor, full_reason, next_due)
            .await?
        {
            return Err(SyncError::LeaseLost);
        }
        let backend = fetched.cursor.backend;
        let mut written = 0;
        // Rows read through the other backend are met by the full round that follows a
        // backend move (its cursor belongs to the other API), so only full rounds look.
        if fetched.full && db::reservations::has_foreign_rows(&mut *tx, claim.id, backend).await? {
            written +=
                db::reservations::adopt(&mut *tx, claim.id, backend, &changes.upserts).await?;
        }
        written += db::reservations::upsert(&mut *tx, claim.id, backend, &changes.upserts).await?;
        written += db::reservations::mark_deleted(
            &mut *tx,
            claim.id,
            &changes.deleted,
            changes.delete_window,
        )
        .await?;
        for (master, keep) in &changes.series {
            let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
            written +=
                db::reservations::retire_series_except(&mut *tx, claim.id, master, &keep).await?;
        }
        if let Some((from, to)) = changes.full_window {
            let seen: Vec<&str> = changes.upserts.iter().map(|o| o.item_id.as_str()).collect();
            written += db::reservations::retire_unseen(&mut *tx, claim.id, from, to, &seen).await?;
        }
        db::events::finish_synced(&mut *tx, claim.id).await?;
        tx.commit().await?;
        self.metrics.reservations_written.inc_by(written);
        Ok(written)
    }
}

#[derive(Debug, Clone, Copy)]
struct RoundReport {
    /// Why the round was full; `None` for an incremental round.
    full_reason: Option<&'static str>,
    written: u64,
}

/// Why a round must read the whole window rather than what changed, or `None` for an
/// incremental round.
fn full_reason(
    claim: &SyncClaim,
    window: (DateTime<Utc>, DateTime<Utc>),
    full_every: Duration,
) -> Option<&'static str> {
    if claim.sync_cursor.is_none() {
        return Some("first sync");
    }
    if claim.sync_cursor_backend != Some(claim.backend) {
        return Some("backend changed");
    }
    if claim.resync_requested_at.is_some() {
        return Some(
            claim
                .resync_reason
                .map_or("resync requested", |r| r.as_str()),
        );
    }
    if (claim.sync_window_start, claim.sync_window_end) != (Some(window.0), Some(window.1)) {
        return Some("window moved");
    }
    let stale = claim.full_synced_at.is_none_or(|at| {
        claim.claimed_at - at > TimeDelta::from_std(full_every).unwrap_or(TimeDelta::MAX)
    });
    stale.then_some("periodic full sync")
}

#[cfg(test)]
mod tests;
