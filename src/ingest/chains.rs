//! What this process has committed of each EWS subscription's watermark chain, so that most
//! batches need no work on the `subscriptions` table at all.
//!
//! Judging a batch's chain in the database (its `PreviousWatermark` against the stored chain,
//! then the row update) cost Postgres about as much as the batch's own insert, once per
//! notification. Yet nearly every notification continues the chain right where this process
//! left it: its `PreviousWatermark` is the watermark of the last event the process committed
//! for that subscription. Such a batch is continuous without asking the database, which holds
//! that event (events are never deleted). So an update goes to the database only when the
//! process cannot tell (the first batch after a start, a notification committed by another
//! replica, a real break), when the batch itself breaks the chain or reports a loss, or when the
//! subscription's row was last written by this process [`STAMP_EVERY`] ago or more: the stored
//! chain end (a resubscription's resume point) and `last_notification_at` lag by at most that.
//!
//! The memory only holds what was committed, and is only a hint: an entry that is stale,
//! evicted or missing sends the update to the database, which judges it on its own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::db::subscriptions::EwsUpdate;

/// How often a subscription's row is written while its chain runs on unbroken.
pub(super) const STAMP_EVERY: Duration = Duration::from_secs(5);
/// Bound on entries: far more than the rooms of a tenant; past it the memory starts again.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Default)]
pub(super) struct ChainMemory {
    chains: Mutex<HashMap<i64, Chain>>,
}

#[derive(Debug)]
struct Chain {
    /// The watermark of the last event committed for the subscription.
    committed: String,
    /// When its row was last written with this process's update.
    stamped_at: Instant,
}

impl ChainMemory {
    /// The updates of `updates` the database has work for, as of `now`.
    pub(super) fn to_send(&self, updates: &[EwsUpdate], now: Instant) -> Vec<EwsUpdate> {
        let chains = super::lock_hints(&self.chains);
        updates
            .iter()
            .filter(|u| {
                let Some(chain) = chains.get(&u.subscription_id) else {
                    return true;
                };
                let continues = u
                    .first_previous
                    .as_ref()
                    .is_none_or(|previous| *previous == chain.committed);
                !continues
                    || u.inner_gap
                    || u.lost_reason.is_some()
                    || now.saturating_duration_since(chain.stamped_at) >= STAMP_EVERY
            })
            .cloned()
            .collect()
    }

    /// Records a committed batch: `updates` as planned, `sent` those of them the statement
    /// applied (its rows were written at `now`).
    pub(super) fn committed(&self, updates: &[EwsUpdate], sent: &[EwsUpdate], now: Instant) {
        let mut chains = super::lock_hints(&self.chains);
        if chains.len() >= MAX_ENTRIES {
            chains.clear();
        }
        for update in updates {
            let was_sent = sent
                .iter()
                .any(|s| s.subscription_id == update.subscription_id);
            match (
                chains.get_mut(&update.subscription_id),
                &update.last_watermark,
            ) {
                (Some(chain), Some(last)) => {
                    chain.committed.clone_from(last);
                    if was_sent {
                        chain.stamped_at = now;
                    }
                }
                // A chain never judged by the database is not remembered: its first update
                // must go there, and its stamp time is not known before that.
                (None, Some(last)) if was_sent => {
                    chains.insert(
                        update.subscription_id,
                        Chain {
                            committed: last.clone(),
                            stamped_at: now,
                        },
                    );
                }
                (Some(chain), None) if was_sent => chain.stamped_at = now,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(id: i64, previous: Option<&str>, last: Option<&str>) -> EwsUpdate {
        EwsUpdate {
            first_previous: previous.map(str::to_owned),
            last_watermark: last.map(str::to_owned),
            ..EwsUpdate::new(id)
        }
    }

    fn ids(updates: &[EwsUpdate]) -> Vec<i64> {
        updates.iter().map(|u| u.subscription_id).collect()
    }

    #[test]
    fn a_subscription_never_committed_goes_to_the_database() {
        let memory = ChainMemory::default();
        let batch = [update(1, Some("W1"), Some("W2"))];
        assert_eq!(ids(&memory.to_send(&batch, Instant::now())), [1]);
    }

    #[test]
    fn a_batch_that_continues_the_committed_chain_is_left_out_until_the_stamp_is_due() {
        let memory = ChainMemory::default();
        let start = Instant::now();
        let first = [update(1, Some("W1"), Some("W2"))];
        memory.committed(&first, &first, start);
        let next = [update(1, Some("W2"), Some("W3"))];
        assert!(
            memory
                .to_send(&next, start + Duration::from_secs(1))
                .is_empty()
        );
        memory.committed(&next, &[], start + Duration::from_secs(1));
        let after = [update(1, Some("W3"), Some("W4"))];
        assert!(
            memory
                .to_send(&after, start + Duration::from_secs(4))
                .is_empty()
        );
        assert_eq!(ids(&memory.to_send(&after, start + STAMP_EVERY)), [1]);
    }

    #[test]
    fn a_break_a_loss_or_an_inner_gap_goes_to_the_database_at_once() {
        let memory = ChainMemory::default();
        let now = Instant::now();
        let first = [update(1, Some("W1"), Some("W2"))];
        memory.committed(&first, &first, now);
        let broken = update(1, Some("W7"), Some("W8"));
        let mut inner = update(1, Some("W2"), Some("W5"));
        inner.inner_gap = true;
        let mut lost = update(1, Some("W2"), None);
        lost.lost_reason = Some("ErrorReadEventsFailed".to_owned());
        for u in [broken, inner, lost] {
            assert_eq!(ids(&memory.to_send(&[u], now)), [1]);
        }
    }

    #[test]
    fn the_chain_left_out_is_remembered_where_it_ended() {
        let memory = ChainMemory::default();
        let now = Instant::now();
        let first = [update(1, Some("W1"), Some("W2"))];
        memory.committed(&first, &first, now);
        let skipped = [update(1, Some("W2"), Some("W3"))];
        memory.committed(&skipped, &[], now);
        assert!(
            memory
                .to_send(&[update(1, Some("W3"), Some("W4"))], now)
                .is_empty()
        );
        assert_eq!(
            ids(&memory.to_send(&[update(1, Some("W2"), Some("W3"))], now)),
            [1],
            "an older PreviousWatermark is for the database to judge"
        );
    }

    #[test]
    fn a_batch_not_sent_does_not_start_a_memory() {
        let memory = ChainMemory::default();
        let now = Instant::now();
        let batch = [update(1, Some("W1"), Some("W2"))];
        memory.committed(&batch, &[], now);
        assert_eq!(
            ids(&memory.to_send(&[update(1, Some("W2"), Some("W3"))], now)),
            [1]
        );
    }
}
