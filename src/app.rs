//! Wiring and lifecycle: builds the pool and binds the listeners ([`Application::build`], so
//! tests can bind port 0), then runs every long-lived task until the shutdown token is
//! cancelled. Nothing else in the crate spawns long-lived tasks.
//!
//! Building touches no database: `serve` answers `/healthz` and Graph's validation handshake
//! while Postgres is still down. With `AutoMigrate`, a start-up task creates and migrates the
//! database, retrying with back-off while the server cannot serve; until it has, `/readyz` and
//! webhook POSTs answer 503 and the worker waits. A failure that will not pass by itself (a
//! migration that fails) stops the process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{DatabaseSettings, Settings};
use crate::db::{self, SchemaGate};
use crate::http::{self, AppState, server};
use crate::ingest::{Connect, IngestLimits, IngestOptions, Ingestor};
use crate::metrics::{ListenerLabels, Metrics};
use crate::worker::{self, WorkerOptions};

/// First wait before preparing the database again; it doubles up to [`PREPARE_RETRY_CAP`].
const PREPARE_RETRY_FIRST: Duration = Duration::from_millis(250);
const PREPARE_RETRY_CAP: Duration = Duration::from_secs(5);
/// How long creating the database may take: it connects to a server that may not answer at all
/// (a black-holed address), and sqlx's own connect has no deadline.
const CREATE_DEADLINE: Duration = Duration::from_secs(10);
/// The least time the pools get to close after the drain deadline has passed.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// A built, bound, not yet running service.
#[derive(Debug)]
pub struct Application {
    pool: PgPool,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    public: Option<TcpListener>,
    admin: TcpListener,
    worker: WorkerOptions,
    ingest: IngestLimits,
    /// Fired by ingest after each commit; the sync worker waits on it.
    wake: Arc<Notify>,
    schema: SchemaGate,
    /// Opens `schema` once `run` has created and migrated the database (`AutoMigrate`).
    prepare: Option<watch::Sender<bool>>,
}

