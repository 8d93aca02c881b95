//! Health probes of one replica: an HTTP GET of the check's path on the replica's
//! port, a command run inside the replica, or (without a check) a TCP connect.
//!
//! A probe answers [`Probe::Pass`], [`Probe::Fail`] (the replica answered and said
//! no: an HTTP status outside 2xx/3xx, a timeout, a command that exited non-zero)
//! or [`Probe::NotReady`] (nothing listens on the port yet). During a rollout only
//! failures count towards the failure threshold, so a server that takes a while to
//! open its port is waited for (up to the rollout's deadline) rather than failed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Engine;
use super::service::HealthCheck;

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Pass,
    /// The port does not accept connections (yet).
    NotReady(String),
    Fail(String),
}

/// Longest status line and headers read from a health endpoint.
const MAX_HEAD: usize = 8 * 1024;

/// Probes a replica at `addr` by `check`.
pub async fn probe(engine: &Arc<Engine>, replica_id: &str, addr: SocketAddr, host: &str, check: &HealthCheck) -> Probe {
    let timeout = Duration::from_secs(u64::from(check.timeout_s.max(1)));
    if let Some(cmd) = &check.command {
        return command(engine, replica_id, cmd, timeout).await;
    }
    match &check.path {
        Some(path) => http(addr, host, path, timeout).await,
        None => tcp(addr, timeout).await,
    }
}

/// A TCP connect to the port.
pub async fn tcp(addr: SocketAddr, timeout: Duration) -> Probe {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Probe::Pass,
        Ok(Err(e)) => Probe::NotReady(format!("connect to {addr}: {e}")),
        Err(_) => Probe::Fail(format!("connect to {addr} took over {} s", timeout.as_secs())),
    }
}

/// `GET path` with `Host: host`; a 2xx or 3xx status passes.
pub async fn http(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> Probe {
    let attempt = async {
        let mut s = match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => return Probe::NotReady(format!("connect to {addr}: {e}")),
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: berth-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        if let Err(e) = s.write_all(req.as_bytes()).await {
            return Probe::Fail(format!("GET {path}: {e}"));
        }
        let mut head = Vec::with_capacity(512);
        let mut buf = [0u8; 1024];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < MAX_HEAD {
            match s.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
                Err(e) => return Probe::Fail(format!("GET {path}: {e}")),
            }
        }
        let line = String::from_utf8_lossy(&head);
        let line = line.lines().next().unwrap_or_default();
        match line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()) {
            Some(code) if (200..400).contains(&code) => Probe::Pass,
            Some(code) => Probe::Fail(format!("GET {path} answered {code}")),
            None => Probe::Fail(format!("GET {path} got no HTTP status line")),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(p) => p,
        Err(_) => Probe::Fail(format!("GET {path} took over {} s", timeout.as_secs())),
    }
}

/// Runs `cmd` inside the replica; exit 0 passes.
pub async fn command(engine: &Arc<Engine>, replica_id: &str, cmd: &[String], timeout: Duration) -> Probe {
    let spec = crate::runtime::exec::ExecSpec { args: cmd.to_vec(), ..Default::default() };
    let exec = match engine.exec(replica_id, spec).await {
        Ok(e) => e,
        Err(e) => return Probe::Fail(format!("run {:?}: {e}", cmd.first().map(String::as_str).unwrap_or(""))),
    };
    let waited = tokio::task::spawn_blocking(move || {
        let mut exec = exec;
        drop(exec.child.stdin.take());
        let deadline = Instant::now() + timeout;
        loop {
            match exec.child.try_wait() {
                Ok(Some(status)) => return Some(status.code()),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = exec.child.kill();
                    let _ = exec.child.wait();
                    return None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => return Some(None),
            }
        }
    })
    .await;
    match waited {
        Ok(Some(Some(0))) => Probe::Pass,
        Ok(Some(Some(code))) => Probe::Fail(format!("the health command exited {code}")),
        Ok(Some(None)) => Probe::Fail("the health command was killed".into()),
        Ok(None) => Probe::Fail(format!("the health command took over {} s", timeout.as_secs())),
        Err(e) => Probe::Fail(format!("the health command: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve_once(answer: &'static [u8]) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_probes_read_the_status() {
        let ok = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(http(ok, "h", "/healthz", Duration::from_secs(2)).await, Probe::Pass);
        let bad = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        assert!(matches!(http(bad, "h", "/", Duration::from_secs(2)).await, Probe::Fail(m) if m.contains("503")));
        let junk = serve_once(b"hello\r\n").await;
        assert!(matches!(http(junk, "h", "/", Duration::from_secs(2)).await, Probe::Fail(_)));
        // Nothing listening: not ready, which a rollout waits out.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = l.local_addr().unwrap();
        drop(l);
        assert!(matches!(http(closed, "h", "/", Duration::from_secs(2)).await, Probe::NotReady(_)));
        assert!(matches!(tcp(closed, Duration::from_secs(2)).await, Probe::NotReady(_)));
        assert_eq!(tcp(ok, Duration::from_secs(2)).await, Probe::Pass);
    }

    #[tokio::test]
    async fn a_silent_server_times_out_as_a_failure() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                conns.push(s);
            }
        });
        assert!(
            matches!(http(addr, "h", "/", Duration::from_secs(1)).await, Probe::Fail(m) if m.contains("took over"))
        );
    }
}
