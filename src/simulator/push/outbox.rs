//! Graph's delivery of change and lifecycle notifications, one outbox per callback URL.
//!
//! What Microsoft documents (learn.microsoft.com, "Receive change notifications through
//! webhooks"), and what this models:
//!
//! - a notification is delivered only when the endpoint answers 2xx within 3 seconds; a
//!   slower answer, however good, counts as a failure ([`ANSWER_DEADLINE`], real time);
//! - a failed notification is retried with exponential back-off for up to 4 hours
//!   ([`retry_delays`], simulated time, divided by the time scale like every other delay);
//! - notifications for the same URL travel together in one POST's `value[]`: whatever is
//!   due for a URL within [`BATCH_WINDOW`] (real time) goes out at once, [`MAX_BATCH`] at most.
//!
//! Each notification keeps its own retry schedule: a failed batch is not retried as a
//! whole, its notifications each come back when their next try is due, with whatever else
//! is then due for the URL. So a retried notification can arrive after newer ones, as
//! Graph does not promise an order either.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{FIRST_RETRY, post_graph, take_duplicate, take_push_failure};
use crate::simulator::Shared;
use crate::simulator::control::{Backend, PushRecord};

/// How long Graph waits for an endpoint's answer (real time, never scaled: it is what a
/// receiver's own latency is measured against).
pub(crate) const ANSWER_DEADLINE: Duration = Duration::from_secs(3);
/// How long notifications due for one URL are gathered before the POST goes out (real time).
pub(crate) const BATCH_WINDOW: Duration = Duration::from_millis(100);
/// Most notifications in one POST; the rest follow in the next.
pub(crate) const MAX_BATCH: usize = 100;
/// How long after its first try a notification is still retried (simulated time).
pub(crate) const RETRY_FOR: Duration = Duration::from_secs(4 * 3600);
/// The wait before a retry starts at [`FIRST_RETRY`] (simulated time) and doubles after
/// every failure up to this. Microsoft does not publish its intervals; the cap keeps tries coming
/// through the 4 hours instead of leaving the last two hours empty.
pub(crate) const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(3600);

/// The waits between the tries of a notification that always fails: 30 s doubling up to an
/// hour, then one last try at the 4-hour mark.
pub(crate) fn retry_delays() -> Vec<Duration> {
    let mut delays = Vec::new();
    let mut spent = Duration::ZERO;
    let mut next = FIRST_RETRY;
    while spent < RETRY_FOR {
        let wait = next.min(RETRY_FOR - spent);
        delays.push(wait);
        spent += wait;
        next = (next * 2).min(MAX_RETRY_INTERVAL);
    }
    delays
}

/// Every URL's outbox. An outbox exists exactly while its delivery task runs.
#[derive(Debug, Default)]
pub(crate) struct Outboxes {
    boxes: HashMap<String, Outbox>,
    /// Orders notifications that are due at the same instant by when they were queued.
    next_seq: u64,
}

#[derive(Debug)]
struct Outbox {
    pending: Vec<Pending>,
    /// Wakes the delivery task when a notification is queued (it may be due sooner than
    /// the retry the task sleeps towards).
    wake: Arc<Notify>,
}

/// One notification waiting for its next try.
#[derive(Debug, Clone)]
struct Pending {
    seq: u64,
    subscription_id: String,
    /// The `changeType` or lifecycle event, for the push record.
    kind: String,
    value: Value,
    /// Tries made so far.
    tries: u32,
    due: Instant,
}

/// A notification to queue for delivery.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) url: String,
    pub(crate) subscription_id: String,
    pub(crate) kind: String,
    /// One element of the POST's `value[]`.
    pub(crate) value: Value,
}

/// Queues notifications, each due now, and starts the delivery task of every URL that had
/// none running.
pub(crate) fn enqueue(shared: &Arc<Shared>, outgoing: Vec<Outgoing>) {
    let now = Instant::now();
    let mut start = Vec::new();
    {
        let mut state = shared.lock();
        let outboxes = &mut state.graph_outboxes;
        for o in outgoing {
            outboxes.next_seq += 1;
            let pending = Pending {
                seq: outboxes.next_seq,
                subscription_id: o.subscription_id,
                kind: o.kind,
                value: o.value,
                tries: 0,
                due: now,
            };
            match outboxes.boxes.get_mut(&o.url) {
                Some(b) => {
                    b.pending.push(pending);
                    b.wake.notify_one();
                }
                None => {
                    let wake = Arc::new(Notify::new());
                    start.push((o.url.clone(), Arc::clone(&wake)));
                    outboxes.boxes.insert(
                        o.url,
                        Outbox {
                            pending: vec![pending],
                            wake,
                        },
                    );
                }
            }
        }
    }
    for (url, wake) in start {
        let shared2 = Arc::clone(shared);
        shared
            .runtime
            .spawn(async move { deliver(shared2, url, wake).await });
    }
}

