//! Carrying out an upkeep decision against Exchange: create (recording the pending row and its
//! secret first), renew, end; then recording the outcome. No transaction is open while
//! Exchange is called.

use chrono::{DateTime, Utc};

use super::plan::{self, Action, Mailbox, Rules};
use super::{Upkeep, UpkeepError};
use crate::db;
use crate::db::mailboxes::UpkeepClaim;
use crate::db::subscriptions::{Activation, ActiveSubscription, NewSubscription};
use crate::domain::{Backend, Coverage, ResyncReason, SubscriptionState};
use crate::exchange::ExchangeError;
use crate::exchange::ews::{PushSubscribe, SubscribeOutcome};
use crate::graph::subscription::{self as wire, CreateSubscription};

/// Graph's documented ceiling for event subscriptions is 10,080 minutes, but tenants have
/// answered anything over 4,230 with a 400 about the expiration: fall back to this then.
const FALLBACK_LIFETIME_MINUTES: i64 = 4200;

/// The outcome of one pass.
#[derive(Debug)]
pub(super) struct Done {
    pub(super) action: &'static str,
    pub(super) next_due: DateTime<Utc>,
    pub(super) coverage: (Coverage, Option<String>),
}

fn rules(u: &Upkeep) -> Rules<'_> {
    Rules {
        callback_url: &u.settings.callback_url,
        minute: u.options.minute,
        silence_slack: u.options.ews_silence_slack,
        recheck: u.options.recheck,
    }
}

pub(super) async fn run(u: &Upkeep, claim: &UpkeepClaim) -> Result<Done, UpkeepError> {
    let mailbox = Mailbox {
        backend: claim.backend,
        enabled: claim.enabled,
    };
    let active = db::subscriptions::active_for_mailbox(&u.pool, claim.id).await?;
    let lifecycle = db::events::pending_lifecycle(&u.pool, claim.id).await?;
    let decision = plan::decide(mailbox, active.as_ref(), &lifecycle, &rules(u), Utc::now());
    let mut resync = decision.resync;
    let action = match decision.action {
        Action::Keep => "keep",
        Action::Renew(sub) => {
            if renew_graph(u, claim, &sub).await? {
                "renew"
            } else {
                // Graph no longer has it: a new one, and whatever happened meanwhile is re-read.
                db::subscriptions::end(
                    &u.pool,
                    sub.id,
                    SubscriptionState::Removed,
                    "Graph answered 404 to its renewal",
                )
                .await?;
                subscribe(u, claim, Backend::Graph, None, None, true, &mut resync).await?;
                resync = Some(ResyncReason::SubscriptionRemoved);
                "recreate"
            }
        }
        Action::Subscribe {
            backend,
            watermark,
            replacing,
            replaced_is_gone,
        } => {
            subscribe(
                u,
                claim,
                backend,
                watermark,
                replacing,
                replaced_is_gone,
                &mut resync,
            )
            .await?;
            "subscribe"
        }
        Action::End(sub) => {
            end(u, claim, &sub).await?;
            "end"
        }
    };
    if let Some(reason) = resync {
        db::mailboxes::request_resync(&u.pool, claim.id, reason).await?;
    }
    db::events::mark_done(&u.pool, &decision.handled_events).await?;
    if action == "keep" {
        return Ok(Done {
            action,
            next_due: decision.next_due,
            coverage: decision.coverage,
        });
    }
    // Decide again on the new state: when to look next and whether the mailbox is covered.
    let active = db::subscriptions::active_for_mailbox(&u.pool, claim.id).await?;
    let after = plan::decide(mailbox, active.as_ref(), &[], &rules(u), Utc::now());
    let next_due = if after.action == Action::Keep {
        after.next_due
    } else {
        Utc::now()
    };
    Ok(Done {
        action,
        next_due,
        coverage: after.coverage,
    })
}

