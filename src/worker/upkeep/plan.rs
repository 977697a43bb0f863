//! What a mailbox's subscription needs, decided from its rows alone (pure: no I/O, no clock), so
//! every rule is tested without Exchange or a database.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::db::events::LifecycleEvent;
use crate::db::subscriptions::ActiveSubscription;
use crate::domain::{Backend, Coverage, ResyncReason};

/// The inputs of a decision that come from settings and options.
#[derive(Debug, Clone)]
pub struct Rules<'a> {
    pub callback_url: &'a str,
    /// Length of one "minute" of EWS StatusFrequency (a minute, except in tests).
    pub minute: Duration,
    /// Added to twice the StatusFrequency before a silent EWS subscription is given up.
    pub silence_slack: Duration,
    /// The longest a mailbox goes without upkeep looking at it.
    pub recheck: Duration,
}

/// The mailbox as upkeep sees it.
#[derive(Debug, Clone, Copy)]
pub struct Mailbox {
    pub backend: Backend,
    pub enabled: bool,
}

/// One thing to do to Exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing: the subscription is fine.
    Keep,
    /// Create a subscription on `backend`; for EWS resume from `watermark`. `replacing` is the
    /// active subscription it replaces (ended once the new one is active), with why.
    Subscribe {
        backend: Backend,
        watermark: Option<String>,
        replacing: Option<(ActiveSubscription, String)>,
        /// Graph has already dropped the replaced subscription: no need to delete it.
        replaced_is_gone: bool,
    },
    /// Extend a Graph subscription (which also reauthorizes it).
    Renew(ActiveSubscription),
    /// End the subscription of a mailbox that is no longer configured.
    End(ActiveSubscription),
}

/// The decision for one mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// A full resync of the mailbox's window is owed, whatever the action's outcome.
    pub resync: Option<ResyncReason>,
    /// Lifecycle events this decision acts on: marked done once the action succeeded.
    pub handled_events: Vec<i64>,
    /// Coverage while the action runs (and after it, if it is `Keep`), with the reason.
    pub coverage: (Coverage, Option<String>),
    /// When to look at the mailbox again if nothing else makes it due earlier.
    pub next_due: DateTime<Utc>,
}

const SUBSCRIPTION_REMOVED: &str = "subscription_removed";
const REAUTHORIZATION_REQUIRED: &str = "reauthorization_required";
const MISSED: &str = "missed";

/// Decides what `mailbox` needs, given its active subscription and pending lifecycle events.
#[must_use]
pub fn decide(
    mailbox: Mailbox,
    active: Option<&ActiveSubscription>,
    lifecycle: &[LifecycleEvent],
    rules: &Rules<'_>,
    now: DateTime<Utc>,
) -> Decision {
    let recheck = now + chrono::Duration::from_std(rules.recheck).unwrap_or_default();
    let mut decision = Decision {
        action: Action::Keep,
        resync: None,
        handled_events: lifecycle.iter().map(|e| e.id).collect(),
        coverage: (Coverage::Covered, None),
        next_due: recheck,
    };
    // Lifecycle events that concern the active subscription; those of older subscriptions
    // only matter for `missed` (their changes may not have reached us either).
    let on_active = |kind: &str| {
        lifecycle
            .iter()
            .any(|e| e.kind == kind && active.is_some_and(|a| e.subscription_id == Some(a.id)))
    };
    if lifecycle.iter().any(|e| e.kind == MISSED) {
        decision.resync = Some(ResyncReason::Missed);
    }
    let uncovered = |why: &str| (Coverage::Uncovered, Some(why.to_owned()));

    if !mailbox.enabled {
        decision.coverage = (Coverage::Disabled, None);
        decision.resync = None;
        if let Some(active) = active {
            decision.action = Action::End(active.clone());
        }
        return decision;
    }
    let Some(active) = active else {
        decision.action = Action::Subscribe {
            backend: mailbox.backend,
            watermark: None,
            replacing: None,
            replaced_is_gone: false,
        };
        decision.resync = Some(ResyncReason::Resubscribed);
        decision.coverage = uncovered("no subscription yet");
        return decision;
    };
    let replace = |why: String, watermark: Option<String>, gone: bool| Action::Subscribe {
        backend: mailbox.backend,
        watermark,
        replacing: Some((active.clone(), why)),
        replaced_is_gone: gone,
    };
    if active.backend != mailbox.backend {
        decision.action = replace(
            format!(
                "mailbox moved from {} to {}",
                active.backend, mailbox.backend
            ),
            None,
            false,
        );
        decision.resync = Some(ResyncReason::Resubscribed);
        decision.coverage = uncovered("moving to another backend");
        return decision;
    }
    if active.callback_url != rules.callback_url {
        // EWS keeps continuity through the watermark; Graph must drop the old subscription
        // before it can create one for the same resource, so changes in between are re-read.
        let watermark = active.resume_watermark().map(str::to_owned);
        if active.backend == Backend::Graph {
            decision.resync = Some(ResyncReason::Resubscribed);
        }
        decision.action = replace("the callback URL changed".into(), watermark, false);
        decision.coverage = uncovered("moving to the new callback URL");
        return decision;
    }
    match active.backend {
        Backend::Graph => decide_graph(&mut decision, active, &on_active, now, replace),
        Backend::Ews => decide_ews(&mut decision, active, rules, now, replace),
    }
    decision
}

