//! Starts the real `berth` binary in a private temp dir and talks to it over HTTP.
//! Every process and directory made here is removed on drop, even when a test fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A temp dir removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("berth-it-{tag}-{}", berth::ids::new_id("t").to_lowercase()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running daemon.
pub struct Berth {
    pub child: Option<Child>,
    pub dir: TempDir,
    /// The API listener (`/healthz`, `/v1`, `/v2`).
    pub addr: SocketAddr,
    /// The ingress's HTTP listener.
    pub ingress: SocketAddr,
    /// The ingress's HTTPS listener.
    pub https: SocketAddr,
    pub extra_config: String,
}

impl Berth {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("berth.log")
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
    /// The ingress's HTTP listener.
    pub fn ingress_addr(&self) -> SocketAddr {
        self.ingress
    }
    /// The ingress's HTTPS listener.
    pub fn https_addr(&self) -> SocketAddr {
        self.https
    }

    /// Starts a daemon with a fresh state dir; `extra_config` is appended to its TOML.
    pub fn start(extra_config: &str) -> Berth {
        let dir = TempDir::new("d");
        let nowhere: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut b = Berth {
            child: None,
            dir,
            addr: nowhere,
            ingress: nowhere,
            https: nowhere,
            extra_config: extra_config.into(),
        };
        b.spawn();
        b
    }

    /// (Re)starts the process on the same state dir.
    pub fn spawn(&mut self) {
        let cfg = self.dir.path().join("berth.toml");
        std::fs::write(&cfg, &self.extra_config).unwrap();
        let sock_path = self.dir.path().join("notify.sock");
        let _ = std::fs::remove_file(&sock_path);
        let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--dev", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--api-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            // A free port for HTTPS too, unless the test's config names one.
            .args(if self.extra_config.contains("https_listen") { &[][..] } else { &["--https-listen", "127.0.0.1:0"] })
            .env("NOTIFY_SOCKET", &sock_path)
            .env("BERTH_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn berth");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 4096];
        loop {
            assert!(Instant::now() < deadline, "berth did not report READY=1; log:\n{}", self.log());
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("berth exited early with {status}; log:\n{}", self.log());
            }
            let Ok(n) = sock.recv(&mut buf) else { continue };
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            if msg.lines().any(|l| l == "READY=1") {
                // STATUS=api listening on <addr>; ingress on <addr>; https on <addr>
                let status = msg
                    .lines()
                    .find_map(|l| l.strip_prefix("STATUS=api listening on "))
                    .expect("STATUS with the addresses");
                let (api, ingress) = status.split_once("; ingress on ").expect("STATUS with the ingress address");
                let (ingress, https) = ingress.split_once("; https on ").expect("STATUS with the https address");
                self.addr = api.parse().unwrap();
                self.ingress = ingress.parse().unwrap();
                self.https = https.parse().unwrap();
                break;
            }
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        // SAFETY: signalling a child we spawned and have not reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("berth did not stop within 30s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> Client {
        Client { addr: self.addr, token: None }
    }

    pub fn bootstrap_token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("bootstrap-token"))
            .expect("bootstrap token file")
            .trim()
            .to_string()
    }

    /// Bootstraps `admin` and returns a client logged in as them.
    pub fn admin(&self) -> Client {
        let boot = self.client().with_token(&self.bootstrap_token());
        let r = boot.post("/v1/bootstrap", &json!({"username": "admin", "password": ADMIN_PASSWORD}));
        assert_eq!(r.status, 201, "bootstrap: {}", r.text());
        self.login("admin", ADMIN_PASSWORD)
    }

    /// A fresh session for the bootstrapped admin.
    pub fn admin_session(&self) -> Client {
        self.login("admin", ADMIN_PASSWORD)
    }

    pub fn login(&self, username: &str, password: &str) -> Client {
        let r = self.client().post("/v1/auth/login", &json!({"username": username, "password": password}));
        assert_eq!(r.status, 200, "login {username}: {}", r.text());
        self.client().with_token(r.json()["token"].as_str().unwrap())
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub const ADMIN_PASSWORD: &str = "correct-horse-battery";

/// A response, fully read.
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// The `error.code` of an error envelope.
    pub fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_string()
    }
}

/// A minimal HTTP/1.1 client: one connection per request, exact bytes on the wire.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

impl Client {
    pub fn with_token(&self, token: &str) -> Client {
        Client { addr: self.addr, token: Some(token.to_string()) }
    }
    pub fn get(&self, path: &str) -> Resp {
        self.send("GET", path, None, &[])
    }
    pub fn delete(&self, path: &str) -> Resp {
        self.send("DELETE", path, None, &[])
    }
    pub fn post(&self, path: &str, body: &Value) -> Resp {
        self.send("POST", path, Some(body.to_string().as_bytes()), &[("Content-Type", "application/json")])
    }
    pub fn put(&self, path: &str, body: &Value) -> Resp {
        self.send("PUT", path, Some(body.to_string().as_bytes()), &[("Content-Type", "application/json")])
    }
    pub fn post_raw(&self, path: &str, body: &[u8]) -> Resp {
        self.send("POST", path, Some(body), &[("Content-Type", "application/json")])
    }

