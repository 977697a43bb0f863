//! The test harness: spawns the application the way `serve` does, minus signals and migrations
//! (`#[sqlx::test]` hands in an already migrated fresh database).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

use rooms_sync::app::Application;
use rooms_sync::config::{self, Settings};
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