impl Application {
    /// Builds the (lazily connecting) pool and binds the listeners; touches no database. With
    /// `AutoMigrate` (the default), [`Application::run`] creates the database if needed and
    /// applies the migrations, retrying until the server answers.
    ///
    /// # Errors
    /// When `DatabaseUrl` does not parse or a listener cannot be bound.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = db::pool(&settings.database)?;
        if !settings.database.auto_migrate {
            return Self::build_with_pool(settings, pool).await;
        }
        let (opener, schema) = SchemaGate::closed();
        let mut app = Self::bind(settings, pool, schema).await?;
        app.prepare = Some(opener);
        Ok(app)
    }

    /// Binds the listeners around an existing pool, taken to be migrated (tests hand in a fresh
    /// database's pool).
    ///
    /// # Errors
    /// When a listener cannot be bound.
    pub async fn build_with_pool(settings: Settings, pool: PgPool) -> anyhow::Result<Self> {
        Self::bind(settings, pool, SchemaGate::open()).await
    }

    async fn bind(settings: Settings, pool: PgPool, schema: SchemaGate) -> anyhow::Result<Self> {
        let public = if settings.roles.web {
            let addr = settings.http.listen_address;
            Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot bind ListenAddress {addr}"))?,
            )
        } else {
            None
        };
        let admin_addr = settings.http.admin_listen_address;
        let admin = TcpListener::bind(admin_addr)
            .await
            .with_context(|| format!("cannot bind AdminListenAddress {admin_addr}"))?;
        Ok(Self {
            pool,
            settings: Arc::new(settings),
            metrics: Arc::new(Metrics::new()),
            public,
            admin,
            worker: WorkerOptions::default(),
            ingest: IngestLimits::default(),
            wake: Arc::new(Notify::new()),
            schema,
            prepare: None,
        })
    }

    /// Replaces the worker's internal timing (tests and the demo run Exchange time faster).
    #[must_use]
    pub fn with_worker_options(mut self, options: WorkerOptions) -> Self {
        self.worker = options;
        self
    }

    /// Replaces the ingest path's internal limits (tests shrink or stretch them).
    #[must_use]
    pub fn with_ingest_limits(mut self, limits: IngestLimits) -> Self {
        self.ingest = limits;
        self
    }

    /// The gate that opens once the database is migrated, for callers that use the database
    /// next to the running service (the demo, benchmarks).
    #[must_use]
    pub fn schema(&self) -> SchemaGate {
        self.schema.clone()
    }

    /// The bound public address (`None` when the `web` role is off).
    #[must_use]
    pub fn public_addr(&self) -> Option<SocketAddr> {
        self.public.as_ref().and_then(server::local_addr)
    }

    /// The bound admin address.
    #[must_use]
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        server::local_addr(&self.admin)
    }

    /// Runs until `shutdown` is cancelled, then drains: the listeners stop accepting and finish
    /// their requests within `ShutdownDrainSeconds`, then the worker and ingest stop; ingest has
    /// until the same deadline to commit what it holds, and is then stopped (what it still
    /// holds is answered by nobody: its senders retry).
    ///
    /// # Errors
    /// When the database cannot be prepared for a reason that will not pass by itself.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let settings = Arc::clone(&self.settings);
        // Cancelled with `shutdown`, or by a fatal failure of our own.
        let stopping = shutdown.child_token();
        let options = server::ServeOptions {
            header_read_timeout: settings.http.header_read_timeout,
            drain: settings.http.shutdown_drain,
            max_connections: settings.http.max_connections,
        };
        let prepare = self.prepare.map(|opener| {
            tokio::spawn(prepare_database(
                settings.database.clone(),
                self.pool.clone(),
                opener,
                stopping.clone(),
            ))
        });

        let connect = Connect {
            options: db::ingest_connect_options(
                &self.pool,
                self.ingest
                    .statement_timeout(settings.database.statement_timeout),
            ),
            timeout: settings.database.acquire_timeout,
        };
        let ingest_tasks = TaskTracker::new();
        let ingest_stop = CancellationToken::new();
        let ingestor = Ingestor::start(
            connect,
            IngestOptions {
                ews_unknown_grace: settings.exchange.ews.unknown_subscription_grace,
                limits: self.ingest,
            },
            Arc::clone(&self.metrics),
            // Woken after every commit; the sync worker waits on it (polling stays the
            // fallback across replicas).
            Arc::clone(&self.wake),
            &ingest_tasks,
            ingest_stop.clone(),
        );
        ingest_tasks.close();
        let state = AppState {
            db: self.pool.clone(),
            settings: Arc::clone(&settings),
            metrics: Arc::clone(&self.metrics),
            ingestor: ingestor.clone(),
            schema: self.schema.clone(),
        };

        let listeners = TaskTracker::new();
        let open_connections = |listener| {
            self.metrics
                .http_open_connections
                .get_or_create(&ListenerLabels { listener })
                .clone()
        };
        if let Some(listener) = self.public {
            tracing::info!(
                address = ?server::local_addr(&listener),
                callback_url = %settings.callback_url,
                "public listener up"
            );
            listeners.spawn(server::serve(
                listener,
                http::public_router(state.clone()),
                options,
                open_connections("public"),
                stopping.clone(),
            ));
        }
        tracing::info!(address = ?server::local_addr(&self.admin), "admin listener up");
        listeners.spawn(server::serve(
            self.admin,
            http::admin_router(state),
            options,
            open_connections("admin"),
            stopping.clone(),
        ));
        listeners.close();

        let worker_stop = CancellationToken::new();
        let worker = settings.roles.worker.then(|| {
            let (pool, settings, metrics, options, wake, stop, schema) = (
                self.pool.clone(),
                Arc::clone(&settings),
                Arc::clone(&self.metrics),
                self.worker.clone(),
                Arc::clone(&self.wake),
                worker_stop.clone(),
                self.schema.clone(),
            );
            tokio::spawn(async move {
                // Its loops need the tables: it starts once they are there.
                tokio::select! {
                    ready = schema.wait() => if !ready { return Ok(()) },
                    () = stop.cancelled() => return Ok(()),
                }
                worker::run(pool, settings, metrics, options, wake, stop).await
            })
        });

        let failure = match prepare {
            Some(task) => tokio::select! {
                () = stopping.cancelled() => None,
                outcome = task => match outcome {
                    Ok(Ok(())) => None,
                    Ok(Err(error)) => Some(error),
                    Err(error) => Some(anyhow::anyhow!("preparing the database panicked: {error}")),
                },
            },
            None => None,
        };
        if let Some(error) = &failure {
            tracing::error!(
                error = format!("{error:#}"),
                "cannot prepare the database; stopping"
            );
            stopping.cancel();
        }
        stopping.cancelled().await;
        let deadline = Instant::now() + settings.http.shutdown_drain;
        listeners.wait().await;
        // The listeners have drained, so no handler is left to submit: ingest commits what it
        // still holds while the worker stops (its own drain is bounded).
        ingest_stop.cancel();
        worker_stop.cancel();
        if let Some(worker) = worker {
            match worker.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(%error, "the worker failed"),
                Err(error) => tracing::error!(%error, "the worker panicked"),
            }
        }
        if tokio::time::timeout_at(deadline.into(), ingest_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                drain_ms = settings.http.shutdown_drain.as_millis() as u64,
                "ingest did not drain within ShutdownDrainSeconds; stopping it"
            );
            ingestor.abort();
            ingest_tasks.wait().await;
        }
        // A connection to a server that stopped answering never finishes closing.
        let close_by = deadline.max(Instant::now() + CLOSE_GRACE);
        if tokio::time::timeout_at(close_by.into(), self.pool.close())
            .await
            .is_err()
        {
            tracing::warn!("database connections did not close in time");
        }
        tracing::info!("stopped");
        failure.map_or(Ok(()), Err)
    }
}

