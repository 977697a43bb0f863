//! Ingest: turns a parsed webhook delivery into stored events and an acknowledgement, committing
//! before anyone is answered.
//!
//! Concurrent deliveries share transactions (group commit): webhook handlers hand their parsed
//! delivery to [`Ingestor::submit`]; each of a few flusher tasks takes what is queued at that
//! moment (at most 64 deliveries), plus what handlers add while it yields for a
//! fraction of a millisecond, stores it in one statement and answers every waiting handler after
//! the commit. A lone request on an idle service is committed at once; a loaded service
//! amortises each commit over many requests.
//!
//! Under stress: the queue is bounded by deliveries and by body bytes ([`IngestLimits`]), and a
//! full queue is answered 503 at once; every database round trip of a flusher has a client-side
//! deadline, and a handler waits for its commit only until the webhook deadline; a failed batch
//! is retried delivery by delivery only when the database blamed the data; a flusher that panics
//! is restarted.

mod cache;
mod chains;
mod checkout;
mod decide;
mod stamps;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};
use tokio::sync::{Mutex, Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use cache::SubscriptionCache;
use chains::ChainMemory;
pub use checkout::Connect;
use checkout::{Checkout, StoreError};
pub use decide::{Ack, Delivery};
use stamps::StampMemory;

use crate::db;
use crate::metrics::{DeadlineLabels, EventLabels, Metrics};

/// How many deliveries may wait for a flusher before handlers get 503 straight away.
const QUEUE_CAPACITY: usize = 4096;
/// Upper bound of events in one transaction: keeps a single commit well under a few ms.
const MAX_BATCH_EVENTS: usize = 2000;
/// Transactions in flight at once: overlaps one batch's WAL flush with the next one's statement.
/// Each flusher has a database connection of its own.
const FLUSHERS: usize = 2;
/// How long a flusher holding a partial batch lets concurrent handlers add to it before it
/// writes: at most this long, and only while yielding keeps bringing deliveries. Sub-millisecond
/// and spent yielding (tokio timers tick in milliseconds), so an idle service adds almost
/// nothing to a lone request's latency and a busy one does not spin.
const BATCH_WINDOW: Duration = Duration::from_micros(250);
/// Yield rounds in a row that may bring nothing before the batch is written anyway.
const IDLE_ROUNDS: u32 = 2;
/// A batch this large is written at once, window or not; also the most deliveries a flusher
/// takes from a backlog for one transaction.
const FULL_BATCH_DELIVERIES: usize = 64;
/// How long a flusher that panicked waits before it runs again: a bug that panics on every batch
/// must not spin.
const RESTART_DELAY: Duration = Duration::from_millis(100);

/// Why a delivery was not stored; every case is answered 503 so the sender retries.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No room for the delivery in the queue (by count or by bytes).
    #[error("the ingest queue is full")]
    Overloaded,
    #[error("the service is shutting down")]
    ShuttingDown,
    /// The database refused this delivery's data (it was retried on its own).
    #[error("the database refused the delivery: {0}")]
    Rejected(sqlx::Error),
    /// The batch this delivery was part of could not be stored (the error is shared by all).
    #[error("storing the batch failed: {0}")]
    Unavailable(String),
    /// Not committed within the webhook deadline; it may still be (a retry is deduplicated).
    #[error("not committed within {0:?}")]
    Deadline(Duration),
    /// The flusher holding the delivery stopped (it panicked, or shutdown ran out of time).
    #[error("the delivery was dropped before it was stored")]
    Lost,
}

