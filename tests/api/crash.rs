//! Nothing acknowledged is lost. The real `rooms-sync serve` takes constant load (Graph and EWS
//! deliveries from several senders) while it is killed with SIGKILL again and again and, on a
//! throwaway Postgres cluster of its own, Postgres is crashed (`pg_ctl stop -m immediate`) and
//! started again. A ledger records every delivery attempt and its answer; at the end every
//! acknowledged notification must be in the database. The short mode runs with the suite; the
//! long mode (`scripts/crash-long.sh`: at least 200 kills and 50 Postgres crashes) is ignored
//! here and prints its figures. See docs/durability.md.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::PathBuf;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rooms_sync::db::subscriptions::NewSubscription;
use rooms_sync::demo::pgtemp::{self, Durability, TempCluster};
use rooms_sync::domain::{Backend, SubscriptionState};

use crate::helpers::{
    binary, drop_database, free_port, server_url, signal_and_wait, unique_database_name,
};

const GRAPH_SUB: &str = "0d8f2b6a-7c31-4e59-9a42-3f1b6c8d9e01";
const GRAPH_STATE: &str = "crash-test-client-state";
/// The first PreviousWatermark of every EWS sender's chain, stored with its subscription.
const EWS_FIRST_WATERMARK: &str = "crash-test-watermark-start";
/// The database the service uses on the throwaway cluster.
const CLUSTER_DATABASE: &str = "rooms_sync_crash";

/// A delivery that was not acknowledged is sent again, as Exchange and Graph retry, so that the
/// service's dedupe is exercised too: a retry of one that was committed but whose answer the
/// kill swallowed must not be stored twice.
const MAX_ATTEMPTS: u32 = 4;
/// Between a sender's attempts at one notification: a service being restarted refuses
/// connections at once, and the senders should not spin on that.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// Longer than the service's own bound (it answers 503 after 2.5 s without a commit), so a
/// timeout here means the service did not answer at all.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a start (or the first acknowledgement after one) may take before the test fails.
const STEP_BOUND: Duration = Duration::from_secs(30);
/// The readiness poll's period: the resolution of the restart-to-ready figures.
const READY_POLL: Duration = Duration::from_millis(2);
/// Issue 9's target for spawning `serve` until `/readyz` answers 200.
const READY_TARGET: Duration = Duration::from_millis(250);

/// How hard one run pushes.
#[derive(Debug, Clone)]
struct Plan {
    mode: &'static str,
    kills: usize,
    pg_crashes: usize,
    graph_senders: usize,
    ews_senders: usize,
    /// How long each service instance takes load before it is killed, in ms (drawn at random).
    load_ms: Range<u64>,
    /// Every n-th Postgres crash also kills the service while Postgres is down, so that a
    /// service starting against a dead server is covered.
    start_while_down_every: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_notification_survives_a_kill_9_under_load() {
    // A cluster of its own when the binaries are there (they are wherever the suite's server
    // is installed from the Debian packages), so one Postgres crash is in CI too.
    let own_cluster = pgtemp::binaries_available(None);
    let plan = Plan {
        mode: "short",
        kills: 3,
        pg_crashes: usize::from(own_cluster),
        graph_senders: 6,
        ews_senders: 2,
        load_ms: 200..400,
        start_while_down_every: 0,
    };
    let report = run(&plan, own_cluster).await;
    assert!(
        report.acked > 100,
        "too little load to mean anything: {} acknowledged",
        report.acked
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the long mode takes minutes: scripts/crash-long.sh"]
async fn every_acknowledged_notification_survives_hundreds_of_kill_9s_and_postgres_crashes() {
    let senders = knob("CRASH_SENDERS", 8).max(2);
    let ews_senders = (senders / 4).max(1);
    let plan = Plan {
        mode: "long",
        kills: knob("CRASH_KILLS", 200),
        pg_crashes: knob("CRASH_PG_CRASHES", 50),
        graph_senders: senders - ews_senders,
        ews_senders,
        load_ms: 50..400,
        start_while_down_every: 5,
    };
    assert!(
        pgtemp::binaries_available(None),
        "the long mode crashes a throwaway Postgres cluster: it needs initdb, pg_ctl and \
         postgres under /usr/lib/postgresql/<version>/bin"
    );
    let report = run(&plan, true).await;
    assert!(report.kills >= plan.kills && report.pg_crashes >= plan.pg_crashes);
}

/// A whole number from the environment, else `default`.
fn knob(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a whole number")),
        Err(_) => default,
    }
}

/// What a delivery attempt got back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Graph 202, or EWS 200 with SubscriptionStatus OK: the service says it is stored.
    Acked,
    /// 4xx, or a 2xx that is not the acknowledgement (say an EWS Unsubscribe).
    Refused,
    /// 5xx: the service could not commit in time (Postgres down, a flusher reconnecting).
    Failed,
    /// No connection: nothing listened (the service was killed or not bound yet).
    NotConnected,
    /// Sent, but no answer: the connection broke (a kill) or the request timed out.
    Lost,
}

/// One line of the ledger.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    notification: u64,
    attempt: u32,
    answered: Instant,
    answer: Answer,
    status: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Graph,
    Ews,
}

