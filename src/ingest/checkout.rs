//! Each flusher's own database connection, with a client-side deadline on connecting and on
//! each round trip.
//!
//! Not a pool: sqlx pings every connection that goes back to a pool, and the ping of a
//! connection that went half-open (a server gone without a reset) never ends, holding a pool
//! slot for the kernel's TCP timeout (many minutes) however short our own deadlines are. A
//! flusher keeps its connection between batches, and a connection cut off mid-query (its
//! deadline passed, an I/O error, the flusher aborted at shutdown) is dropped on the spot, its
//! socket closed without a word to a server that may not be there; the next batch connects
//! anew.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::time::error::Elapsed;

/// Where the flushers connect, and how long connecting may take.
#[derive(Debug, Clone)]
pub struct Connect {
    pub options: PgConnectOptions,
    pub timeout: Duration,
}

/// Why a batch was not stored.
#[derive(Debug, thiserror::Error)]
pub(super) enum StoreError {
    #[error(transparent)]
    Database(sqlx::Error),
    /// A round trip did not finish in time; its connection was closed.
    #[error("no answer from the database within {0:?}")]
    Deadline(Duration),
}

impl StoreError {
    /// Whether the server refused the statement for what a delivery carried, so that storing the
    /// batch's deliveries one by one can save the others (see [`blames_the_data`]).
    pub(super) fn blames_the_data(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(error)) => {
                blames_the_data(error.code().as_deref())
            }
            Self::Database(_) | Self::Deadline(_) => false,
        }
    }
}

/// Whether a SQLSTATE says the statement failed because of the data it carried: class 22 (a
/// value its type or the encoding cannot hold), 23 (an integrity constraint) or 54 (a program
/// limit, such as an index row too large). Anything else is the state of the server or of the
/// connection (a statement timeout, a standby that is read-only after a failover (25006), too
/// many connections (53300), a shutdown in progress), which every retry would meet again, each
/// after its own wait.
pub(super) fn blames_the_data(sqlstate: Option<&str>) -> bool {
    matches!(
        sqlstate.and_then(|code| code.get(..2)),
        Some("22" | "23" | "54")
    )
}

/// A flusher's connection, in use for one batch.
pub(super) struct Checkout<'a> {
    slot: &'a mut Option<PgConnection>,
    /// A round trip was started and has not ended cleanly.
    mid_query: bool,
}

impl<'a> Checkout<'a> {
    /// The connection in `slot`, connecting first when there is none (within
    /// `connect.timeout`, `DatabaseAcquireTimeoutMs`: sqlx's connect has no deadline of its
    /// own).
    pub(super) async fn take(
        slot: &'a mut Option<PgConnection>,
        connect: &Connect,
    ) -> Result<Self, StoreError> {
        if slot.is_none() {
            match tokio::time::timeout(connect.timeout, connect.options.connect()).await {
                Ok(Ok(conn)) => *slot = Some(conn),
                Ok(Err(error)) => return Err(StoreError::Database(error)),
                Err(_) => return Err(StoreError::Deadline(connect.timeout)),
            }
        }
        Ok(Self {
            slot,
            mid_query: false,
        })
    }

    /// The connection for one round trip, which counts as unfinished until [`Checkout::end`].
    pub(super) fn begin(&mut self) -> Result<&mut PgConnection, StoreError> {
        self.mid_query = true;
        self.slot
            .as_mut()
            .ok_or(StoreError::Database(sqlx::Error::PoolClosed))
    }

    /// The outcome of the round trip begun last, run under `tokio::time::timeout(limit, …)`.
    pub(super) fn end<T>(
        &mut self,
        outcome: Result<Result<T, sqlx::Error>, Elapsed>,
        limit: Duration,
    ) -> Result<T, StoreError> {
        match outcome {
            Ok(Ok(value)) => {
                self.mid_query = false;
                Ok(value)
            }
            // The server answered, so the connection is in a known state.
            Ok(Err(error @ sqlx::Error::Database(_))) => {
                self.mid_query = false;
                Err(StoreError::Database(error))
            }
            // I/O and protocol errors: the connection is not to be trusted again.
            Ok(Err(error)) => Err(StoreError::Database(error)),
            Err(_) => Err(StoreError::Deadline(limit)),
        }
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        if self.mid_query {
            // Dropped, the connection closes its socket; the next batch connects anew.
            drop(self.slot.take());
        }
    }
}

/// Closes a flusher's connection politely, when the flusher stops: bounded, since the server
/// may not answer.
pub(super) async fn close(slot: Option<PgConnection>) {
    if let Some(conn) = slot {
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::blames_the_data;

    #[test]
    fn only_errors_about_the_data_split_a_batch() {
        for data in [
            "22P02", "22021", "22003", "2200N", "23505", "23514", "54000",
        ] {
            assert!(blames_the_data(Some(data)), "{data}");
        }
        for state in [
            "25006", // read-only transaction: a standby after a failover
            "53300", // too many connections
            "53100", // disk full
            "57014", // statement timeout
            "57P01", // administrator shutdown
            "57P03", // cannot connect now
            "08006", // connection failure
            "40001", // serialization failure
            "40P01", // deadlock
            "42P01", // undefined table: a schema out of step, not a delivery
            "XX000",
        ] {
            assert!(!blames_the_data(Some(state)), "{state}");
        }
        assert!(!blames_the_data(None));
        assert!(!blames_the_data(Some("2")));
    }
}
