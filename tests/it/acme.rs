//! ACME against Debian's `pebble` and `pebble-challtestsrv` on loopback: a deployed
//! service's default hostname gets a certificate pebble issued and served over
//! HTTPS, a forced renewal swaps it while HTTPS requests keep coming (none fails), a
//! restart serves it again without asking the CA, and a CA that refuses leaves its
//! error in the host's state while the service keeps serving over HTTP and over
//! HTTPS with the fallback certificate.

use std::io::Write;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::deployments::{Node, node, project_id, push_web, service, settle, until, via_ingress};
use crate::harness::{Client, TempDir, get_as, require, require_tool};

const HOST: &str = "web.alpha.apps.test";

/// A loopback port free for TCP and UDP (challtestsrv's DNS answers on both).
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// pebble and its DNS, stopped (by pid) when dropped.
pub struct Pebble {
    children: Vec<Child>,
    dir: TempDir,
    pub port: u16,
    pub management: u16,
}

impl Pebble {
    /// Its TLS certificate and key, made before pebble starts (berth's config names
    /// the certificate as `acme.ca_bundle`), with the port it will listen on.
    pub fn prepare() -> Pebble {
        let dir = TempDir::new("pebble");
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
        Pebble { children: Vec::new(), dir, port: free_port(), management: free_port() }
    }

    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    pub fn tls_cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// Starts challtestsrv (the DNS answering 127.0.0.1 for every name) and pebble,
    /// which validates HTTP-01 on `http_port`.
    pub fn start(&mut self, http_port: u16) {
        self.start_checking(http_port, free_port());
    }

