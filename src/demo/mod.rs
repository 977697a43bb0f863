//! `rooms-sync demo`: the simulator, the service configured against it and simulated bookings,
//! shown live.
//!
//! On a machine with nothing configured it runs everything on loopback: the Exchange
//! simulator, the real service (the same [`Application`] as `serve`) pointed at it, a busy
//! office booking, moving and cancelling meetings, and a terminal view of each change as it
//! travels from "Exchange" to its committed notification and on to its reservation row, with
//! both latencies. It uses its own database
//! `rooms_sync_demo` on the configured Postgres server; where none answers but PostgreSQL's
//! binaries are installed, a throwaway cluster that is removed on exit.

pub mod pgtemp;

use std::collections::{HashMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::app::Application;
use crate::config::{self, Settings};
use crate::db;
use crate::domain::Coverage;
use crate::simulator::busy::{BusyChange, busy_step};
use crate::simulator::{Simulator, SimulatorConfig, SimulatorHandle};
use crate::worker::WorkerOptions;

/// The demo's own database on the configured server: never the service's real one.
const DEMO_DATABASE: &str = "rooms_sync_demo";
/// Changes shown in the "recent" list.
const RECENT: usize = 10;

/// Options of `rooms-sync demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Rooms to simulate: alternately Graph (Exchange Online) and EWS (Exchange Server).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=50))]
    pub rooms: u16,
    /// Bookings, moves and cancellations per minute, across all rooms.
    #[arg(long, default_value_t = 60.0)]
    pub rate: f64,
    /// Stop after this many seconds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub seconds: u64,
    /// Seed of the simulated office (same seed, same bookings).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// A change made in "Exchange", when its first notification was committed and when its
/// reservation row was written.
#[derive(Debug, Clone)]
struct Tracked {
    /// Identity across redraws: the list shifts as new changes are pushed to its front.
    seq: u64,
    change: BusyChange,
    /// The id the service stores for the item (Graph rooms: the immutable Graph id).
    stored_id: String,
    at: DateTime<Utc>,
    notified: Option<DateTime<Utc>>,
    applied: Option<DateTime<Utc>>,
}

/// Runs the demo until `shutdown` is cancelled or `--seconds` have passed.
///
/// # Errors
/// When no database can be had, or a part fails to start.
pub async fn run(
    args: DemoArgs,
    config_path: Option<&Path>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number of changes per minute");
    }
    let rooms: Vec<String> = (1..=args.rooms)
        .map(|i| format!("room-{i:02}@sim.example"))
        .collect();
    let parts = CancellationToken::new();
    let simulator = Simulator::start(
        SimulatorConfig {
            listen: "127.0.0.1:0".parse()?,
            seed: args.seed,
            // A minute of Exchange time per second: keep-alives and retries show up quickly.
            time_scale: 60.0,
            rooms: rooms.clone(),
            ..SimulatorConfig::default()
        },
        parts.clone(),
    )
    .await?;

    let (settings, cluster) = settings_for(config_path, &simulator, &rooms).await?;
    let outcome = run_with(&args, &settings, &simulator, &rooms, &shutdown).await;
    parts.cancel();
    let _ = simulator.wait().await;
    if let Some(cluster) = cluster {
        cluster.stop().await?;
    }
    outcome
}

async fn run_with(
    args: &DemoArgs,
    settings: &Settings,
    simulator: &SimulatorHandle,
    rooms: &[String],
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let app = Application::build(settings.clone())
        .await
        .context("starting the service")?
        .with_worker_options(WorkerOptions {
            // The simulator runs a minute of Exchange time per second (see `run`).
            minute: Duration::from_secs(1),
            tick: Duration::from_millis(250),
            ..WorkerOptions::default()
        });
    let service_url = app
        .public_addr()
        .map_or_else(String::new, |a| format!("http://{a}"));
    let app_stop = CancellationToken::new();
    let schema = app.schema();
    let service = tokio::spawn(app.run(app_stop.clone()));
    // The service creates and migrates the database in the background; the demo reads it.
    let migrated = tokio::select! {
        migrated = schema.wait() => migrated,
        () = shutdown.cancelled() => false,
    };
    if !migrated {
        app_stop.cancel();
        let _ = service.await;
        bail!("the service did not get the database ready");
    }
    let pool = db::pool(&settings.database)?;
    // The service's own subscription upkeep subscribes the rooms; bookings start once every
    // room is covered.
    let subscribed = wait_for_coverage(&pool, rooms.len(), shutdown).await;

    let tracked: Arc<Mutex<VecDeque<Tracked>>> = Arc::default();
    let result = match subscribed {
        Ok(_) => {
            let graph_rooms = settings
                .exchange
                .mailboxes
                .iter()
                .filter(|m| m.backend == crate::domain::Backend::Graph)
                .map(|m| m.address.clone())
                .collect();
            let busy = tokio::spawn(book(
                simulator.control().clone(),
                rooms.to_vec(),
                graph_rooms,
                args.rate,
                Arc::clone(&tracked),
                shutdown.clone(),
            ));
            let header = format!(
                "rooms-sync demo · Exchange simulator {} · service {service_url} · database {}",
                simulator.base_url(),
                redacted(settings)
            );
            let shown = show(&pool, &header, &tracked, args.seconds, shutdown).await;
            shutdown.cancel();
            let _ = busy.await;
            shown
        }
        Err(error) => Err(error),
    };
    app_stop.cancel();
    let _ = service.await;
    pool.close().await;
    result
}

