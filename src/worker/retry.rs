//! Retry policy as data: how long to wait after the n-th failure (exponential with jitter and a
//! cap, or the wait Exchange asked for when it said so), and when to stop trying.

use std::time::Duration;

use crate::exchange::throttle;

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again after this long.
    After(Duration),
    /// Stop: the work is kept in a dead state with its last error.
    GiveUp,
}

/// A retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait after the first failure (before jitter).
    pub base: Duration,
    /// Longest wait between attempts.
    pub cap: Duration,
    /// Attempts in all before giving up; `None` retries forever (subscription upkeep never
    /// gives a mailbox up: it keeps trying at the cap).
    pub max_attempts: Option<u32>,
}

impl RetryPolicy {
    /// Upkeep of a mailbox's subscription: a few seconds at first, then at most every 15
    /// minutes, never giving up.
    pub const UPKEEP: Self = Self {
        base: Duration::from_secs(5),
        cap: Duration::from_secs(15 * 60),
        max_attempts: None,
    };

    /// Sync rounds: a second at first, then at most every five minutes; an event is given up
    /// (`dead`) after eight failed rounds, about ten minutes of trying.
    pub const SYNC: Self = Self {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(5 * 60),
        max_attempts: Some(8),
    };

    /// The decision after `attempt` attempts failed, the last one with `hint` (Exchange's
    /// `Retry-After` or `BackOffMilliseconds`): never shorter than that hint.
    #[must_use]
    pub fn after_failure(&self, attempt: u32, hint: Option<Duration>) -> Retry {
        if self.max_attempts.is_some_and(|max| attempt >= max) {
            return Retry::GiveUp;
        }
        let computed = throttle::backoff(attempt, self.base, self.cap);
        Retry::After(hint.map_or(computed, |h| h.max(computed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        base: Duration::from_secs(2),
        cap: Duration::from_secs(60),
        max_attempts: Some(5),
    };

    #[test]
    fn waits_grow_with_attempts_and_stop_at_the_limit() {
        let Retry::After(first) = POLICY.after_failure(1, None) else {
            panic!("the first failure is retried");
        };
        assert!(first <= Duration::from_secs(2));
        let Retry::After(fourth) = POLICY.after_failure(4, None) else {
            panic!("the fourth failure is retried");
        };
        assert!(fourth >= Duration::from_secs(8));
        assert_eq!(POLICY.after_failure(5, None), Retry::GiveUp);
    }

    #[test]
    fn a_longer_hint_from_exchange_is_honoured() {
        assert_eq!(
            POLICY.after_failure(1, Some(Duration::from_secs(30))),
            Retry::After(Duration::from_secs(30))
        );
    }

    #[test]
    fn upkeep_never_gives_up() {
        assert!(matches!(
            RetryPolicy::UPKEEP.after_failure(10_000, None),
            Retry::After(d) if d <= Duration::from_secs(15 * 60)
        ));
    }
}