    /// [`Pebble::start`], with TLS-ALPN-01 validated on `tls_port`.
    pub fn start_checking(&mut self, http_port: u16, tls_port: u16) {
        let dns = free_port();
        let log = |name: &str| std::fs::File::create(self.dir.path().join(name)).unwrap();
        let challtestsrv = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns}"), "-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdin(Stdio::null())
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("start pebble-challtestsrv");
        self.children.push(challtestsrv);
        let config = json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{}", self.port),
            "managementListenAddress": format!("127.0.0.1:{}", self.management),
            "certificate": self.tls_cert(),
            "privateKey": self.dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let config_path = self.dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("start pebble");
        self.children.push(pebble);
        until(30, "pebble listens", || TcpStream::connect(("127.0.0.1", self.port)).ok());
        until(30, "pebble's management listens", || TcpStream::connect(("127.0.0.1", self.management)).ok());
    }

    /// What pebble logged, for failure messages.
    pub fn log(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!("{}{}", read("pebble.log"), read("pebble.err"))
    }

    /// The root pebble issues under (made fresh at its start), from its management API.
    pub fn root_pem(&self) -> PathBuf {
        let path = self.dir.path().join("root.pem");
        let out = Command::new("curl")
            .args(["-sSf", "--cacert"])
            .arg(self.tls_cert())
            .arg(format!("https://127.0.0.1:{}/roots/0", self.management))
            .output()
            .unwrap();
        assert!(out.status.success(), "pebble's root: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(&path, &out.stdout).unwrap();
        path
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether pebble, curl and openssl are here (fails loudly under CI when not).
fn tools() -> bool {
    require("pebble is not installed (apt-get install pebble)", Path::new("/usr/bin/pebble").exists())
        && require(
            "pebble-challtestsrv is not installed (apt-get install pebble)",
            Path::new("/usr/bin/pebble-challtestsrv").exists(),
        )
        && require_tool("curl", &["--version"])
        && require_tool("openssl", &["version"])
}

/// The `[ingress]` and `[acme]` sections for a berth that asks `pebble`.
fn acme_config(pebble: &Pebble, directory_url: &str) -> String {
    format!(
        "[ingress]\napps_domain = \"apps.test\"\n[acme]\nenabled = true\ncontact = \"mailto:ops@apps.test\"\n\
         directory_url = \"{directory_url}\"\nca_bundle = \"{}\"\nrenew_check_seconds = 1\n\
         backoff_min_seconds = 2\nbackoff_max_seconds = 4\n",
        pebble.tls_cert().display()
    )
}

/// The host's row of `GET /v1/ingress/routes`.
fn route(c: &Client, host: &str) -> Option<Value> {
    let routes = c.get("/v1/ingress/routes?limit=100").json();
    routes["data"].as_array().unwrap().iter().find(|r| r["host"] == host).cloned()
}

/// A web service `web` of project `alpha`, deployed and live.
fn deploy_web(admin: &Client, page: &str) -> String {
    let project = project_id(admin, "alpha");
    push_web(admin, "alpha/web", "v1", page, true);
    let svc = service(
        admin,
        json!({"project_id": project, "name": "web", "port": 8080, "health_check": {"path": "/health", "interval_s": 1}}),
    );
    let dep = crate::deployments::deploy(admin, &svc, "alpha/web", "v1");
    assert_eq!(settle(admin, &dep, 90)["status"], "live");
    svc
}

/// One column of the host's row in berth's `certificates` table.
fn stored(node: &Node, column: &str) -> String {
    let db = node.b.data_dir().join("state.db");
    let out = Command::new("sqlite3")
        .arg(&db)
        .arg(format!("SELECT {column} FROM certificates WHERE host = '{HOST}'"))
        .output()
        .unwrap();
    assert!(out.status.success(), "sqlite3: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim_end().to_string()
}

/// Checks that a PEM chain (leaf first) verifies against `root`; answers the leaf's serial.
fn verify_chain(dir: &Path, chain: &str, root: &Path) -> String {
    let end = "-----END CERTIFICATE-----";
    let leaf = &chain[..chain.find(end).expect("a certificate in the chain") + end.len()];
    std::fs::write(dir.join("leaf.pem"), format!("{leaf}\n")).unwrap();
    std::fs::write(dir.join("chain.pem"), chain).unwrap();
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(root)
        .arg("-untrusted")
        .arg(dir.join("chain.pem"))
        .arg(dir.join("leaf.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "the chain does not verify: {}", String::from_utf8_lossy(&out.stdout));
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-ext", "subjectAltName", "-in"])
        .arg(dir.join("leaf.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("DNS:{HOST}")), "{text}");
    text.lines().find_map(|l| l.strip_prefix("serial=")).unwrap().to_ascii_lowercase()
}

/// `curl` of `https://HOST:port{path}` (resolved to loopback), trusting only `root`,
/// or anything (`-k`) when `root` is `None`: (curl's exit code, body).
fn curl_https(port: u16, root: Option<&Path>, path: &str) -> (i32, String) {
    curl_https_to(HOST, port, root, path)
}

/// `curl https://<host>:<port><path>` with the name resolved to loopback.
fn curl_https_to(host: &str, port: u16, root: Option<&Path>, path: &str) -> (i32, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--resolve", &format!("{host}:{port}:127.0.0.1")]);
    match root {
        Some(r) => cmd.arg("--cacert").arg(r),
        None => cmd.arg("-k"),
    };
    let out = cmd.arg(format!("https://{host}:{port}{path}")).stdin(Stdio::null()).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).to_string())
}

/// The serial of the certificate berth's HTTPS listener serves for `HOST`, after
/// checking the handshake against `root`.
fn served_serial(node: &Node, root: &Path) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &node.b.https_addr().to_string(), "-servername", HOST])
        .args(["-verify_return_error", "-CAfile"])
        .arg(root)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "the handshake does not verify: {}", String::from_utf8_lossy(&out.stdout));
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    x509.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let text = String::from_utf8(x509.wait_with_output().unwrap().stdout).unwrap();
    text.trim().strip_prefix("serial=").unwrap().to_ascii_lowercase()
}

/// Waits for the host's certificate to be issued with a serial other than `not`.
fn issued(admin: &Client, pebble: &Pebble, not: Option<&str>) -> Value {
    until(120, "the certificate is issued", || {
        let r = route(admin, HOST)?;
        let d = &r["certificate"];
        (r["certificate"]["state"] == "issued" && d["serial"].as_str() != not).then(|| d.clone())
    });
    let r = route(admin, HOST).unwrap();
    assert_eq!(r["certificate"]["state"], "issued", "{r}\npebble:\n{}", pebble.log());
    r["certificate"].clone()
}

#[test]
fn a_host_whose_port_80_is_closed_gets_its_certificate_through_tls_alpn_01() {
    if !crate::runtime::can_run() || !tools() {
        return;
    }
    let mut pebble = Pebble::prepare();
    let config = format!("{}challenge = \"tls-alpn-01\"\n", acme_config(&pebble, &pebble.directory_url()));
    let (node, admin) = node(&config);
    // pebble checks HTTP-01 on a port nothing listens on, and TLS-ALPN-01 on berth's
    // HTTPS listener: only the latter can pass.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    pebble.start_checking(closed, node.b.https_addr().port());
    deploy_web(&admin, "hello over tls-alpn\n");
    let cert = issued(&admin, &pebble, None);
    assert!(cert["issuer"].as_str().unwrap().contains("Pebble"), "{cert}");
    let root = pebble.root_pem();
    let port = node.b.https_addr().port();
    assert_eq!(curl_https(port, Some(&root), "/"), (0, "hello over tls-alpn\n".to_string()));
    assert_eq!(served_serial(&node, &root), cert["serial"].as_str().unwrap());
    // Once issued, a handshake asking for acme-tls/1 gets nothing: the validation
    // certificate is gone, and the ordinary one is never served for that protocol.
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &node.b.https_addr().to_string(), "-servername", HOST, "-alpn", "acme-tls/1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "an acme-tls/1 handshake succeeded: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn pebble_issues_a_deployed_hosts_certificate_renews_it_on_demand_and_it_survives_a_restart() {
    if !crate::runtime::can_run() || !tools() {
        return;
    }
    let mut pebble = Pebble::prepare();
    let (mut node, admin) = node(&acme_config(&pebble, &pebble.directory_url()));
    pebble.start(node.b.ingress_addr().port());
    let svc = deploy_web(&admin, "hello over tls\n");

    let first = issued(&admin, &pebble, None);
    let serial = first["serial"].as_str().unwrap().to_string();
    assert!(first["issuer"].as_str().unwrap().contains("Pebble"), "{first}");
    assert!(first["not_after"].as_str() > first["not_before"].as_str(), "{first}");
    assert_eq!(first["error"], Value::Null);
    // The stored chain is pebble's, for the host; its key is sealed.
    let root = pebble.root_pem();
    let work = TempDir::new("acmechk");
    assert_eq!(verify_chain(work.path(), &stored(&node, "chain_pem"), &root), serial);
    assert!(stored(&node, "key_sealed").starts_with("age:"));
    let account = Command::new("sqlite3")
        .arg(node.b.data_dir().join("state.db"))
        .arg("SELECT credentials FROM acme_accounts")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&account.stdout).starts_with("age:"), "the account is sealed");
    // The challenge answer was taken away after use (challenge paths are not redirected).
    let r = via_ingress(&node, HOST, "/.well-known/acme-challenge/anything").unwrap();
    assert_eq!(r.0, 404);
    // Served over HTTPS with a chain that verifies against pebble's root, and plain
    // HTTP now goes there.
    let port = node.b.https_addr().port();
    assert_eq!(curl_https(port, Some(&root), "/"), (0, "hello over tls\n".to_string()));
    assert_eq!(served_serial(&node, &root), serial);
    let plain = get_as(node.b.ingress_addr(), HOST, "/").unwrap();
    assert_eq!(plain.status, 308, "{}", plain.text());
    assert_eq!(plain.header("location"), Some(format!("https://{HOST}:{port}/").as_str()));

    // A forced renewal while HTTPS requests keep coming: 202, a new certificate is
    // served, and no request fails.
    let stop = AtomicBool::new(false);
    let (requests, failures, renewed) = std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            let (mut n, mut failed) = (0u32, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && n < 5000 {
                let got = curl_https(port, Some(&root), "/");
                if got != (0, "hello over tls\n".to_string()) {
                    failed.push(got);
                }
                n += 1;
            }
            (n, failed)
        });
        std::thread::sleep(Duration::from_millis(500));
        let r = admin.post(&format!("/v1/ingress/routes/{HOST}/renew"), &json!({}));
        assert_eq!(r.status, 202, "{}", r.text());
        assert_eq!(r.json()["host"], HOST);
        assert_eq!(r.json()["certificate"]["serial"], serial.as_str());
        let second = issued(&admin, &pebble, Some(&serial));
        let renewed = second["serial"].as_str().unwrap().to_string();
        assert_eq!(served_serial(&node, &root), renewed, "the next handshake gets the new certificate");
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let (n, failed) = load.join().unwrap();
        (n, failed, renewed)
    });
    eprintln!("acme: {requests} HTTPS requests during the forced renewal, {} failed", failures.len());
    assert!(failures.is_empty(), "requests failed during the renewal: {failures:?}");
    assert!(requests > 0);
    assert_ne!(renewed, serial);
    assert_eq!(verify_chain(work.path(), &stored(&node, "chain_pem"), &root), renewed);
    // Hosts that are not routed, or not the caller's, are 404; localhost names 409.
    let r = admin.post("/v1/ingress/routes/nothing.apps.test/renew", &json!({}));
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"), "{}", r.text());
    let audit = admin.get("/v1/audit?limit=100").json();
    assert!(
        audit["data"].as_array().unwrap().iter().any(|e| e["action"] == "POST /v1/ingress/routes/{host}/renew"),
        "the renewal is audited: {audit}"
    );

    // No private key in the clear anywhere under the state dir.
    crate::deployments::nowhere_in(&node.b.data_dir(), "PRIVATE KEY").unwrap();

    // After a restart the stored certificate is back before anything is asked of
    // the CA (pebble still points at the old ingress port, so it could not issue).
    node.b.stop();
    node.b.spawn();
    let admin = node.b.admin_session();
    let r = until(60, "the route is back", || route(&admin, HOST).filter(|r| r["certificate"]["state"] == "issued"));
    assert_eq!(r["certificate"]["serial"], renewed.as_str(), "{r}");
    std::thread::sleep(Duration::from_secs(3));
    let r = route(&admin, HOST).unwrap();
    assert_eq!(
        (r["certificate"]["state"].as_str(), r["certificate"]["serial"].as_str()),
        (Some("issued"), Some(renewed.as_str()))
    );
    assert_eq!(served_serial(&node, &root), renewed, "served from the store");
    assert_eq!(curl_https(node.b.https_addr().port(), Some(&root), "/"), (0, "hello over tls\n".to_string()));
    let _ = svc;
}

