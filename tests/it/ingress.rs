//! The ingress listener of the real daemon: what is reachable before any service
//! exists (routing itself is tested in-process, `src/ingress/proxy.rs`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::Berth;

/// Sends raw bytes and reads until the server closes the connection (or `within`).
fn exchange(addr: SocketAddr, request: &[u8], within: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).expect("connect to the ingress");
    // A connection refused at accept may be reset while this is sent.
    let _ = s.write_all(request);
    read_until_closed(&mut s, within)
}

fn read_until_closed(s: &mut TcpStream, within: Duration) -> (String, bool) {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (String::from_utf8_lossy(&out).into_owned(), false);
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(500)))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), true),
        }
    }
}

fn get(addr: SocketAddr, host: &str, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let (answer, closed) = exchange(addr, req.as_bytes(), Duration::from_secs(30));
    assert!(closed, "no complete answer: {answer}");
    answer
}

#[test]
fn unknown_hosts_get_404_from_the_ingress_beside_the_api() {
    let mut b = Berth::start("");
    let ingress = b.ingress_addr();
    assert_ne!(ingress, b.addr, "the ingress has a listener of its own");

    let answer = get(ingress, "nothing.localhost", "/");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/html"), "{answer}");
    assert!(answer.contains("404 Not Found"), "{answer}");
    // The API is not served on the ingress, whatever the host says.
    let answer = get(ingress, &b.addr.to_string(), "/healthz");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    // A request without a host (HTTP/1.0 allows it) is the client's fault.
    let (answer, _) = exchange(ingress, b"GET / HTTP/1.0\r\n\r\n", Duration::from_secs(30));
    assert!(answer.starts_with("HTTP/1.0 400"), "{answer}");

    assert_eq!(b.client().get("/healthz").status, 200);
    assert!(b.log().contains("ingress listening"), "{}", b.log());
    assert_eq!(b.stop(), Some(0), "both listeners drain on SIGTERM");
    assert!(TcpStream::connect(ingress).is_err(), "the ingress stopped listening");
}

#[test]
fn the_ingress_has_its_own_caps_and_deadlines() {
    // Long enough a head timeout for the third connection to come while the first
    // two are still open, short enough to see it close them.
    let b = Berth::start("[ingress]\nmax_connections_per_address = 2\nhead_timeout_seconds = 3\n");
    let ingress = b.ingress_addr();
    let mut idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(ingress).unwrap()).collect();
    // A third connection from the same address is closed at once, unanswered.
    let (answer, closed) = exchange(ingress, b"GET / HTTP/1.1\r\nHost: a.localhost\r\n\r\n", Duration::from_secs(30));
    assert!(closed && answer.is_empty(), "over the cap: {answer:?}");
    // The API's caps are its own: it answers meanwhile.
    assert_eq!(b.client().get("/healthz").status, 200);
    // The idle connections are closed once they let the head timeout pass...
    for s in &mut idle {
        let (_, closed) = read_until_closed(s, Duration::from_secs(30));
        assert!(closed, "an idle connection outlived head_timeout_seconds");
    }
    // ...and their places are free again.
    let answer = get(ingress, "a.localhost", "/");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}

/// 500 clients trickling their request heads (one header line every 200 ms, from ten
/// loopback addresses) while a normal client asks a live service through the
/// ingress: every normal request is answered, and the trickling connections are cut
/// at the head deadline.
#[test]
fn slow_clients_trickling_headers_do_not_stop_normal_requests() {
    use crate::deployments::{deploy, node_with, project_id, push_web, service, settle, via_ingress};
    use serde_json::json;
    if !crate::runtime::can_run() {
        return;
    }
    const SLOW: usize = 500;
    const HEAD_TIMEOUT: u64 = 6;
    let (node, admin) = node_with("", &format!("[ingress]\nhead_timeout_seconds = {HEAD_TIMEOUT}\n"));
    let project = project_id(&admin, "alpha");
    push_web(&admin, "alpha/web", "v1", "hello from v1\n", true);
    let svc = service(
        &admin,
        json!({"project_id": project, "name": "web", "port": 8080, "health_check": {"path": "/health", "interval_s": 1}}),
    );
    let dep = deploy(&admin, &svc, "alpha/web", "v1");
    assert_eq!(settle(&admin, &dep, 90)["status"], "live");
    let ingress = node.b.ingress_addr();

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let started = Instant::now();
    let slow: Vec<_> = (0..SLOW)
        .map(|i| {
            rt.spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let src = std::net::IpAddr::from([127, 0, 1, 1 + (i % 10) as u8]);
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(src, 0))?;
                let mut s = socket.connect(ingress).await?;
                s.write_all(b"GET / HTTP/1.1\r\nHost: web.alpha.localhost\r\n").await?;
                let mut buf = [0u8; 512];
                // Trickle until the server closes (or a generous deadline passes).
                for n in 0..(HEAD_TIMEOUT * 5 * 4) {
                    let line = format!("X-Slow-{n}: x\r\n");
                    if s.write_all(line.as_bytes()).await.is_err() {
                        return Ok::<_, std::io::Error>(Some(started.elapsed()));
                    }
                    match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => return Ok(Some(started.elapsed())),
                        Ok(Ok(_)) | Err(_) => {}
                    }
                }
                Ok(None)
            })
        })
        .collect();
    // Give the trickle time to build up, then be a normal client meanwhile.
    std::thread::sleep(Duration::from_secs(1));
    let mut latencies = Vec::new();
    let mut ok = 0;
    let total = 200;
    for _ in 0..total {
        let t = Instant::now();
        let answer = via_ingress(&node, "web.alpha.localhost", "/");
        latencies.push(t.elapsed());
        if answer == Some((200, "hello from v1\n".to_string())) {
            ok += 1;
        }
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100 - 1];
    let closed: Vec<Option<Duration>> = slow
        .into_iter()
        .map(|h| rt.block_on(h).unwrap().unwrap_or_else(|e| panic!("a slow client could not connect: {e}")))
        .collect();
    let cut = closed.iter().filter(|c| c.is_some()).count();
    let latest = closed.iter().flatten().max().copied().unwrap_or_default();
    println!(
        "normal client beside {SLOW} slow ones: {ok}/{total} answered 200, p99 {:.1} ms; \
         {cut}/{SLOW} slow connections cut by the server, the last after {:.1} s (head timeout {HEAD_TIMEOUT} s)",
        p99.as_secs_f64() * 1000.0,
        latest.as_secs_f64()
    );
    assert_eq!(ok, total, "every normal request is answered while the slow clients trickle");
    assert!(p99 < Duration::from_secs(HEAD_TIMEOUT), "normal requests did not wait for the slow clients: p99 {p99:?}");
    assert_eq!(cut, SLOW, "every trickling connection is cut at the head deadline");
    assert!(latest < Duration::from_secs(HEAD_TIMEOUT * 3), "slow connections outlived the head deadline: {latest:?}");
    // The service's metrics count what the ingress answered for it (the trickling
    // heads never became requests).
    let m = admin.get(&format!("/v1/services/{svc}/metrics")).json();
    let r = &m["requests"];
    assert_eq!((r["total"].as_u64(), r["status_2xx"].as_u64()), (Some(total as u64), Some(total as u64)), "{m}");
    assert_eq!(r["bytes"].as_u64(), Some(total as u64 * 14), "{m}");
    assert!(r["latency_p99_ms"].as_u64() >= r["latency_p50_ms"].as_u64(), "{m}");
}
