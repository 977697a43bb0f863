//! Wiring and lifecycle: builds the pool and binds the listeners ([`Application::build`], so
//! tests can bind port 0), then runs every long-lived task until the shutdown token is
//! cancelled. Nothing else in the crate spawns long-lived tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::db;
use crate::http::{self, AppState, server};
use crate::ingest::{Connect, IngestLimits, IngestOptions, Ingestor};
use crate::metrics::{ListenerLabels, Metrics};
use crate::worker::{self, WorkerOptions};

/// The least time the pool gets to close after the drain deadline has passed.
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
}

impl Application {
    /// Creates the database if needed and applies migrations (unless `AutoMigrate=false`), then
    /// binds the listeners.
    ///
    /// # Errors
    /// When the database cannot be prepared or a listener cannot be bound.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = db::pool(&settings.database)?;
        if settings.database.auto_migrate {
            db::ensure_database(&settings.database).await?;
            db::migrate(&pool).await?;
            tracing::info!("database migrations are applied");
        }
        Self::build_with_pool(settings, pool).await
    }

    /// Binds the listeners around an existing pool (tests hand in a fresh database's pool).
    ///
    /// # Errors
    /// When a listener cannot be bound.
    pub async fn build_with_pool(settings: Settings, pool: PgPool) -> anyhow::Result<Self> {
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
    /// None yet; the signature leaves room for tasks that can fail.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let settings = Arc::clone(&self.settings);
        let options = server::ServeOptions {
            header_read_timeout: settings.http.header_read_timeout,
            drain: settings.http.shutdown_drain,
            max_connections: settings.http.max_connections,
        };
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
                shutdown.clone(),
            ));
        }
        tracing::info!(address = ?server::local_addr(&self.admin), "admin listener up");
        listeners.spawn(server::serve(
            self.admin,
            http::admin_router(state),
            options,
            open_connections("admin"),
            shutdown.clone(),
        ));
        listeners.close();

        let worker_stop = CancellationToken::new();
        let worker = settings.roles.worker.then(|| {
            tokio::spawn(worker::run(
                self.pool.clone(),
                Arc::clone(&settings),
                Arc::clone(&self.metrics),
                self.worker.clone(),
                Arc::clone(&self.wake),
                worker_stop.clone(),
            ))
        });
        shutdown.cancelled().await;
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
        Ok(())
    }
}
