//! The accept loop behind both listeners: hyper's HTTP/1.1 server with a header-read timeout
//! (axum's own `serve` installs none, so a slowloris client could hold a connection forever),
//! a cap on open connections, the peer address handed to handlers, and a bounded graceful drain
//! on cancellation.
//!
//! The cap is a semaphore taken before `accept`: at the cap the loop stops accepting, so further
//! connections wait in the kernel's accept queue (and past its backlog are refused) instead of
//! each costing a file descriptor and a task. The header-read timeout also runs while a
//! keep-alive connection waits for its next request, so idle and slow clients give their slot
//! back within `HeaderReadTimeoutSeconds`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    pub header_read_timeout: Duration,
    /// How long open connections may finish their requests after cancellation.
    pub drain: Duration,
    /// Connections held open at once (`HttpMaxConnections`).
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting and waits
/// up to `options.drain` for in-flight requests. `open_connections` follows the number of
/// connections held.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    open_connections: Gauge,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let mut at_capacity = false;
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);

    loop {
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => {
                at_capacity = false;
                slot
            }
            Err(_) => {
                if !at_capacity {
                    // Once per episode: a flood of these lines would be its own problem.
                    tracing::warn!(
                        max_connections = options.max_connections,
                        "connection cap reached; new connections wait in the accept queue"
                    );
                    at_capacity = true;
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        // The semaphore is never closed.
                        Err(_) => break,
                    },
                }
            }
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    }
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            async move {
                Ok::<_, Infallible>(
                    router
                        .oneshot(request)
                        .await
                        .unwrap_or_else(|never| match never {}),
                )
            }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let open = open_connections.clone();
        open.inc();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            open.dec();
            // The slot is free again once the connection (and its file descriptor) is gone.
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(options.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            drain_ms = options.drain.as_millis() as u64,
            "drain deadline passed with connections still open"
        );
    }
}

/// The address a listener is bound to, for logs.
#[must_use]
pub fn local_addr(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