/// Creates the database if needed and applies the migrations, retrying with back-off (and
/// jitter, so replicas do not retry in step) while the server cannot serve, then opens the
/// schema gate. Returns early, without error, when `stop` is cancelled.
async fn prepare_database(
    settings: DatabaseSettings,
    pool: PgPool,
    opener: watch::Sender<bool>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut delay = PREPARE_RETRY_FIRST;
    for attempt in 1_u32.. {
        let outcome = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            outcome = prepare_once(&settings, &pool) => outcome,
        };
        let error = match outcome {
            Ok(()) => {
                tracing::info!("database migrations are applied");
                opener.send_replace(true);
                return Ok(());
            }
            Err(error) => error,
        };
        if !error.transient {
            return Err(error.source.into());
        }
        let wait = delay.mul_f64(0.8 + 0.4 * fastrand::f64());
        tracing::warn!(
            error = %error.source,
            attempt,
            retry_in_ms = wait.as_millis() as u64,
            "cannot prepare the database yet; retrying"
        );
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
        delay = (delay * 2).min(PREPARE_RETRY_CAP);
    }
    Ok(())
}

struct PrepareError {
    source: db::DbError,
    transient: bool,
}

async fn prepare_once(settings: &DatabaseSettings, pool: &PgPool) -> Result<(), PrepareError> {
    let failed = |source: db::DbError| PrepareError {
        transient: db::is_transient(&source),
        source,
    };
    match tokio::time::timeout(CREATE_DEADLINE, db::ensure_database(settings)).await {
        Ok(outcome) => outcome.map_err(failed)?,
        Err(_) => {
            return Err(PrepareError {
                source: db::DbError::Create(sqlx::Error::PoolTimedOut),
                transient: true,
            });
        }
    }
    db::migrate(pool).await.map_err(failed)
}