/// Waits until `rooms` mailboxes are covered by a working subscription.
async fn wait_for_coverage(
    pool: &PgPool,
    rooms: usize,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let counts = db::mailboxes::coverage_counts(pool).await?;
        let covered: i64 = counts
            .iter()
            .filter(|c| c.coverage == Coverage::Covered)
            .map(|c| c.mailboxes)
            .sum();
        if usize::try_from(covered).unwrap_or(0) >= rooms {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("only {covered} of {rooms} rooms were subscribed within a minute");
        }
        tokio::select! {
            () = shutdown.cancelled() => bail!("stopped before the rooms were subscribed"),
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// The settings of the demo's service: the operator's configuration for the database, the
/// simulator for Exchange, loopback ports for everything else.
async fn settings_for(
    config_path: Option<&Path>,
    simulator: &SimulatorHandle,
    rooms: &[String],
) -> anyhow::Result<(Settings, Option<pgtemp::TempCluster>)> {
    let port = free_port()?;
    let admin = free_port()?;
    let base = simulator.base_url().trim_end_matches('/').to_owned();
    let sim = SimulatorConfig::default();
    let mailboxes: Vec<String> = rooms
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{}:{r}", if i % 2 == 0 { "graph" } else { "ews" }))
        .collect();
    let mut overrides: Vec<(&'static str, String)> = vec![
        ("IdpRootUrl", format!("http://127.0.0.1:{port}")),
        (
            "ExchangePushNotificationEndpointUrl",
            format!("http://127.0.0.1:{port}/api/webhooks/exchange"),
        ),
        ("ListenAddress", format!("127.0.0.1:{port}")),
        ("AdminListenAddress", format!("127.0.0.1:{admin}")),
        ("ServiceRoles", "web,worker".to_owned()),
        ("WebhookAllowedIpRanges", "127.0.0.0/8,::1/128".to_owned()),
        ("AutoMigrate", "true".to_owned()),
        ("GraphBaseUrl", format!("{base}/v1.0")),
        ("AzureAuthorityHost", base.clone()),
        ("EwsUrl", format!("{base}/EWS/Exchange.asmx")),
        ("EwsAuth", "oauth".to_owned()),
        ("EwsStatusFrequencyMinutes", "1".to_owned()),
        ("AzureTenantId", sim.tenant_id.clone()),
        ("AzureClientId", sim.client_id.clone()),
        ("AzureClientSecret", sim.client_secret.clone()),
        ("ExchangeRoomMailboxes", mailboxes.join(",")),
    ];
    let configured = config::load_with_overrides(config_path, &overrides)
        .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let configured_url = configured.settings.database.url.expose_secret().to_owned();

    let (server_url, cluster) = if server_answers(&configured_url).await {
        (configured_url, None)
    } else if pgtemp::binaries_available(None) {
        let cluster = pgtemp::TempCluster::start(None).await.context(
            "no Postgres answers at DatabaseUrl, and a throwaway cluster failed to start",
        )?;
        (cluster.url(), Some(cluster))
    } else {
        bail!(
            "no Postgres answers at DatabaseUrl and PostgreSQL's binaries are not installed: \
             start a server or set DatabaseUrl"
        );
    };
    let mut demo_url = url::Url::parse(&server_url).context("DatabaseUrl")?;
    demo_url.set_path(&format!("/{DEMO_DATABASE}"));
    recreate_database(&server_url).await?;
    overrides.push(("DatabaseUrl", demo_url.into()));
    let loaded = config::load_with_overrides(config_path, &overrides)
        .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    Ok((loaded.settings, cluster))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The server of `url` accepts a connection within two seconds.
async fn server_answers(url: &str) -> bool {
    let Ok(mut maintenance) = url::Url::parse(url) else {
        return false;
    };
    maintenance.set_path("/postgres");
    let connect = PgPool::connect(maintenance.as_str());
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Ok(pool)) => {
            pool.close().await;
            true
        }
        _ => false,
    }
}

/// A fresh demo database each run (the previous run's is kept until then, for a look).
async fn recreate_database(server_url: &str) -> anyhow::Result<()> {
    let mut maintenance = url::Url::parse(server_url)?;
    maintenance.set_path("/postgres");
    let pool = PgPool::connect(maintenance.as_str()).await?;
    db::recreate_database(&pool, DEMO_DATABASE).await?;
    pool.close().await;
    Ok(())
}

fn redacted(settings: &Settings) -> String {
    match url::Url::parse(settings.database.url.expose_secret()) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            url.into()
        }
        Err(_) => "***".to_owned(),
    }
}