    pub fn send(&self, method: &str, path: &str, body: Option<&[u8]>, headers: &[(&str, &str)]) -> Resp {
        self.try_send(method, path, body, headers).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn try_send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Resp> {
        let mut s = TcpStream::connect(self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.addr);
        if let Some(t) = &self.token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() || method == "POST" || method == "PUT" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())?;
        // A server may answer (413) before reading all of a large body; keep going.
        if let Err(e) = s.write_all(body) {
            if e.kind() != std::io::ErrorKind::BrokenPipe && e.kind() != std::io::ErrorKind::ConnectionReset {
                return Err(e);
            }
        }
        read_response(s)
    }
}

/// `GET path` at `addr` with the given `Host` (the ingress routes by it).
pub fn get_as(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())?;
    read_response(s)
}

fn read_response(s: TcpStream) -> std::io::Result<Resp> {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            line.clear();
            r.read_line(&mut line)?;
        }
    } else {
        let _ = r.read_to_end(&mut body);
    }
    Ok(Resp { status, headers, body })
}

/// Whether a test can go on: `ok` itself. When `ok` is false the test cannot run
/// here (`what` names the missing need and how to get it), and it never passes
/// silently (adr/013):
/// - under `CI=true` it fails, naming the need;
/// - elsewhere a `SKIPPED: <test>: <what>` line goes to stderr, past libtest's output
///   capture so it shows in a normal run, and the test fails too, unless
///   `BERTH_ALLOW_SKIP=1`: then this returns false and the test returns early.
///
/// Every skip in the integration tests goes through here.
pub fn require(what: &str, ok: bool) -> bool {
    if ok {
        return true;
    }
    let current = std::thread::current();
    let test = current.name().unwrap_or("a test");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} cannot run: {what} (required under CI=true)");
    }
    // Written to the stream itself: eprintln! would be captured and shown only if the
    // test fails.
    let _ = std::io::stderr().write_all(format!("SKIPPED: {test}: {what}\n").as_bytes());
    if std::env::var("BERTH_ALLOW_SKIP").as_deref() == Ok("1") {
        return false;
    }
    panic!("SKIPPED: {test}: {what}; a test that did not run does not pass (BERTH_ALLOW_SKIP=1 lets it)");
}

/// Whether `tool ARGS...` runs and exits 0.
pub fn runs(tool: &str, args: &[&str]) -> bool {
    Command::new(tool).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// [`require`] that `tool` runs (`tool PROBE...` exits 0).
pub fn require_tool(tool: &str, probe: &[&str]) -> bool {
    let name = Path::new(tool).file_name().and_then(|n| n.to_str()).unwrap_or(tool);
    let package = match name {
        "docker" | "dockerd" => "docker.io",
        "ip" => "iproute2",
        "nft" => "nftables",
        "chroot" => "coreutils",
        "node" => "nodejs npm",
        other => other,
    };
    require(&format!("`{tool}` is not installed or does not run (apt-get install {package})"), runs(tool, probe))
}

/// [`require`] that the tests run as root (runc, cgroups, mounts, network namespaces).
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    require("not root: containers, cgroups, mounts and network namespaces need uid 0", root)
}

/// [`require`] a static busybox at /bin/busybox, the userland of the test containers.
pub fn require_busybox() -> bool {
    require("no /bin/busybox (apt-get install busybox-static)", runs("/bin/busybox", &["true"]))
}

/// An address pool of `prefix_len` (16 or 24) under 10.100.0.0–10.254.255.255 that no
/// other test in this process was given and no route on the host overlaps; never
/// berth's default 10.213. Tests run side by side: two pools that overlap would let
/// one test's replica answer at another's address.
pub fn test_pool(prefix_len: u8) -> berth::runtime::network::Ipv4Net {
    use berth::runtime::network::Ipv4Net;
    use rand::Rng;
    use std::net::Ipv4Addr;
    static GIVEN: std::sync::Mutex<Vec<Ipv4Net>> = std::sync::Mutex::new(Vec::new());
    let routes: Vec<Ipv4Net> = std::fs::read_to_string("/proc/net/route")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(|v| Ipv4Addr::from(v.to_le_bytes()));
            let (dest, mask) = (hex(f.get(1)?)?, hex(f.get(7)?)?);
            let len = u32::from(mask).count_ones() as u8;
            if len == 0 { None } else { Ipv4Net::new(dest, len).ok() }
        })
        .collect();
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = rand::thread_rng();
    for _ in 0..10_000 {
        let second = rng.gen_range(100u8..=254);
        let third = if prefix_len >= 24 { rng.r#gen() } else { 0 };
        let pool = Ipv4Net::new(Ipv4Addr::new(10, second, third, 0), prefix_len).unwrap();
        if second != 213 && !routes.iter().chain(given.iter()).any(|r| r.overlaps(&pool)) {
            given.push(pool);
            return pool;
        }
    }
    panic!("no free /{prefix_len} left in 10.100.0.0-10.254.255.255 for a test network");
}
