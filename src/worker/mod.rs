//! The background worker of `serve` (role `worker`): orchestration only, no SQL strings and no
//! XML. It runs two loops over one Exchange client:
//! - subscription upkeep ([`upkeep`]): at start it reconciles the configured mailboxes into
//!   the table; then, on every tick, it claims the mailboxes that are due and works on a
//!   bounded number of them at once, and now and then reconciles Graph's list of
//!   subscriptions and refreshes the coverage metrics;
//! - the sync ([`sync`]): woken by ingress after each commit, it brings each mailbox with new
//!   events (or a scheduled round) in line with Exchange.
//!
//! Shutdown is explicit (a [`CancellationToken`]) and the drain is bounded: unfinished
//! mailboxes keep their lease, which simply runs out.

pub mod retry;
pub mod sync;
pub mod upkeep;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::db;
use crate::exchange::{ExchangeClient, Limits};
use crate::metrics::Metrics;
use retry::RetryPolicy;
use sync::{SyncOptions, Syncer};
use upkeep::{GRAPH_RECONCILE_JOB, Upkeep};

/// Internal timing of the worker. The defaults are production's; tests shrink them (a
/// "minute" of EWS StatusFrequency can be a second) without public configuration keys.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// How often the worker looks for due mailboxes.
    pub tick: Duration,
    /// The length of one minute of EWS `StatusFrequency`.
    pub minute: Duration,
    /// Added to twice the StatusFrequency before a silent EWS subscription is replaced.
    pub ews_silence_slack: Duration,
    /// The longest a mailbox goes without upkeep looking at it.
    pub recheck: Duration,
    /// How long a claimed mailbox stays reserved for the worker that claimed it.
    pub lease: Duration,
    /// The longest one mailbox's upkeep may take (less than the lease).
    pub job_timeout: Duration,
    /// Mailboxes worked on at once: also what keeps a recovery after an outage from turning
    /// into a resubscribe storm.
    pub concurrency: usize,
    /// How often Graph's list of subscriptions is reconciled with the database.
    pub graph_reconcile_every: Duration,
    /// How often the coverage gauges are refreshed.
    pub metrics_every: Duration,
    pub upkeep_retry: RetryPolicy,
    pub limits: Limits,
    /// How long shutdown waits for mailboxes being worked on.
    pub drain: Duration,
    /// The sync loop's timing and limits.
    pub sync: SyncOptions,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(2),
            minute: Duration::from_secs(60),
            ews_silence_slack: Duration::from_secs(120),
            recheck: Duration::from_secs(10 * 60),
            lease: Duration::from_secs(5 * 60),
            job_timeout: Duration::from_secs(4 * 60),
            concurrency: 8,
            graph_reconcile_every: Duration::from_secs(4 * 3600),
            metrics_every: Duration::from_secs(15),
            upkeep_retry: RetryPolicy::UPKEEP,
            limits: Limits::default(),
            drain: Duration::from_secs(10),
            sync: SyncOptions::default(),
        }
    }
}

/// Runs the worker until `shutdown` is cancelled; `wake` is the signal ingress fires after
/// each commit.
///
/// # Errors
/// When the Exchange client cannot be built.
pub async fn run(
    pool: PgPool,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    options: WorkerOptions,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = Arc::new(ExchangeClient::new(
        settings.exchange.clone(),
        options.limits,
    )?);
    let syncer = Syncer {
        pool: pool.clone(),
        client: Arc::clone(&client),
        settings: Arc::clone(&settings),
        options: options.sync.clone(),
        metrics: Arc::clone(&metrics),
    };
    let sync = tokio::spawn(sync::run(syncer, wake, options.drain, shutdown.clone()));
    let upkeep = Upkeep {
        pool,
        client,
        settings,
        options: options.clone(),
        metrics,
    };
    let slots = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let mut running: JoinSet<()> = JoinSet::new();
    let mut mailboxes_reconciled = false;
    let mut last_metrics: Option<tokio::time::Instant> = None;
    let mut ticker = tokio::time::interval(options.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        while running.try_join_next().is_some() {}
        if !mailboxes_reconciled {
            // Retried every tick until the database answers (it may be down at start).
            match start(&upkeep).await {
                Ok(()) => mailboxes_reconciled = true,
                Err(error) => {
                    tracing::warn!(%error, "cannot reconcile the configured mailboxes yet");
                    continue;
                }
            }
        }
        if last_metrics.is_none_or(|at| at.elapsed() >= options.metrics_every) {
            last_metrics = Some(tokio::time::Instant::now());
            if let Err(error) = upkeep.refresh_metrics().await {
                tracing::debug!(%error, "cannot refresh the coverage metrics");
            }
        }
        if slots.available_permits() > 0 {
            graph_reconcile(&upkeep, &slots, &mut running).await;
        }
        let free = slots.available_permits();
        if free == 0 {
            continue;
        }
        let claimed = match upkeep.claim(free).await {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(%error, "cannot claim mailboxes for upkeep");
                continue;
            }
        };
        for claim in claimed {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                break;
            };
            let upkeep = upkeep.clone();
            running.spawn(async move {
                upkeep.run_one(claim).await;
                drop(permit);
            });
        }
    }
    // Bounded drain: what does not finish in time keeps its lease and is taken up again after
    // it runs out.
    let drained = tokio::time::timeout(options.drain, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            unfinished = running.len(),
            "worker stopped with mailboxes unfinished"
        );
        running.abort_all();
    }
    if let Err(error) = sync.await {
        tracing::error!(%error, "the sync loop panicked");
    }
    Ok(())
}

/// At start: the configured mailboxes into the table, every mailbox looked at once (the
/// callback URL or the timing may have changed since the last run; a healthy subscription
/// costs two queries), and a Graph reconciliation soon.
async fn start(upkeep: &Upkeep) -> Result<(), sqlx::Error> {
    upkeep.reconcile_mailboxes().await?;
    db::mailboxes::make_all_due(&upkeep.pool).await?;
    db::jobs::make_due(&upkeep.pool, GRAPH_RECONCILE_JOB).await
}

/// Runs the Graph reconciliation in the background when it is due and this replica gets it.
async fn graph_reconcile(upkeep: &Upkeep, slots: &Arc<Semaphore>, running: &mut JoinSet<()>) {
    match db::jobs::claim(&upkeep.pool, GRAPH_RECONCILE_JOB, upkeep.options.lease).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(error) => {
            tracing::debug!(%error, "cannot claim the Graph reconciliation");
            return;
        }
    }
    let Ok(permit) = Arc::clone(slots).acquire_owned().await else {
        return;
    };
    let upkeep = upkeep.clone();
    running.spawn(async move {
        let outcome = upkeep::reconcile_graph_subscriptions(&upkeep).await;
        let (next, error) = match &outcome {
            Ok(report) if report.postponed => (Duration::from_secs(60), None),
            Ok(report) => {
                tracing::info!(
                    listed = report.listed,
                    deleted_orphans = report.deleted_orphans,
                    lost = report.lost,
                    "Graph subscriptions reconciled"
                );
                (upkeep.options.graph_reconcile_every, None)
            }
            Err(error) => {
                tracing::warn!(%error, "Graph reconciliation failed");
                (upkeep::retry_after_failure(), Some(error.to_string()))
            }
        };
        let next = Utc::now() + chrono::Duration::from_std(next).unwrap_or_default();
        if let Err(e) =
            db::jobs::finish(&upkeep.pool, GRAPH_RECONCILE_JOB, next, error.as_deref()).await
        {
            tracing::warn!(error = %e, "cannot record the Graph reconciliation");
        }
        drop(permit);
    });
}
