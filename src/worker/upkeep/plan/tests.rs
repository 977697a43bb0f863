#![allow(clippy::unwrap_used)]

use chrono::TimeZone;

use super::*;

const URL: &str = "https://rooms.example/api/webhooks/exchange";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap()
}

fn rules() -> Rules<'static> {
    Rules {
        callback_url: URL,
        minute: Duration::from_secs(60),
        silence_slack: Duration::from_secs(60),
        recheck: Duration::from_secs(600),
    }
}

fn minutes(m: i64) -> chrono::Duration {
    chrono::Duration::minutes(m)
}

fn sub(backend: Backend) -> ActiveSubscription {
    ActiveSubscription {
        id: 7,
        backend,
        remote_id: "remote-7".into(),
        callback_url: URL.into(),
        resource: None,
        expires_at: (backend == Backend::Graph).then(|| now() + minutes(3000)),
        renew_at: (backend == Backend::Graph).then(|| now() + minutes(1000)),
        activated_at: Some(now() - minutes(5)),
        last_watermark: (backend == Backend::Ews).then(|| "WM-9".to_owned()),
        subscribe_watermark: (backend == Backend::Ews).then(|| "WM-1".to_owned()),
        last_notification_at: Some(now() - minutes(1)),
        gap_detected_at: None,
        lost_at: None,
        lost_reason: None,
        status_frequency_minutes: (backend == Backend::Ews).then_some(15),
    }
}

fn enabled(backend: Backend) -> Mailbox {
    Mailbox {
        backend,
        enabled: true,
    }
}

fn event(id: i64, kind: &str, subscription_id: Option<i64>) -> LifecycleEvent {
    LifecycleEvent {
        id,
        kind: kind.to_owned(),
        subscription_id,
    }
}

fn subscribed_with(decision: &Decision) -> (Option<&str>, Option<&str>, bool) {
    match &decision.action {
        Action::Subscribe {
            watermark,
            replacing,
            replaced_is_gone,
            ..
        } => (
            watermark.as_deref(),
            replacing.as_ref().map(|(_, why)| why.as_str()),
            *replaced_is_gone,
        ),
        other => panic!("expected a subscribe, got {other:?}"),
    }
}

#[test]
fn a_mailbox_without_a_subscription_gets_one_and_a_full_resync() {
    let d = decide(enabled(Backend::Graph), None, &[], &rules(), now());
    assert!(matches!(
        d.action,
        Action::Subscribe {
            backend: Backend::Graph,
            watermark: None,
            replacing: None,
            ..
        }
    ));
    assert_eq!(d.resync, Some(ResyncReason::Resubscribed));
    assert_eq!(d.coverage.0, Coverage::Uncovered);
}

#[test]
fn a_healthy_graph_subscription_is_kept_until_its_renewal_time() {
    let s = sub(Backend::Graph);
    let d = decide(enabled(Backend::Graph), Some(&s), &[], &rules(), now());
    assert_eq!(d.action, Action::Keep);
    assert_eq!(d.coverage, (Coverage::Covered, None));
    assert_eq!(
        d.next_due,
        now() + minutes(10),
        "rechecked within the recheck period"
    );
    let mut soon = s;
    soon.renew_at = Some(now() + minutes(3));
    let d = decide(enabled(Backend::Graph), Some(&soon), &[], &rules(), now());
    assert_eq!(d.next_due, now() + minutes(3), "due at its renewal time");
}

#[test]
fn a_graph_subscription_past_its_renewal_time_is_renewed() {
    let mut s = sub(Backend::Graph);
    s.renew_at = Some(now() - minutes(1));
    let d = decide(enabled(Backend::Graph), Some(&s), &[], &rules(), now());
    assert_eq!(d.action, Action::Renew(s));
    assert_eq!(d.resync, None);
}

#[test]
fn reauthorization_required_renews_and_is_marked_handled() {
    let s = sub(Backend::Graph);
    let d = decide(
        enabled(Backend::Graph),
        Some(&s),
        &[event(40, "reauthorization_required", Some(7))],
        &rules(),
        now(),
    );
    assert_eq!(d.action, Action::Renew(s));
    assert_eq!(d.handled_events, vec![40]);
}

#[test]
fn subscription_removed_recreates_without_deleting_and_asks_for_a_resync() {
    let s = sub(Backend::Graph);
    let d = decide(
        enabled(Backend::Graph),
        Some(&s),
        &[event(41, "subscription_removed", Some(7))],
        &rules(),
        now(),
    );
    let (_, replacing, gone) = subscribed_with(&d);
    assert!(replacing.is_some());
    assert!(gone, "Graph has already dropped it");
    assert_eq!(d.resync, Some(ResyncReason::SubscriptionRemoved));
}

#[test]
fn missed_asks_for_a_resync_and_keeps_the_subscription() {
    let s = sub(Backend::Graph);
    let d = decide(
        enabled(Backend::Graph),
        Some(&s),
        &[event(42, "missed", Some(7))],
        &rules(),
        now(),
    );
    assert_eq!(d.action, Action::Keep);
    assert_eq!(d.resync, Some(ResyncReason::Missed));
    assert_eq!(d.handled_events, vec![42]);
}