/// Limits of the ingest path. The defaults are production's; tests shrink or stretch them
/// without configuration keys.
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    /// Client-side deadline of each database round trip of a flusher (connecting has its own,
    /// `DatabaseAcquireTimeoutMs`). Without it a half-open connection (a server
    /// that vanished without a reset) holds a flusher for the kernel's TCP timeout, minutes.
    pub round_trip: Duration,
    /// How long a webhook waits for its delivery's commit, counted from when its handler
    /// started, before it answers 503: under the 3 s after which Graph counts a notification
    /// as failed.
    pub commit_deadline: Duration,
    /// Body bytes of the deliveries being uploaded, queued or being stored at once (each
    /// counts its request body's bytes received so far). Past it, webhooks are answered 503 at
    /// once.
    pub queue_bytes: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            round_trip: Duration::from_secs(2),
            commit_deadline: Duration::from_millis(2500),
            queue_bytes: 64 << 20,
        }
    }
}

impl IngestLimits {
    /// The server-side `statement_timeout` of the ingest connections: a little over the client's
    /// own deadline, so a statement the flusher gave up on stops soon after, but never more
    /// than `configured` (`DatabaseStatementTimeoutSeconds`).
    #[must_use]
    pub fn statement_timeout(&self, configured: Duration) -> Duration {
        configured.min(self.round_trip + Duration::from_secs(1))
    }
}

/// Settings of the ingest path.
#[derive(Debug, Clone, Copy)]
pub struct IngestOptions {
    /// After a Subscribe call, notifications for a SubscriptionId not stored yet are still
    /// answered OK for this long (the first notification can beat the Subscribe response).
    pub ews_unknown_grace: Duration,
    pub limits: IngestLimits,
}

/// Room in the ingest queue for one delivery's body bytes, from [`Ingestor::reserve`] (and
/// [`Ingestor::grow`] while the body arrives); given back when the delivery has been answered
/// (or refused, or its upload broke off).
#[derive(Debug)]
pub struct Reservation {
    permit: OwnedSemaphorePermit,
}

/// Locks one of the flushers' memories of what they committed (`chains`, `stamps`). They hold
/// hints only, each deciding no more than whether the database is asked, so one left
/// half-written by a panic is still safe to read.
fn lock_hints<T>(hints: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    hints
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The SQLSTATE of an error the server raised.
fn sqlstate(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(error) => error.code().map(std::borrow::Cow::into_owned),
        _ => None,
    }
}

/// The `kind` label of a stored event: the kind itself when this code knows it, else `other`.
fn kind_label(kind: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        // EWS
        "copied",
        "created",
        "deleted",
        "modified",
        "moved",
        "new_mail",
        "status",
        "free_busy_changed",
        // Graph (created and deleted are above)
        "updated",
        "reauthorization_required",
        "subscription_removed",
        "missed",
    ];
    KNOWN
        .iter()
        .find(|known| **known == kind)
        .copied()
        .unwrap_or("other")
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
    /// Dropped with the job, once it has been answered.
    _reservation: Reservation,
}

/// The handle webhook handlers submit deliveries to. Cheap to clone.
#[derive(Clone)]
pub struct Ingestor {
    queue: mpsc::Sender<Job>,
    bytes: Arc<Semaphore>,
    limits: IngestLimits,
    metrics: Arc<Metrics>,
    /// Stops the flushers at once, dropping what they hold.
    abort: CancellationToken,
    /// Batches that make a flusher panic, for the tests of the restart.
    #[cfg(test)]
    panics: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for Ingestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingestor")
            .field("queued", &(QUEUE_CAPACITY - self.queue.capacity()))
            .field(
                "queued_bytes",
                &(self.limits.queue_bytes - self.bytes.available_permits()),
            )
            .finish_non_exhaustive()
    }
}

