//! Subscription upkeep: keeps one working subscription on every configured room mailbox.
//!
//! Each pass claims the mailboxes that are due (their scheduled time came, or ingress flagged a
//! lost EWS subscription, a watermark gap or a Graph lifecycle event), decides from their rows
//! what each needs ([`plan`]), does it against Exchange with no transaction open, and records
//! the outcome: the new subscription, the mailbox's coverage and when to look again, or the
//! failure with a back-off. The lease on the mailbox row keeps other replicas off it meanwhile.

mod actions;
pub mod plan;
mod reconcile;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;

use crate::config::Settings;
use crate::db;
use crate::db::mailboxes::{CoverageChange, UpkeepClaim};
use crate::domain::Coverage;
use crate::exchange::{ExchangeClient, ExchangeError};
use crate::metrics::Metrics;
use crate::worker::WorkerOptions;
use crate::worker::retry::Retry;

pub use reconcile::{GRAPH_RECONCILE_JOB, reconcile_graph_subscriptions, retry_after_failure};

/// What upkeep needs, shared by its tasks.
#[derive(Debug, Clone)]
pub struct Upkeep {
    pub(crate) pool: PgPool,
    pub(crate) client: Arc<ExchangeClient>,
    pub(crate) settings: Arc<Settings>,
    pub(crate) options: WorkerOptions,
    pub(crate) metrics: Arc<Metrics>,
}

/// Why one mailbox's upkeep failed.
#[derive(Debug, thiserror::Error)]
pub enum UpkeepError {
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("gave up after {0:?}")]
    TimedOut(Duration),
}

impl UpkeepError {
    fn retry_hint(&self) -> Option<Duration> {
        match self {
            Self::Exchange(e @ ExchangeError::Throttled { .. }) => e.retry_hint(1),
            _ => None,
        }
    }
}

impl Upkeep {
    /// Makes `mailboxes` match the configured list (added, moved, re-enabled, disabled), logging
    /// each change. Called at start.
    ///
    /// # Errors
    /// Database errors.
    pub async fn reconcile_mailboxes(&self) -> Result<(), sqlx::Error> {
        let wanted: Vec<_> = self
            .settings
            .exchange
            .mailboxes
            .iter()
            .map(|m| (m.address.clone(), m.backend))
            .collect();
        let changes = db::mailboxes::reconcile(&self.pool, &wanted).await?;
        for change in &changes {
            tracing::info!(
                mailbox = %change.address,
                backend = %change.backend,
                change = %change.change,
                "configured mailboxes changed"
            );
        }
        Ok(())
    }

    /// Claims up to `limit` due mailboxes.
    ///
    /// # Errors
    /// Database errors.
    pub async fn claim(&self, limit: usize) -> Result<Vec<UpkeepClaim>, sqlx::Error> {
        db::mailboxes::claim_due(
            &self.pool,
            i64::try_from(limit).unwrap_or(i64::MAX),
            self.options.lease,
        )
        .await
    }

    /// Does one claimed mailbox's upkeep and records the outcome; never fails (a failure is
    /// recorded on the mailbox row and retried later).
    pub async fn run_one(&self, claim: UpkeepClaim) {
        let deadline = self.options.job_timeout;
        let outcome = match tokio::time::timeout(deadline, actions::run(self, &claim)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(UpkeepError::TimedOut(deadline)),
        };
        let recorded = match outcome {
            Ok(done) => {
                self.metrics
                    .upkeep_passes
                    .get_or_create(&crate::metrics::UpkeepLabels {
                        backend: claim.backend.as_str(),
                        action: done.action,
                        outcome: "ok",
                    })
                    .inc();
                db::mailboxes::finish_upkeep(
                    &self.pool,
                    claim.id,
                    done.next_due,
                    done.coverage.0,
                    done.coverage.1.as_deref(),
                )
                .await
                .map(|previous| (previous, done.coverage))
            }
            Err(error) => {
                let attempt = u32::try_from(claim.upkeep_failures)
                    .unwrap_or(0)
                    .saturating_add(1);
                let wait = match self
                    .options
                    .upkeep_retry
                    .after_failure(attempt, error.retry_hint())
                {
                    Retry::After(wait) => wait,
                    Retry::GiveUp => self.options.upkeep_retry.cap,
                };
                tracing::warn!(
                    mailbox = %claim.address,
                    backend = %claim.backend,
                    attempt,
                    retry_in = ?wait,
                    %error,
                    "subscription upkeep failed"
                );
                self.metrics
                    .upkeep_passes
                    .get_or_create(&crate::metrics::UpkeepLabels {
                        backend: claim.backend.as_str(),
                        action: "failed",
                        outcome: "error",
                    })
                    .inc();
                let message = error.to_string();
                let next = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                let coverage = if claim.enabled {
                    (Coverage::Uncovered, Some(message.clone()))
                } else {
                    (claim.coverage, None)
                };
                db::mailboxes::fail_upkeep(&self.pool, claim.id, next, &message)
                    .await
                    .map(|previous| (previous, coverage))
            }
        };
        match recorded {
            Ok((Some(previous), now)) => log_coverage(&claim, &previous, &now),
            Ok((None, _)) => {}
            Err(error) => {
                // The lease runs out and another pass takes the mailbox again.
                tracing::error!(mailbox = %claim.address, %error, "cannot record upkeep outcome");
            }
        }
    }

    /// Refreshes the coverage and liveness gauges from the database.
    ///
    /// # Errors
    /// Database errors.
    pub async fn refresh_metrics(&self) -> Result<(), sqlx::Error> {
        let counts = db::mailboxes::coverage_counts(&self.pool).await?;
        self.metrics.mailboxes.clear();
        for c in counts {
            self.metrics
                .mailboxes
                .get_or_create(&crate::metrics::CoverageLabels {
                    backend: c.backend.as_str(),
                    coverage: c.coverage.as_str(),
                })
                .set(c.mailboxes);
        }
        let (soonest, oldest) = db::subscriptions::liveness_extremes(&self.pool).await?;
        let now = Utc::now();
        let seconds = |d: chrono::TimeDelta| d.num_milliseconds() as f64 / 1000.0;
        self.metrics
            .soonest_expiry_seconds
            .set(soonest.map_or(f64::NAN, |at| seconds(at - now)));
        self.metrics
            .worst_notification_age_seconds
            .set(oldest.map_or(f64::NAN, |at| seconds(now - at)));
        Ok(())
    }
}

/// One line when a mailbox's coverage changes, so operators see which rooms are not covered and
/// why.
fn log_coverage(claim: &UpkeepClaim, previous: &CoverageChange, now: &(Coverage, Option<String>)) {
    if previous.previous == now.0 && previous.previous_reason == now.1 {
        return;
    }
    let reason = now.1.as_deref().unwrap_or("");
    match now.0 {
        Coverage::Covered => tracing::info!(
            mailbox = %claim.address, backend = %claim.backend, from = %previous.previous,
            "mailbox is covered by a subscription"
        ),
        Coverage::Uncovered => tracing::warn!(
            mailbox = %claim.address, backend = %claim.backend, from = %previous.previous,
            reason, "mailbox is not covered by a subscription"
        ),
        Coverage::Disabled => tracing::info!(
            mailbox = %claim.address, backend = %claim.backend, from = %previous.previous,
            "mailbox is no longer configured; its subscription is ended"
        ),
    }
}
