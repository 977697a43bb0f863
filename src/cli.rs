//! The command line (CONTRACT §1): parses arguments, loads the settings once, runs a command and
//! maps the outcome to an exit code (2: invalid configuration or usage, 1: any other failure).
//!
//! The operator commands `status` and `events replay` live in the submodules of the same names;
//! see docs/operations.md.

mod replay;
mod status;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};
use sqlx::{ConnectOptions as _, PgConnection};
use tokio_util::sync::CancellationToken;

use crate::app::Application;
use crate::config::{self, DatabaseSettings, Loaded, LogFormat};
use crate::demo::{self, DemoArgs};
use crate::simulator::{self, SimulateArgs};
use crate::{db, shutdown, telemetry};

/// Exchange room-calendar push sync for ROOMS.
#[derive(Debug, Parser)]
#[command(name = "rooms-sync", version, about)]
pub struct Cli {
    /// RoomsAppSettings.config to read (default: $ROOMS_APPSETTINGS, else
    /// config/RoomsAppSettings.config when present).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the webhook listener, the admin listener and the sync worker until SIGTERM/SIGINT.
    Serve,
    /// Apply the embedded database migrations and exit.
    Migrate,
    /// Validate the configuration and print the effective settings as JSON.
    Config,
    /// Exit 0 when the local /healthz answers 200 (for container health checks).
    Healthcheck,
    /// Run the Exchange simulator (EWS and Graph) on loopback.
    Simulate(SimulateArgs),
    /// Run the simulator, the service against it and a busy office, and show bookings arrive.
    Demo(DemoArgs),
    /// Show each mailbox's subscription, last notification, last sync and waiting and dead events.
    ///
    /// Reads the database only: safe while `serve` runs, and applies no migrations.
    Status(StatusArgs),
    /// Act on stored notification events.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON document on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Put dead events back to pending and make their mailboxes due for a sync.
    ///
    /// In one transaction. Ids that are not dead are skipped (named on stderr); unknown ids
    /// fail with exit 2 and change nothing.
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
#[command(
    group(ArgGroup::new("which").required(true).args(["all", "ids"])),
    override_usage = "rooms-sync events replay (--all | ID...)"
)]
pub struct ReplayArgs {
    /// Replay every dead event.
    #[arg(long)]
    pub all: bool,
    /// Ids of the dead events to replay (`notification_events.id`).
    #[arg(value_name = "ID", value_parser = clap::value_parser!(i64).range(1..))]
    pub ids: Vec<i64>,
}

/// Runs the program; the binary's whole `main`.
#[must_use]
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The simulator stands alone: it needs none of the service's settings.
    match cli.command {
        Command::Simulate(args) => {
            return standalone("simulate", move |stop| simulator::run(args, stop));
        }
        Command::Demo(args) => {
            let path = cli.config.clone();
            return standalone("demo", move |stop| async move {
                demo::run(args, path.as_deref(), stop).await
            });
        }
        _ => {}
    }
    let loaded = match config::load(cli.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(error) => {
            for problem in &error.problems {
                eprintln!("configuration error: {problem}");
            }
            return ExitCode::from(2);
        }
    };
    if let Command::Config = cli.command {
        return print_config(&loaded);
    }
    if let Err(error) = telemetry::init(loaded.settings.log_format, loaded.log_filter.as_deref()) {
        eprintln!("{error:#}");
        return ExitCode::FAILURE;
    }
    if let Some(file) = &loaded.file {
        tracing::info!(file = %file.display(), "settings file read");
    }
    for key in &loaded.ignored_keys {
        tracing::debug!(key, "settings file key not used by rooms-sync");
    }
    // One thread for every task. The service waits on sockets nearly all the time, and on a
    // multi-threaded runtime the wake-ups and hand-offs between workers cost more CPU than the
    // requests themselves (measured: about a quarter of the CPU per webhook acknowledgement).
    // Parses big enough to hold the thread go to the blocking pool (`offload`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Serve => exit_code(serve(loaded).await),
            Command::Migrate => exit_code(migrate(&loaded).await),
            Command::Healthcheck => exit_code(healthcheck(&loaded).await),
            // The operator commands report their own failures as one plain line on stderr, and
            // some of them are not exit 1.
            Command::Status(args) => status::run(&loaded.settings.database, &args).await,
            Command::Events {
                command: EventsCommand::Replay(args),
            } => replay::run(&loaded.settings.database, &args).await,
            Command::Config | Command::Simulate(_) | Command::Demo(_) => ExitCode::SUCCESS,
        }
    })
}