fn decide_graph(
    decision: &mut Decision,
    active: &ActiveSubscription,
    on_active: &dyn Fn(&str) -> bool,
    now: DateTime<Utc>,
    replace: impl Fn(String, Option<String>, bool) -> Action,
) {
    if on_active(SUBSCRIPTION_REMOVED) {
        decision.action = replace("Graph removed the subscription".into(), None, true);
        decision.resync = Some(ResyncReason::SubscriptionRemoved);
        decision.coverage = (
            Coverage::Uncovered,
            Some("Graph removed the subscription".into()),
        );
        return;
    }
    if active.expires_at.is_some_and(|at| at <= now) {
        decision.action = replace("the subscription expired".into(), None, true);
        decision.resync = Some(ResyncReason::Resubscribed);
        decision.coverage = (Coverage::Uncovered, Some("the subscription expired".into()));
        return;
    }
    if on_active(REAUTHORIZATION_REQUIRED) || active.renew_at.is_none_or(|at| at <= now) {
        decision.action = Action::Renew(active.clone());
        return;
    }
    if let Some(renew_at) = active.renew_at {
        decision.next_due = decision.next_due.min(renew_at);
    }
}

fn decide_ews(
    decision: &mut Decision,
    active: &ActiveSubscription,
    rules: &Rules<'_>,
    now: DateTime<Utc>,
    replace: impl Fn(String, Option<String>, bool) -> Action,
) {
    let watermark = active.resume_watermark().map(str::to_owned);
    let why = if let Some(lost) = &active.lost_reason {
        Some(format!("Exchange reported the subscription lost ({lost})"))
    } else if active.lost_at.is_some() {
        Some("Exchange reported the subscription lost".to_owned())
    } else if active.gap_detected_at.is_some() {
        Some("a notification was missed (watermark gap)".to_owned())
    } else {
        None
    };
    if let Some(why) = why {
        decision.coverage = (Coverage::Uncovered, Some(why.clone()));
        decision.action = replace(why, watermark, true);
        return;
    }
    let frequency =
        u32::try_from(active.status_frequency_minutes.unwrap_or(30).max(1)).unwrap_or(30);
    let silence = rules.minute * frequency * 2 + rules.silence_slack;
    let last_sign_of_life = active
        .last_notification_at
        .or(active.activated_at)
        .unwrap_or(now);
    let deadline = last_sign_of_life + chrono::Duration::from_std(silence).unwrap_or_default();
    if deadline <= now {
        let why = "no notification for twice the StatusFrequency".to_owned();
        decision.coverage = (Coverage::Uncovered, Some(why.clone()));
        decision.action = replace(why, watermark, true);
        return;
    }
    decision.next_due = decision.next_due.min(deadline);
}

#[cfg(test)]
mod tests;