/// The busy office: random changes at `rate` per minute, each remembered with its time.
async fn book(
    control: crate::simulator::Control,
    rooms: Vec<String>,
    graph_rooms: std::collections::HashSet<String>,
    rate: f64,
    tracked: Arc<Mutex<VecDeque<Tracked>>>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(60.0 / rate));
    let mut booked = Vec::new();
    let mut seq = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // Timed before the change: the simulator may push (and the service commit) before
        // the change call returns.
        let at = Utc::now();
        if let Some(change) = busy_step(&control, &rooms, &mut booked) {
            let mut list = tracked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            seq += 1;
            // The service asks Graph for immutable ids; EWS rooms keep the EWS id.
            let stored_id = if graph_rooms.contains(&change.room) {
                control.graph_id(&change.item_id, true)
            } else {
                change.item_id.clone()
            };
            list.push_front(Tracked {
                seq,
                stored_id,
                change,
                at,
                notified: None,
                applied: None,
            });
            list.truncate(500);
        }
    }
}

/// Redraws the view every second until cancelled or `seconds` have passed.
async fn show(
    pool: &PgPool,
    header: &str,
    tracked: &Mutex<VecDeque<Tracked>>,
    seconds: u64,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let interactive = std::io::stdout().is_terminal();
    let started = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let done = seconds > 0 && started.elapsed() >= Duration::from_secs(seconds);
        // Redraw every second on a terminal; otherwise (a pipe, CI) print every 5 s and at the end.
        if interactive || done || started.elapsed().as_secs().is_multiple_of(5) {
            let frame = frame(pool, header, tracked).await?;
            let mut out = std::io::stdout().lock();
            if interactive {
                // Clear the screen and home the cursor.
                write!(out, "\x1b[2J\x1b[H")?;
            }
            writeln!(out, "{frame}")?;
            out.flush()?;
        }
        if done {
            break;
        }
    }
    Ok(())
}

/// What is still travelling, by sequence number (the list shifts while the database is
/// asked, as the busy office pushes new changes to its front): the changes without a
/// committed notification, and those without a written reservation.
fn unseen(list: &VecDeque<Tracked>) -> (Vec<Travelling>, Vec<Travelling>) {
    let pick = |t: &Tracked| Travelling {
        seq: t.seq,
        item: t.stored_id.clone(),
        at: t.at,
        booked: t.change.action == "booked",
    };
    (
        list.iter()
            .filter(|t| t.notified.is_none())
            .map(pick)
            .collect(),
        list.iter()
            .filter(|t| t.applied.is_none())
            .map(pick)
            .collect(),
    )
}

/// A change still on its way, as the database is asked about it.
#[derive(Debug)]
struct Travelling {
    seq: u64,
    item: String,
    at: DateTime<Utc>,
    /// A booking's row is new: its creation is what to look for.
    booked: bool,
}

fn mark_seen(
    list: &mut VecDeque<Tracked>,
    notified: &HashMap<u64, DateTime<Utc>>,
    applied: &HashMap<u64, DateTime<Utc>>,
) {
    for t in list.iter_mut() {
        if let Some(when) = notified.get(&t.seq) {
            t.notified = Some(*when);
        }
        if let Some(when) = applied.get(&t.seq) {
            t.applied = Some(*when);
        }
    }
}

