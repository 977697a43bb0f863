//! The operator commands `rooms-sync status` and `rooms-sync events replay`, run as the real
//! binary against a database seeded here with plain SQL (`#[sqlx::test]` migrates it with the
//! service's migrations).

use std::process::Output;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{TestApp, binary, database_url, free_port, stderr, stdout};

/// Runs `rooms-sync ARGS` against `url` with nothing else configured.
fn run_against(url: &str, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    binary(
        dir.path(),
        &[("IdpRootUrl", "https://h.example"), ("DatabaseUrl", url)],
    )
    .args(args)
    .output()
    .unwrap()
}

fn run(pool: &PgPool, args: &[&str]) -> Output {
    run_against(&database_url(pool), args)
}

async fn mailbox(pool: &PgPool, address: &str, backend: &str) -> i64 {
    sqlx::query_scalar("insert into mailboxes (address, backend) values ($1, $2) returning id")
        .bind(address)
        .bind(backend)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A subscription requested `age` ago (an SQL interval) that last heard from Exchange
/// `heard` ago, if ever.
async fn subscription(
    pool: &PgPool,
    mailbox_id: i64,
    remote_id: &str,
    status: &str,
    age: &str,
    heard: Option<&str>,
) {
    sqlx::query(
        "insert into subscriptions
             (mailbox_id, backend, remote_id, status, callback_url, requested_at,
              last_notification_at)
         select id, backend, $2, $3, 'https://h.example/api/webhooks/exchange',
                now() - $4::interval, now() - $5::interval
         from mailboxes where id = $1",
    )
    .bind(mailbox_id)
    .bind(remote_id)
    .bind(status)
    .bind(age)
    .bind(heard)
    .execute(pool)
    .await
    .unwrap();
}

/// An event in `status`; dead ones look like the worker left them: attempts used up, an
/// error, a lease and a retry time in the future.
async fn event(pool: &PgPool, mailbox_id: Option<i64>, status: &str) -> i64 {
    let dead = status == "dead";
    sqlx::query_scalar(
        "insert into notification_events
             (backend, mailbox_id, kind, status, attempts, last_error, dedupe_key, payload,
              run_at, locked_until)
         values ('graph', $1, 'updated', $2, $3, $4, md5(random()::text), '{}',
                 now() + interval '1 hour', case when $5 then now() + interval '1 hour' end)
         returning id",
    )
    .bind(mailbox_id)
    .bind(status)
    .bind(if dead { 5 } else { 0 })
    .bind(dead.then_some("Graph answered 503"))
    .bind(dead)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn events(pool: &PgPool, mailbox_id: Option<i64>, status: &str, n: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(event(pool, mailbox_id, status).await);
    }
    ids
}

async fn execute(pool: &PgPool, sql: &str) {
    sqlx::query(sql).execute(pool).await.unwrap();
}

/// Three mailboxes as an operator would meet them, plus an event no mailbox was matched to:
/// - a Graph room that works: an active subscription expiring in 2 days (and an older
///   superseded one), heard from 3 minutes ago, synced a minute ago, 2 pending + 1 processing
///   events and 1 dead, besides done and ignored ones;
/// - an EWS room whose rounds fail: its latest subscription failed, the one before was
///   superseded 2 hours ago, never synced, 2 dead events;
/// - a disabled room that never had a subscription.
async fn seed_three_rooms(pool: &PgPool) {
    let graph = mailbox(pool, "a-graph@example.com", "graph").await;
    let ews = mailbox(pool, "b-ews@example.com", "ews").await;
    mailbox(pool, "c-disabled@example.com", "ews").await;
    execute(
        pool,
        "update mailboxes set coverage = 'covered', synced_at = now() - interval '1 minute',
                              sync_error = 'an error of a round before the last success'
         where address = 'a-graph@example.com'",
    )
    .await;
    execute(
        pool,
        "update mailboxes set coverage = 'uncovered', sync_failures = 2,
                              sync_error = 'EWS answered ErrorServerBusy'
         where address = 'b-ews@example.com'",
    )
    .await;
    execute(
        pool,
        "update mailboxes set enabled = false, coverage = 'disabled'
         where address = 'c-disabled@example.com'",
    )
    .await;
    subscription(pool, graph, "g-old", "superseded", "3 days", Some("1 day")).await;
    subscription(
        pool,
        graph,
        "g-active",
        "active",
        "1 day",
        Some("3 minutes"),
    )
    .await;
    execute(
        pool,
        "update subscriptions set expires_at = now() + interval '2 days'
         where remote_id = 'g-active'",
    )
    .await;
    subscription(pool, ews, "e-old", "superseded", "3 hours", Some("2 hours")).await;
    subscription(pool, ews, "e-failed", "failed", "1 hour", None).await;
    events(pool, Some(graph), "pending", 2).await;
    events(pool, Some(graph), "processing", 1).await;
    events(pool, Some(graph), "dead", 1).await;
    events(pool, Some(graph), "done", 4).await;
    events(pool, Some(graph), "ignored", 1).await;
    events(pool, Some(ews), "dead", 2).await;
    events(pool, None, "pending", 1).await;
}

/// The cells of `address`'s row, by header: each column starts where its header does.
fn row_of(table: &str, address: &str) -> Vec<(String, String)> {
    const HEADERS: [&str; 11] = [
        "ADDRESS",
        "BACKEND",
        "ENABLED",
        "COVERAGE",
        "SUBSCRIPTION",
        "EXPIRES",
        "LAST NOTIFICATION",
        "LAST SYNC",
        "PENDING",
        "DEAD",
        "SYNC ERROR",
    ];
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    let starts: Vec<usize> = HEADERS
        .iter()
        .map(|h| {
            header
                .find(h)
                .unwrap_or_else(|| panic!("no {h} in {header}"))
        })
        .collect();
    let row = lines
        .find(|l| l.starts_with(&format!("{address} ")))
        .unwrap_or_else(|| panic!("no row for {address} in\n{table}"));
    HEADERS
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let end = starts
                .get(i + 1)
                .copied()
                .unwrap_or(row.len())
                .min(row.len());
            ((*h).to_owned(), row[starts[i]..end].trim().to_owned())
        })
        .collect()
}

