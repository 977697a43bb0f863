//! Ingest: turns a parsed webhook delivery into stored events and an acknowledgement, committing
//! before anyone is answered.
//!
//! Concurrent deliveries share transactions (group commit): webhook handlers hand their parsed
//! delivery to [`Ingestor::submit`]; each of a few flusher tasks takes everything queued at that
//! moment, plus what handlers add while it yields for a fraction of a millisecond, stores it in
//! one statement and answers every waiting handler after the commit. A lone request on an idle
//! service is committed at once; a loaded service amortises each commit over many requests.

mod cache;
mod decide;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use cache::SubscriptionCache;
pub use decide::{Ack, Delivery};

use crate::db;
use crate::metrics::{EventLabels, Metrics};

/// How many deliveries may wait for a flusher before handlers get 503 straight away (memory
/// bound: each holds one parsed body).
const QUEUE_CAPACITY: usize = 4096;
/// Upper bound of events in one transaction: keeps a single commit well under a few ms.
const MAX_BATCH_EVENTS: usize = 2000;
/// Transactions in flight at once: overlaps one batch's WAL flush with the next one's statement.
const FLUSHERS: usize = 2;
/// How long a flusher holding a partial batch lets concurrent handlers add to it before it
/// writes: at most this long, and only while yielding keeps bringing deliveries. Sub-millisecond
/// and spent yielding (tokio timers tick in milliseconds), so an idle service adds almost
/// nothing to a lone request's latency and a busy one does not spin.
const BATCH_WINDOW: Duration = Duration::from_micros(250);
/// Yield rounds in a row that may bring nothing before the batch is written anyway.
const IDLE_ROUNDS: u32 = 2;
/// A batch this large is written at once, window or not.
const FULL_BATCH_DELIVERIES: usize = 64;

/// Why a delivery was not stored; every case is answered 503 so the sender retries.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the ingest queue is full")]
    Overloaded,
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error("storing the delivery failed: {0}")]
    Database(#[from] sqlx::Error),
    /// The batch this delivery was part of could not be stored (the error is shared by all).
    #[error("storing the batch failed: {0}")]
    Unavailable(String),
}

/// Settings of the ingest path that come from configuration.
#[derive(Debug, Clone, Copy)]
pub struct IngestOptions {
    /// After a Subscribe call, notifications for a SubscriptionId not stored yet are still
    /// answered OK for this long (the first notification can beat the Subscribe response).
    pub ews_unknown_grace: Duration,
}

/// What [`rematch`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rematched {
    pub attached: usize,
    /// Graph items whose `clientState` did not match the subscription's secret.
    pub rejected: usize,
}

/// Attaches the events that arrived before their subscription was recorded (the first
/// notification can beat the create/Subscribe response) to that subscription, checking each
/// Graph item's `clientState` as ingress would have. Call it once the subscription is active.
///
/// # Errors
/// Database errors.
pub async fn rematch(pool: &PgPool, remote_id: &str) -> Result<Rematched, sqlx::Error> {
    let Some(sub) = db::subscriptions::find_by_remote_ids(pool, &[remote_id])
        .await?
        .into_iter()
        .next()
    else {
        return Ok(Rematched::default());
    };
    let events = db::events::unmatched(pool, sub.backend, remote_id).await?;
    let (mut accepted, mut rejected) = (Vec::new(), Vec::new());
    for event in events {
        let genuine = sub.backend != crate::domain::Backend::Graph
            || crate::graph::notification::client_state_matches(
                event.client_state.as_deref(),
                sub.client_state.as_deref().unwrap_or(""),
            );
        if genuine {
            accepted.push(event.id);
        } else {
            rejected.push(event.id);
        }
    }
    if accepted.is_empty() && rejected.is_empty() {
        return Ok(Rematched::default());
    }
    db::events::attach(
        pool,
        sub.id,
        sub.mailbox_id,
        &accepted,
        &rejected,
        crate::domain::RejectReason::ClientStateMismatch,
    )
    .await?;
    Ok(Rematched {
        attached: accepted.len(),
        rejected: rejected.len(),
    })
}

struct Job {
    delivery: Delivery,
    reply: oneshot::Sender<Result<Ack, IngestError>>,
}

/// The handle webhook handlers submit deliveries to. Cheap to clone.
#[derive(Clone)]
pub struct Ingestor {
    queue: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Ingestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingestor")
            .field("queued", &(QUEUE_CAPACITY - self.queue.capacity()))
            .finish()
    }
}

impl Ingestor {
    /// Starts the flusher tasks on `tasks`; they stop once `shutdown` is cancelled and the queue
    /// is drained, so every accepted delivery is answered.
    pub fn start(
        pool: PgPool,
        options: IngestOptions,
        metrics: Arc<Metrics>,
        wake_worker: Arc<Notify>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let receiver = Arc::new(Mutex::new(receiver));
        let cache = Arc::new(SubscriptionCache::default());
        for _ in 0..FLUSHERS {
            let flusher = Flusher {
                pool: pool.clone(),
                cache: Arc::clone(&cache),
                options,
                metrics: Arc::clone(&metrics),
                wake_worker: Arc::clone(&wake_worker),
            };
            tasks.spawn(flusher.run(Arc::clone(&receiver), shutdown.clone()));
        }
        Self { queue }
    }

