//! The sync worker against the simulator over real HTTP: every kind of booking change ends in
//! the right `reservations` rows on both backends, whatever duplicates, retries and lost sync
//! states the way there held; a crashed worker's claim is taken over; throttling is honoured;
//! failing events end `dead`; and a room moved from EWS to Graph keeps its rows.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use rooms_sync::simulator::{Fault, Meeting, Recurrence, SimulatorHandle};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    Service, TestApp, binary, database_url, eventually, simulator, stderr, stdout,
};

const ROOM: &str = "room1@sim.example";
const ORGANIZER: &str = "alice@sim.example";

/// `days` from today at `hour` UTC: inside the sync window whatever day the tests run.
fn at(days: i64, hour: u32) -> DateTime<Utc> {
    let today = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    today + TimeDelta::days(days) + TimeDelta::hours(i64::from(hour))
}

fn meeting(subject: &str, start: DateTime<Utc>) -> Meeting {
    Meeting {
        subject: subject.to_owned(),
        organizer: ORGANIZER.to_owned(),
        start,
        end: start + TimeDelta::hours(1),
        is_all_day: false,
        location: "Room 1".to_owned(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
struct Row {
    id: i64,
    item_id: String,
    backend: Option<String>,
    subject: Option<String>,
    organizer: Option<String>,
    location: Option<String>,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    is_cancelled: bool,
    deleted: bool,
    series_master_id: Option<String>,
    series_uid: Option<String>,
}

async fn rows(pool: &PgPool) -> Vec<Row> {
    sqlx::query_as(
        "select r.id, r.item_id, r.backend, r.subject, r.organizer, r.location, r.starts_at,
                r.ends_at, r.is_cancelled, r.deleted_at is not null as deleted,
                r.series_master_id, r.series_uid
         from reservations r join mailboxes m on m.id = r.mailbox_id
         where m.address = $1 order by r.starts_at, r.item_id",
    )
    .bind(ROOM)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The id the service stores for an item the simulator's control API names: Graph rows carry
/// Graph's immutable ids (the service asks for them), EWS rows the EWS id.
fn key(sim: &SimulatorHandle, backend: &str, id: &str) -> String {
    if backend == "graph" {
        sim.control().graph_id(id, true)
    } else {
        id.to_owned()
    }
}

async fn row(pool: &PgPool, item_id: &str) -> Option<Row> {
    rows(pool).await.into_iter().find(|r| r.item_id == item_id)
}

/// Waits until the row of `item_id` satisfies `check`.
async fn wait_row(pool: &PgPool, item_id: &str, what: &str, check: impl Fn(&Row) -> bool) {
    // Generous: a loaded machine can miss Graph's 3 s answer deadline, and the simulator then
    // retries with back-off as Graph does.
    eventually(Duration::from_secs(30), what, || async {
        row(pool, item_id).await.is_some_and(|r| check(&r))
    })
    .await;
}

/// Waits until the room is subscribed and synced with no full resync owed, so what a test
/// does next meets an incremental round.
async fn synced(pool: &PgPool) {
    eventually(Duration::from_secs(30), "the room's first sync", || async {
        sqlx::query_scalar::<_, bool>(
            "select full_synced_at is not null and resync_requested_at is null
                    and coverage = 'covered' and sync_locked_until is null
             from mailboxes where address = $1",
        )
        .bind(ROOM)
        .fetch_optional(pool)
        .await
        .unwrap()
        .unwrap_or(false)
    })
    .await;
}

/// Waits until no event of the room waits for a sync.
async fn drained(pool: &PgPool) {
    eventually(Duration::from_secs(30), "every event synced", || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from notification_events where status in ('pending', 'processing')
               and kind not in ('reauthorization_required', 'subscription_removed', 'missed')",
        )
        .fetch_one(pool)
        .await
        .unwrap()
            == 0
    })
    .await;
}

async fn start(pool: &PgPool, backend: &str) -> (CancellationToken, SimulatorHandle, TestApp) {
    let stop = CancellationToken::new();
    let sim = simulator(&stop).await;
    let app = Service::new(&format!("{backend}:{ROOM}"))
        .start(pool, &sim)
        .await;
    synced(pool).await;
    (stop, sim, app)
}

async fn mailbox_id(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select id from mailboxes where address = $1")
        .bind(ROOM)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A row Exchange does not have (as if its deletion had been missed).
async fn ghost(pool: &PgPool) {
    sqlx::query(
        "insert into reservations (mailbox_id, item_id, subject, starts_at, ends_at)
         values ($1, 'ghost', 'Missed deletion', $2, $3)",
    )
    .bind(mailbox_id(pool).await)
    .bind(at(2, 9))
    .bind(at(2, 10))
    .execute(pool)
    .await
    .unwrap();
}

// ---- every booking change ----------------------------------------------------------------

async fn single_meeting_changes_end_in_the_right_rows(pool: PgPool, backend: &str) {
    let (stop, sim, app) = start(&pool, backend).await;
    let control = sim.control();

    let a = control
        .create_meeting(ROOM, meeting("Planning", at(1, 9)))
        .unwrap();
    wait_row(
        &pool,
        &key(&sim, backend, &a),
        "a new meeting gets a row",
        |r| !r.deleted,
    )
    .await;
    let created = row(&pool, &key(&sim, backend, &a)).await.unwrap();
    assert_eq!(created.subject.as_deref(), Some("Planning"));
    assert_eq!(created.organizer.as_deref(), Some(ORGANIZER));
    assert_eq!(created.location.as_deref(), Some("Room 1"));
    assert_eq!((created.starts_at, created.ends_at), (at(1, 9), at(1, 10)));
    assert_eq!(created.backend.as_deref(), Some(backend));

    control
        .move_meeting(ROOM, &a, at(1, 14), at(1, 15))
        .unwrap();
    wait_row(
        &pool,
        &key(&sim, backend, &a),
        "a moved meeting moves",
        |r| r.starts_at == at(1, 14),
    )
    .await;
    control
        .move_meeting(ROOM, &a, at(1, 14), at(1, 14) + TimeDelta::minutes(30))
        .unwrap();
    wait_row(
        &pool,
        &key(&sim, backend, &a),
        "a shortened meeting ends earlier",
        |r| r.ends_at == at(1, 14) + TimeDelta::minutes(30),
    )
    .await;

    let b = control
        .create_meeting(ROOM, meeting("Review", at(2, 11)))
        .unwrap();
    control.cancel_meeting(ROOM, &b).unwrap();
    wait_row(
        &pool,
        &key(&sim, backend, &b),
        "a cancelled meeting keeps its row, cancelled",
        |r| r.is_cancelled && !r.deleted,
    )
    .await;

    let c = control
        .create_meeting(ROOM, meeting("Lunch", at(3, 12)))
        .unwrap();
    wait_row(
        &pool,
        &key(&sim, backend, &c),
        "another meeting gets a row",
        |r| !r.deleted,
    )
    .await;
    control.delete_meeting(ROOM, &c).unwrap();
    wait_row(
        &pool,
        &key(&sim, backend, &c),
        "a deleted meeting is marked deleted",
        |r| r.deleted,
    )
    .await;

    let d = control
        .create_meeting(ROOM, meeting("Retro", at(4, 15)))
        .unwrap();
    wait_row(
        &pool,
        &key(&sim, backend, &d),
        "a fourth meeting gets a row",
        |r| !r.deleted,
    )
    .await;
    control.soft_delete_meeting(ROOM, &d).unwrap();
    wait_row(
        &pool,
        &key(&sim, backend, &d),
        "a meeting moved to Deleted Items is marked deleted",
        |r| r.deleted,
    )
    .await;
    drained(&pool).await;

    let all = rows(&pool).await;
    assert_eq!(all.len(), 4, "never more rows than meetings: {all:#?}");
    assert!(!row(&pool, &key(&sim, backend, &a)).await.unwrap().deleted);
    app.stop().await;
    stop.cancel();
}

#[sqlx::test]
async fn graph_single_meeting_changes_end_in_the_right_rows(pool: PgPool) {
    single_meeting_changes_end_in_the_right_rows(pool, "graph").await;
}

#[sqlx::test]
async fn ews_single_meeting_changes_end_in_the_right_rows(pool: PgPool) {
    single_meeting_changes_end_in_the_right_rows(pool, "ews").await;
}

async fn a_recurring_series_becomes_one_row_per_occurrence(pool: PgPool, backend: &str) {
    let (stop, sim, app) = start(&pool, backend).await;
    let control = sim.control();
    let master = control
        .create_series(
            ROOM,
            meeting("Stand-up", at(1, 8)),
            Recurrence::Daily { count: 5 },
        )
        .unwrap();
    let live = |rows: &[Row]| rows.iter().filter(|r| !r.deleted).count();
    eventually(Duration::from_secs(30), "five occurrences", || async {
        live(&rows(&pool).await) == 5
    })
    .await;
    let occurrences = rows(&pool).await;
    assert!(
        occurrences
            .iter()
            .all(|r| r.series_master_id.as_deref() == Some(key(&sim, backend, &master).as_str()))
    );
    let uid = occurrences[0].series_uid.clone();
    assert!(uid.is_some());
    assert!(
        occurrences.iter().all(|r| r.series_uid == uid),
        "{occurrences:#?}"
    );
    let starts: Vec<_> = occurrences.iter().map(|r| r.starts_at).collect();
    assert_eq!(starts, (1..=5).map(|d| at(d, 8)).collect::<Vec<_>>());

    control
        .move_meeting(ROOM, &master, at(1, 10), at(1, 11))
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the whole series moved",
        || async {
            let now = rows(&pool).await;
            live(&now) == 5
                && now
                    .iter()
                    .filter(|r| !r.deleted)
                    .all(|r| r.starts_at.time() == at(0, 10).time())
        },
    )
    .await;

    control.delete_meeting(ROOM, &master).unwrap();
    eventually(
        Duration::from_secs(30),
        "a deleted series leaves no live row",
        || async { live(&rows(&pool).await) == 0 },
    )
    .await;
    assert!(
        rows(&pool).await.len() >= 5,
        "rows are kept, marked deleted"
    );
    app.stop().await;
    stop.cancel();
}

#[sqlx::test]
async fn graph_recurring_series_become_one_row_per_occurrence(pool: PgPool) {
    a_recurring_series_becomes_one_row_per_occurrence(pool, "graph").await;
}

#[sqlx::test]
async fn ews_recurring_series_become_one_row_per_occurrence(pool: PgPool) {
    a_recurring_series_becomes_one_row_per_occurrence(pool, "ews").await;
}

async fn single_occurrences_moved_cancelled_deleted_or_cut_end_in_the_right_rows(
    pool: PgPool,
    backend: &str,
) {
    let (stop, sim, app) = start(&pool, backend).await;
    let control = sim.control();
    let master = control
        .create_series(
            ROOM,
            meeting("Daily", at(1, 8)),
            Recurrence::Daily { count: 5 },
        )
        .unwrap();
    let ids = control.occurrence_ids(ROOM, &master).unwrap();
    assert_eq!(ids.len(), 5);
    eventually(Duration::from_secs(30), "five occurrences", || async {
        rows(&pool).await.iter().filter(|r| !r.deleted).count() == 5
    })
    .await;

    let moved = control
        .move_occurrence(ROOM, &master, 1, at(2, 13), at(2, 14))
        .unwrap();
    assert_eq!(moved, ids[1]);
    wait_row(
        &pool,
        &key(&sim, backend, &ids[1]),
        "one occurrence moved on its own",
        |r| r.starts_at == at(2, 13) && r.ends_at == at(2, 14) && !r.deleted,
    )
    .await;
    assert_eq!(
        row(&pool, &key(&sim, backend, &ids[0]))
            .await
            .unwrap()
            .starts_at,
        at(1, 8),
        "its neighbours stay"
    );

    control.cancel_occurrence(ROOM, &master, 2).unwrap();
    wait_row(
        &pool,
        &key(&sim, backend, &ids[2]),
        "one occurrence cancelled",
        |r| r.is_cancelled && !r.deleted,
    )
    .await;

    control.delete_occurrence(ROOM, &master, 3).unwrap();
    wait_row(
        &pool,
        &key(&sim, backend, &ids[3]),
        "one occurrence deleted",
        |r| r.deleted,
    )
    .await;

    control.end_series(ROOM, &master, 4).unwrap();
    wait_row(
        &pool,
        &key(&sim, backend, &ids[4]),
        "the series ended before its last occurrence",
        |r| r.deleted,
    )
    .await;
    drained(&pool).await;

    let live: Vec<(String, DateTime<Utc>, bool)> = rows(&pool)
        .await
        .into_iter()
        .filter(|r| !r.deleted)
        .map(|r| (r.item_id, r.starts_at, r.is_cancelled))
        .collect();
    assert_eq!(
        live,
        vec![
            (key(&sim, backend, &ids[0]), at(1, 8), false),
            (key(&sim, backend, &ids[1]), at(2, 13), false),
            (key(&sim, backend, &ids[2]), at(3, 8), true),
        ]
    );
    assert!(
        rows(&pool)
            .await
            .iter()
            .all(|r| r.series_master_id.as_deref() == Some(key(&sim, backend, &master).as_str()))
    );
    app.stop().await;
    stop.cancel();
}

#[sqlx::test]
async fn graph_single_occurrences_moved_cancelled_deleted_or_cut_end_in_the_right_rows(
    pool: PgPool,
) {
    single_occurrences_moved_cancelled_deleted_or_cut_end_in_the_right_rows(pool, "graph").await;
}

#[sqlx::test]
async fn ews_single_occurrences_moved_cancelled_deleted_or_cut_end_in_the_right_rows(pool: PgPool) {
    single_occurrences_moved_cancelled_deleted_or_cut_end_in_the_right_rows(pool, "ews").await;
}

// ---- duplicates, retries and bursts ---------------------------------------------------------

/// The live rows, without row ids or timestamps of writing (a meeting created and deleted
/// between two rounds may never get a row at all).
async fn content(pool: &PgPool) -> Vec<(String, Option<String>, DateTime<Utc>, bool)> {
    let mut content: Vec<_> = rows(pool)
        .await
        .into_iter()
        .filter(|r| !r.deleted)
        .map(|r| (r.item_id, r.subject, r.starts_at, r.is_cancelled))
        .collect();
    content.sort();
    content
}

async fn a_duplicated_and_retried_burst_gives_the_clean_result(pool: PgPool, backend: &str) {
    let (stop, sim, app) = start(&pool, backend).await;
    let control = sim.control();
    control
        .inject(Fault::DuplicatePushes { count: 50 })
        .unwrap();
    control.inject(Fault::FailPushes { count: 3 }).unwrap();
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            control
                .create_meeting(ROOM, meeting(&format!("Burst {i}"), at(1 + i, 9)))
                .unwrap(),
        );
    }
    for id in ids.iter().step_by(2) {
        control.move_meeting(ROOM, id, at(6, 7), at(6, 8)).unwrap();
    }
    control.cancel_meeting(ROOM, &ids[1]).unwrap();
    control.delete_meeting(ROOM, &ids[3]).unwrap();
    let mut expected: Vec<_> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(i, id)| {
            let start = if i % 2 == 0 {
                at(6, 7)
            } else {
                at(1 + i as i64, 9)
            };
            (
                key(&sim, backend, id),
                Some(format!("Burst {i}")),
                start,
                i == 1,
            )
        })
        .collect();
    expected.sort();
    let matches = async {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(40) {
            if content(&pool).await == expected {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert!(
        matches.await,
        "{:#?}\n!=\n{expected:#?}",
        content(&pool).await
    );
    drained(&pool).await;
    assert_eq!(content(&pool).await, expected);
    eventually(
        Duration::from_secs(5),
        "lost deliveries were retried",
        || async { sim.control().pushes().iter().any(|p| p.attempt > 1) },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "some deliveries were duplicated",
        || async {
            sim.control()
                .pushes()
                .iter()
                .any(|p| p.kind.ends_with("(duplicate)"))
        },
    )
    .await;
    drained(&pool).await;
    assert_eq!(
        content(&pool).await,
        expected,
        "late redeliveries change nothing"
    );
    app.stop().await;
    stop.cancel();
}

#[sqlx::test]
async fn graph_a_duplicated_and_retried_burst_gives_the_clean_result(pool: PgPool) {
    a_duplicated_and_retried_burst_gives_the_clean_result(pool, "graph").await;
}

#[sqlx::test]
async fn ews_a_duplicated_and_retried_burst_gives_the_clean_result(pool: PgPool) {
    a_duplicated_and_retried_burst_gives_the_clean_result(pool, "ews").await;
}

#[sqlx::test]
async fn applying_the_same_round_twice_changes_no_row(pool: PgPool) {
    let (stop, sim, app) = start(&pool, "graph").await;
    let a = sim
        .control()
        .create_meeting(ROOM, meeting("Once", at(1, 9)))
        .unwrap();
    wait_row(&pool, &key(&sim, "graph", &a), "the meeting's row", |r| {
        !r.deleted
    })
    .await;
    drained(&pool).await;
    let before: Vec<(i64, DateTime<Utc>)> =
        sqlx::query_as("select id, updated_at from reservations order by id")
            .fetch_all(&pool)
            .await
            .unwrap();
    // A full resync reads everything again: nothing it reads is new.
    sqlx::query("update mailboxes set resync_requested_at = now(), resync_reason = 'missed'")
        .execute(&pool)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the full resync ran", || async {
        sqlx::query_scalar::<_, bool>("select resync_requested_at is null from mailboxes")
            .fetch_one(&pool)
            .await
            .unwrap()
    })
    .await;
    let after: Vec<(i64, DateTime<Utc>)> =
        sqlx::query_as("select id, updated_at from reservations order by id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(before, after);
    app.stop().await;
    stop.cancel();
}

// ---- lost sync states ------------------------------------------------------------------------

#[sqlx::test]
async fn a_gone_delta_link_leads_to_a_full_sync_that_reconciles(pool: PgPool) {
    let (stop, sim, app) = start(&pool, "graph").await;
    ghost(&pool).await;
    sim.control().inject(Fault::ExpireDeltaLinks).unwrap();
    let a = sim
        .control()
        .create_meeting(ROOM, meeting("After 410", at(1, 9)))
        .unwrap();
    wait_row(
        &pool,
        &key(&sim, "graph", &a),
        "the new meeting's row",
        |r| !r.deleted,
    )
    .await;
    wait_row(
        &pool,
        "ghost",
        "the row Exchange lacks is marked deleted",
        |r| r.deleted,
    )
    .await;
    let requests = sim.control().requests();
    let gone = requests
        .iter()
        .filter(|r| r.path.contains("calendarView/delta") && r.status == 410)
        .count();
    assert!(
        gone >= 1,
        "the stored link was answered 410: {:?}",
        requests
            .iter()
            .map(|r| (&r.path, r.status))
            .collect::<Vec<_>>()
    );
    app.stop().await;
    stop.cancel();
}

#[sqlx::test]
async fn a_rejected_ews_sync_state_leads_to_a_full_sync_that_reconciles(pool: PgPool) {
    let (stop, sim, app) = start(&pool, "ews").await;
    ghost(&pool).await;
    sqlx::query("update mailboxes set sync_cursor = 'bm90IGEgc3luYyBzdGF0ZQ=='")
        .execute(&pool)
        .await
        .unwrap();
    let a = sim
        .control()
        .create_meeting(ROOM, meeting("After rejection", at(1, 9)))
        .unwrap();
    wait_row(&pool, &key(&sim, "ews", &a), "the new meeting's row", |r| {
        !r.deleted
    })
    .await;
    wait_row(
        &pool,
        "ghost",
        "the row Exchange lacks is marked deleted",
        |r| r.deleted,
    )
    .await;
    let cursor: String = sqlx::query_scalar("select sync_cursor from mailboxes")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_ne!(
        cursor, "bm90IGEgc3luYyBzdGF0ZQ==",
        "a fresh sync state is stored"
    );
    app.stop().await;
    stop.cancel();
}

// ---- crashes, throttling, dead events --------------------------------------------------------

#[sqlx::test]
async fn a_crashed_workers_claim_is_taken_over_once_its_lease_expires(pool: PgPool) {
    let (stop, sim, app) = start(&pool, "graph").await;
    app.stop().await;
    // A worker claims the room with a pending event, then dies without finishing.
    let a = sim
        .control()
        .create_meeting(ROOM, meeting("Orphaned", at(1, 9)))
        .unwrap();
    let mailbox = mailbox_id(&pool).await;
    sqlx::query(
        "insert into notification_events (backend, mailbox_id, kind, item_id, dedupe_key, payload)
         values ('graph', $1, 'created', $2, 'crash-test', '{}')",
    )
    .bind(mailbox)
    .bind(key(&sim, "graph", &a))
    .execute(&pool)
    .await
    .unwrap();
    let lease = Duration::from_secs(3);
    let claims = rooms_sync::db::mailboxes::claim_sync(&pool, 10, lease)
        .await
        .unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].events, 1);
    let crashed = Instant::now();

    let app = Service::new(&format!("graph:{ROOM}"))
        .start(&pool, &sim)
        .await;
    wait_row(
        &pool,
        &key(&sim, "graph", &a),
        "the orphaned change is synced by the new worker",
        |r| !r.deleted,
    )
    .await;
    let taken_over = crashed.elapsed();
    assert!(
        taken_over >= lease - Duration::from_millis(200),
        "not before the lease ran out: {taken_over:?}"
    );
    assert!(
        taken_over <= Duration::from_secs(10),
        "within seconds of it: {taken_over:?}"
    );
    let (status, attempts): (String, i32) = sqlx::query_as(
        "select status, attempts from notification_events where dedupe_key = 'crash-test'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(status, "done");
    assert_eq!(attempts, 2, "the crashed attempt counts");
    app.stop().await;
    stop.cancel();
}