impl Ingestor {
    /// Starts the flusher tasks on `tasks`, each storing on a connection of its own made with
    /// `connect` (see [`db::ingest_connect_options`]); they stop once `shutdown` is cancelled
    /// and the queue is drained, so every accepted delivery is answered (unless
    /// [`Ingestor::abort`] stops them first).
    pub fn start(
        connect: Connect,
        options: IngestOptions,
        metrics: Arc<Metrics>,
        wake_worker: Arc<Notify>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let receiver = Arc::new(Mutex::new(receiver));
        let cache = Arc::new(SubscriptionCache::default());
        let chains = Arc::new(ChainMemory::default());
        let stamps = Arc::new(StampMemory::default());
        let abort = CancellationToken::new();
        #[cfg(test)]
        let panics = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..FLUSHERS {
            let flusher = Arc::new(Flusher {
                connect: connect.clone(),
                cache: Arc::clone(&cache),
                chains: Arc::clone(&chains),
                stamps: Arc::clone(&stamps),
                options,
                metrics: Arc::clone(&metrics),
                wake_worker: Arc::clone(&wake_worker),
                #[cfg(test)]
                panics: Arc::clone(&panics),
            });
            tasks.spawn(supervise(
                flusher,
                Arc::clone(&receiver),
                shutdown.clone(),
                abort.clone(),
            ));
        }
        // Reservations are taken in `u32` permits.
        let most = Semaphore::MAX_PERMITS.min(usize::try_from(u32::MAX).unwrap_or(usize::MAX));
        let queue_bytes = options.limits.queue_bytes.clamp(1, most);
        Self {
            queue,
            bytes: Arc::new(Semaphore::new(queue_bytes)),
            limits: IngestLimits {
                queue_bytes,
                ..options.limits
            },
            metrics,
            abort,
            #[cfg(test)]
            panics,
        }
    }

    /// Reserves room for a delivery whose request body is `body_bytes` long (so far: the
    /// webhook starts with nothing and grows the reservation as the body arrives). A body
    /// larger than the whole budget counts as the whole budget, so it still gets in when the
    /// queue is empty.
    ///
    /// # Errors
    /// [`IngestError::Overloaded`] when the queue's bytes are taken: the caller answers 503.
    pub fn reserve(&self, body_bytes: usize) -> Result<Reservation, IngestError> {
        let permits = self.permits_for(body_bytes)?;
        Arc::clone(&self.bytes)
            .try_acquire_many_owned(permits)
            .map(|permit| Reservation { permit })
            .map_err(|_| IngestError::Overloaded)
    }

    /// Grows `reservation` to cover `body_bytes`, as a body arrives: bytes being uploaded
    /// count against the same budget as bytes waiting for their commit. Capped at the whole
    /// budget, as in [`Self::reserve`].
    ///
    /// # Errors
    /// [`IngestError::Overloaded`] when the queue's bytes are taken: the caller answers 503.
    pub fn grow(
        &self,
        reservation: &mut Reservation,
        body_bytes: usize,
    ) -> Result<(), IngestError> {
        let wanted = self.permits_for(body_bytes)?;
        let held = u32::try_from(reservation.permit.num_permits()).unwrap_or(u32::MAX);
        let more = wanted.saturating_sub(held);
        if more == 0 {
            return Ok(());
        }
        let permit = Arc::clone(&self.bytes)
            .try_acquire_many_owned(more)
            .map_err(|_| IngestError::Overloaded)?;
        reservation.permit.merge(permit);
        Ok(())
    }

    /// The permits standing for a body of `body_bytes`: at least one, at most the whole budget.
    fn permits_for(&self, body_bytes: usize) -> Result<u32, IngestError> {
        u32::try_from(body_bytes.clamp(1, self.limits.queue_bytes))
            .map_err(|_| IngestError::Overloaded)
    }

