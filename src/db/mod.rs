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
use sqlx::migrate::{MigrateDatabase, MigrateError, Migrator};
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

/// Connection options from the settings: statement timeout, application name and
/// `synchronous_commit = on` are startup parameters, so they cost no extra round trip per
/// connection. The last is pinned because an acknowledgement promises a durable commit: a
/// server (or database, or role) configured with `synchronous_commit = off` must not quietly
/// turn that promise into "probably".
///
/// # Errors
/// When `DatabaseUrl` does not parse.
pub fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, DbError> {
    let options: PgConnectOptions = settings.url.expose_secret().parse().map_err(DbError::Url)?;
    let statement_timeout_ms = settings.statement_timeout.as_millis().to_string();
    Ok(options
        .application_name("rooms-sync")
        .options([
            ("statement_timeout", statement_timeout_ms.as_str()),
            ("synchronous_commit", "on"),
        ])
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1)))
}

/// A lazily connecting pool: the process starts (and answers `/healthz`) even while Postgres is
/// down; requests that need the database fail fast after the acquire timeout.
///
/// Connections are not pinged when they are handed out (sqlx's `test_before_acquire`): that is
/// a round trip before every statement, and it does not even catch a half-open connection any
/// sooner than the statement's own deadline does. sqlx still checks each one as it comes back.
///
/// # Errors
/// When `DatabaseUrl` does not parse.
pub fn pool(settings: &DatabaseSettings) -> Result<PgPool, DbError> {
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(0)
        .acquire_timeout(settings.acquire_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .test_before_acquire(false)
        .connect_lazy_with(connect_options(settings)?))
}

/// Connection options of the ingest flushers, which keep connections of their own next to
/// `base` (the service's pool, whose server, database and credentials they share), so a busy
/// worker can never make the webhook wait for a connection: `synchronous_commit = on` whatever
/// `base` was built with (tests hand in pools of their own), a server-side
/// `statement_timeout` of `statement_timeout`, so a statement a flusher gave up on does not run
/// on for long, and `plan_cache_mode = force_generic_plan`: the flushers run the same few
/// prepared statements thousands of times a second, whose best plan does not depend on the
/// values in their arrays, so planning them again for each batch is wasted work.
#[must_use]
pub fn ingest_connect_options(base: &PgPool, statement_timeout: Duration) -> PgConnectOptions {
    let statement_timeout_ms = statement_timeout.as_millis().max(1).to_string();
    // Later `-c` options win over earlier ones, so these override what `base` set.
    base.connect_options().as_ref().clone().options([
        ("statement_timeout", statement_timeout_ms.as_str()),
        ("synchronous_commit", "on"),
        ("plan_cache_mode", "force_generic_plan"),
    ])
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

/// Whether the database schema is in place. It opens at once when the process is not to
/// migrate (`AutoMigrate=false`, or a pool handed in already migrated), else when the start-up
/// task has created and migrated the database; what needs the tables answers 503 or waits until
/// then.
#[derive(Debug, Clone)]
pub struct SchemaGate(tokio::sync::watch::Receiver<bool>);

impl SchemaGate {
    /// A gate that is open from the start.
    #[must_use]
    pub fn open() -> Self {
        Self(tokio::sync::watch::channel(true).1)
    }

    /// A closed gate and what opens it (`send_replace(true)`).
    #[must_use]
    pub fn closed() -> (tokio::sync::watch::Sender<bool>, Self) {
        let (opener, gate) = tokio::sync::watch::channel(false);
        (opener, Self(gate))
    }

    #[must_use]
    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until the gate opens: `false` when it never will (its opener is gone: the
    /// preparation failed or the service stopped first).
    pub async fn wait(&self) -> bool {
        self.0.clone().wait_for(|ready| *ready).await.is_ok()
    }
}

/// Whether an error preparing the database (creating it, migrating) may pass by itself: the
/// server is unreachable, starting, shutting down, out of connections or read-only (a standby
/// before its promotion). Anything else (a migration that fails or was changed after it was
/// applied, a role that may not create databases, a wrong password) needs an operator.
#[must_use]
pub fn is_transient(error: &DbError) -> bool {
    let sqlx_error = match error {
        DbError::Url(_) => return false,
        DbError::Create(e) | DbError::Sqlx(e) => e,
        DbError::Migrate(MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _)) => e,
        DbError::Migrate(_) => return false,
    };
    match sqlx_error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(e) => is_transient_sqlstate(e.code().as_deref()),
        _ => false,
    }
}

/// SQLSTATEs of a server that is not able to serve yet: connection exceptions (08), insufficient
/// resources (53), operator intervention (57: shutting down, starting up) and a read-only
/// transaction (25006, a standby).
fn is_transient_sqlstate(code: Option<&str>) -> bool {
    match code {
        Some("25006") => true,
        Some(code) => matches!(code.get(..2), Some("08" | "53" | "57")),
        None => false,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    // A server error of a given SQLSTATE cannot be built outside sqlx: the SQLSTATE rule is
    // checked on its own.
    #[test]
    fn preparing_is_retried_while_the_server_cannot_serve_and_not_for_broken_migrations() {
        assert!(is_transient(&DbError::Sqlx(sqlx::Error::Protocol(
            "connection reset".to_owned()
        ))));
        assert!(is_transient(&DbError::Create(sqlx::Error::PoolTimedOut)));
        assert!(is_transient(&DbError::Migrate(MigrateError::Execute(
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
        ))));
        assert!(!is_transient(&DbError::Migrate(
            MigrateError::VersionMismatch(1)
        )));
        assert!(!is_transient(&DbError::Migrate(MigrateError::Dirty(1))));
        assert!(!is_transient(&DbError::Url(sqlx::Error::Configuration(
            "bad".into()
        ))));
        for code in ["08006", "08001", "53300", "57P03", "57P01", "25006"] {
            assert!(is_transient_sqlstate(Some(code)), "{code}");
        }
        for code in ["42P01", "42501", "28P01", "23505", "XX000"] {
            assert!(!is_transient_sqlstate(Some(code)), "{code}");
        }
        assert!(!is_transient_sqlstate(None));
    }
}
