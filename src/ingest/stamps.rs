//! When this process last stamped each Graph subscription's `last_notification_at`, so that
//! most batches leave the `subscriptions` table alone.
//!
//! The stamp says the subscription is alive; the upkeep and `status` read it, and nothing needs
//! it finer than a few seconds. The statement only rewrites a row whose stamp is older than
//! [`STAMP_EVERY`], yet naming the subscriptions at all made Postgres set up and run the update
//! for every batch. So a subscription goes into the statement only when this process has not
//! committed a stamp for it within [`STAMP_EVERY`]; the database still applies its own bound,
//! which keeps several replicas from each rewriting the row.
//!
//! Like the chain memory, this is only a hint: an entry that is missing or evicted sends the
//! stamp to the database, which decides. With several replicas, one whose stamp the database
//! left alone (another replica's was recent) still waits its own interval, so a stamp can lag
//! by up to twice [`STAMP_EVERY`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::chains::STAMP_EVERY;

/// Bound on entries: far more than the rooms of a tenant; past it the memory starts again.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Default)]
pub(super) struct StampMemory {
    stamped_at: Mutex<HashMap<i64, Instant>>,
}

impl StampMemory {
    /// The subscriptions of `touched` whose stamp is due as of `now`.
    pub(super) fn due(&self, touched: &[i64], now: Instant) -> Vec<i64> {
        let stamped = super::lock_hints(&self.stamped_at);
        touched
            .iter()
            .copied()
            .filter(|id| {
                stamped
                    .get(id)
                    .is_none_or(|at| now.saturating_duration_since(*at) >= STAMP_EVERY)
            })
            .collect()
    }

    /// Records that the stamps of `sent` were committed by a statement that ran at `now`.
    pub(super) fn committed(&self, sent: &[i64], now: Instant) {
        if sent.is_empty() {
            return;
        }
        let mut stamped = super::lock_hints(&self.stamped_at);
        if stamped.len() >= MAX_ENTRIES {
            stamped.clear();
        }
        for id in sent {
            stamped.insert(*id, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_subscription_never_stamped_by_this_process_is_due() {
        let memory = StampMemory::default();
        assert_eq!(memory.due(&[3, 7], Instant::now()), [3, 7]);
    }

    #[test]
    fn a_committed_stamp_keeps_its_subscription_out_until_the_next_one_is_due() {
        let memory = StampMemory::default();
        let start = Instant::now();
        memory.committed(&[3], start);
        let soon = start + STAMP_EVERY - Duration::from_millis(1);
        assert_eq!(memory.due(&[3, 7], soon), [7]);
        assert_eq!(memory.due(&[3, 7], start + STAMP_EVERY), [3, 7]);
    }
}
