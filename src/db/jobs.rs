//! `worker_jobs`: jobs that are not per mailbox (such as reconciling Graph's list of
//! subscriptions), scheduled by a due time in their row and leased like mailboxes, so one
//! replica runs each at a time and a restart keeps the schedule.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// Claims the job `name` under a lease of `lease` when it is due and nobody holds it.
///
/// # Errors
/// Database errors.
pub async fn claim(
    executor: impl PgExecutor<'_>,
    name: &str,
    lease: Duration,
) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query(
        "update worker_jobs set locked_until = now() + make_interval(secs => $2)
         where name = $1 and due_at <= now()
           and (locked_until is null or locked_until < now())",
    )
    .bind(name)
    .bind(lease.as_secs_f64())
    .execute(executor)
    .await?;
    Ok(claimed.rows_affected() == 1)
}

/// Releases the job and schedules its next run; `error` is kept when it failed.
///
/// # Errors
/// Database errors.
pub async fn finish(
    executor: impl PgExecutor<'_>,
    name: &str,
    next_due: DateTime<Utc>,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update worker_jobs set locked_until = null, due_at = $2, last_run_at = now(),
                                last_error = $3
         where name = $1",
    )
    .bind(name)
    .bind(next_due)
    .bind(error)
    .execute(executor)
    .await?;
    Ok(())
}

/// Makes the job due now (e.g. at start).
///
/// # Errors
/// Database errors.
pub async fn make_due(executor: impl PgExecutor<'_>, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("update worker_jobs set due_at = now() where name = $1")
        .bind(name)
        .execute(executor)
        .await?;
    Ok(())
}
