//! Sync benchmark: how fast a booking change in Exchange becomes a committed `reservations`
//! row, how well bursts coalesce into few sync rounds, and how fast a backlog drains.
//!
//! Everything runs in this process on loopback: the Exchange simulator (with a configurable
//! answer latency), the service (`Application`, web and worker roles) pointed at it, and a
//! fresh Postgres database per phase on `$DATABASE_URL`'s server, dropped at the end. It
//! prints figures and never asserts on timing:
//!
//! 1. freshness: 200 rooms (100 Graph, 100 EWS), 50 ms simulator latency, 100 changes/s for
//!    `BENCH_SECONDS` (default 20); each change's latency from being made in the simulator
//!    to a poller (every ~10 ms) first seeing the committed row that reflects it;
//! 2. coalescing: a burst of 50 changes to one room (Graph, then EWS), and the sync rounds it
//!    cost, counted from the simulator's request log;
//! 3. drain: 10,000 pending events inserted at once over 200 rooms (instant simulator), and
//!    the time until none is pending.
//!
//! `cargo bench --bench sync`. `BENCH_SECONDS` sets phase 1's length; `RUST_LOG` turns on
//! the service's logs.

#![expect(
    clippy::unwrap_used,
    reason = "a benchmark harness: any failure should stop the run loudly"
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use rooms_sync::app::Application;
use rooms_sync::config;
use rooms_sync::simulator::{Control, Meeting, Simulator, SimulatorConfig, SimulatorHandle};
use rooms_sync::worker::WorkerOptions;
use rooms_sync::worker::sync::SyncOptions;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Simulated Exchange answer latency of phases 1 and 2.
const LATENCY: Duration = Duration::from_millis(50);
const CHANGES_PER_SECOND: u64 = 100;
/// How long after the drive a change may still be observed.
const GRACE: Duration = Duration::from_secs(10);
/// How often the freshness poller looks at `reservations`.
const POLL_EVERY: Duration = Duration::from_millis(10);
/// How far back the poller re-reads: `updated_at` is the writing transaction's start, so a
/// row can commit with an `updated_at` older than rows already seen.
const LOOKBACK: TimeDelta = TimeDelta::seconds(2);
/// Meetings booked in each room before the service starts (what its first sync reads).
const MEETINGS_PER_ROOM: usize = 5;
const BURST: usize = 50;
const DRAIN_EVENTS_PER_ROOM: i32 = 50;
/// Events that do not count as work for the sync (the lifecycle kinds upkeep handles).
const SYNC_KINDS: &str =
    "kind not in ('reauthorization_required', 'subscription_removed', 'missed')";

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

fn phase_seconds() -> u64 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

async fn run() {
    let seconds = phase_seconds();
    println!(
        "# rooms-sync sync benchmark ({} cores; simulator, service and poller in this process, Postgres beside it)",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    println!(
        "worker options: production defaults except upkeep tick 100 ms (production 2 s: upkeep \
         claims at most 8 due mailboxes a tick, so subscribing 200 rooms would take 50 s of \
         setup) and, in phase 3 only, sync poll 100 ms (production 2 s: inserted rows fire no \
         in-process wake, only the webhook does); ShutdownDrainSeconds=2 (teardown only)"
    );
    println!();
    let freshness = isolated("freshness", |db| freshness(db, seconds)).await;
    let coalescing = isolated("coalescing", coalescing).await;
    let drain = isolated("drain", drain).await;

    println!();
    println!("## summary");
    println!("| measure | target | measured |");
    println!("| --- | --- | --- |");
    println!(
        "| freshness p99, change → committed row (overall; graph / ews) | ≤ 500 ms | {} ms ({} / {}); {} of {} never observed |",
        ms(freshness.overall_p99),
        ms(freshness.graph_p99),
        ms(freshness.ews_p99),
        freshness.never,
        freshness.changes,
    );
    println!(
        "| sync rounds for a burst of {BURST} changes (graph / ews) | ≤ 2 | {} / {} |",
        coalescing.graph_rounds, coalescing.ews_rounds
    );
    println!(
        "| drain of 10,000 pending events over 200 rooms | < 2 s | {:.2} s ({:.0} events/s) |",
        drain.seconds, drain.per_second
    );
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.0}", d.as_secs_f64() * 1e3),
    )
}

// ---- databases, simulator and service ---------------------------------------------------

