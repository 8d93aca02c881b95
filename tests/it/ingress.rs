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