/// What the delivery task does next.
enum Next {
    /// Nothing is pending: the outbox is gone and the task ends.
    Done,
    /// The earliest notification is due then.
    WaitUntil(Instant),
}

fn next_due(shared: &Shared, url: &str) -> Next {
    let mut state = shared.lock();
    let outboxes = &mut state.graph_outboxes;
    match outboxes
        .boxes
        .get(url)
        .and_then(|b| b.pending.iter().map(|p| p.due).min())
    {
        Some(due) => Next::WaitUntil(due),
        None => {
            // Under the lock, so `enqueue` either found this outbox before or starts anew.
            outboxes.boxes.remove(url);
            Next::Done
        }
    }
}

/// Takes the notifications due now, oldest first, at most [`MAX_BATCH`].
fn take_due(shared: &Shared, url: &str) -> Vec<Pending> {
    let now = Instant::now();
    let mut state = shared.lock();
    let Some(b) = state.graph_outboxes.boxes.get_mut(url) else {
        return Vec::new();
    };
    b.pending.sort_by_key(|p| (p.due, p.seq));
    let due = b
        .pending
        .iter()
        .take_while(|p| p.due <= now)
        .take(MAX_BATCH)
        .count();
    b.pending.drain(..due).collect()
}

/// Puts a failed batch's notifications back, each due after its own next back-off; those
/// whose 4 hours are over are dropped, as Graph drops them.
fn reschedule(shared: &Shared, url: &str, batch: Vec<Pending>) {
    let delays = retry_delays();
    let now = Instant::now();
    let mut state = shared.lock();
    let Some(b) = state.graph_outboxes.boxes.get_mut(url) else {
        return;
    };
    for mut p in batch {
        let Some(delay) = usize::try_from(p.tries - 1)
            .ok()
            .and_then(|i| delays.get(i))
        else {
            continue;
        };
        p.due = now + shared.scaled(*delay);
        b.pending.push(p);
    }
}

/// Each distinct value once, in order of first appearance, comma-separated.
fn distinct_joined<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for v in values {
        if !seen.contains(&v) {
            seen.push(v);
        }
    }
    seen.join(",")
}

/// The delivery task of one URL: runs while notifications are pending for it.
async fn deliver(shared: Arc<Shared>, url: String, wake: Arc<Notify>) {
    loop {
        let due = match next_due(&shared, &url) {
            Next::Done => return,
            Next::WaitUntil(due) => due,
        };
        if due > Instant::now() {
            tokio::select! {
                () = shared.shutdown.cancelled() => return,
                () = wake.notified() => continue,
                () = tokio::time::sleep_until(due) => {}
            }
        }
        // Whatever else becomes due for this URL meanwhile travels in the same POST.
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = tokio::time::sleep(BATCH_WINDOW) => {}
        }
        let mut batch = take_due(&shared, &url);
        if batch.is_empty() {
            continue;
        }
        for p in &mut batch {
            p.tries += 1;
        }
        let body = json!({ "value": batch.iter().map(|p| p.value.clone()).collect::<Vec<_>>() })
            .to_string();
        let status = if take_push_failure(&shared) {
            None
        } else {
            post_graph(&shared, &url, &body, ANSWER_DEADLINE).await
        };
        let kind = distinct_joined(batch.iter().map(|p| p.kind.as_str()));
        let record = |status: Option<u16>, kind: String| PushRecord {
            backend: Backend::Graph,
            url: url.clone(),
            subscription_id: distinct_joined(batch.iter().map(|p| p.subscription_id.as_str())),
            kind,
            attempt: batch.iter().map(|p| p.tries).max().unwrap_or(1),
            notifications: batch.len(),
            status,
            at: Utc::now(),
            body: body.clone(),
        };
        shared.lock().record_push(record(status, kind.clone()));
        if status.is_some_and(|s| (200..300).contains(&s)) {
            if take_duplicate(&shared) {
                let again = post_graph(&shared, &url, &body, ANSWER_DEADLINE).await;
                shared
                    .lock()
                    .record_push(record(again, format!("{kind} (duplicate)")));
            }
        } else {
            reschedule(&shared, &url, batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_from_30_seconds_up_to_an_hour_and_the_last_one_is_at_four_hours() {
        let delays = retry_delays();
        let secs: Vec<u64> = delays.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3390]);
        assert_eq!(delays.iter().sum::<Duration>(), RETRY_FOR);
    }

    #[test]
    fn a_batch_names_each_kind_once_in_order_of_first_appearance() {
        assert_eq!(
            distinct_joined(["created", "updated", "created", "deleted"].into_iter()),
            "created,updated,deleted"
        );
    }
}