    /// Stores `delivery` and returns the acknowledgement to send, only after the commit.
    /// `started` is when the request's handler started: the webhook deadline counts from it.
    ///
    /// # Errors
    /// When the delivery could not be committed in time: the caller must answer 503.
    pub async fn submit(
        &self,
        delivery: Delivery,
        reservation: Reservation,
        started: Instant,
    ) -> Result<Ack, IngestError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Job {
                delivery,
                reply,
                _reservation: reservation,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => IngestError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => IngestError::ShuttingDown,
            })?;
        let deadline = started + self.limits.commit_deadline;
        match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(Ok(result)) => result,
            // The flusher dropped the job without answering: it panicked or was aborted.
            Ok(Err(_)) => Err(IngestError::Lost),
            Err(_) => {
                self.metrics
                    .ingest_deadlines
                    .get_or_create(&DeadlineLabels { stage: "webhook" })
                    .inc();
                Err(IngestError::Deadline(self.limits.commit_deadline))
            }
        }
    }

    /// Stops the flushers now: for a shutdown whose drain has run out. What they hold is
    /// dropped, unanswered (and, if it was mid-commit, maybe stored: a retry is deduplicated).
    pub fn abort(&self) {
        self.abort.cancel();
    }

    /// Makes the next `batches` batches panic their flusher.
    #[cfg(test)]
    fn panic_on_next(&self, batches: usize) {
        self.panics
            .store(batches, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Runs `flusher` until it returns (shutdown, queue drained) or `abort` fires, and runs it again
/// after a panic: without this a panic would leave the queue to the other flushers, or to none,
/// and every webhook would be answered "shutting down" while the process looked healthy.
async fn supervise(
    flusher: Arc<Flusher>,
    receiver: Arc<Mutex<mpsc::Receiver<Job>>>,
    shutdown: CancellationToken,
    abort: CancellationToken,
) {
    loop {
        let mut run =
            tokio::spawn(Arc::clone(&flusher).run(Arc::clone(&receiver), shutdown.clone()));
        let outcome = tokio::select! {
            outcome = &mut run => outcome,
            () = abort.cancelled() => {
                run.abort();
                let _ = run.await;
                return;
            }
        };
        match outcome {
            Ok(()) => return,
            Err(error) => {
                // The batch it held was dropped: those handlers answer 503 and the senders retry.
                tracing::error!(%error, "an ingest flusher failed; restarting it");
                flusher.metrics.ingest_flusher_restarts.inc();
                tokio::select! {
                    () = abort.cancelled() => return,
                    () = tokio::time::sleep(RESTART_DELAY) => {}
                }
            }
        }
    }
}

struct Flusher {
    connect: Connect,
    cache: Arc<SubscriptionCache>,
    chains: Arc<ChainMemory>,
    stamps: Arc<StampMemory>,
    options: IngestOptions,
    metrics: Arc<Metrics>,
    wake_worker: Arc<Notify>,
    #[cfg(test)]
    panics: Arc<std::sync::atomic::AtomicUsize>,
}

impl Flusher {
    async fn run(
        self: Arc<Self>,
        receiver: Arc<Mutex<mpsc::Receiver<Job>>>,
        shutdown: CancellationToken,
    ) {
        // Kept from batch to batch; dropped (and made anew) when a round trip goes wrong.
        let mut conn: Option<PgConnection> = None;
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
                let Some(first) = first else { break };
                let mut events = first.delivery.event_count();
                let mut batch = vec![first];
                let opened = Instant::now();
                let mut idle_rounds = 0;
                loop {
                    let before = batch.len();
                    // A backlog is taken in batches of the usual size too: a larger one would
                    // hold more handlers on one commit and make its statement slower.
                    while events < MAX_BATCH_EVENTS && batch.len() < FULL_BATCH_DELIVERIES {
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
            self.flush(&mut conn, batch).await;
        }
        checkout::close(conn).await;
    }

    /// Commits a batch and answers its handlers. A batch the database refused because of its
    /// data is retried one delivery per transaction, so that one delivery the database refuses
    /// cannot fail its neighbours; any other failure answers the whole batch at once.
    async fn flush(&self, conn: &mut Option<PgConnection>, batch: Vec<Job>) {
        #[cfg(test)]
        if self
            .panics
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok()
        {
            panic!("a test made this flusher panic");
        }
        let deliveries: Vec<&Delivery> = batch.iter().map(|j| &j.delivery).collect();
        match self.store(conn, &deliveries).await {
            Ok(acks) => self.answer(batch, acks),
            Err(error) if batch.len() > 1 && error.blames_the_data() => {
                tracing::warn!(%error, size = batch.len(), "batch refused; retrying its deliveries one by one");
                let mut jobs = batch.into_iter();
                while let Some(job) = jobs.next() {
                    match self.store(conn, &[&job.delivery]).await {
                        Ok(acks) => self.answer(vec![job], acks),
                        Err(StoreError::Database(error))
                            if checkout::blames_the_data(sqlstate(&error).as_deref()) =>
                        {
                            let _ = job.reply.send(Err(IngestError::Rejected(error)));
                        }
                        Err(error) => {
                            // The database itself failed meanwhile: the rest would only fail
                            // again, each after its own wait.
                            tracing::warn!(%error, "database failed while retrying a batch; the senders will retry");
                            Self::unavailable(std::iter::once(job).chain(jobs.by_ref()), &error);
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, size = batch.len(), "batch not stored; the senders will retry");
                Self::unavailable(batch, &error);
            }
        }
    }

    fn unavailable(jobs: impl IntoIterator<Item = Job>, error: &StoreError) {
        let reason = error.to_string();
        for job in jobs {
            let _ = job
                .reply
                .send(Err(IngestError::Unavailable(reason.clone())));
        }
    }

    fn answer(&self, batch: Vec<Job>, acks: Vec<Ack>) {
        // Wake the worker in-process: a NOTIFY inside the commit would serialise all commits.
        self.wake_worker.notify_one();
        for (job, ack) in batch.into_iter().zip(acks) {
            // The handler may have given up (client gone, deadline): the data is committed
            // either way.
            let _ = job.reply.send(Ok(ack));
        }
    }

    /// One statement (one transaction) for all `deliveries`, on the flusher's connection;
    /// returns their acknowledgements in order.
    async fn store(
        &self,
        conn: &mut Option<PgConnection>,
        deliveries: &[&Delivery],
    ) -> Result<Vec<Ack>, StoreError> {
        let outcome = self.store_on(conn, deliveries).await;
        if let Err(StoreError::Deadline(_)) = outcome {
            self.metrics
                .ingest_deadlines
                .get_or_create(&DeadlineLabels { stage: "database" })
                .inc();
        }
        outcome
    }

    async fn store_on(
        &self,
        conn: &mut Option<PgConnection>,
        deliveries: &[&Delivery],
    ) -> Result<Vec<Ack>, StoreError> {
        let started = Instant::now();
        let limit = self.options.limits.round_trip;
        let mut conn = Checkout::take(conn, &self.connect).await?;
        let lookup = decide::lookup(&mut conn, &self.cache, deliveries, self.options).await?;
        let plan = decide::plan(deliveries, &lookup);
        let now = Instant::now();
        let ews = self.chains.to_send(&plan.ews_updates, now);
        let stamps = self.stamps.due(&plan.graph_touched, now);
        let outcome = tokio::time::timeout(
            limit,
            db::events::retire_lapsed_keys(conn.begin()?, &plan.events),
        )
        .await;
        conn.end(outcome, limit)?;
        let outcome = tokio::time::timeout(
            limit,
            db::events::insert_batch(conn.begin()?, &plan.events, &ews, &stamps),
        )
        .await;
        let stored = conn.end(outcome, limit)?;
        drop(conn);
        self.chains.committed(&plan.ews_updates, &ews, now);
        self.stamps.committed(&stamps, now);
        self.metrics
            .ingest_commit_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .ingest_batch_deliveries
            .observe(deliveries.len() as f64);
        for (backend, kind, count) in stored {
            self.metrics
                .events_received
                .get_or_create(&EventLabels {
                    backend: backend.as_str(),
                    kind: kind_label(&kind),
                })
                .inc_by(u64::try_from(count).unwrap_or(0));
        }
        Ok(plan.acks)
    }
}

#[cfg(test)]
mod tests;
