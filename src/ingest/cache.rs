//! A short-lived cache of the subscriptions ingress looks up, so that a loaded service spends
//! one database round trip per batch (the write) instead of two.
//!
//! Entries live for [`TTL`]: a subscription the worker supersedes is answered `Unsubscribe` at
//! most that much later (until then its events are stored as usual, which is harmless: the
//! worker syncs from Exchange, not from the events). Unknown ids are never cached, so a
//! subscription created a moment ago is found at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::checkout::{Checkout, StoreError};
use crate::db::subscriptions::{self, SubscriptionRow};

/// How long a looked-up subscription is trusted.
pub(super) const TTL: Duration = Duration::from_secs(2);
/// Bound on entries: far more than the rooms of a tenant.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Default)]
pub(super) struct SubscriptionCache {
    /// Rows are shared with the lookups that found them: a hit costs a reference count, not a
    /// copy of the row's strings.
    entries: Mutex<HashMap<String, (Arc<SubscriptionRow>, Instant)>>,
}

impl SubscriptionCache {
    /// The stored subscriptions among `remote_ids` (either backend), from the cache where fresh;
    /// a query on `conn` (cut after `limit`) for the rest.
    pub(super) async fn resolve(
        &self,
        conn: &mut Checkout<'_>,
        limit: Duration,
        remote_ids: &[&str],
    ) -> Result<HashMap<String, Arc<SubscriptionRow>>, StoreError> {
        let now = Instant::now();
        let mut found = HashMap::with_capacity(remote_ids.len());
        let mut missing = Vec::new();
        {
            let entries = self
                .entries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for id in remote_ids {
                match entries.get(*id) {
                    Some((row, at)) if now.duration_since(*at) < TTL => {
                        found.insert((*id).to_owned(), Arc::clone(row));
                    }
                    _ => missing.push(*id),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let outcome = tokio::time::timeout(
            limit,
            subscriptions::find_by_remote_ids(conn.begin()?, &missing),
        )
        .await;
        let rows = conn.end(outcome, limit)?;
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() + rows.len() > MAX_ENTRIES {
            entries.retain(|_, (_, at)| now.duration_since(*at) < TTL);
        }
        for row in rows {
            let row = Arc::new(row);
            entries.insert(row.remote_id.clone(), (Arc::clone(&row), now));
            found.insert(row.remote_id.clone(), row);
        }
        Ok(found)
    }
}
