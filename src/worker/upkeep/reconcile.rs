//! Reconciling with Graph's own list of subscriptions, at start and then every few hours:
//! subscriptions that point at our callback but that the database does not want (orphans of a
//! crash, or of an earlier run) are deleted; active ones Graph no longer lists are recreated
//! (their mailbox becomes due at once, with a full resync). Listing is rate-limited by Graph
//! (25 calls per 20 s per tenant), so it runs rarely and on one replica at a time.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;

use super::{Upkeep, UpkeepError};
use crate::db;
use crate::domain::{Backend, ResyncReason, SubscriptionState};

/// The `worker_jobs` row of this job.
pub const GRAPH_RECONCILE_JOB: &str = "graph_reconcile";

/// What a reconciliation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub listed: usize,
    pub deleted_orphans: usize,
    pub lost: usize,
    /// Nothing was done because a create was in flight (its id could look like an orphan).
    pub postponed: bool,
}

/// Runs one reconciliation.
///
/// # Errors
/// Graph or database errors.
pub async fn reconcile_graph_subscriptions(u: &Upkeep) -> Result<ReconcileReport, UpkeepError> {
    let uses_graph = u
        .settings
        .exchange
        .mailboxes
        .iter()
        .any(|m| m.backend == Backend::Graph);
    let mut report = ReconcileReport::default();
    let wanted: HashSet<String> = db::subscriptions::wanted_graph_remote_ids(&u.pool)
        .await?
        .into_iter()
        .collect();
    if !uses_graph && wanted.is_empty() {
        // No Graph mailbox: there may be no Graph credentials either.
        return Ok(report);
    }
    if db::subscriptions::graph_create_in_flight(&u.pool, u.options.lease).await? {
        report.postponed = true;
        return Ok(report);
    }
    let started = Utc::now();
    let listed = u.client.graph().list_subscriptions().await?;
    report.listed = listed.len();
    let ours: HashSet<String> = db::subscriptions::known_graph_remote_ids(&u.pool)
        .await?
        .into_iter()
        .collect();
    for s in &listed {
        let at_our_callback = s.notification_url == u.settings.callback_url;
        if !wanted.contains(&s.id) && (at_our_callback || ours.contains(&s.id)) {
            tracing::warn!(subscription = %s.id, resource = %s.resource, "deleting an orphaned Graph subscription");
            u.client
                .graph()
                .delete_subscription("<list>", &s.id)
                .await?;
            report.deleted_orphans += 1;
        }
    }
    let listed_ids: HashSet<&str> = listed.iter().map(|s| s.id.as_str()).collect();
    for (id, mailbox_id, remote_id) in
        db::subscriptions::active_graph_before(&u.pool, started).await?
    {
        if listed_ids.contains(remote_id.as_str()) {
            continue;
        }
        tracing::warn!(subscription = %remote_id, "Graph no longer has an active subscription; recreating it");
        db::subscriptions::end(
            &u.pool,
            id,
            SubscriptionState::Removed,
            "Graph no longer lists it",
        )
        .await?;
        db::mailboxes::request_resync(&u.pool, mailbox_id, ResyncReason::SubscriptionRemoved)
            .await?;
        db::mailboxes::make_due(&u.pool, mailbox_id).await?;
        report.lost += 1;
    }
    Ok(report)
}

/// How long to wait before the next reconciliation after a failed one.
#[must_use]
pub const fn retry_after_failure() -> Duration {
    Duration::from_secs(5 * 60)
}