/// The id a notification is known by: its item id, as the service stores it.
fn item_id(notification: u64) -> String {
    format!("CRASH-{notification:010}")
}

fn graph_body(notification: u64) -> String {
    let item = item_id(notification);
    format!(
        r##"{{"value":[{{"subscriptionId":"{GRAPH_SUB}","changeType":"created","clientState":"{GRAPH_STATE}","resource":"Users/crash-room/Events/{item}","resourceData":{{"@odata.type":"#Microsoft.Graph.Event","@odata.etag":"W/\"{item}-1\"","id":"{item}"}}}}]}}"##
    )
}

fn ews_subscription(sender: usize) -> String {
    format!("crash-test-ews-subscription-{sender}")
}

/// A SendNotification with one CreatedEvent; each carries a watermark of its own (the EWS dedupe
/// key) and continues its sender's chain.
fn ews_body(sender: usize, previous: &str, watermark: &str, notification: u64) -> String {
    let sub = ews_subscription(sender);
    let item = item_id(notification);
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<soap11:Envelope xmlns:soap11="http://schemas.xmlsoap.org/soap/envelope/">
  <soap11:Body>
    <m:SendNotification xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">
      <m:ResponseMessages>
        <m:SendNotificationResponseMessage ResponseClass="Success">
          <m:ResponseCode>NoError</m:ResponseCode>
          <m:Notification>
            <t:SubscriptionId>{sub}</t:SubscriptionId>
            <t:PreviousWatermark>{previous}</t:PreviousWatermark>
            <t:MoreEvents>false</t:MoreEvents>
            <t:CreatedEvent>
              <t:Watermark>{watermark}</t:Watermark>
              <t:TimeStamp>2026-03-02T10:30:45Z</t:TimeStamp>
              <t:ItemId Id="{item}" ChangeKey="DwAAABYAAAA=" />
              <t:ParentFolderId Id="crash-test-calendar" ChangeKey="AQAAAA==" />
            </t:CreatedEvent>
          </m:Notification>
        </m:SendNotificationResponseMessage>
      </m:ResponseMessages>
    </m:SendNotification>
  </soap11:Body>
</soap11:Envelope>"#
    )
}

/// Shared between the senders and the controller while the run goes on.
#[derive(Debug, Default)]
struct Live {
    /// Attempts started; checked against the ledger lines at the end.
    sent: AtomicU64,
    acks: AtomicU64,
    next_notification: AtomicU64,
    stop: AtomicBool,
}

/// Sends notifications one after another until told to stop, each until acknowledged, refused
/// or out of attempts, and returns its part of the ledger.
async fn sender(kind: Kind, index: usize, url: String, live: Arc<Live>) -> Vec<Attempt> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap();
    let mut ledger = Vec::new();
    let mut previous_watermark = EWS_FIRST_WATERMARK.to_owned();
    while !live.stop.load(Ordering::SeqCst) {
        let notification = live.next_notification.fetch_add(1, Ordering::SeqCst);
        let (content_type, body) = match kind {
            Kind::Graph => ("application/json", graph_body(notification)),
            Kind::Ews => {
                let watermark = format!("crash-test-watermark-{notification}");
                let body = ews_body(index, &previous_watermark, &watermark, notification);
                previous_watermark = watermark;
                ("text/xml; charset=utf-8", body)
            }
        };
        for attempt in 1..=MAX_ATTEMPTS {
            live.sent.fetch_add(1, Ordering::SeqCst);
            let (answer, status) = deliver(&client, &url, kind, content_type, &body).await;
            ledger.push(Attempt {
                notification,
                attempt,
                answered: Instant::now(),
                answer,
                status,
            });
            match answer {
                Answer::Acked => {
                    live.acks.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                // The same body would be refused again.
                Answer::Refused => break,
                _ if live.stop.load(Ordering::SeqCst) => break,
                _ => tokio::time::sleep(RETRY_PAUSE).await,
            }
        }
    }
    ledger
}