#[test]
fn lifecycle_events_of_an_older_subscription_do_not_touch_the_active_one() {
    let s = sub(Backend::Graph);
    let d = decide(
        enabled(Backend::Graph),
        Some(&s),
        &[
            event(43, "subscription_removed", Some(3)),
            event(44, "reauthorization_required", Some(3)),
        ],
        &rules(),
        now(),
    );
    assert_eq!(d.action, Action::Keep);
    assert_eq!(d.handled_events, vec![43, 44]);
}

#[test]
fn an_expired_graph_subscription_is_recreated_with_a_resync() {
    let mut s = sub(Backend::Graph);
    s.expires_at = Some(now() - minutes(1));
    let d = decide(enabled(Backend::Graph), Some(&s), &[], &rules(), now());
    let (_, _, gone) = subscribed_with(&d);
    assert!(gone);
    assert_eq!(d.resync, Some(ResyncReason::Resubscribed));
}

#[test]
fn a_live_ews_subscription_is_due_again_at_its_silence_deadline() {
    let s = sub(Backend::Ews);
    let long_recheck = Rules {
        recheck: Duration::from_secs(3600),
        ..rules()
    };
    let d = decide(enabled(Backend::Ews), Some(&s), &[], &long_recheck, now());
    assert_eq!(d.action, Action::Keep);
    // Last notification a minute ago; 2 × 15 minutes plus a minute of slack.
    assert_eq!(d.next_due, now() + minutes(30));
}

#[test]
fn a_silent_ews_subscription_is_replaced_from_its_last_watermark() {
    let mut s = sub(Backend::Ews);
    s.last_notification_at = Some(now() - minutes(32));
    let d = decide(enabled(Backend::Ews), Some(&s), &[], &rules(), now());
    let (watermark, replacing, _) = subscribed_with(&d);
    assert_eq!(watermark, Some("WM-9"));
    assert!(replacing.unwrap().contains("StatusFrequency"));
    assert_eq!(d.resync, None, "the watermark replays what was missed");
}

#[test]
fn an_ews_subscription_that_never_notified_resumes_from_its_subscribe_watermark() {
    let mut s = sub(Backend::Ews);
    s.last_watermark = None;
    s.last_notification_at = None;
    s.activated_at = Some(now() - minutes(40));
    let d = decide(enabled(Backend::Ews), Some(&s), &[], &rules(), now());
    assert_eq!(subscribed_with(&d).0, Some("WM-1"));
}

#[test]
fn a_lost_or_broken_ews_subscription_is_replaced_at_once() {
    let mut lost = sub(Backend::Ews);
    lost.lost_at = Some(now());
    lost.lost_reason = Some("ErrorReadEventsFailed".into());
    let d = decide(enabled(Backend::Ews), Some(&lost), &[], &rules(), now());
    let (watermark, why, _) = subscribed_with(&d);
    assert_eq!(watermark, Some("WM-9"));
    assert!(why.unwrap().contains("ErrorReadEventsFailed"));

    let mut gap = sub(Backend::Ews);
    gap.gap_detected_at = Some(now());
    let d = decide(enabled(Backend::Ews), Some(&gap), &[], &rules(), now());
    assert!(subscribed_with(&d).1.unwrap().contains("gap"));
}

#[test]
fn a_changed_callback_moves_the_subscription_keeping_ews_continuity() {
    let mut s = sub(Backend::Ews);
    s.callback_url = "https://old.example/api/webhooks/exchange".into();
    let d = decide(enabled(Backend::Ews), Some(&s), &[], &rules(), now());
    let (watermark, why, gone) = subscribed_with(&d);
    assert_eq!(watermark, Some("WM-9"));
    assert!(why.unwrap().contains("callback"));
    assert!(!gone);
    assert_eq!(d.resync, None);

    let mut g = sub(Backend::Graph);
    g.callback_url = "https://old.example/api/webhooks/exchange".into();
    let d = decide(enabled(Backend::Graph), Some(&g), &[], &rules(), now());
    assert!(
        !subscribed_with(&d).2,
        "the old Graph subscription is deleted"
    );
    assert_eq!(d.resync, Some(ResyncReason::Resubscribed));
}

#[test]
fn a_mailbox_moved_to_another_backend_subscribes_there_and_ends_the_old_one() {
    let s = sub(Backend::Ews);
    let d = decide(enabled(Backend::Graph), Some(&s), &[], &rules(), now());
    match &d.action {
        Action::Subscribe {
            backend,
            watermark,
            replacing,
            ..
        } => {
            assert_eq!(*backend, Backend::Graph);
            assert_eq!(*watermark, None, "an EWS watermark means nothing to Graph");
            assert_eq!(replacing.as_ref().unwrap().0.id, 7);
        }
        other => panic!("expected a subscribe, got {other:?}"),
    }
    assert_eq!(d.resync, Some(ResyncReason::Resubscribed));
}

#[test]
fn a_disabled_mailbox_ends_its_subscription_and_is_not_resynced() {
    let s = sub(Backend::Graph);
    let d = decide(
        Mailbox {
            backend: Backend::Graph,
            enabled: false,
        },
        Some(&s),
        &[event(45, "missed", Some(7))],
        &rules(),
        now(),
    );
    assert_eq!(d.action, Action::End(s));
    assert_eq!(d.coverage.0, Coverage::Disabled);
    assert_eq!(d.resync, None);
}
