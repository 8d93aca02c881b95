//! The HTTP/1.1 accept loop for the API listener.
//!
//! Hand-rolled over hyper (instead of `axum::serve`) for the limits a public
//! listener needs: a cap on the request head (larger heads get 431), a deadline for
//! reading it (slowloris), and a graceful drain that stops accepting, lets in-flight
//! requests finish, and reports whether they did within the grace period.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

/// Largest request head (request line + headers) accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Time a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `stop` flips, then drains for at most `grace`.
/// Returns false when connections were still busy at the deadline (they are dropped).
pub async fn serve(listener: TcpListener, app: Router, mut stop: watch::Receiver<bool>, grace: Duration) -> bool {
    // Every connection task holds a sender; when all are gone, `recv` yields None.
    let (alive_tx, mut alive_rx) = mpsc::channel::<Infallible>(1);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let mut conn_stop = stop.clone();
        let alive = alive_tx.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                app.clone().oneshot(req)
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(HEAD_TIMEOUT).max_buf_size(MAX_HEAD_BYTES);
            let conn = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = conn_stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(alive);
        });
    }
    drop(listener);
    drop(alive_tx);
    tokio::time::timeout(grace, alive_rx.recv()).await.is_ok()
}