fn server_url() -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    match url.rfind('/') {
        Some(i) if i > "postgres://".len() => url[..i].to_owned(),
        _ => url,
    }
}

/// Runs a phase on a database of its own, created here and dropped afterwards even when
/// the phase panics (the panic then goes on).
async fn isolated<T, F, Fut>(phase: &str, body: F) -> T
where
    T: Send + 'static,
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let name = format!(
        "rooms_sync_bench_{}_{phase}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let admin = PgPool::connect(&format!("{}/postgres", server_url()))
        .await
        .unwrap();
    sqlx::query(&format!("create database {name}"))
        .execute(&admin)
        .await
        .unwrap();
    let outcome = tokio::spawn(body(format!("{}/{name}", server_url()))).await;
    sqlx::query(&format!("drop database if exists {name} with (force)"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    match outcome {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn worker_options(poll: Duration) -> WorkerOptions {
    WorkerOptions {
        // Upkeep claims at most `concurrency` due mailboxes per tick; see the printed note.
        tick: Duration::from_millis(100),
        sync: SyncOptions {
            poll,
            ..SyncOptions::default()
        },
        ..WorkerOptions::default()
    }
}

/// A room of the benchmark: its address and the backend the service reads it with.
#[derive(Debug, Clone)]
struct Room {
    address: String,
    graph: bool,
}

fn rooms(graph: usize, ews: usize) -> Vec<Room> {
    let g = (1..=graph).map(|i| Room {
        address: format!("graph-room-{i:03}@sim.example"),
        graph: true,
    });
    let e = (1..=ews).map(|i| Room {
        address: format!("ews-room-{i:03}@sim.example"),
        graph: false,
    });
    g.chain(e).collect()
}

/// The simulator, the service pointed at it, and a pool on the service's database.
struct Stack {
    sim: SimulatorHandle,
    sim_stop: CancellationToken,
    app_stop: CancellationToken,
    app: JoinHandle<anyhow::Result<()>>,
    pool: PgPool,
    rooms: Vec<Room>,
}

impl Stack {
    /// Starts the simulator with `rooms` (each booked with [`MEETINGS_PER_ROOM`] meetings
    /// drawn from `rng`) and the service, and waits until every room is covered and synced.
    async fn start(
        db_url: &str,
        rooms: Vec<Room>,
        latency: Duration,
        options: WorkerOptions,
        rng: &mut fastrand::Rng,
        items: &mut Items,
    ) -> Self {
        let sim_stop = CancellationToken::new();
        let sim = Simulator::start(
            SimulatorConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                rooms: rooms.iter().map(|r| r.address.clone()).collect(),
                latency,
                ..SimulatorConfig::default()
            },
            sim_stop.clone(),
        )
        .await
        .unwrap();
        for room in &rooms {
            for _ in 0..MEETINGS_PER_ROOM {
                let start = random_start(rng);
                let id = sim
                    .control()
                    .create_meeting(&room.address, meeting(start))
                    .unwrap();
                items.add(&room.address, id, start);
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let base = sim.base_url().trim_end_matches('/').to_owned();
        let mailboxes = rooms
            .iter()
            .map(|r| format!("{}:{}", if r.graph { "graph" } else { "ews" }, r.address))
            .collect::<Vec<_>>()
            .join(",");
        let env: Vec<(String, String)> = [
            ("DatabaseUrl", db_url.to_owned()),
            ("ListenAddress", format!("127.0.0.1:{port}")),
            ("AdminListenAddress", "127.0.0.1:0".to_owned()),
            (
                "ExchangePushNotificationEndpointUrl",
                format!("http://127.0.0.1:{port}/api/webhooks/exchange"),
            ),
            ("IdpRootUrl", "http://127.0.0.1:1".to_owned()),
            ("ExchangeRoomMailboxes", mailboxes),
            ("GraphBaseUrl", format!("{base}/v1.0")),
            ("AzureAuthorityHost", base.clone()),
            ("EwsUrl", format!("{base}/EWS/Exchange.asmx")),
            ("AzureTenantId", "sim-tenant".to_owned()),
            ("AzureClientId", "sim-client".to_owned()),
            ("AzureClientSecret", "sim-secret".to_owned()),
            ("ShutdownDrainSeconds", "2".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let settings = config::load_from(None, &env)
            .unwrap_or_else(|e| panic!("bench settings are invalid:\n{e}"))
            .settings;
        let app = Application::build(settings)
            .await
            .unwrap()
            .with_worker_options(options);
        let app_stop = CancellationToken::new();
        let schema = app.schema();
        let app = tokio::spawn(app.run(app_stop.clone()));
        assert!(
            schema.wait().await,
            "the service never migrated the database"
        );
        let pool = PgPool::connect(db_url).await.unwrap();
        let stack = Self {
            sim,
            sim_stop,
            app_stop,
            app,
            pool,
            rooms,
        };
        let started = Instant::now();
        stack.settle(Duration::from_secs(180)).await;
        println!(
            "setup: {} rooms covered, first full sync done and no event pending after {:.1} s",
            stack.rooms.len(),
            started.elapsed().as_secs_f64()
        );
        stack
    }

    fn control(&self) -> &Control {
        self.sim.control()
    }

    /// Waits until every room is covered, fully synced with no resync owed, and no event
    /// waits for a sync.
    async fn settle(&self, bound: Duration) {
        let started = Instant::now();
        let want = i64::try_from(self.rooms.len()).unwrap();
        loop {
            let (ready, pending): (i64, i64) = sqlx::query_as(&format!(
                "select (select count(*) from mailboxes
                          where coverage = 'covered' and full_synced_at is not null
                            and resync_requested_at is null),
                        (select count(*) from notification_events
                          where status in ('pending', 'processing') and {SYNC_KINDS})"
            ))
            .fetch_one(&self.pool)
            .await
            .unwrap();
            if ready == want && pending == 0 {
                return;
            }
            assert!(
                started.elapsed() < bound,
                "not settled within {bound:?}: {ready} of {want} rooms ready, {pending} events pending"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn pending_events(&self) -> i64 {
        sqlx::query_scalar(&format!(
            "select count(*) from notification_events
              where status in ('pending', 'processing') and {SYNC_KINDS}"
        ))
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    async fn stop(self) {
        self.app_stop.cancel();
        match self.app.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => println!("(the service stopped with an error: {e})"),
            Err(e) => println!("(the service task failed: {e})"),
        }
        self.sim_stop.cancel();
        self.pool.close().await;
    }
}

/// Today at midnight UTC plus `days` and `hour`.
fn day_at(days: i64, hour: i64) -> DateTime<Utc> {
    let today = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    today + TimeDelta::days(days) + TimeDelta::hours(hour)
}

/// A start well inside the sync window (today - 7 d .. today + 365 d): the next 60 days,
/// on the hour between 08:00 and 17:00.
fn random_start(rng: &mut fastrand::Rng) -> DateTime<Utc> {
    day_at(rng.i64(1..60), rng.i64(8..18))
}

fn meeting(start: DateTime<Utc>) -> Meeting {
    Meeting {
        subject: "Benchmark booking".to_owned(),
        organizer: "bench@sim.example".to_owned(),
        start,
        end: start + TimeDelta::hours(1),
        is_all_day: false,
        location: String::new(),
    }
}

/// What the driver knows of each room's meetings.
#[derive(Debug, Default)]
struct Items {
    by_room: HashMap<String, Vec<Item>>,
}

#[derive(Debug, Clone)]
struct Item {
    id: String,
    start: DateTime<Utc>,
    cancelled: bool,
    /// Changed and not yet observed: left alone so each change is measured on its own.
    in_flight: bool,
}

impl Items {
    fn add(&mut self, room: &str, id: String, start: DateTime<Utc>) {
        self.by_room.entry(room.to_owned()).or_default().push(Item {
            id,
            start,
            cancelled: false,
            in_flight: false,
        });
    }
}

// ---- phase 1: freshness -----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Change {
    Create,
    Move,
    Cancel,
    Delete,
}

/// A change made and not yet seen committed.
#[derive(Debug)]
struct Pending {
    room: String,
    /// The item as the simulator's control API names it.
    ews_id: String,
    /// The item as the service stores it (Graph: the immutable id).
    item: String,
    change: Change,
    /// For a move, the new start.
    start: DateTime<Utc>,
    made_at: Instant,
    graph: bool,
}

/// A committed row as the poller reads it.
#[derive(Debug, sqlx::FromRow)]
struct Row {
    item_id: String,
    starts_at: DateTime<Utc>,
    is_cancelled: bool,
    deleted: bool,
    updated_at: DateTime<Utc>,
}

impl Pending {
    fn reflected_by(&self, row: &Row) -> bool {
        match self.change {
            Change::Create => !row.deleted,
            Change::Move => row.starts_at == self.start && !row.deleted,
            Change::Cancel => row.is_cancelled,
            Change::Delete => row.deleted,
        }
    }
}

#[derive(Debug, Default)]
struct Tracker {
    /// By the item id the service stores.
    pending: HashMap<String, Pending>,
    /// (graph?, change, latency) of every change observed.
    observed: Vec<(bool, Change, Duration)>,
    /// Items whose change was observed, for the driver to release: (room, EWS id).
    released: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy)]
struct FreshnessSummary {
    overall_p99: Option<Duration>,
    graph_p99: Option<Duration>,
    ews_p99: Option<Duration>,
    never: usize,
    changes: usize,
}

async fn freshness(db_url: String, seconds: u64) -> FreshnessSummary {
    println!(
        "## phase 1: freshness (200 rooms: 100 graph, 100 ews; simulator latency {} ms; \
         {CHANGES_PER_SECOND} changes/s for {seconds} s; {MEETINGS_PER_ROOM} meetings booked \
         per room beforehand)",
        LATENCY.as_millis()
    );
    let mut rng = fastrand::Rng::with_seed(8);
    let mut items = Items::default();
    let stack = Stack::start(
        &db_url,
        rooms(100, 100),
        LATENCY,
        worker_options(SyncOptions::default().poll),
        &mut rng,
        &mut items,
    )
    .await;
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let stop_polling = CancellationToken::new();
    let poller = tokio::spawn(poll(
        stack.pool.clone(),
        Arc::clone(&tracker),
        stop_polling.clone(),
    ));

    let drive_started_utc = Utc::now();
    let started = Instant::now();
    let total = seconds * CHANGES_PER_SECOND;
    let every = Duration::from_secs(1) / u32::try_from(CHANGES_PER_SECOND).unwrap();
    let mut made: HashMap<Change, usize> = HashMap::new();
    for n in 0..total {
        tokio::time::sleep_until((started + every * u32::try_from(n).unwrap()).into()).await;
        {
            let mut t = tracker.lock().unwrap();
            for (room, id) in t.released.drain(..) {
                if let Some(item) = items
                    .by_room
                    .get_mut(&room)
                    .and_then(|list| list.iter_mut().find(|i| i.id == id))
                {
                    item.in_flight = false;
                }
            }
        }
        let room = &stack.rooms[rng.usize(..stack.rooms.len())];
        let pending = make_change(stack.control(), room, &mut items, &mut rng);
        *made.entry(pending.change).or_default() += 1;
        tracker
            .lock()
            .unwrap()
            .pending
            .insert(pending.item.clone(), pending);
    }
    let drive = started.elapsed();
    let drive_ended_utc = Utc::now();
    let wait_started = Instant::now();
    while !tracker.lock().unwrap().pending.is_empty() && wait_started.elapsed() < GRACE {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_polling.cancel();
    poller.await.unwrap();

    let t = std::mem::take(&mut *tracker.lock().unwrap());
    let mix: Vec<String> = [Change::Create, Change::Move, Change::Cancel, Change::Delete]
        .iter()
        .map(|c| format!("{c:?} {}", made.get(c).copied().unwrap_or(0)))
        .collect();
    println!(
        "drove {total} changes in {:.1} s ({:.0}/s): {}",
        drive.as_secs_f64(),
        total as f64 / drive.as_secs_f64(),
        mix.join(", ")
    );
    let never_graph = t.pending.values().filter(|p| p.graph).count();
    let never_ews = t.pending.len() - never_graph;
    println!(
        "latency from the change in the simulator to the start of the first poll (every {} ms) \
         that saw the committed row reflect it:",
        POLL_EVERY.as_millis()
    );
    println!("| backend | changes | p50 ms | p90 ms | p99 ms | max ms | never observed |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let graph = report_row(
        "graph",
        t.observed.iter().filter(|o| o.0).map(|o| o.2),
        never_graph,
    );
    let ews = report_row(
        "ews",
        t.observed.iter().filter(|o| !o.0).map(|o| o.2),
        never_ews,
    );
    let overall = report_row("overall", t.observed.iter().map(|o| o.2), t.pending.len());
    for change in [Change::Create, Change::Move, Change::Cancel, Change::Delete] {
        report_row(
            &format!("  {change:?}"),
            t.observed.iter().filter(|o| o.1 == change).map(|o| o.2),
            t.pending.values().filter(|p| p.change == change).count(),
        );
    }
    for p in t.pending.values().take(5) {
        println!(
            "never observed: {:?} of {} in {} (made {:.1} s into the drive)",
            p.change,
            p.item,
            p.room,
            p.made_at.duration_since(started).as_secs_f64()
        );
    }
    drop(t);
    print_rounds(stack.control(), drive_started_utc, drive_ended_utc, total);
    stack.stop().await;
    println!();
    FreshnessSummary {
        overall_p99: overall,
        graph_p99: graph,
        ews_p99: ews,
        never: never_graph + never_ews,
        changes: usize::try_from(total).unwrap(),
    }
}

/// Makes one change in `room`: a create, or (3 in 5 times, when the room has a meeting not
/// already in flight) a move, cancel or delete of one of its meetings.
fn make_change(
    control: &Control,
    room: &Room,
    items: &mut Items,
    rng: &mut fastrand::Rng,
) -> Pending {
    let list = items.by_room.entry(room.address.clone()).or_default();
    let roll = rng.u32(0..100);
    let wanted = match roll {
        0..40 => Change::Create,
        40..70 => Change::Move,
        70..85 => Change::Cancel,
        _ => Change::Delete,
    };
    let candidates: Vec<usize> = list
        .iter()
        .enumerate()
        // A cancelled meeting can still move or go, not be cancelled again.
        .filter(|(_, i)| !i.in_flight && (wanted != Change::Cancel || !i.cancelled))
        .map(|(n, _)| n)
        .collect();
    let change = if candidates.is_empty() {
        Change::Create
    } else {
        wanted
    };
    let db_id = |id: &str| {
        if room.graph {
            // The service asks Graph for immutable ids.
            control.graph_id(id, true)
        } else {
            id.to_owned()
        }
    };
    let (id, start) = match change {
        Change::Create => {
            let start = random_start(rng);
            let id = control
                .create_meeting(&room.address, meeting(start))
                .unwrap();
            list.push(Item {
                id: id.clone(),
                start,
                cancelled: false,
                in_flight: true,
            });
            (id, start)
        }
        Change::Move | Change::Cancel | Change::Delete => {
            let at = candidates[rng.usize(..candidates.len())];
            let item = &mut list[at];
            item.in_flight = true;
            let id = item.id.clone();
            match change {
                Change::Move => {
                    // A new start that differs from the current one.
                    let mut start = random_start(rng);
                    while start == item.start {
                        start = random_start(rng);
                    }
                    control
                        .move_meeting(&room.address, &id, start, start + TimeDelta::hours(1))
                        .unwrap();
                    item.start = start;
                    (id, start)
                }
                Change::Cancel => {
                    control.cancel_meeting(&room.address, &id).unwrap();
                    item.cancelled = true;
                    (id, item.start)
                }
                _ => {
                    control.delete_meeting(&room.address, &id).unwrap();
                    let start = item.start;
                    // Gone from Exchange: never picked again (its row stays, deleted).
                    list.remove(at);
                    (id, start)
                }
            }
        }
    };
    Pending {
        room: room.address.clone(),
        item: db_id(&id),
        ews_id: id,
        change,
        start,
        made_at: Instant::now(),
        graph: room.graph,
    }
}

/// Reads rows written lately every [`POLL_EVERY`] and settles the changes they reflect. A
/// change's latency ends at the start of the first query that saw it: the row was committed
/// before that query's snapshot.
async fn poll(pool: PgPool, tracker: Arc<Mutex<Tracker>>, stop: CancellationToken) {
    let mut since = Utc::now() - LOOKBACK;
    loop {
        let polled_at = Instant::now();
        let rows: Vec<Row> = sqlx::query_as(
            "select item_id, starts_at, is_cancelled, deleted_at is not null as deleted, updated_at
               from reservations where updated_at > $1",
        )
        .bind(since)
        .fetch_all(&pool)
        .await
        .unwrap();
        if let Some(newest) = rows.iter().map(|r| r.updated_at).max() {
            since = since.max(newest - LOOKBACK);
        }
        {
            let mut t = tracker.lock().unwrap();
            for row in &rows {
                let done = t
                    .pending
                    .get(&row.item_id)
                    .is_some_and(|p| p.reflected_by(row));
                if done && let Some(p) = t.pending.remove(&row.item_id) {
                    let latency = polled_at.saturating_duration_since(p.made_at);
                    t.observed.push((p.graph, p.change, latency));
                    t.released.push((p.room, p.ews_id));
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(POLL_EVERY) => {}
        }
    }
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Prints one table row; returns the p99.
fn report_row(
    label: &str,
    latencies: impl Iterator<Item = Duration>,
    never: usize,
) -> Option<Duration> {
    let mut sorted: Vec<Duration> = latencies.collect();
    sorted.sort();
    let p99 = percentile(&sorted, 0.99);
    println!(
        "| {label} | {} | {} | {} | {} | {} | {never} |",
        sorted.len(),
        ms(percentile(&sorted, 0.50)),
        ms(percentile(&sorted, 0.90)),
        ms(p99),
        ms(sorted.last().copied()),
    );
    p99
}

/// Sync rounds seen in the simulator's request log between `from` and `to`.
#[derive(Debug, Default, Clone, Copy)]
struct Rounds {
    /// `calendarView/delta` GETs that start a round (from a delta link or a window).
    graph_rounds: usize,
    /// Every `calendarView/delta` GET, continuation pages included.
    graph_pages: usize,
    /// `GET events/{id}` (series masters read for their UID).
    graph_events: usize,
    /// `SyncFolderItems` calls: one per EWS round (a round pages only past 512 changes).
    ews_rounds: usize,
    ews_get_item: usize,
    ews_find_item: usize,
    /// Whether the log still held the start of the period (it keeps the last 20,000).
    complete: bool,
}

fn rounds(control: &Control, from: DateTime<Utc>, to: DateTime<Utc>) -> Rounds {
    let records = control.requests();
    let mut r = Rounds {
        complete: records.first().is_some_and(|first| first.at <= from),
        ..Rounds::default()
    };
    for record in records.iter().filter(|x| x.at >= from && x.at <= to) {
        if record.path.contains("/calendarView/delta")
            || record.path.contains("/calendarview/delta")
        {
            r.graph_pages += 1;
            if !record
                .query
                .as_deref()
                .unwrap_or_default()
                .contains("$skiptoken")
            {
                r.graph_rounds += 1;
            }
        } else if record.path.contains("/events/") {
            r.graph_events += 1;
        }
        match record.operation.as_deref() {
            Some("SyncFolderItems") => r.ews_rounds += 1,
            Some("GetItem") => r.ews_get_item += 1,
            Some("FindItem") => r.ews_find_item += 1,
            _ => {}
        }
    }
    r
}

fn print_rounds(control: &Control, from: DateTime<Utc>, to: DateTime<Utc>, changes: u64) {
    let r = rounds(control, from, to);
    println!(
        "sync rounds during the drive (simulator request log{}): graph {} rounds ({} delta pages, \
         {} event reads), ews {} rounds ({} GetItem, {} FindItem); {:.2} changes per round",
        if r.complete { "" } else { ", truncated" },
        r.graph_rounds,
        r.graph_pages,
        r.graph_events,
        r.ews_rounds,
        r.ews_get_item,
        r.ews_find_item,
        changes as f64 / (r.graph_rounds + r.ews_rounds).max(1) as f64
    );
}

// ---- phase 2: coalescing ----------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct CoalescingSummary {
    graph_rounds: usize,
    ews_rounds: usize,
}

async fn coalescing(db_url: String) -> CoalescingSummary {
    println!(
        "## phase 2: coalescing (1 graph room, 1 ews room; simulator latency {} ms; a burst of \
         {BURST} changes to one room, as fast as the control API takes them)",
        LATENCY.as_millis()
    );
    let mut rng = fastrand::Rng::with_seed(2);
    let mut items = Items::default();
    let stack = Stack::start(
        &db_url,
        rooms(1, 1),
        LATENCY,
        worker_options(SyncOptions::default().poll),
        &mut rng,
        &mut items,
    )
    .await;
    let mut summary = CoalescingSummary {
        graph_rounds: 0,
        ews_rounds: 0,
    };
    println!(
        "| room | burst took ms | events stored | sync rounds | delta pages / SyncFolderItems | other reads | settled after ms |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for room in stack.rooms.clone() {
        // Quiet first: nothing pending, nothing in flight.
        stack.settle(Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let burst_at = Utc::now();
        let started = Instant::now();
        // Creates and moves alternate: every change is a notification of its own.
        let mut last: Option<String> = None;
        for n in 0..BURST {
            match (n % 2, &last) {
                (1, Some(id)) => {
                    let start = random_start(&mut rng);
                    stack
                        .control()
                        .move_meeting(&room.address, id, start, start + TimeDelta::hours(1))
                        .unwrap();
                }
                _ => {
                    last = Some(
                        stack
                            .control()
                            .create_meeting(&room.address, meeting(random_start(&mut rng)))
                            .unwrap(),
                    );
                }
            }
        }
        let burst = started.elapsed();
        // Settled: every event synced, then a second of quiet for stragglers.
        let mut settled = None;
        let mut quiet_since = None;
        while started.elapsed() < Duration::from_secs(30) {
            let stored = stored_events(&stack.pool, burst_at).await;
            if stack.pending_events().await == 0 && stored > 0 {
                settled.get_or_insert_with(|| started.elapsed());
                let quiet = *quiet_since.get_or_insert_with(Instant::now);
                if quiet.elapsed() >= Duration::from_secs(1) {
                    break;
                }
            } else {
                quiet_since = None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stored = stored_events(&stack.pool, burst_at).await;
        let r = rounds(stack.control(), burst_at, Utc::now());
        let (label, count, pages, other) = if room.graph {
            (
                "graph",
                r.graph_rounds,
                r.graph_pages,
                format!("{} event GETs", r.graph_events),
            )
        } else {
            (
                "ews",
                r.ews_rounds,
                r.ews_rounds,
                format!("{} GetItem, {} FindItem", r.ews_get_item, r.ews_find_item),
            )
        };
        if room.graph {
            summary.graph_rounds = count;
        } else {
            summary.ews_rounds = count;
        }
        println!(
            "| {label} | {:.1} | {stored} | {count} | {pages} | {other} | {} |",
            burst.as_secs_f64() * 1e3,
            ms(settled)
        );
    }
    stack.stop().await;
    println!();
    summary
}

/// Notification events stored since `since` (every kind the sync acts on).
async fn stored_events(pool: &PgPool, since: DateTime<Utc>) -> i64 {
    sqlx::query_scalar(&format!(
        "select count(*) from notification_events where received_at >= $1 and {SYNC_KINDS}
            and status <> 'ignored'"
    ))
    .bind(since)
    .fetch_one(pool)
    .await
    .unwrap()
}

// ---- phase 3: drain ---------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct DrainSummary {
    seconds: f64,
    per_second: f64,
}

async fn drain(db_url: String) -> DrainSummary {
    let poll = Duration::from_millis(100);
    println!(
        "## phase 3: drain (200 rooms: 100 graph, 100 ews; instant simulator; \
         {DRAIN_EVENTS_PER_ROOM} pending events per room inserted in one transaction; \
         sync poll {} ms)",
        poll.as_millis()
    );
    let mut rng = fastrand::Rng::with_seed(3);
    let mut items = Items::default();
    let stack = Stack::start(
        &db_url,
        rooms(100, 100),
        Duration::ZERO,
        worker_options(poll),
        &mut rng,
        &mut items,
    )
    .await;
    let inserted = sqlx::query(
        "insert into notification_events
             (backend, mailbox_id, subscription_id, remote_subscription_id, kind, item_id,
              dedupe_key, payload, body_sha256, status)
         select m.backend, m.id, s.id, s.remote_id,
                case m.backend when 'graph' then 'updated' else 'modified' end,
                'bench-drain-item-' || g, 'bench-drain-' || m.id || '-' || g,
                '{}'::jsonb, '\\x00'::bytea, 'pending'
           from mailboxes m
           join subscriptions s on s.mailbox_id = m.id and s.status = 'active'
          cross join generate_series(1, $1) g",
    )
    .bind(DRAIN_EVENTS_PER_ROOM)
    .execute(&stack.pool)
    .await
    .unwrap()
    .rows_affected();
    let committed = Instant::now();
    let inserted_at = Utc::now();
    while stack.pending_events().await > 0 {
        assert!(
            committed.elapsed() < Duration::from_secs(120),
            "not drained within 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = committed.elapsed();
    let seconds = took.as_secs_f64();
    let per_second = inserted as f64 / seconds;
    let r = rounds(stack.control(), inserted_at, Utc::now());
    println!(
        "{inserted} events drained {seconds:.2} s after the insert's commit ({per_second:.0} \
         events/s); sync rounds: graph {}, ews {}",
        r.graph_rounds, r.ews_rounds
    );
    stack.stop().await;
    println!();
    DrainSummary {
        seconds,
        per_second,
    }
}