/// Percentiles of a sorted list of milliseconds, `-` when empty.
fn percentile(sorted: &[i64], p: f64) -> String {
    sorted
        .get(((sorted.len().saturating_sub(1)) as f64 * p).round() as usize)
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

async fn frame(
    pool: &PgPool,
    header: &str,
    tracked: &Mutex<VecDeque<Tracked>>,
) -> anyhow::Result<String> {
    let (to_notify, to_apply) = unseen(
        &tracked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let mut notified = HashMap::new();
    for t in to_notify {
        if let Some(when) = db::events::first_seen_since(pool, &t.item, t.at).await? {
            notified.insert(t.seq, when);
        }
    }
    let mut applied = HashMap::new();
    for t in to_apply {
        if let Some(when) = db::reservations::written_since(pool, &t.item, t.at, t.booked).await? {
            applied.insert(t.seq, when);
        }
    }
    let snapshot: Vec<Tracked> = {
        let mut list = tracked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        mark_seen(&mut list, &notified, &applied);
        list.iter().cloned().collect()
    };
    let counts = db::events::counts_by_mailbox(pool).await?;

    let mut out = String::new();
    out.push_str(header);
    out.push_str("\n\n");
    out.push_str(&format!(
        "{:<24} {:<7} {:<13} {:>7} {:>6} {:>6} {:>12} {:>10}\n",
        "ROOM",
        "BACKEND",
        "SUBSCRIPTION",
        "CHANGES",
        "EVENTS",
        "QUEUED",
        "RESERVATIONS",
        "LAST SYNC"
    ));
    let now = Utc::now();
    for c in &counts {
        let changes = snapshot
            .iter()
            .filter(|t| t.change.room == c.address)
            .count();
        let synced = c.synced_at.map_or_else(
            || "-".to_owned(),
            |at| {
                format!(
                    "{:.1} s ago",
                    (now - at).num_milliseconds().max(0) as f64 / 1000.0
                )
            },
        );
        out.push_str(&format!(
            "{:<24} {:<7} {:<13} {:>7} {:>6} {:>6} {:>12} {:>10}\n",
            c.address,
            c.backend,
            c.subscription_status.as_deref().unwrap_or("none"),
            changes,
            c.events,
            c.queued,
            c.reservations,
            synced,
        ));
    }
    let latencies = |pick: fn(&Tracked) -> Option<DateTime<Utc>>| {
        let mut ms: Vec<i64> = snapshot
            .iter()
            .filter_map(|t| pick(t).map(|s| (s - t.at).num_milliseconds().max(0)))
            .collect();
        ms.sort_unstable();
        ms
    };
    let notify = latencies(|t| t.notified);
    let apply = latencies(|t| t.applied);
    let travelling = snapshot.iter().filter(|t| t.applied.is_none()).count();
    out.push_str(&format!(
        "\nchanges made in Exchange: {} · notification committed: {} (p50 {} ms, max {} ms) · \
         reservation written: {} (p50 {} ms, p99 {} ms, max {} ms) · still travelling: {travelling}\n",
        snapshot.len(),
        notify.len(),
        percentile(&notify, 0.5),
        percentile(&notify, 1.0),
        apply.len(),
        percentile(&apply, 0.5),
        percentile(&apply, 0.99),
        percentile(&apply, 1.0),
    ));
    out.push_str("\nrecent changes                                                      notification  reservation\n");
    for t in snapshot.iter().take(RECENT) {
        let after = |when: Option<DateTime<Utc>>| {
            when.map_or_else(
                || "…".to_owned(),
                |s| format!("+{} ms", (s - t.at).num_milliseconds().max(0)),
            )
        };
        out.push_str(&format!(
            "  {}  {:<22} {:<9} {:<18} {:>12}  {:>11}\n",
            t.at.format("%H:%M:%S%.3f"),
            t.change.room,
            t.change.action,
            t.change.subject,
            after(t.notified),
            after(t.applied),
        ));
    }
    out.push_str(
        "\nEach change travels: Exchange → push notification → committed event → sync round \
         (Graph delta / EWS SyncFolderItems + GetItem) → reservation row.\nCtrl-C stops everything.",
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracked(seq: u64, item: &str) -> Tracked {
        Tracked {
            seq,
            stored_id: item.to_owned(),
            change: BusyChange {
                room: "room-01@sim.example".to_owned(),
                item_id: item.to_owned(),
                action: "booked",
                subject: "Busy meeting 1".to_owned(),
            },
            at: Utc::now(),
            notified: None,
            applied: None,
        }
    }

    #[test]
    fn a_match_lands_on_its_change_even_when_newer_changes_arrived_meanwhile() {
        let mut list = VecDeque::from([tracked(2, "b"), tracked(1, "a")]);
        let (asked, _) = unseen(&list);
        assert_eq!(asked.len(), 2);
        // While the database is asked, the busy office books two more meetings.
        list.push_front(tracked(3, "c"));
        list.push_front(tracked(4, "d"));
        let when = Utc::now();
        let seen: HashMap<u64, DateTime<Utc>> = asked.iter().map(|t| (t.seq, when)).collect();
        mark_seen(&mut list, &seen, &HashMap::from([(2, when)]));
        let marked: Vec<(&str, bool, bool)> = list
            .iter()
            .map(|t| {
                (
                    t.change.item_id.as_str(),
                    t.notified.is_some(),
                    t.applied.is_some(),
                )
            })
            .collect();
        assert_eq!(
            marked,
            vec![
                ("d", false, false),
                ("c", false, false),
                ("b", true, true),
                ("a", true, false)
            ]
        );
        let (to_notify, to_apply) = unseen(&list);
        assert_eq!((to_notify.len(), to_apply.len()), (2, 3));
    }
}