async fn deliver(
    client: &reqwest::Client,
    url: &str,
    kind: Kind,
    content_type: &str,
    body: &str,
) -> (Answer, Option<u16>) {
    let response = match client
        .post(url)
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
    {
        Ok(response) => response,
        Err(error) if error.is_connect() => return (Answer::NotConnected, None),
        Err(_) => return (Answer::Lost, None),
    };
    let status = response.status().as_u16();
    let answer = match status {
        500.. => Answer::Failed,
        400.. => Answer::Refused,
        _ => match kind {
            Kind::Graph if status == 202 => Answer::Acked,
            Kind::Graph => Answer::Refused,
            // The SOAP answer is the acknowledgement: it must arrive whole.
            Kind::Ews => match response.text().await {
                Ok(text) if status == 200 && text.contains(">OK</m:SubscriptionStatus>") => {
                    Answer::Acked
                }
                Ok(_) => Answer::Refused,
                Err(_) => Answer::Lost,
            },
        },
    };
    (answer, Some(status))
}

/// Where the service's database lives.
enum Database {
    /// A durable throwaway cluster of the test's own, which can be crashed.
    Cluster(TempCluster),
    /// A fresh database on the suite's server (no Postgres binaries here): no Postgres crashes.
    Shared(String),
}

impl Database {
    fn url(&self) -> String {
        match self {
            Self::Cluster(cluster) => format!(
                "postgres://postgres@127.0.0.1:{}/{CLUSTER_DATABASE}",
                cluster.port()
            ),
            Self::Shared(name) => format!("{}/{name}", server_url()),
        }
    }

    fn cluster(&self) -> &TempCluster {
        match self {
            Self::Cluster(cluster) => cluster,
            Self::Shared(_) => panic!("Postgres crashes need a cluster of the test's own"),
        }
    }

    async fn remove(self) {
        match self {
            // Dropping stops it with `-m immediate` and removes its directory: a clean stop's
            // shutdown checkpoint would only cost seconds of fsync for a cluster about to go.
            Self::Cluster(cluster) => tokio::task::block_in_place(|| drop(cluster)),
            Self::Shared(name) => drop_database(&name).await,
        }
    }
}

/// How `serve` is started, the same way each time: same ports, same database.
struct Service {
    env: Vec<(&'static str, String)>,
    workdir: tempfile::TempDir,
    /// Every instance's stdout and stderr, appended.
    log: PathBuf,
    webhook: String,
    readyz: String,
    poller: reqwest::Client,
}

impl Service {
    fn new(database_url: &str) -> Self {
        let workdir = tempfile::tempdir().unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let env = vec![
            ("IdpRootUrl", "https://h.example".to_owned()),
            ("DatabaseUrl", database_url.to_owned()),
            ("ListenAddress", listen.clone()),
            ("AdminListenAddress", admin.clone()),
            // Ingress only: the worker would sync from an Exchange there is none of here, and
            // its upkeep would end the seeded subscriptions, whose rooms are not configured.
            ("ServiceRoles", "web".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ];
        Self {
            log: workdir.path().join("service.log"),
            env,
            workdir,
            webhook: format!("http://{listen}/api/webhooks/exchange"),
            readyz: format!("http://{admin}/readyz"),
            // No kept-alive connections: each poll must reach the instance running now.
            poller: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(2))
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        }
    }

    fn command(&self, subcommand: &str) -> std::process::Command {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut command = binary(self.workdir.path(), &env);
        command.arg(subcommand);
        command
    }

