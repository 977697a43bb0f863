#![allow(clippy::unwrap_used)]

use chrono::TimeZone;

use super::*;

fn window() -> (DateTime<Utc>, DateTime<Utc>) {
    (
        Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2027, 12, 1, 0, 0, 0).unwrap(),
    )
}

/// A mailbox synced an hour ago through its own backend over today's window.
fn claim() -> SyncClaim {
    let now = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
    SyncClaim {
        id: 1,
        address: "room@x".into(),
        backend: Backend::Graph,
        lease_token: uuid::Uuid::nil(),
        claimed_at: now,
        sync_cursor: Some("https://graph/delta?$deltatoken=a".into()),
        sync_cursor_backend: Some(Backend::Graph),
        sync_window_start: Some(window().0),
        sync_window_end: Some(window().1),
        full_synced_at: Some(now - TimeDelta::hours(1)),
        resync_requested_at: None,
        resync_reason: None,
        sync_failures: 0,
        events: 3,
        max_attempts: 1,
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);

#[test]
fn a_mailbox_synced_recently_over_todays_window_gets_an_incremental_round() {
    assert_eq!(full_reason(&claim(), window(), DAY), None);
}

#[test]
fn first_sight_a_backend_move_a_resync_request_a_new_window_or_a_day_force_a_full_round() {
    let first = SyncClaim {
        sync_cursor: None,
        ..claim()
    };
    assert_eq!(full_reason(&first, window(), DAY), Some("first sync"));
    let moved = SyncClaim {
        backend: Backend::Ews,
        ..claim()
    };
    assert_eq!(full_reason(&moved, window(), DAY), Some("backend changed"));
    let asked = SyncClaim {
        resync_requested_at: Some(claim().claimed_at),
        resync_reason: Some(crate::domain::ResyncReason::Missed),
        ..claim()
    };
    assert_eq!(full_reason(&asked, window(), DAY), Some("missed"));
    let tomorrow = (
        window().0 + TimeDelta::days(1),
        window().1 + TimeDelta::days(1),
    );
    assert_eq!(full_reason(&claim(), tomorrow, DAY), Some("window moved"));
    let stale = SyncClaim {
        full_synced_at: Some(claim().claimed_at - TimeDelta::hours(25)),
        ..claim()
    };
    assert_eq!(
        full_reason(&stale, window(), DAY),
        Some("periodic full sync")
    );
}

#[test]
fn throttling_is_waited_out_without_costing_an_attempt() {
    let throttled = SyncError::Exchange(ExchangeError::Throttled {
        retry_after: Duration::from_secs(7),
        detail: String::new(),
    });
    assert!(!throttled.counts_as_attempt());
    assert_eq!(throttled.retry_hint(), Some(Duration::from_secs(7)));
    let refused = SyncError::Exchange(ExchangeError::Rejected {
        status: 404,
        code: "ErrorInvalidUser".into(),
        message: String::new(),
    });
    assert!(refused.counts_as_attempt());
    assert_eq!(refused.retry_hint(), None);
}