/// When to renew a Graph subscription that expires at `expires`: half-way, less up to a tenth
/// of the time left, so that subscriptions created together do not renew together.
fn renew_time(now: DateTime<Utc>, expires: DateTime<Utc>) -> DateTime<Utc> {
    let left = (expires - now).max(chrono::TimeDelta::zero());
    let jitter = (left / 10).num_milliseconds() as f64 * fastrand::f64();
    now + left / 2 - chrono::Duration::milliseconds(jitter as i64)
}

/// A fresh `clientState`: 256 bits from the OS's random source (Graph allows 128 characters).
fn client_state() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn lifetime(u: &Upkeep) -> i64 {
    i64::from(u.settings.exchange.graph.subscription_lifetime_minutes)
}

fn mentions_expiration(e: &ExchangeError) -> bool {
    matches!(e, ExchangeError::Rejected { status: 400, message, .. }
        if message.to_ascii_lowercase().contains("expiration"))
}

/// Subscribes the mailbox on `backend`, then makes the new subscription the active one in
/// place of `replacing` and ends the replaced one at Exchange when it is still there.
async fn subscribe(
    u: &Upkeep,
    claim: &UpkeepClaim,
    backend: Backend,
    watermark: Option<String>,
    replacing: Option<(ActiveSubscription, String)>,
    replaced_is_gone: bool,
    resync: &mut Option<ResyncReason>,
) -> Result<(), UpkeepError> {
    let replaced = replacing.as_ref().map(|(s, why)| (s.id, why.as_str()));
    let mut old_deleted = replaced_is_gone;
    match backend {
        Backend::Graph => {
            let old_remote = replacing
                .as_ref()
                .filter(|(s, _)| s.backend == Backend::Graph)
                .map(|(s, _)| s.remote_id.as_str());
            let outcome = subscribe_graph(u, claim, replaced, old_remote).await?;
            if outcome.cleared_conflict {
                // The old subscription for this resource was deleted before the new one was
                // created: changes in between may have gone unnoticed.
                *resync = Some(ResyncReason::Resubscribed);
                old_deleted |= outcome.deleted_old;
            }
        }
        Backend::Ews => {
            if subscribe_ews(u, claim, watermark.as_deref(), replaced).await? {
                *resync = Some(ResyncReason::InvalidWatermark);
            }
        }
    }
    if let Some((old, _)) = &replacing
        && old.backend == Backend::Graph
        && !old_deleted
        && let Err(error) = u
            .client
            .graph()
            .delete_subscription(&claim.address, &old.remote_id)
            .await
    {
        // Not fatal: the reconciliation job deletes orphans pointing at our callback.
        tracing::warn!(mailbox = %claim.address, %error, "cannot delete the replaced Graph subscription");
    }
    Ok(())
}

struct GraphCreated {
    cleared_conflict: bool,
    deleted_old: bool,
}