fn cells(table: &str, address: &str) -> Vec<String> {
    row_of(table, address).into_iter().map(|(_, v)| v).collect()
}

#[sqlx::test]
async fn status_shows_each_mailbox_with_its_subscription_sync_and_event_counts(pool: PgPool) {
    seed_three_rooms(&pool).await;

    let output = run(&pool, &["status"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let table = stdout(&output);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "header, three rows, summary:\n{table}");
    assert!(lines[0].starts_with("ADDRESS"), "{table}");
    // Ordered by address.
    assert!(lines[1].starts_with("a-graph@example.com "), "{table}");
    assert!(lines[2].starts_with("b-ews@example.com "), "{table}");
    assert!(lines[3].starts_with("c-disabled@example.com "), "{table}");

    assert_eq!(
        cells(&table, "a-graph@example.com"),
        [
            "a-graph@example.com",
            "graph",
            "yes",
            "covered",
            "active",
            "in 1d 23h",
            "3m ago",
            "1m ago",
            "3",
            "1",
            "-",
        ],
        "{table}"
    );
    assert_eq!(
        cells(&table, "b-ews@example.com"),
        [
            "b-ews@example.com",
            "ews",
            "yes",
            "uncovered",
            "failed",
            "-",
            "2h ago",
            "-",
            "0",
            "2",
            "EWS answered ErrorServerBusy",
        ],
        "{table}"
    );
    assert_eq!(
        cells(&table, "c-disabled@example.com"),
        [
            "c-disabled@example.com",
            "ews",
            "no",
            "disabled",
            "none",
            "-",
            "-",
            "-",
            "0",
            "0",
            "-",
        ],
        "{table}"
    );
    let summary = lines[4];
    assert!(
        summary.starts_with("3 mailboxes, 1 covered, 4 pending events, 3 dead events at 20"),
        "{summary}"
    );
    assert!(
        summary.ends_with("Z (1 pending and 0 dead not matched to a mailbox)"),
        "{summary}"
    );
}

#[sqlx::test]
async fn status_json_is_one_document_on_stdout_with_the_same_values(pool: PgPool) {
    seed_three_rooms(&pool).await;

    let output = run(&pool, &["status", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let json: Value = serde_json::from_str(&stdout(&output)).expect("stdout is one JSON document");
    let time = |v: &Value| -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("{v} is a time")))
            .unwrap()
            .with_timezone(&Utc)
    };
    let generated_at = time(&json["generated_at"]);
    let mailboxes = json["mailboxes"].as_array().unwrap();
    let addresses: Vec<&str> = mailboxes
        .iter()
        .map(|m| m["address"].as_str().unwrap())
        .collect();
    assert_eq!(
        addresses,
        [
            "a-graph@example.com",
            "b-ews@example.com",
            "c-disabled@example.com"
        ]
    );

    let (heard, synced, expires): (DateTime<Utc>, DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
        "select s.last_notification_at, m.synced_at, s.expires_at
             from mailboxes m join subscriptions s on s.mailbox_id = m.id
             where s.remote_id = 'g-active'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let graph = &mailboxes[0];
    assert_eq!(graph["backend"], "graph");
    assert_eq!(graph["enabled"], true);
    assert_eq!(graph["coverage"], "covered");
    assert_eq!(graph["subscription"]["state"], "active");
    assert_eq!(graph["subscription"]["remote_id"], "g-active");
    assert_eq!(time(&graph["subscription"]["expires_at"]), expires);
    assert_eq!(time(&graph["last_notification_at"]), heard);
    assert_eq!(time(&graph["last_synced_at"]), synced);
    assert!(synced < generated_at);
    assert_eq!(graph["last_sync_error"], Value::Null, "no failing rounds");
    assert_eq!(graph["pending_events"], 3);
    assert_eq!(graph["dead_events"], 1);

    let ews = &mailboxes[1];
    assert_eq!(ews["backend"], "ews");
    assert_eq!(ews["coverage"], "uncovered");
    assert_eq!(ews["subscription"]["state"], "failed");
    assert_eq!(ews["subscription"]["remote_id"], "e-failed");
    assert_eq!(ews["subscription"]["expires_at"], Value::Null);
    assert!(ews["last_notification_at"].is_string());
    assert_eq!(ews["last_synced_at"], Value::Null);
    assert_eq!(ews["last_sync_error"], "EWS answered ErrorServerBusy");
    assert_eq!(ews["pending_events"], 0);
    assert_eq!(ews["dead_events"], 2);

    let disabled = &mailboxes[2];
    assert_eq!(disabled["enabled"], false);
    assert_eq!(disabled["coverage"], "disabled");
    assert_eq!(disabled["subscription"], Value::Null);
    assert_eq!(disabled["last_notification_at"], Value::Null);

    assert_eq!(json["unassigned_events"]["pending"], 1);
    assert_eq!(json["unassigned_events"]["dead"], 0);
}

#[sqlx::test]
async fn status_of_an_empty_migrated_database_says_there_are_no_mailboxes(pool: PgPool) {
    let output = run(&pool, &["status"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let table = stdout(&output);
    assert!(table.starts_with("no mailboxes"), "{table}");
    assert!(table.contains("0 mailboxes, 0 covered, 0 pending events, 0 dead events at "));
}

#[sqlx::test]
async fn status_answers_while_the_service_runs_on_the_same_database(pool: PgPool) {
    mailbox(&pool, "a-graph@example.com", "graph").await;
    let app = TestApp::spawn(pool.clone()).await;
    let url = database_url(&pool);
    // Off the runtime, so the service keeps running while the command does.
    let output = tokio::task::spawn_blocking(move || run_against(&url, &["status", "--json"]))
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["mailboxes"][0]["address"], "a-graph@example.com");
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn status_on_an_unmigrated_database_says_to_run_migrate_and_creates_nothing(pool: PgPool) {
    for args in [vec!["status"], vec!["status", "--json"]] {
        let output = run(&pool, &args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert_eq!(stdout(&output), "", "{args:?}");
        let err = stderr(&output);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("schema") && err.contains("rooms-sync migrate"),
            "{err}"
        );
    }
    let tables: i64 = sqlx::query_scalar(
        "select count(*) from information_schema.tables where table_schema = 'public'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 0, "status does not migrate");
}

#[test]
fn status_and_replay_exit_1_with_one_clear_line_when_the_database_cannot_be_reached() {
    let closed = free_port();
    let url = format!("postgres://postgres:hunter2@127.0.0.1:{closed}/nowhere");
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["events", "replay", "--all"],
        vec!["events", "replay", "1"],
    ] {
        let output = run_against(&url, &args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert_eq!(stdout(&output), "", "{args:?}");
        let err = stderr(&output);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("cannot connect to the database"), "{err}");
        assert!(!err.contains("hunter2"), "no password in {err}");
    }
}

/// Every row of `table` as text, to show that a command changed nothing.
async fn snapshot(pool: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(&format!("select t::text from {table} t order by id"))
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Status, attempts, last error, whether the lease is gone and whether it is due now.
async fn event_state(pool: &PgPool, id: i64) -> (String, i32, Option<String>, bool, bool) {
    sqlx::query_as(
        "select status, attempts, last_error, locked_until is null,
                run_at <= now() and run_at > now() - interval '1 minute'
         from notification_events where id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Whether the mailbox is due for a sync now, and its failure count.
async fn sync_state(pool: &PgPool, id: i64) -> (bool, i32) {
    sqlx::query_as(
        "select sync_due_at <= now() and sync_due_at > now() - interval '1 minute', sync_failures
         from mailboxes where id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Three mailboxes backing off after failed rounds (due in an hour, 3 failures), with dead
/// events: two in the first, one in each of the others.
async fn seed_dead_events(pool: &PgPool) -> ([i64; 3], [i64; 4]) {
    let a = mailbox(pool, "a@example.com", "graph").await;
    let b = mailbox(pool, "b@example.com", "ews").await;
    let c = mailbox(pool, "c@example.com", "ews").await;
    execute(
        pool,
        "update mailboxes set sync_due_at = now() + interval '1 hour', sync_failures = 3,
                              sync_error = 'the last round failed'",
    )
    .await;
    let a1 = event(pool, Some(a), "dead").await;
    let a2 = event(pool, Some(a), "dead").await;
    let b1 = event(pool, Some(b), "dead").await;
    let c1 = event(pool, Some(c), "dead").await;
    ([a, b, c], [a1, a2, b1, c1])
}

const DEAD: (&str, i32, Option<&str>, bool, bool) =
    ("dead", 5, Some("Graph answered 503"), false, false);
const REPLAYED: (&str, i32, Option<&str>, bool, bool) =
    ("pending", 0, Some("Graph answered 503"), true, true);

fn borrowed(
    state: &(String, i32, Option<String>, bool, bool),
) -> (&str, i32, Option<&str>, bool, bool) {
    (
        state.0.as_str(),
        state.1,
        state.2.as_deref(),
        state.3,
        state.4,
    )
}

#[sqlx::test]
async fn replay_of_given_ids_turns_exactly_those_dead_events_pending_and_their_mailboxes_due(
    pool: PgPool,
) {
    let ([a, b, c], [a1, a2, b1, c1]) = seed_dead_events(&pool).await;

    let output = run(
        &pool,
        &["events", "replay", &a1.to_string(), &b1.to_string()],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "replayed 2 dead events (2 mailboxes due for a sync now)\n"
    );

    for id in [a1, b1] {
        assert_eq!(
            borrowed(&event_state(&pool, id).await),
            REPLAYED,
            "event {id}"
        );
    }
    for id in [a2, c1] {
        assert_eq!(borrowed(&event_state(&pool, id).await), DEAD, "event {id}");
    }
    assert_eq!(sync_state(&pool, a).await, (true, 0));
    assert_eq!(sync_state(&pool, b).await, (true, 0));
    assert_eq!(sync_state(&pool, c).await, (false, 3), "untouched");
}

#[sqlx::test]
async fn replay_all_replays_every_dead_event_and_prints_the_count(pool: PgPool) {
    let ([a, b, c], dead) = seed_dead_events(&pool).await;
    let unassigned = event(&pool, None, "dead").await;
    let done = event(&pool, Some(a), "done").await;
    let ignored = event(&pool, Some(b), "ignored").await;
    let before: Vec<String> = snapshot(&pool, "notification_events")
        .await
        .into_iter()
        .filter(|row| {
            [done, ignored]
                .iter()
                .any(|id| row.starts_with(&format!("({id},")))
        })
        .collect();
    assert_eq!(before.len(), 2);

    let output = run(&pool, &["events", "replay", "--all"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "replayed 5 dead events (3 mailboxes due for a sync now)\n"
    );
    for id in dead.into_iter().chain([unassigned]) {
        assert_eq!(
            borrowed(&event_state(&pool, id).await),
            REPLAYED,
            "event {id}"
        );
    }
    let after: Vec<String> = snapshot(&pool, "notification_events")
        .await
        .into_iter()
        .filter(|row| before.contains(row))
        .collect();
    assert_eq!(after, before, "events that were not dead are untouched");
    for id in [a, b, c] {
        assert_eq!(sync_state(&pool, id).await, (true, 0));
    }

    // Nothing dead is left: a second replay replays nothing.
    let again = run(&pool, &["events", "replay", "--all"]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(stdout(&again), "replayed 0 dead events\n");
}

#[sqlx::test]
async fn replay_of_unknown_ids_exits_2_naming_them_and_changes_nothing(pool: PgPool) {
    let (_, [a1, _, b1, _]) = seed_dead_events(&pool).await;
    let unknown = a1 + 1000;
    let events_before = snapshot(&pool, "notification_events").await;
    let mailboxes_before = snapshot(&pool, "mailboxes").await;

    let output = run(
        &pool,
        &[
            "events",
            "replay",
            &a1.to_string(),
            &unknown.to_string(),
            &b1.to_string(),
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(stdout(&output), "");
    let err = stderr(&output);
    assert!(
        err.contains(&format!("no event with id {unknown}")) && err.contains("nothing"),
        "{err}"
    );
    assert_eq!(snapshot(&pool, "notification_events").await, events_before);
    assert_eq!(snapshot(&pool, "mailboxes").await, mailboxes_before);
}

#[sqlx::test]
async fn replay_skips_given_events_that_are_not_dead_and_names_them_on_stderr(pool: PgPool) {
    let ([a, ..], [a1, a2, ..]) = seed_dead_events(&pool).await;
    let done = event(&pool, Some(a), "done").await;
    let pending = event(&pool, Some(a), "pending").await;
    let untouched = |rows: Vec<String>| -> Vec<String> {
        rows.into_iter()
            .filter(|row| {
                [done, pending]
                    .iter()
                    .any(|id| row.starts_with(&format!("({id},")))
            })
            .collect()
    };
    let before = untouched(snapshot(&pool, "notification_events").await);

    let output = run(
        &pool,
        &[
            "events",
            "replay",
            &done.to_string(),
            &a1.to_string(),
            &pending.to_string(),
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "replayed 1 dead event (1 mailbox due for a sync now)\n"
    );
    let err = stderr(&output);
    assert!(
        err.contains(&format!(
            "skipped 2 events not dead: {done} (done), {pending} (pending)"
        )),
        "{err}"
    );
    assert_eq!(borrowed(&event_state(&pool, a1).await), REPLAYED);
    assert_eq!(borrowed(&event_state(&pool, a2).await), DEAD);
    assert_eq!(
        untouched(snapshot(&pool, "notification_events").await),
        before
    );
}

#[test]
fn replay_needs_all_or_ids_but_not_both() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["events", "replay"],
        vec!["events", "replay", "--all", "7"],
        vec!["events", "replay", "seven"],
        vec!["events", "replay", "0"],
    ] {
        let output = binary(dir.path(), &[]).args(&args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&output).starts_with("error:"),
            "{args:?}: {}",
            stderr(&output)
        );
        assert_eq!(stdout(&output), "", "{args:?}");
    }
}