#[test]
fn a_ca_that_refuses_leaves_its_error_in_the_state_backs_off_and_http_keeps_serving() {
    if !crate::runtime::can_run() || !tools() {
        return;
    }
    let mut pebble = Pebble::prepare();
    let (node, admin) = node(&acme_config(&pebble, &pebble.directory_url()));
    // pebble validates on a port where nothing listens: every challenge fails.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    pebble.start(closed);
    deploy_web(&admin, "still here\n");
    let first = until(120, "the failure shows", || {
        let r = route(&admin, HOST)?;
        (r["certificate"]["state"] == "error").then(|| r["certificate"].clone())
    });
    let error = first["error"].as_str().unwrap();
    assert!(error.contains(HOST), "the error names the host: {first}");
    eprintln!("acme: the error shown when the challenge cannot be fetched: {error}");
    assert!(first["failures"].as_u64() >= Some(1), "{first}");
    assert!(first["next_attempt_at"].is_string(), "a backoff is set: {first}");
    assert_eq!(first["serial"], Value::Null);
    assert_eq!(stored(&node, "state"), "error");
    assert_eq!(stored(&node, "error"), error);
    // It tries again after the backoff, and counts.
    until(60, "a second attempt", || {
        let r = route(&admin, HOST)?;
        (r["certificate"]["failures"].as_u64() >= Some(2)).then_some(())
    });
    // Meanwhile the service answers over HTTP as before (no certificate: no
    // redirect), and over HTTPS with the self-signed fallback, which pebble's root
    // does not vouch for.
    assert_eq!(via_ingress(&node, HOST, "/"), Some((200, "still here\n".to_string())));
    let port = node.b.https_addr().port();
    assert_eq!(curl_https(port, None, "/"), (0, "still here\n".to_string()));
    let (code, _) = curl_https(port, Some(&pebble.root_pem()), "/");
    assert_eq!(code, 60, "curl cannot verify the fallback against pebble's root");
    let log = node.b.log();
    assert!(log.contains("certificate issuance failed"), "the failure is logged");
    assert!(!log.contains("PRIVATE KEY"));
}

