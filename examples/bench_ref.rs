//! The reference server of `bench/api.sh`: the least an HTTP/1.1 server on this
//! stack can do for a request, to measure berth's API against in the same run.
//!
//! ```sh
//! cargo build --release --example bench_ref
//! target/release/examples/bench_ref PORT BODY_FILE
//! ```
//!
//! Listens on `127.0.0.1:PORT` and answers every request with `200`,
//! `Content-Type: application/json` and the bytes of `BODY_FILE`, read once at start
//! and served from memory. It is set up the way berth's API listener is (see
//! `src/http/serve.rs` and `src/main.rs`): the same tokio runtime (one worker per core,
//! at most 4), hyper's HTTP/1.1 server with keep-alive, a head-read deadline and
//! `TCP_NODELAY`, one task per connection; with none of berth's work per request
//! (routing, authentication, rate limiting, the store, JSON). Stops on SIGTERM or
//! SIGINT.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let (Some(port), Some(body_path), None) = (args.next(), args.next(), args.next()) else {
        return Err("usage: bench_ref PORT BODY_FILE".into());
    };
    let port: u16 = port.parse().map_err(|e| format!("bad port {port:?}: {e}"))?;
    let body = Bytes::from(std::fs::read(&body_path).map_err(|e| format!("read {body_path}: {e}"))?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).min(4))
        .build()?;
    runtime.block_on(serve(SocketAddr::from(([127, 0, 0, 1], port)), body))
}

async fn serve(addr: SocketAddr, body: Bytes) -> Result<(), Error> {
    let listener = TcpListener::bind(addr).await.map_err(|e| format!("bind {addr}: {e}"))?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    eprintln!("bench_ref: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                let body = body.clone();
                async move {
                    let response = Response::builder()
                        .header(hyper::header::CONTENT_TYPE, "application/json")
                        .body(Full::new(body));
                    Ok::<_, Infallible>(response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
            // A connection that ends badly (a client reset) is of no interest here.
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
