//! The test harness: spawns the application the way `serve` does, minus signals and migrations
//! (`#[sqlx::test]` hands in an already migrated fresh database).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rooms_sync::app::Application;
use rooms_sync::config::{self, Settings};
use rooms_sync::simulator::{Simulator, SimulatorConfig, SimulatorHandle};
use rooms_sync::worker::WorkerOptions;
use rooms_sync::worker::retry::RetryPolicy;
use rooms_sync::worker::sync::SyncOptions;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running application.
pub(crate) struct TestApp {
    pub(crate) addr: SocketAddr,
    pub(crate) admin_addr: SocketAddr,
    pub(crate) client: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Settings for a test: loopback port 0 everywhere, plus `extra` as environment overrides.
pub(crate) fn test_settings(extra: &[(&str, &str)]) -> Settings {
    let mut env: Vec<(String, String)> = vec![
        ("IdpRootUrl".into(), "http://127.0.0.1:1".into()),
        ("ListenAddress".into(), "127.0.0.1:0".into()),
        ("AdminListenAddress".into(), "127.0.0.1:0".into()),
        ("ShutdownDrainSeconds".into(), "2".into()),
        // The webhook and health tests seed their own rows: no worker acting on them unless a
        // test asks for one (the services against the simulator do).
        ("ServiceRoles".into(), "web".into()),
    ];
    // A key given in `extra` replaces the default above.
    env.retain(|(k, _)| !extra.iter().any(|(e, _)| e.eq_ignore_ascii_case(k)));
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    config::load_from(None, &env)
        .unwrap_or_else(|e| panic!("test settings are invalid:\n{e}"))
        .settings
}

impl TestApp {
    pub(crate) async fn spawn(pool: PgPool) -> Self {
        Self::spawn_with(pool, &[]).await
    }

    pub(crate) async fn spawn_with(pool: PgPool, extra: &[(&str, &str)]) -> Self {
        let app = Application::build_with_pool(test_settings(extra), pool)
            .await
            .expect("application builds");
        Self::run(app)
    }