#[test]
fn a_directory_that_does_not_answer_is_an_error_in_the_state_not_an_outage() {
    if !crate::runtime::can_run() || !tools() {
        return;
    }
    // Nothing listens there; the prepared pebble only lends its certificate as the bundle.
    let pebble = Pebble::prepare();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (node, admin) = node(&acme_config(&pebble, &format!("https://127.0.0.1:{closed}/dir")));
    deploy_web(&admin, "no ca\n");
    let detail = until(60, "the failure shows", || {
        let r = route(&admin, HOST)?;
        (r["certificate"]["state"] == "error").then(|| r["certificate"].clone())
    });
    let error = detail["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("https://127.0.0.1:{closed}/dir")) && error.contains("onnect"),
        "the error says the directory cannot be reached: {detail}"
    );
    assert!(detail["next_attempt_at"].is_string(), "{detail}");
    // A forced renewal is accepted and fails the same way, counted.
    let r = admin.post(&format!("/v1/ingress/routes/{HOST}/renew"), &json!({}));
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["certificate"]["state"], "error");
    until(30, "the forced attempt is counted", || {
        let r = route(&admin, HOST)?;
        (r["certificate"]["failures"].as_u64() > detail["failures"].as_u64()).then_some(())
    });
    assert_eq!(via_ingress(&node, HOST, "/"), Some((200, "no ca\n".to_string())));
    assert_eq!(curl_https(node.b.https_addr().port(), None, "/"), (0, "no ca\n".to_string()));
    eprintln!("acme: the error shown for a directory that does not answer: {error}");
}