async fn subscribe_graph(
    u: &Upkeep,
    claim: &UpkeepClaim,
    replaced: Option<(i64, &str)>,
    old_remote: Option<&str>,
) -> Result<GraphCreated, UpkeepError> {
    let secret = client_state();
    let resource = wire::room_events_resource(&claim.address);
    let callback = u.settings.callback_url.as_str();
    // The secret is stored before Graph is asked, so the first notification (which can beat
    // the create response) is recognised.
    let pending = db::subscriptions::insert(
        &u.pool,
        &NewSubscription {
            mailbox_id: claim.id,
            backend: Backend::Graph,
            remote_id: None,
            status: SubscriptionState::Pending,
            client_state: Some(&secret),
            callback_url: callback,
            expires_at: None,
            last_watermark: None,
            resource: Some(&resource),
            status_frequency_minutes: None,
        },
    )
    .await?;
    let graph = u.client.graph();
    let create = |minutes: i64| CreateSubscription {
        change_type: wire::ROOM_CHANGE_TYPES,
        notification_url: callback,
        lifecycle_notification_url: callback,
        resource: &resource,
        expiration_date_time: Utc::now() + chrono::Duration::minutes(minutes),
        client_state: &secret,
        latest_supported_tls_version: "v1_2",
    };
    let mut outcome = GraphCreated {
        cleared_conflict: false,
        deleted_old: false,
    };
    let mut minutes = lifetime(u);
    let mut attempt = 0;
    let created = loop {
        attempt += 1;
        match graph
            .create_subscription(&claim.address, &create(minutes))
            .await
        {
            Ok(created) => break created,
            Err(e) if mentions_expiration(&e) && minutes > FALLBACK_LIFETIME_MINUTES => {
                minutes = FALLBACK_LIFETIME_MINUTES;
            }
            Err(ExchangeError::Rejected {
                status: 409,
                message,
                ..
            }) if attempt < 3 => {
                outcome.deleted_old |=
                    clear_conflict(u, claim, &resource, &message, old_remote).await?;
                outcome.cleared_conflict = true;
            }
            Err(e) => {
                db::subscriptions::end(&u.pool, pending, SubscriptionState::Failed, &e.to_string())
                    .await?;
                return Err(e.into());
            }
        }
    };
    let expires = created.expiration_date_time;
    db::subscriptions::activate(
        &u.pool,
        pending,
        &Activation {
            remote_id: &created.id,
            expires_at: Some(expires),
            renew_at: Some(renew_time(Utc::now(), expires)),
            subscribe_watermark: None,
        },
        replaced,
    )
    .await?;
    crate::ingest::rematch(&u.pool, &created.id).await?;
    tracing::info!(
        mailbox = %claim.address, subscription = %created.id, expires = %expires,
        "Graph subscription created"
    );
    Ok(outcome)
}