    /// Runs an application built elsewhere (e.g. with `Application::build`).
    pub(crate) fn run(app: Application) -> Self {
        let addr = app.public_addr().expect("web role is on");
        let admin_addr = app.admin_addr().expect("admin listener");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        Self {
            addr,
            admin_addr,
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
            shutdown,
            task: Some(task),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// Cancels and waits for the application to stop.
    pub(crate) async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("app task").expect("app stopped cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The Postgres server the tests use, as a URL without a database name.
pub(crate) fn server_url() -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    match url.rfind('/') {
        Some(i) if i > "postgres://".len() => url[..i].to_owned(),
        _ => url,
    }
}

/// A database name no other test uses.
pub(crate) fn unique_database_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

pub(crate) async fn database_exists(name: &str) -> bool {
    let pool = PgPool::connect(&format!("{}/postgres", server_url()))
        .await
        .expect("server reachable");
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(name)
            .fetch_one(&pool)
            .await
            .expect("query");
    pool.close().await;
    exists
}

pub(crate) async fn drop_database(name: &str) {
    let pool = PgPool::connect(&format!("{}/postgres", server_url()))
        .await
        .expect("server reachable");
    sqlx::query(&format!("drop database if exists \"{name}\" with (force)"))
        .execute(&pool)
        .await
        .expect("drop database");
    pool.close().await;
}

/// The `rooms-sync` binary with a clean environment (so the developer's variables cannot leak
/// in) and an empty working directory (so config/RoomsAppSettings.config is not picked up).
pub(crate) fn binary(workdir: &Path, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rooms-sync"));
    command.env_clear().current_dir(workdir);
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The URL of the test's own database, for the binary.
pub(crate) fn database_url(pool: &PgPool) -> String {
    let options = pool.connect_options();
    let name = options
        .get_database()
        .expect("sqlx::test names the database");
    format!("{}/{name}", server_url())
}

/// A loopback port that was free a moment ago (for processes that must be told their port).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Sends `signal` (e.g. `-TERM`) to `child` and waits for it to exit, failing the test when it
/// takes longer than `bound`.
pub(crate) fn signal_and_wait(
    child: &mut std::process::Child,
    signal: &str,
    bound: std::time::Duration,
) -> std::process::ExitStatus {
    let sent = std::time::Instant::now();
    let kill = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    loop {
        if let Some(status) = child.try_wait().expect("child status") {
            return status;
        }
        assert!(
            sent.elapsed() < bound,
            "no exit within {bound:?} of {signal}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

// The service against the simulator, as the upkeep and end-to-end tests run it.

/// EWS StatusFrequency the test services ask for, in (test) minutes.
pub(crate) const EWS_STATUS_FREQUENCY: &str = "2";

/// Worker timing for tests: a "minute" of StatusFrequency is 200 ms (the simulator runs at
/// the same pace), upkeep looks every 50 ms and backs off from 100 ms.
pub(crate) fn fast_options() -> WorkerOptions {
    WorkerOptions {
        tick: Duration::from_millis(50),
        minute: Duration::from_millis(200),
        ews_silence_slack: Duration::from_millis(300),
        upkeep_retry: RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            max_attempts: None,
        },
        metrics_every: Duration::from_millis(200),
        drain: Duration::from_secs(2),
        sync: SyncOptions {
            poll: Duration::from_millis(100),
            lease: Duration::from_secs(2),
            retry: RetryPolicy {
                base: Duration::from_millis(100),
                cap: Duration::from_secs(1),
                max_attempts: Some(4),
            },
            ..SyncOptions::default()
        },
        ..WorkerOptions::default()
    }
}

pub(crate) async fn simulator(shutdown: &CancellationToken) -> SimulatorHandle {
    Simulator::start(
        SimulatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            // A minute of Exchange time is 200 ms, as in `fast_options`.
            time_scale: 300.0,
            rooms: (1..=6).map(|i| format!("room{i}@sim.example")).collect(),
            ..SimulatorConfig::default()
        },
        shutdown.clone(),
    )
    .await
    .unwrap()
}

/// A service on a fixed port (so its callback URL is known before it binds) pointed at `sim`.
pub(crate) struct Service {
    pub(crate) port: u16,
    /// The port the registered callback names: its own, or a shared one for replicas.
    pub(crate) callback_port: u16,
    pub(crate) mailboxes: String,
}

impl Service {
    pub(crate) fn new(mailboxes: &str) -> Self {
        let port = free_port();
        Self {
            port,
            callback_port: port,
            mailboxes: mailboxes.to_owned(),
        }
    }

    /// Another replica of `self`: its own listener, the same callback and mailboxes.
    pub(crate) fn replica(&self) -> Self {
        Self {
            port: free_port(),
            callback_port: self.callback_port,
            mailboxes: self.mailboxes.clone(),
        }
    }

    /// The same service with other mailboxes configured.
    pub(crate) fn with_mailboxes(&self, mailboxes: &str) -> Self {
        Self {
            port: self.port,
            callback_port: self.callback_port,
            mailboxes: mailboxes.to_owned(),
        }
    }

    pub(crate) fn callback(&self) -> String {
        format!(
            "http://127.0.0.1:{}/api/webhooks/exchange",
            self.callback_port
        )
    }

    pub(crate) async fn start(&self, pool: &PgPool, sim: &SimulatorHandle) -> TestApp {
        let base = sim.base_url().trim_end_matches('/').to_owned();
        let listen = format!("127.0.0.1:{}", self.port);
        let graph = format!("{base}/v1.0");
        let ews = format!("{base}/EWS/Exchange.asmx");
        let callback = self.callback();
        let settings = test_settings(&[
            ("ListenAddress", &listen),
            ("ExchangePushNotificationEndpointUrl", &callback),
            ("ExchangeRoomMailboxes", &self.mailboxes),
            ("GraphBaseUrl", &graph),
            ("AzureAuthorityHost", &base),
            ("EwsUrl", &ews),
            ("AzureTenantId", "sim-tenant"),
            ("AzureClientId", "sim-client"),
            ("AzureClientSecret", "sim-secret"),
            ("EwsStatusFrequencyMinutes", EWS_STATUS_FREQUENCY),
            ("GraphSubscriptionLifetimeMinutes", "60"),
            ("ServiceRoles", "web,worker"),
        ]);
        // Its own pool on the test's database: stopping an application closes its pool.
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect_lazy_with(pool.connect_options().as_ref().clone());
        let app = Application::build_with_pool(settings, own)
            .await
            .unwrap()
            .with_worker_options(fast_options());
        TestApp::run(app)
    }
}

/// Polls `check` until it is true, failing after `bound`.
pub(crate) async fn eventually<F, Fut>(bound: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < bound, "not within {bound:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Postgres server's `host:port`, from [`server_url`].
pub(crate) fn server_host_port() -> String {
    let url = url::Url::parse(&server_url()).expect("DATABASE_URL is a URL");
    format!(
        "{}:{}",
        url.host_str().expect("DATABASE_URL names a host"),
        url.port().unwrap_or(5432)
    )
}

/// A TCP proxy in front of Postgres that can play a server gone silent. `freeze` stops all
/// forwarding while keeping every socket open (what a half-open connection looks like: no
/// reset, no answer), and new connections get no further than the handshake; `thaw` lets new
/// connections through again, while the ones frozen stay frozen.
pub(crate) struct Proxy {
    pub(crate) port: u16,
    frozen: Arc<AtomicBool>,
    connections: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// A proxy on a free loopback port in front of `target` (`host:port`).
    pub(crate) async fn start(target: &str) -> Self {
        Self::start_on(0, target).await
    }

    /// A proxy on loopback `port` in front of `target`.
    pub(crate) async fn start_on(port: u16, target: &str) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("proxy port free");
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let connections: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let task = {
            let (frozen, connections, target) =
                (frozen.clone(), connections.clone(), target.to_owned());
            tokio::spawn(async move {
                // Dropped with the accept loop, so aborting it ends every connection.
                let mut pipes = tokio::task::JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    let this = Arc::new(AtomicBool::new(frozen.load(Ordering::SeqCst)));
                    connections.lock().unwrap().push(this.clone());
                    let target = target.clone();
                    pipes.spawn(async move {
                        if this.load(Ordering::SeqCst) {
                            std::future::pending::<()>().await;
                        }
                        let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                            return;
                        };
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        tokio::join!(
                            pipe(client_read, server_write, this.clone()),
                            pipe(server_read, client_write, this),
                        );
                    });
                }
            })
        };
        Self {
            port,
            frozen,
            connections,
            task,
        }
    }

    pub(crate) fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().iter() {
            connection.store(true, Ordering::SeqCst);
        }
    }

    pub(crate) fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }

    /// How many connections it has taken so far.
    pub(crate) fn connections(&self) -> usize {
        self.connections.lock().unwrap().len()
    }

    /// A pool of `pool`'s database through this proxy.
    pub(crate) fn pool(&self, pool: &PgPool) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect_lazy_with(pool.connect_options().as_ref().clone().port(self.port))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0; 16 * 1024];
    loop {
        if frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Frozen while this read waited: what it got is swallowed, as a dead link would.
        if frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The value of the first sample of `metrics` (Prometheus text) whose line starts with
/// `prefix`, e.g. `rooms_sync_ingest_flusher_restarts_total`; `None` when there is none.
pub(crate) fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

impl TestApp {
    /// The admin listener's `/metrics` text.
    pub(crate) async fn metrics(&self) -> String {
        self.client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}