/// The whole path of a custom domain: attached to a live service, verified through
/// the challenge the ingress answers, a certificate issued by pebble for it, and
/// `curl --cacert <pebble root> --resolve app.test:PORT:127.0.0.1 https://app.test/`
/// gets the container's page over a chain that verifies.
#[test]
fn a_verified_custom_domain_gets_a_certificate_and_answers_over_https() {
    if !crate::runtime::can_run() || !tools() {
        return;
    }
    let relay = crate::domains::Relay::start();
    let mut pebble = Pebble::prepare();
    let config = acme_config(&pebble, &pebble.directory_url())
        .replace("[ingress]\n", &format!("[ingress]\nchallenge_port = {}\n", relay.port))
        + "[dns]\noverrides = { \"app.test\" = \"127.0.0.1\" }\n";
    let (node, admin) = node(&config);
    relay.point_at(node.b.ingress_addr());
    pebble.start(node.b.ingress_addr().port());
    let svc = deploy_web(&admin, "hello from app.test\n");

    let r = admin.post(&format!("/v1/services/{svc}/domains"), &json!({"hostname": "app.test"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let dom = r.json()["id"].as_str().unwrap().to_string();
    let r = admin.post(&format!("/v1/services/{svc}/domains/{dom}/verify"), &json!({}));
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("verified")), "{}", r.text());
    let cert = until(120, "app.test's certificate is issued", || {
        let r = route(&admin, "app.test")?;
        (r["certificate"]["state"] == "issued").then(|| r["certificate"].clone())
    });
    assert!(cert["issuer"].as_str().unwrap().contains("Pebble"), "{cert}");
    let d = admin.get(&format!("/v1/services/{svc}/domains/{dom}")).json();
    assert_eq!(d["status"], "issued", "{d}");
    assert_eq!(d["certificate"]["not_after"], cert["not_after"], "{d}");

    let root = pebble.root_pem();
    let port = node.b.https_addr().port();
    assert_eq!(
        curl_https_to("app.test", port, Some(&root), "/"),
        (0, "hello from app.test\n".to_string()),
        "the page over a chain that verifies against pebble's root"
    );
    // Plain HTTP for the domain goes to HTTPS now; the default hostname got its own.
    let plain = get_as(node.b.ingress_addr(), "app.test", "/").unwrap();
    assert_eq!(plain.status, 308, "{}", plain.text());
    assert_eq!(plain.header("location"), Some(format!("https://app.test:{port}/").as_str()));
    until(120, "the default hostname's certificate too", || {
        (route(&admin, HOST)?["certificate"]["state"] == "issued").then_some(())
    });
    assert_eq!(curl_https(port, Some(&root), "/"), (0, "hello from app.test\n".to_string()));
    // Detached: no route, and its certificate is no longer served.
    assert_eq!(admin.delete(&format!("/v1/services/{svc}/domains/{dom}")).status, 204);
    assert_eq!(via_ingress(&node, "app.test", "/").map(|r| r.0), Some(404));
    let (code, _) = curl_https_to("app.test", port, Some(&root), "/");
    assert_ne!(code, 0, "the fallback certificate does not verify for app.test");
}