/// The exit code of a service command, logging its failure.
fn exit_code(outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "rooms-sync failed");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command that needs none of the service's settings (`simulate`, `demo`) with quiet
/// logs (they would garble the demo's view); SIGTERM/SIGINT cancel the token it is given.
fn standalone<C, F>(name: &str, command: C) -> ExitCode
where
    C: FnOnce(CancellationToken) -> F,
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    if let Err(error) = telemetry::init(LogFormat::Text, Some("warn")) {
        eprintln!("{error:#}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        let stop = CancellationToken::new();
        let signals = tokio::spawn(shutdown::cancel_on_signal(stop.clone()));
        let result = command(stop.clone()).await;
        stop.cancel();
        let _ = signals.await;
        result
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rooms-sync {name} failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_config(loaded: &Loaded) -> ExitCode {
    match serde_json::to_string_pretty(&config::report(loaded)) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("cannot print the settings: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(loaded: Loaded) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let app = Application::build(loaded.settings).await?;
    let signals = tokio::spawn(shutdown::cancel_on_signal(shutdown.clone()));
    let result = app.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = signals.await;
    result
}

async fn migrate(loaded: &Loaded) -> anyhow::Result<()> {
    let settings = &loaded.settings.database;
    db::ensure_database(settings).await?;
    let pool = db::pool(settings)?;
    db::migrate(&pool).await?;
    pool.close().await;
    tracing::info!("migrations are applied");
    Ok(())
}

/// GET /healthz on the configured public listener, or on the admin listener when this process
/// runs without the `web` role.
async fn healthcheck(loaded: &Loaded) -> anyhow::Result<()> {
    let http = &loaded.settings.http;
    let addr = if loaded.settings.roles.web {
        http.listen_address
    } else {
        http.admin_listen_address
    };
    let target = loopback_for(addr);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .no_proxy()
        .build()?;
    let response = client
        .get(format!("http://{target}/healthz"))
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "/healthz answered {}",
        response.status()
    );
    Ok(())
}

/// The address to probe for a listener bound to `addr`: a wildcard bind is reached on loopback.
fn loopback_for(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// How long an operator command waits for its database connection: long enough for a remote
/// server, short enough that a black-holed address fails promptly instead of waiting out TCP's
/// retries (minutes).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection for a one-shot operator command. Not the service's pool: a pool that cannot
/// connect reports only that it timed out, and the operator needs the cause (refused, unknown
/// host, authentication). On failure the error line is printed and the exit code returned.
async fn connect(command: &str, settings: &DatabaseSettings) -> Result<PgConnection, ExitCode> {
    let options = db::connect_options(settings).map_err(|error| {
        eprintln!("rooms-sync {command}: {}", one_line(&error.to_string()));
        ExitCode::FAILURE
    })?;
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => {
            let hint = match &error {
                // The database named in DatabaseUrl does not exist.
                sqlx::Error::Database(e) if e.code().as_deref() == Some("3D000") => {
                    " (`rooms-sync migrate` creates it)"
                }
                _ => "",
            };
            eprintln!(
                "rooms-sync {command}: cannot connect to the database: {}{hint}",
                one_line(&error.to_string())
            );
            Err(ExitCode::FAILURE)
        }
        Err(_) => {
            eprintln!(
                "rooms-sync {command}: cannot connect to the database: no answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            );
            Err(ExitCode::FAILURE)
        }
    }
}

/// Prints a failed statement of an operator command as one line and returns exit 1. A missing
/// table or column means the database was never migrated, or by an older binary.
fn database_failure(command: &str, error: &sqlx::Error) -> ExitCode {
    let schema_missing = matches!(
        error,
        sqlx::Error::Database(e) if matches!(e.code().as_deref(), Some("42P01" | "42703"))
    );
    if schema_missing {
        eprintln!(
            "rooms-sync {command}: the database does not have this version's schema ({}); \
             run `rooms-sync migrate`",
            one_line(&error.to_string())
        );
    } else {
        eprintln!(
            "rooms-sync {command}: database error: {}",
            one_line(&error.to_string())
        );
    }
    ExitCode::FAILURE
}

/// `text` on one line, so each failure is one line on stderr.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
