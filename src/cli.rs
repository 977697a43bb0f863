//! The command line (CONTRACT §1): parses arguments, loads the settings once, runs a command and
//! maps the outcome to an exit code (2: invalid configuration, 1: any other failure).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::app::Application;
use crate::config::{self, Loaded, LogFormat};
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Serve => serve(loaded).await,
            Command::Migrate => migrate(&loaded).await,
            Command::Healthcheck => healthcheck(&loaded).await,
            Command::Config | Command::Simulate(_) | Command::Demo(_) => Ok(()),
        }
    });
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
