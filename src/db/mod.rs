//! Postgres: the pool, database creation, migrations and readiness. Every SQL statement of the
//! service lives in this module, grouped by table in its submodules.

pub mod events;
pub mod jobs;
pub mod mailboxes;
pub mod reservations;
pub mod status;
pub mod subscriptions;

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Postgres};

use crate::config::DatabaseSettings;

/// The embedded migrations (`migrations/`), applied by `rooms-sync migrate` and by `serve`
/// unless `AutoMigrate=false`.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// Errors of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DatabaseUrl is not a usable Postgres URL: {0}")]
    Url(#[source] sqlx::Error),
    #[error("cannot create the database: {0}")]
    Create(#[source] sqlx::Error),
    #[error("cannot apply migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}

/// Connection options from the settings: statement timeout and application name are startup
/// parameters, so they cost no extra round trip per connection.
///
/// # Errors
/// When `DatabaseUrl` does not parse.
pub fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, DbError> {
    let options: PgConnectOptions = settings.url.expose_secret().parse().map_err(DbError::Url)?;
    let statement_timeout_ms = settings.statement_timeout.as_millis().to_string();
    Ok(options
        .application_name("rooms-sync")
        .options([("statement_timeout", statement_timeout_ms.as_str())])
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1)))
}

/// A lazily connecting pool: the process starts (and answers `/healthz`) even while Postgres is
/// down; requests that need the database fail fast after the acquire timeout.
///
/// # Errors
/// When `DatabaseUrl` does not parse.
pub fn pool(settings: &DatabaseSettings) -> Result<PgPool, DbError> {
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(0)
        .acquire_timeout(settings.acquire_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_lazy_with(connect_options(settings)?))
}

/// Creates the configured database if it does not exist yet.
///
/// # Errors
/// When the server cannot be reached or the role may not create databases.
pub async fn ensure_database(settings: &DatabaseSettings) -> Result<(), DbError> {
    let url = settings.url.expose_secret();
    if Postgres::database_exists(url)
        .await
        .map_err(DbError::Create)?
    {
        return Ok(());
    }
    match Postgres::create_database(url).await {
        Ok(()) => {
            tracing::info!("created the database named in DatabaseUrl");
            Ok(())
        }
        // Another replica created it between our check and our CREATE.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(()),
        Err(e) => Err(DbError::Create(e)),
    }
}

/// Applies pending migrations; a no-op when all are applied. Concurrent callers serialise on
/// sqlx's advisory lock.
///
/// # Errors
/// When a migration fails or an applied one was changed.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// What `/readyz` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    DatabaseUnreachable,
    MigrationsPending,
}

/// Checks that the database answers and every embedded migration is applied, within `timeout`.
pub async fn readiness(pool: &PgPool, timeout: Duration) -> Readiness {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let check = sqlx::query_scalar::<_, Option<i64>>(
        "select max(version) from _sqlx_migrations where success",
    )
    .fetch_one(pool);
    match tokio::time::timeout(timeout, check).await {
        Ok(Ok(Some(applied))) if applied >= latest => Readiness::Ready,
        Ok(Ok(_)) => Readiness::MigrationsPending,
        // The table is missing: the database answers but was never migrated.
        Ok(Err(sqlx::Error::Database(e))) if e.code().as_deref() == Some("42P01") => {
            Readiness::MigrationsPending
        }
        Ok(Err(_)) | Err(_) => Readiness::DatabaseUnreachable,
    }
}

/// Drops (disconnecting its sessions) and creates the database `name`; for throwaway databases
/// such as the demo's. `name` must be a plain lower-case identifier.
///
/// # Errors
/// When `name` is not a plain identifier, or the role may not drop or create databases.
pub async fn recreate_database(pool: &PgPool, name: &str) -> Result<(), DbError> {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !plain {
        return Err(DbError::Create(sqlx::Error::Protocol(format!(
            "refusing to recreate a database named {name:?}"
        ))));
    }
    sqlx::query(&format!("drop database if exists {name} with (force)"))
        .execute(pool)
        .await
        .map_err(DbError::Create)?;
    sqlx::query(&format!("create database {name}"))
        .execute(pool)
        .await
        .map_err(DbError::Create)?;
    Ok(())
}