    /// Stores `delivery` and returns the acknowledgement to send, only after the commit.
    ///
    /// # Errors
    /// When the delivery could not be committed: the caller must answer 503.
    pub async fn submit(&self, delivery: Delivery) -> Result<Ack, IngestError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Job { delivery, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => IngestError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => IngestError::ShuttingDown,
            })?;
        answer.await.unwrap_or(Err(IngestError::ShuttingDown))
    }
}

struct Flusher {
    pool: PgPool,
    cache: Arc<SubscriptionCache>,
    options: IngestOptions,
    metrics: Arc<Metrics>,
    wake_worker: Arc<Notify>,
}

impl Flusher {
    async fn run(self, receiver: Arc<Mutex<mpsc::Receiver<Job>>>, shutdown: CancellationToken) {
        loop {
            let batch = {
                let mut receiver = receiver.lock().await;
                let first = tokio::select! {
                    biased;
                    job = receiver.recv() => job,
                    () = shutdown.cancelled() => {
                        // Answer what is already queued, then stop taking more.
                        receiver.close();
                        receiver.recv().await
                    }
                };
                let Some(first) = first else { return };
                let mut events = first.delivery.event_count();
                let mut batch = vec![first];
                let opened = std::time::Instant::now();
                let mut idle_rounds = 0;
                loop {
                    let before = batch.len();
                    while events < MAX_BATCH_EVENTS {
                        match receiver.try_recv() {
                            Ok(job) => {
                                events += job.delivery.event_count();
                                batch.push(job);
                            }
                            Err(_) => break,
                        }
                    }
                    idle_rounds = if batch.len() == before {
                        idle_rounds + 1
                    } else {
                        0
                    };
                    if events >= MAX_BATCH_EVENTS
                        || batch.len() >= FULL_BATCH_DELIVERIES
                        || idle_rounds > IDLE_ROUNDS
                        || opened.elapsed() >= BATCH_WINDOW
                    {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                batch
            };
            self.flush(batch).await;
        }
    }

    /// Commits a batch and answers its handlers. A failed batch is retried one delivery per
    /// transaction, so that one delivery the database refuses cannot fail its neighbours.
    async fn flush(&self, batch: Vec<Job>) {
        let deliveries: Vec<&Delivery> = batch.iter().map(|j| &j.delivery).collect();
        match self.store(&deliveries).await {
            Ok(acks) => self.answer(batch, acks),
            // Only an error the server raised for this statement can be one delivery's fault;
            // a dead connection or a pool timeout would just fail every retry again, slowly.
            Err(error @ sqlx::Error::Database(_)) if batch.len() > 1 => {
                tracing::warn!(%error, size = batch.len(), "batch not stored; retrying its deliveries one by one");
                for job in batch {
                    let result = self.store(&[&job.delivery]).await;
                    match result {
                        Ok(acks) => self.answer(vec![job], acks),
                        Err(error) => Self::refuse(job, error),
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, size = batch.len(), "batch not stored; the senders will retry");
                for job in batch {
                    let _ = job
                        .reply
                        .send(Err(IngestError::Unavailable(error.to_string())));
                }
            }
        }
    }

    /// The handler answers 503 and logs the error (once, as every 5xx).
    fn refuse(job: Job, error: sqlx::Error) {
        let _ = job.reply.send(Err(IngestError::Database(error)));
    }

    fn answer(&self, batch: Vec<Job>, acks: Vec<Ack>) {
        // Wake the worker in-process: a NOTIFY inside the commit would serialise all commits.
        self.wake_worker.notify_one();
        for (job, ack) in batch.into_iter().zip(acks) {
            // The handler may have given up (client gone): the data is committed either way.
            let _ = job.reply.send(Ok(ack));
        }
    }

    /// One statement (one transaction) for all `deliveries`; returns their acknowledgements
    /// in order.
    async fn store(&self, deliveries: &[&Delivery]) -> Result<Vec<Ack>, sqlx::Error> {
        let started = std::time::Instant::now();
        let lookup = decide::lookup(&self.pool, &self.cache, deliveries, self.options).await?;
        let plan = decide::plan(deliveries, &lookup);
        let stored = db::events::store_batch(
            &self.pool,
            &plan.events,
            &plan.ews_updates,
            &plan.graph_touched,
        )
        .await?;
        self.metrics
            .ingest_commit_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .ingest_batch_deliveries
            .observe(deliveries.len() as f64);
        for (backend, kind) in stored {
            self.metrics
                .events_received
                .get_or_create(&EventLabels {
                    backend: backend.as_str(),
                    kind,
                })
                .inc();
        }
        Ok(plan.acks)
    }
}