/// Graph refused a create because a subscription for the same resource exists: one of ours
/// that the database never recorded (a crash between create and commit; its secret is
/// unknowable), or the one being replaced. Deletes it; returns whether it was `old_remote`.
async fn clear_conflict(
    u: &Upkeep,
    claim: &UpkeepClaim,
    resource: &str,
    message: &str,
    old_remote: Option<&str>,
) -> Result<bool, UpkeepError> {
    let graph = u.client.graph();
    // Graph names the conflicting id in its message; a listing finds it otherwise.
    let named = message
        .split_whitespace()
        .skip_while(|w| !w.eq_ignore_ascii_case("id"))
        .nth(1)
        .filter(|id| id.len() >= 8 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
        .map(str::to_owned);
    let conflicting: Vec<String> = match named {
        Some(id) => vec![id],
        None => graph
            .list_subscriptions()
            .await?
            .into_iter()
            .filter(|s| wire::same_resource(&s.resource, resource))
            .map(|s| s.id)
            .collect(),
    };
    let mut deleted_old = false;
    for id in conflicting {
        tracing::warn!(mailbox = %claim.address, subscription = %id, "deleting a conflicting Graph subscription");
        graph.delete_subscription(&claim.address, &id).await?;
        deleted_old |= old_remote == Some(id.as_str());
    }
    Ok(deleted_old)
}

/// Returns whether the watermark was refused (so a full resync is owed).
async fn subscribe_ews(
    u: &Upkeep,
    claim: &UpkeepClaim,
    watermark: Option<&str>,
    replaced: Option<(i64, &str)>,
) -> Result<bool, UpkeepError> {
    let frequency = u.settings.exchange.ews.status_frequency_minutes;
    let mut watermark = watermark;
    let mut refused_watermark = false;
    loop {
        // The pending row's request time opens ingress's grace window for a first
        // notification that beats the Subscribe response.
        let pending = db::subscriptions::insert(
            &u.pool,
            &NewSubscription {
                mailbox_id: claim.id,
                backend: Backend::Ews,
                remote_id: None,
                status: SubscriptionState::Pending,
                client_state: None,
                callback_url: &u.settings.callback_url,
                expires_at: None,
                last_watermark: None,
                resource: None,
                status_frequency_minutes: i32::try_from(frequency).ok(),
            },
        )
        .await?;
        let request = PushSubscribe {
            room: &claim.address,
            watermark,
            status_frequency_minutes: frequency,
            url: &u.settings.callback_url,
        };
        match u.client.ews().subscribe(&request).await {
            Ok(SubscribeOutcome::Subscribed {
                subscription_id,
                watermark: start,
            }) => {
                db::subscriptions::activate(
                    &u.pool,
                    pending,
                    &Activation {
                        remote_id: &subscription_id,
                        expires_at: None,
                        renew_at: None,
                        subscribe_watermark: start.as_deref(),
                    },
                    replaced,
                )
                .await?;
                crate::ingest::rematch(&u.pool, &subscription_id).await?;
                tracing::info!(
                    mailbox = %claim.address, resumed = watermark.is_some(),
                    "EWS push subscription created"
                );
                return Ok(refused_watermark);
            }
            Ok(SubscribeOutcome::InvalidWatermark) if watermark.is_some() => {
                db::subscriptions::end(
                    &u.pool,
                    pending,
                    SubscriptionState::Failed,
                    "ErrorInvalidWatermark",
                )
                .await?;
                tracing::warn!(
                    mailbox = %claim.address,
                    "EWS refused the watermark; subscribing afresh and resyncing the room"
                );
                watermark = None;
                refused_watermark = true;
            }
            Ok(SubscribeOutcome::InvalidWatermark) => {
                let e = ExchangeError::Protocol(
                    "ErrorInvalidWatermark for a Subscribe without a watermark".into(),
                );
                db::subscriptions::end(&u.pool, pending, SubscriptionState::Failed, &e.to_string())
                    .await?;
                return Err(e.into());
            }
            Err(e) => {
                db::subscriptions::end(&u.pool, pending, SubscriptionState::Failed, &e.to_string())
                    .await?;
                return Err(e.into());
            }
        }
    }
}

/// Renews a Graph subscription; `false` when Graph no longer has it.
async fn renew_graph(
    u: &Upkeep,
    claim: &UpkeepClaim,
    sub: &ActiveSubscription,
) -> Result<bool, UpkeepError> {
    let graph = u.client.graph();
    let mut minutes = lifetime(u);
    loop {
        let expires = Utc::now() + chrono::Duration::minutes(minutes);
        match graph
            .renew_subscription(&claim.address, &sub.remote_id, expires)
            .await
        {
            Ok(renewed) => {
                let expires = renewed.expiration_date_time;
                db::subscriptions::renewed(
                    &u.pool,
                    sub.id,
                    expires,
                    renew_time(Utc::now(), expires),
                )
                .await?;
                tracing::debug!(mailbox = %claim.address, expires = %expires, "Graph subscription renewed");
                return Ok(true);
            }
            Err(ExchangeError::Rejected { status: 404, .. }) => return Ok(false),
            Err(e) if mentions_expiration(&e) && minutes > FALLBACK_LIFETIME_MINUTES => {
                minutes = FALLBACK_LIFETIME_MINUTES;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Ends the subscription of a mailbox that is no longer configured. EWS has no call for it: the
/// row is marked removed and ingress answers `Unsubscribe` to its next notification.
async fn end(u: &Upkeep, claim: &UpkeepClaim, sub: &ActiveSubscription) -> Result<(), UpkeepError> {
    if sub.backend == Backend::Graph {
        u.client
            .graph()
            .delete_subscription(&claim.address, &sub.remote_id)
            .await?;
    }
    db::subscriptions::end(
        &u.pool,
        sub.id,
        SubscriptionState::Removed,
        "the mailbox is no longer configured",
    )
    .await?;
    tracing::info!(mailbox = %claim.address, backend = %sub.backend, "subscription ended");
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn renewal_is_due_between_forty_and_fifty_percent_of_the_time_left() {
        let now = Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).single();
        let Some(now) = now else { return };
        let expires = now + chrono::Duration::minutes(1000);
        for _ in 0..100 {
            let at = renew_time(now, expires);
            assert!(at <= now + chrono::Duration::minutes(500));
            assert!(at >= now + chrono::Duration::minutes(400));
        }
    }

    #[test]
    fn client_states_are_long_random_and_distinct() {
        let a = client_state();
        assert_eq!(a.len(), 64);
        assert_ne!(a, client_state());
    }
}