#[sqlx::test]
async fn graph_throttling_is_honoured_and_costs_no_attempt(pool: PgPool) {
    let (stop, sim, app) = start(&pool, "graph").await;
    sim.control()
        .inject(Fault::GraphThrottle {
            count: 4,
            retry_after_secs: 1,
            retry_after: None,
        })
        .unwrap();
    let a = sim
        .control()
        .create_meeting(ROOM, meeting("Throttled", at(1, 9)))
        .unwrap();
    wait_row(
        &pool,
        &key(&sim, "graph", &a),
        "the meeting's row despite throttling",
        |r| !r.deleted,
    )
    .await;
    let requests = sim.control().requests();
    // The room's own calls: a 429 on the app-wide subscription list says nothing of the room.
    let throttled: Vec<_> = requests
        .iter()
        .filter(|r| r.status == 429 && r.path.starts_with("/v1.0/users"))
        .collect();
    assert!(!throttled.is_empty());
    for t in &throttled {
        let next = requests
            .iter()
            .find(|r| r.at > t.at && r.path.starts_with("/v1.0/users"));
        if let Some(next) = next {
            assert!(
                next.at - t.at >= TimeDelta::milliseconds(950),
                "a request {:?} after a 429 asking for 1 s",
                next.at - t.at
            );
        }
    }
    let dead: i64 =
        sqlx::query_scalar("select count(*) from notification_events where status = 'dead'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(dead, 0);
    drained(&pool).await;
    // A throttled round hands its events back without counting it as an attempt.
    let most: i32 = sqlx::query_scalar(
        "select max(attempts) from notification_events where kind not in ('status')
           and reject_reason is null",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(most, 1, "waiting out a 429 is not an attempt");
    app.stop().await;
    stop.cancel();
}

#[sqlx::test]
async fn ews_server_busy_is_honoured(pool: PgPool) {
    let (stop, sim, app) = start(&pool, "ews").await;
    sim.control()
        .inject(Fault::EwsServerBusy {
            count: 2,
            backoff_ms: 700,
        })
        .unwrap();
    let a = sim
        .control()
        .create_meeting(ROOM, meeting("Busy", at(1, 9)))
        .unwrap();
    wait_row(
        &pool,
        &key(&sim, "ews", &a),
        "the meeting's row despite ErrorServerBusy",
        |r| !r.deleted,
    )
    .await;
    // Every EWS call for the room after a busy answer waits out its 700 ms back-off.
    let requests: Vec<_> = sim
        .control()
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/EWS/") && r.anchor_mailbox.as_deref() == Some(ROOM))
        .collect();
    let busy: Vec<_> = requests.iter().filter(|r| r.status == 500).collect();
    assert_eq!(busy.len(), 2, "both busy answers were met");
    for b in busy {
        if let Some(next) = requests.iter().find(|r| r.at > b.at) {
            assert!(
                next.at - b.at >= TimeDelta::milliseconds(650),
                "an EWS call {:?} after ErrorServerBusy asked for 700 ms",
                next.at - b.at
            );
        }
    }
    app.stop().await;
    stop.cancel();
}

#[sqlx::test]
async fn events_that_keep_failing_end_dead_with_the_error_and_replay_brings_them_back(
    pool: PgPool,
) {
    let stop = CancellationToken::new();
    let sim = simulator(&stop).await;
    // A room Exchange does not know (yet): every round fails.
    let app = Service::new("graph:nobody@sim.example")
        .start(&pool, &sim)
        .await;
    eventually(
        Duration::from_secs(10),
        "the mailbox is recorded",
        || async {
            sqlx::query_scalar::<_, i64>("select count(*) from mailboxes")
                .fetch_one(&pool)
                .await
                .unwrap()
                == 1
        },
    )
    .await;
    sqlx::query(
        "insert into notification_events (backend, mailbox_id, kind, item_id, dedupe_key, payload)
         select 'graph', id, 'updated', 'x', 'doomed', '{}' from mailboxes",
    )
    .execute(&pool)
    .await
    .unwrap();
    eventually(Duration::from_secs(20), "the event is dead", || async {
        sqlx::query_scalar::<_, String>(
            "select status from notification_events where dedupe_key = 'doomed'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
            == "dead"
    })
    .await;
    let (attempts, error): (i32, Option<String>) = sqlx::query_as(
        "select attempts, last_error from notification_events where dedupe_key = 'doomed'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(attempts, 4, "the policy's maximum");
    assert!(error.unwrap_or_default().contains("404"));
    let (failures, sync_error): (i32, Option<String>) =
        sqlx::query_as("select sync_failures, sync_error from mailboxes")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(failures >= 4);
    assert!(sync_error.is_some());

    // The room appears (booking into it creates it); the operator replays the dead event.
    let a = sim
        .control()
        .create_meeting("nobody@sim.example", meeting("At last", at(1, 9)))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let output = binary(
        dir.path(),
        &[
            ("IdpRootUrl", "https://rooms.example"),
            ("DatabaseUrl", &database_url(&pool)),
        ],
    )
    .args(["events", "replay", "--all"])
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("replayed 1 dead event"),
        "{}",
        stdout(&output)
    );
    eventually(
        Duration::from_secs(30),
        "the replayed event is synced",
        || async {
            sqlx::query_scalar::<_, String>(
                "select status from notification_events where dedupe_key = 'doomed'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
                == "done"
        },
    )
    .await;
    let written: i64 = sqlx::query_scalar("select count(*) from reservations where item_id = $1")
        .bind(key(&sim, "graph", &a))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(written, 1);
    app.stop().await;
    stop.cancel();
}

// ---- coalescing --------------------------------------------------------------------------------

#[sqlx::test]
async fn a_burst_of_fifty_changes_costs_at_most_two_rounds(pool: PgPool) {
    let (stop, sim, app) = start(&pool, "graph").await;
    drained(&pool).await;
    let before = sim.control().requests().len();
    let first = sim
        .control()
        .create_meeting(ROOM, meeting("Burst 0", at(1, 7)))
        .unwrap();
    let mut last = first.clone();
    for i in 1..50 {
        last = sim
            .control()
            .create_meeting(ROOM, meeting(&format!("Burst {i}"), at(1 + i % 20, 7)))
            .unwrap();
    }
    wait_row(
        &pool,
        &key(&sim, "graph", &last),
        "the last meeting's row",
        |r| !r.deleted,
    )
    .await;
    drained(&pool).await;
    let rounds = sim.control().requests()[before..]
        .iter()
        .filter(|r| r.path.contains("calendarView/delta"))
        .count();
    let stored: i64 =
        sqlx::query_scalar("select count(*) from notification_events where kind = 'created'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(stored >= 50, "{stored} notifications");
    assert!(
        rounds <= 2,
        "{rounds} delta rounds for a burst of {stored} notifications"
    );
    app.stop().await;
    stop.cancel();
}

// ---- moving a room from EWS to Graph -------------------------------------------------------

#[sqlx::test]
async fn a_room_moved_from_ews_to_graph_keeps_its_reservation_rows(pool: PgPool) {
    let stop = CancellationToken::new();
    let sim = simulator(&stop).await;
    let service = Service::new(&format!("ews:{ROOM}"));
    let app = service.start(&pool, &sim).await;
    synced(&pool).await;
    let control = sim.control();
    control
        .create_meeting(ROOM, meeting("Single", at(1, 9)))
        .unwrap();
    control
        .create_series(
            ROOM,
            meeting("Series", at(2, 8)),
            Recurrence::Weekly { count: 3 },
        )
        .unwrap();
    eventually(Duration::from_secs(30), "four rows through EWS", || async {
        rows(&pool)
            .await
            .iter()
            .filter(|r| !r.deleted && r.backend.as_deref() == Some("ews"))
            .count()
            == 4
    })
    .await;
    let before = rows(&pool).await;
    app.stop().await;

    let app = service
        .with_mailboxes(&format!("graph:{ROOM}"))
        .start(&pool, &sim)
        .await;
    eventually(
        Duration::from_secs(20),
        "the rows are read through Graph",
        || async {
            let now = rows(&pool).await;
            now.iter()
                .filter(|r| !r.deleted)
                .all(|r| r.backend.as_deref() == Some("graph"))
                && now.iter().filter(|r| !r.deleted).count() == 4
        },
    )
    .await;
    let after = rows(&pool).await;
    assert_eq!(after.len(), 4, "no row deleted and added again: {after:#?}");
    let ids = |rows: &[Row]| rows.iter().map(|r| (r.id, r.starts_at)).collect::<Vec<_>>();
    assert_eq!(ids(&before), ids(&after));
    for (old, new) in before.iter().zip(&after) {
        assert_ne!(old.item_id, new.item_id, "the row now carries Graph's id");
        assert_eq!(new.item_id, sim.control().graph_id(&old.item_id, true));
    }
    app.stop().await;
    stop.cancel();
}