    fn spawn(&self) -> Instance {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        Instance(
            self.command("serve")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    /// Polls `/readyz` on the admin listener until it answers 200: the time since `spawned`
    /// until the first answer of any status (the process is up and listening) and until 200.
    async fn wait_ready(&self, child: &mut Child, spawned: Instant) -> Started {
        let mut listening = None;
        loop {
            let status = self
                .poller
                .get(&self.readyz)
                .send()
                .await
                .map(|r| r.status());
            if status.is_ok() {
                listening.get_or_insert_with(|| spawned.elapsed());
            }
            if status.is_ok_and(|s| s == 200) {
                let ready = spawned.elapsed();
                return Started {
                    listening: listening.unwrap_or(ready),
                    ready,
                };
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("serve exited ({status}):\n{}", self.log_tail());
            }
            assert!(
                spawned.elapsed() < STEP_BOUND,
                "serve not ready within {STEP_BOUND:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(READY_POLL).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// A running `serve`, killed when dropped: a test that fails half-way must not leave it
/// behind, holding its ports.
struct Instance(Child);

impl std::ops::Deref for Instance {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Instance {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Already gone after `kill_9` or SIGTERM: then both only report that.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How long an instance took from its spawn.
#[derive(Debug, Clone, Copy)]
struct Started {
    /// Until `/readyz` answered at all: the process runs and its listeners are bound.
    listening: Duration,
    /// Until `/readyz` answered 200: the database answers and the migrations are checked.
    ready: Duration,
}

/// SIGKILL (`kill -9`), and the exit reaped.
fn kill_9(child: &mut Child) {
    tokio::task::block_in_place(|| {
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "serve exited cleanly after SIGKILL");
    });
}

/// Waits until the acknowledgement counter passes `before`.
async fn wait_for_ack(live: &Live, before: u64, what: &str, service: &Service) {
    let start = Instant::now();
    while live.acks.load(Ordering::SeqCst) <= before {
        assert!(
            start.elapsed() < STEP_BOUND,
            "no acknowledgement within {STEP_BOUND:?} {what}:\n{}",
            service.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn seed(url: &str, ews_senders: usize) {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let mut subscriptions = vec![(
        "crash-graph@example.com".to_owned(),
        Backend::Graph,
        GRAPH_SUB.to_owned(),
    )];
    subscriptions.extend((0..ews_senders).map(|k| {
        (
            format!("crash-ews-{k}@example.com"),
            Backend::Ews,
            ews_subscription(k),
        )
    }));
    for (address, backend, remote_id) in &subscriptions {
        let mailbox = rooms_sync::db::mailboxes::upsert(&pool, address, *backend)
            .await
            .unwrap();
        let graph = *backend == Backend::Graph;
        rooms_sync::db::subscriptions::insert(
            &pool,
            &NewSubscription {
                mailbox_id: mailbox,
                backend: *backend,
                remote_id: Some(remote_id),
                status: SubscriptionState::Active,
                client_state: graph.then_some(GRAPH_STATE),
                callback_url: "https://h.example/api/webhooks/exchange",
                expires_at: None,
                last_watermark: (!graph).then_some(EWS_FIRST_WATERMARK),
                resource: None,
                status_frequency_minutes: None,
            },
        )
        .await
        .unwrap();
    }
    pool.close().await;
}

/// What the controller measured, besides the ledger.
#[derive(Debug, Default)]
struct Timeline {
    /// Spawn instants of the instances started with Postgres up, and their start-up.
    spawns: Vec<Instant>,
    listening: Vec<Duration>,
    ready: Vec<Duration>,
    /// Instances started while Postgres was down: spawn → ready, and Postgres ready → ready.
    ready_while_down: Vec<Duration>,
    ready_after_postgres: Vec<Duration>,
    /// When Postgres was crashed; `pg_ctl start` instants after a crash, and how long each took
    /// (crash recovery).
    postgres_crashes: Vec<Instant>,
    postgres_starts: Vec<Instant>,
    postgres_recovery: Vec<Duration>,
}

impl Timeline {
    /// Waits until the instance spawned at `spawned` (with Postgres up) is ready.
    async fn record_start(&mut self, spawned: Instant, service: &Service, child: &mut Child) {
        let started = service.wait_ready(child, spawned).await;
        self.spawns.push(spawned);
        self.listening.push(started.listening);
        self.ready.push(started.ready);
    }
}

/// The figures a run ends with.
#[derive(Debug)]
struct Report {
    kills: usize,
    pg_crashes: usize,
    acked: usize,
}

async fn run(plan: &Plan, own_cluster: bool) -> Report {
    let started = Instant::now();
    let seed_value = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed_value);
    let database = if own_cluster {
        Database::Cluster(
            TempCluster::start_with(None, Durability::Durable)
                .await
                .unwrap(),
        )
    } else {
        Database::Shared(unique_database_name("rooms_sync_crash"))
    };
    let url = database.url();
    let service = Service::new(&url);
    let migrate = service.command("migrate").output().unwrap();
    assert!(
        migrate.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    seed(&url, plan.ews_senders).await;

    let mut timeline = Timeline::default();
    let spawned = Instant::now();
    let mut child = service.spawn();
    timeline.record_start(spawned, &service, &mut child).await;

    let live = Arc::new(Live::default());
    let mut senders = Vec::new();
    let kinds = std::iter::repeat_n(Kind::Graph, plan.graph_senders)
        .chain(std::iter::repeat_n(Kind::Ews, plan.ews_senders));
    for (index, kind) in kinds.enumerate() {
        let ews_index = index.saturating_sub(plan.graph_senders);
        senders.push(tokio::spawn(sender(
            kind,
            ews_index,
            service.webhook.clone(),
            Arc::clone(&live),
        )));
    }

    let (mut kills, mut pg_crashes) = (0, 0);
    while kills < plan.kills || pg_crashes < plan.pg_crashes {
        // Spread the Postgres crashes evenly over the kills.
        let crash_due = pg_crashes < plan.pg_crashes
            && pg_crashes * plan.kills.max(1) <= kills * plan.pg_crashes;
        if crash_due {
            let cluster = database.cluster();
            tokio::time::sleep(Duration::from_millis(rng.u64(20..200))).await;
            timeline.postgres_crashes.push(Instant::now());
            cluster.crash().await.unwrap();
            pg_crashes += 1;
            tokio::time::sleep(Duration::from_millis(rng.u64(0..300))).await;
            let start_while_down =
                plan.start_while_down_every > 0 && pg_crashes % plan.start_while_down_every == 0;
            let mut spawned_while_down = None;
            if start_while_down {
                kill_9(&mut child);
                kills += 1;
                spawned_while_down = Some(Instant::now());
                child = service.spawn();
                tokio::time::sleep(Duration::from_millis(rng.u64(0..200))).await;
            }
            let acks_before = live.acks.load(Ordering::SeqCst);
            let restarting = Instant::now();
            cluster.restart().await.unwrap();
            timeline.postgres_recovery.push(restarting.elapsed());
            timeline.postgres_starts.push(restarting);
            let postgres_ready = Instant::now();
            if let Some(spawned) = spawned_while_down {
                let started = service.wait_ready(&mut child, spawned).await;
                timeline.ready_while_down.push(started.ready);
                timeline.ready_after_postgres.push(postgres_ready.elapsed());
            }
            wait_for_ack(&live, acks_before, "after a Postgres restart", &service).await;
        }
        // Load on this instance for a while; at least one acknowledgement, so that every kill
        // lands under load.
        let acks_before = live.acks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(rng.u64(plan.load_ms.clone()))).await;
        wait_for_ack(&live, acks_before, "before a kill", &service).await;
        kill_9(&mut child);
        kills += 1;

        let spawned = Instant::now();
        child = service.spawn();
        timeline.record_start(spawned, &service, &mut child).await;
    }
    // The last instance is up: it must take load before the end.
    let acks_before = live.acks.load(Ordering::SeqCst);
    wait_for_ack(&live, acks_before, "after the last start", &service).await;
    live.stop.store(true, Ordering::SeqCst);
    let mut ledger = Vec::new();
    for sender in senders {
        // A sender that panicked would leave an attempt without its answer: the run is void.
        ledger.extend(sender.await.expect("a sender panicked: the ledger is VOID"));
    }

    let stored = stored_items(&url).await;
    signal_and_wait(&mut child, "-TERM", Duration::from_secs(20));
    let report = report(
        plan,
        &Figures {
            seed: seed_value,
            kills,
            pg_crashes,
            sent: live.sent.load(Ordering::SeqCst),
            notifications: live.next_notification.load(Ordering::SeqCst),
            ledger: &ledger,
            stored: &stored,
            timeline: &timeline,
            wall: started.elapsed(),
        },
    );
    database.remove().await;
    report
}

/// Every notification the service stored, by item id, with how many rows it has.
async fn stored_items(url: &str) -> HashMap<String, i64> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let rows: Vec<(Option<String>, i64)> =
        sqlx::query_as("select item_id, count(*) from notification_events group by item_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    rows.into_iter()
        .map(|(item, count)| (item.unwrap_or_default(), count))
        .collect()
}

struct Figures<'a> {
    seed: u64,
    kills: usize,
    pg_crashes: usize,
    sent: u64,
    notifications: u64,
    ledger: &'a [Attempt],
    stored: &'a HashMap<String, i64>,
    timeline: &'a Timeline,
    wall: Duration,
}

/// Balances the ledger, compares it with the database, prints the figures, and fails the test
/// when the ledger does not balance or an acknowledged notification is missing.
fn report(plan: &Plan, f: &Figures<'_>) -> Report {
    let count = |answer| f.ledger.iter().filter(|a| a.answer == answer).count();
    let acked = count(Answer::Acked);
    let refused = count(Answer::Refused);
    let failed = count(Answer::Failed);
    let not_connected = count(Answer::NotConnected);
    let lost = count(Answer::Lost);
    let no_answer = not_connected + lost;

    // The ledger balances when every attempt started has exactly one line, every line one
    // answer, and every notification that was handed out has lines (none was skipped).
    let mut lines: HashMap<(u64, u32), usize> = HashMap::new();
    for a in f.ledger {
        *lines.entry((a.notification, a.attempt)).or_default() += 1;
    }
    let twice = lines.values().filter(|&&n| n > 1).count();
    let mut acks_per_notification: HashMap<u64, usize> = HashMap::new();
    for a in f.ledger {
        let acks = acks_per_notification.entry(a.notification).or_default();
        *acks += usize::from(a.answer == Answer::Acked);
    }
    let acked_twice = acks_per_notification.values().filter(|&&n| n > 1).count();
    let ledger_ids = u64::try_from(acks_per_notification.len()).unwrap();
    let strangers: Vec<&String> = f
        .stored
        .keys()
        .filter(|item| {
            item.strip_prefix("CRASH-")
                .and_then(|n| n.parse::<u64>().ok())
                .is_none_or(|n| !acks_per_notification.contains_key(&n))
        })
        .collect();
    let balanced = u64::try_from(f.ledger.len()).unwrap() == f.sent
        && acked + refused + failed + no_answer == f.ledger.len()
        && twice == 0
        && acked_twice == 0
        && ledger_ids == f.notifications
        && strangers.is_empty();

    let acked_ids: Vec<u64> = acks_per_notification
        .iter()
        .filter(|&(_, &n)| n > 0)
        .map(|(&id, _)| id)
        .collect();
    let is_stored = |id: u64| f.stored.contains_key(&item_id(id));
    let stored = acks_per_notification
        .keys()
        .filter(|&&id| is_stored(id))
        .count();
    let missing: Vec<u64> = acked_ids
        .iter()
        .copied()
        .filter(|&id| !is_stored(id))
        .collect();
    let stored_unacked = stored - (acked_ids.len() - missing.len());
    let duplicates = f.stored.values().filter(|&&n| n > 1).count();
    let retried_acked = f
        .ledger
        .iter()
        .filter(|a| a.answer == Answer::Acked && a.attempt > 1)
        .count();

    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for a in f.ledger {
        if let Some(status) = a.status.filter(|&s| s != 202 && s != 200) {
            *statuses.entry(status).or_default() += 1;
        }
    }
    let mut statuses: Vec<(u16, usize)> = statuses.into_iter().collect();
    statuses.sort_unstable();

    // Answer instants of the acknowledgements, in order: the first one after an instant is
    // the first commit of the instance (or Postgres) started then, as the one before is dead.
    let mut acks: Vec<Instant> = f
        .ledger
        .iter()
        .filter(|a| a.answer == Answer::Acked)
        .map(|a| a.answered)
        .collect();
    acks.sort_unstable();
    let first_ack_after = |from: &Instant| {
        let i = acks.partition_point(|t| t <= from);
        acks.get(i).map(|t| t.duration_since(*from))
    };
    // An instance whose first acknowledgement had to wait for a Postgres crash and restart
    // says nothing about its own start: it is left out.
    let to_first_ack: Vec<Duration> = f
        .timeline
        .spawns
        .iter()
        .filter_map(|spawned| {
            let took = first_ack_after(spawned)?;
            let crashed = |c: &Instant| *c > *spawned && c.duration_since(*spawned) < took;
            (!f.timeline.postgres_crashes.iter().any(crashed)).then_some(took)
        })
        .collect();
    let postgres_to_ack: Vec<Duration> = f
        .timeline
        .postgres_starts
        .iter()
        .filter_map(first_ack_after)
        .collect();
    let ready = Stats::of(&f.timeline.ready);

    let t = &f.timeline;
    let verdict = if !balanced {
        "VOID: the ledger does not balance"
    } else if !missing.is_empty() {
        "FAILED: acknowledged notifications are missing"
    } else {
        "PASSED"
    };
    println!(
        "\nrooms-sync crash test, {} mode: {verdict}\n\
         plan: {} kill -9 of serve, {} Postgres crashes (pg_ctl stop -m immediate), {} senders \
         ({} Graph, {} EWS), up to {MAX_ATTEMPTS} attempts per notification, seed {}\n\
         kills: {}   Postgres crashes: {}   wall time: {:.1} s\n\
         ledger ({}): sent {} = acked {acked} + refused {refused} + failed {failed} + no answer \
         {no_answer} (not connected {not_connected}, connection broke or timed out {lost}); \
         non-2xx statuses: {statuses:?}\n\
         notifications: {} ({retried_acked} acknowledged on a retry)   acked {}   stored {stored} \
         (of them never acknowledged: {stored_unacked})   missing {}   stored twice {duplicates}\n\
         restart-to-ready (spawn → /readyz 200, Postgres up, n={}): p50 {}  p95 {}  max {}  \
         target ≤ {} ms: {}\n\
         spawn → listening (first answer of /readyz): {}   spawn → first ack (n={}, no \
         Postgres crash before it): {}\n\
         serve started while Postgres was down (n={}): spawn → ready {}; Postgres ready → ready {}\n\
         Postgres restart after a crash (pg_ctl start, crash recovery, n={}): {}; pg_ctl start → \
         first ack: {}\n",
        plan.mode,
        plan.kills,
        plan.pg_crashes,
        plan.graph_senders + plan.ews_senders,
        plan.graph_senders,
        plan.ews_senders,
        f.seed,
        f.kills,
        f.pg_crashes,
        f.wall.as_secs_f64(),
        if balanced { "balanced" } else { "UNBALANCED" },
        f.sent,
        f.notifications,
        acked_ids.len(),
        missing.len(),
        ready.n,
        ms(ready.p50),
        ms(ready.p95),
        ms(ready.max),
        READY_TARGET.as_millis(),
        if ready.max <= READY_TARGET {
            "met"
        } else if ready.p95 <= READY_TARGET {
            "met at p95, MISSED at max"
        } else {
            "MISSED"
        },
        Stats::of(&f.timeline.listening),
        to_first_ack.len(),
        Stats::of(&to_first_ack),
        t.ready_while_down.len(),
        Stats::of(&t.ready_while_down),
        Stats::of(&t.ready_after_postgres),
        t.postgres_recovery.len(),
        Stats::of(&t.postgres_recovery),
        Stats::of(&postgres_to_ack),
    );
    assert!(
        balanced,
        "VOID: the ledger does not balance: {} lines for {} attempts sent, {twice} attempts \
         answered twice, {acked_twice} notifications acknowledged twice, {ledger_ids} \
         notifications in the ledger of {} handed out, stored items not in the ledger: {:?}",
        f.ledger.len(),
        f.sent,
        f.notifications,
        strangers.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        missing.is_empty(),
        "{} acknowledged notifications are not stored, e.g. {:?}",
        missing.len(),
        missing
            .iter()
            .take(5)
            .map(|&id| item_id(id))
            .collect::<Vec<_>>()
    );
    Report {
        kills: f.kills,
        pg_crashes: f.pg_crashes,
        acked,
    }
}

/// p50, p95 and max of a sample.
#[derive(Debug, Clone, Copy)]
struct Stats {
    n: usize,
    p50: Duration,
    p95: Duration,
    max: Duration,
}

impl Stats {
    fn of(sample: &[Duration]) -> Self {
        let mut sorted = sample.to_vec();
        sorted.sort_unstable();
        // Nearest rank.
        let at = |q: f64| {
            let rank = (q * sorted.len() as f64).ceil() as usize;
            sorted
                .get(rank.saturating_sub(1))
                .copied()
                .unwrap_or_default()
        };
        Self {
            n: sorted.len(),
            p50: at(0.50),
            p95: at(0.95),
            max: sorted.last().copied().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.n == 0 {
            return write!(f, "none");
        }
        write!(
            f,
            "p50 {}  p95 {}  max {}",
            ms(self.p50),
            ms(self.p95),
            ms(self.max)
        )
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
