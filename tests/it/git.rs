//! Git sources: clones over https (`git http-backend` behind a small TLS server on
//! loopback) and ssh (Debian's sshd on a loopback port with a deploy key), driven
//! through `berth::build::git::fetch`; push webhooks; a `Git` deployment end to end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth::build::Stop;
use berth::build::git::{Fetch, fetch};
use berth::secrets::credentials::GitKey;

use serde_json::{Value, json};

use super::harness::{Berth, Client, Resp, TempDir, require, require_busybox, require_root, require_tool};

/// Runs `program ARGS` in `dir`, asserting success; its standard output.
fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(out.status.success(), "{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository `app.git` under `<dir>/srv`: `main` has two commits (the page
/// says `v1`, then `v2`), tag `v1` is the first, branch `other` says `other`. Each
/// commit holds a Dockerfile that serves `index.html` with busybox httpd.
pub struct Repo {
    pub root: PathBuf,
    pub bare: PathBuf,
    pub v1: String,
    pub v2: String,
    pub other: String,
}

pub const DOCKERFILE: &str = "FROM scratch\nCOPY busybox /bin/busybox\nCOPY index.html /www/index.html\n\
    CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n";

impl Repo {
    pub fn make(dir: &Path) -> Repo {
        let root = dir.join("srv");
        let work = dir.join("work");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let bare = root.join("app.git");
        run(dir, "git", &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()]);
        run(&bare, "git", &["config", "uploadpack.allowReachableSHA1InWant", "true"]);
        run(&bare, "git", &["config", "http.receivepack", "false"]);
        run(&work, "git", &["init", "-q", "-b", "main"]);
        std::fs::write(work.join("Dockerfile"), DOCKERFILE).unwrap();
        if Path::new("/bin/busybox").exists() {
            std::fs::copy("/bin/busybox", work.join("busybox")).unwrap();
        } else {
            std::fs::write(work.join("busybox"), "not a busybox").unwrap();
        }
        let commit = |page: &str| {
            std::fs::write(work.join("index.html"), page).unwrap();
            run(&work, "git", &["add", "-A"]);
            run(&work, "git", &["commit", "-q", "-m", page]);
            run(&work, "git", &["rev-parse", "HEAD"])
        };
        let v1 = commit("v1");
        run(&work, "git", &["tag", "v1"]);
        let v2 = commit("v2");
        run(&work, "git", &["checkout", "-q", "-b", "other", &v1]);
        let other = commit("other");
        run(&work, "git", &["push", "-q", bare.to_str().unwrap(), "main", "other", "v1"]);
        Repo { root, bare, v1, v2, other }
    }

    /// Adds a commit on `main` (the page says `page`); its id.
    pub fn push_main(&self, dir: &Path, page: &str) -> String {
        let work = dir.join("work");
        run(&work, "git", &["checkout", "-q", "main"]);
        std::fs::write(work.join("index.html"), page).unwrap();
        run(&work, "git", &["commit", "-q", "-am", page]);
        run(&work, "git", &["push", "-q", self.bare.to_str().unwrap(), "main"]);
        run(&work, "git", &["rev-parse", "HEAD"])
    }
}

/// Runs `openssl ARGS` in `dir`, asserting success.
fn openssl(dir: &Path, args: &[&str]) {
    run(dir, "openssl", args);
}

/// A test CA (`ca.pem`) and a certificate for 127.0.0.1 it signed (`srv.pem`,
/// `srv.key`), under `dir`.
fn make_certs(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let ca =
        [&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=git CA"]];
    openssl(dir, &ca.concat());
    openssl(dir, &[&["req"][..], &ec, &["-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1"]].concat());
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let sign = [
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ];
    openssl(dir, &sign);
}

/// A process the test started, killed (by its pid) and reaped on drop.
pub struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for `path` to hold a port number.
fn port_from(path: &Path, child: &mut Child, what: &str) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(p) = std::fs::read_to_string(path).ok().and_then(|t| t.trim().parse().ok()) {
            return p;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `repo`'s repositories over HTTPS on 127.0.0.1, with a certificate from a CA
/// made here (`ca`).
pub struct HttpsGit {
    pub port: u16,
    pub ca: PathBuf,
    _proc: Proc,
}

impl HttpsGit {
    pub fn start(dir: &Path, repo: &Repo) -> HttpsGit {
        let certs = dir.join("tls");
        std::fs::create_dir_all(&certs).unwrap();
        make_certs(&certs);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/git/https_server.py");
        let portfile = dir.join("https.port");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(&repo.root)
            .arg(certs.join("srv.pem"))
            .arg(certs.join("srv.key"))
            .arg(&portfile)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3");
        let port = port_from(&portfile, &mut child, "the https git server");
        HttpsGit { port, ca: certs.join("ca.pem"), _proc: Proc(child) }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/app.git", self.port)
    }
}

/// Debian's sshd on a loopback port, as root, letting in one client key (the
/// deploy key) with `git-upload-pack` and nothing else.
pub struct SshGit {
    pub port: u16,
    /// The deploy key's private half.
    pub client_key: String,
    /// `known_hosts` naming this server's host key.
    pub known_hosts: String,
    _proc: Proc,
}

impl SshGit {
    pub fn start(dir: &Path) -> SshGit {
        let d = dir.join("ssh");
        std::fs::create_dir_all(&d).unwrap();
        run(&d, "ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", "host", "-f", "host_key"]);
        run(&d, "ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", "deploy", "-f", "client_key"]);
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        // sshd's privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\nAuthorizedKeysFile {ak}\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nLogLevel ERROR\n\
             AllowTcpForwarding no\nX11Forwarding no\nPermitTTY no\nAcceptEnv GIT_PROTOCOL\n",
            hk = d.join("host_key").display(),
            pid = d.join("sshd.pid").display(),
            ak = d.join("authorized_keys").display(),
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let mut child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sshd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("sshd exited: {status}");
            }
            assert!(Instant::now() < deadline, "sshd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
        let mut parts = host_pub.split_whitespace();
        let (kind, key) = (parts.next().unwrap(), parts.next().unwrap());
        SshGit {
            port,
            client_key: std::fs::read_to_string(d.join("client_key")).unwrap(),
            known_hosts: format!("[127.0.0.1]:{port} {kind} {key}\n"),
            _proc: Proc(child),
        }
    }

    pub fn url(&self, repo: &Repo) -> String {
        format!("ssh://root@127.0.0.1:{}{}", self.port, repo.bare.display())
    }

    pub fn key(&self, known_hosts: Option<&str>) -> GitKey {
        GitKey {
            name: "deploy".into(),
            key_type: "ssh-ed25519".into(),
            fingerprint: String::new(),
            private_key: zeroize::Zeroizing::new(self.client_key.clone()),
            known_hosts: known_hosts.map(str::to_string),
        }
    }
}

/// Whether git, python3, openssl and (with `ssh`) sshd are here.
pub fn require_git_tools(ssh: bool) -> bool {
    let base = require_tool("git", &["--version"])
        && require_tool("python3", &["--version"])
        && require_tool("openssl", &["version"]);
    if !base || !ssh {
        return base;
    }
    let sshd = ["/usr/sbin/sshd", "/usr/bin/ssh", "/usr/bin/ssh-keygen"].iter().all(|p| Path::new(p).exists());
    require("sshd, ssh or ssh-keygen is not installed (apt-get install openssh-server)", sshd)
}

/// One call of `fetch` into a fresh `dest`; its result and the log lines.
fn clone(dir: &Path, f: &Fetch<'_>, cancel_after: Option<Duration>) -> (Result<String, Stop>, Vec<String>, PathBuf) {
    let dest = dir.join(format!("dest-{}", berth::ids::new_id("d").to_lowercase()));
    let scratch = dir.join(format!("scratch-{}", berth::ids::new_id("s").to_lowercase()));
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::create_dir_all(&scratch).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let (stop, mut cancel) = tokio::sync::watch::channel(false);
    let (at, aside) = (&dest, &scratch);
    let result = rt.block_on(async move {
        let _hold = match cancel_after {
            Some(after) => {
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = stop.send(true);
                });
                None
            }
            None => Some(stop),
        };
        fetch(f, at, aside, &tx, &mut cancel).await
    });
    let mut lines = Vec::new();
    while let Ok(l) = rx.try_recv() {
        lines.push(l);
    }
    // Nothing secret is left behind in the scratch dir.
    assert!(!scratch.join("ssh/deploy_key").exists(), "the deploy key file was removed");
    (result, lines, dest)
}

fn https_fetch<'a>(url: &'a str, git_ref: &'a str, ca: Option<&'a Path>) -> Fetch<'a> {
    Fetch { repo_url: url, git_ref, key: None, ca_bundle: ca, timeout: Duration::from_secs(60) }
}

fn failed(r: Result<String, Stop>) -> String {
    match r {
        Err(Stop::Failed(m)) => m,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn fetch_over_https_a_branch_a_tag_and_a_commit() {
    if !require_git_tools(false) {
        return;
    }
    let tmp = TempDir::new("git-https");
    let d = tmp.path();
    let repo = Repo::make(d);
    let srv = HttpsGit::start(d, &repo);
    let url = srv.url();
    let ca = Some(srv.ca.as_path());

    // With the [build] settings as the daemon has them.
    let build = berth::config::BuildConfig {
        git_ca_bundle: srv.ca.display().to_string(),
        ..berth::config::BuildConfig::default()
    };
    let (r, lines, dest) = clone(d, &Fetch::new(&url, "main", None, &build), None);
    assert_eq!(r, Ok(repo.v2.clone()), "{lines:?}");
    assert_eq!(std::fs::read_to_string(dest.join("index.html")).unwrap(), "v2");
    assert!(dest.join("Dockerfile").is_file());
    assert!(!dest.join(".git").exists(), "the clone's .git is removed");
    assert!(lines.iter().any(|l| l.contains(&repo.v2)), "the commit is logged: {lines:?}");

    let (r, _, dest) = clone(d, &https_fetch(&url, "v1", ca), None);
    assert_eq!(r, Ok(repo.v1.clone()));
    assert_eq!(std::fs::read_to_string(dest.join("index.html")).unwrap(), "v1");

    let (r, _, dest) = clone(d, &https_fetch(&url, "refs/heads/other", ca), None);
    assert_eq!(r, Ok(repo.other.clone()));
    assert_eq!(std::fs::read_to_string(dest.join("index.html")).unwrap(), "other");

    let (r, lines, dest) = clone(d, &https_fetch(&url, &repo.v1, ca), None);
    assert_eq!(r, Ok(repo.v1.clone()), "{lines:?}");
    assert_eq!(std::fs::read_to_string(dest.join("index.html")).unwrap(), "v1");
    assert!(!dest.join(".git").exists());

    // A wrong ref, a commit that is not there, an abbreviated commit.
    let m = failed(clone(d, &https_fetch(&url, "nope", ca), None).0);
    assert!(m.contains("no such ref") && m.contains(&url), "{m}");
    let m = failed(clone(d, &https_fetch(&url, &"0".repeat(40), ca), None).0);
    assert!(m.contains("no such ref"), "{m}");
    let m = failed(clone(d, &https_fetch(&url, &repo.v1[..12], ca), None).0);
    assert!(m.contains("full 40-character id"), "{m}");
    // A repository that is not there.
    let missing = format!("https://127.0.0.1:{}/missing.git", srv.port);
    let m = failed(clone(d, &https_fetch(&missing, "main", ca), None).0);
    assert!(m.contains("no such repository") || m.contains("not found"), "{m}");

    // Without the test CA the server is not trusted.
    let m = failed(clone(d, &https_fetch(&url, "main", None), None).0);
    assert!(m.contains("certificate is not trusted"), "{m}");

    // Nothing listens: unreachable.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gone = format!("https://127.0.0.1:{closed}/app.git");
    let m = failed(clone(d, &https_fetch(&gone, "main", ca), None).0);
    assert!(m.contains("unreachable"), "{m}");

    // Hostile input never reaches git.
    for (url, r) in [("file:///etc", "main"), ("ext::sh", "main"), ("-uhack", "main"), (url.as_str(), "-uhack")] {
        let m = failed(clone(d, &https_fetch(url, r, ca), None).0);
        assert!(!m.is_empty());
    }
}

/// A server that accepts connections and never answers: a clone hangs until its
/// cancel or its deadline.
#[test]
fn fetch_stops_on_cancel_and_at_its_deadline() {
    if !require_git_tools(false) {
        return;
    }
    let tmp = TempDir::new("git-stop");
    let d = tmp.path();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://127.0.0.1:{}/app.git", silent.local_addr().unwrap().port());

    let t = Instant::now();
    let (r, _, _) = clone(d, &https_fetch(&url, "main", None), Some(Duration::from_millis(500)));
    assert_eq!(r, Err(Stop::Cancelled));
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());

    let f = Fetch { timeout: Duration::from_secs(1), ..https_fetch(&url, "main", None) };
    let (r, _, _) = clone(d, &f, None);
    let m = failed(r);
    assert!(m.contains("timed out"), "{m}");
}

#[test]
fn fetch_over_ssh_with_the_deploy_key_and_strict_host_keys() {
    if !require_git_tools(true) {
        return;
    }
    let tmp = TempDir::new("git-ssh");
    let d = tmp.path();
    let repo = Repo::make(d);
    let ssh = SshGit::start(d);
    let url = ssh.url(&repo);
    let key = ssh.key(Some(&ssh.known_hosts));
    let over_ssh = |url: &str, r: &str, key: Option<&GitKey>| {
        let f = Fetch { repo_url: url, git_ref: r, key, ca_bundle: None, timeout: Duration::from_secs(60) };
        clone(d, &f, None)
    };

    let (r, lines, dest) = over_ssh(&url, "main", Some(&key));
    assert_eq!(r, Ok(repo.v2.clone()), "{lines:?}");
    assert_eq!(std::fs::read_to_string(dest.join("index.html")).unwrap(), "v2");
    let (r, _, dest) = over_ssh(&url, "v1", Some(&key));
    assert_eq!(r, Ok(repo.v1.clone()));
    assert_eq!(std::fs::read_to_string(dest.join("index.html")).unwrap(), "v1");
    let (r, lines, dest) = over_ssh(&url, &repo.other, Some(&key));
    assert_eq!(r, Ok(repo.other.clone()), "{lines:?}");
    assert_eq!(std::fs::read_to_string(dest.join("index.html")).unwrap(), "other");

    // No known_hosts with the key: refused before any connection.
    let m = failed(over_ssh(&url, "main", Some(&ssh.key(None))).0);
    assert!(m.contains("known_hosts"), "{m}");
    // No key at all.
    let m = failed(over_ssh(&url, "main", None).0);
    assert!(m.contains("deploy key"), "{m}");
    // Another host key in known_hosts: the server is not trusted.
    run(d, "ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-f", "other_host"]);
    let other = std::fs::read_to_string(d.join("other_host.pub")).unwrap();
    let mut parts = other.split_whitespace();
    let wrong = format!("[127.0.0.1]:{} {} {}\n", ssh.port, parts.next().unwrap(), parts.next().unwrap());
    let m = failed(over_ssh(&url, "main", Some(&ssh.key(Some(&wrong)))).0);
    assert!(m.contains("host key"), "{m}");
    // A key the server does not know.
    run(d, "ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-f", "stranger"]);
    let stranger = GitKey {
        private_key: zeroize::Zeroizing::new(std::fs::read_to_string(d.join("stranger")).unwrap()),
        ..ssh.key(Some(&ssh.known_hosts))
    };
    let m = failed(over_ssh(&url, "main", Some(&stranger)).0);
    assert!(m.contains("authentication refused"), "{m}");
    // A wrong ref over ssh.
    let m = failed(over_ssh(&url, "nope", Some(&key)).0);
    assert!(m.contains("no such ref"), "{m}");
}

// ---------------------------------------------------------------------------------
// Push webhooks

/// A push event as GitHub and GitLab both shape it (the fields berth reads).
fn push_body(git_ref: &str, after: &str) -> Vec<u8> {
    json!({
        "ref": git_ref,
        "before": "0000000000000000000000000000000000000000",
        "after": after,
        "repository": {"name": "app", "clone_url": "https://evil.example/other.git"},
    })
    .to_string()
    .into_bytes()
}

fn github(anon: &Client, svc: &str, secret: &str, event: &str, delivery: &str, body: &[u8]) -> Resp {
    let signature = berth::build::webhook::github_signature(secret.as_bytes(), body);
    anon.send(
        "POST",
        &format!("/v1/webhooks/git/{svc}"),
        Some(body),
        &[
            ("Content-Type", "application/json"),
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", delivery),
            ("X-Hub-Signature-256", &signature),
        ],
    )
}

fn gitlab(anon: &Client, svc: &str, token: &str, delivery: &str, body: &[u8]) -> Resp {
    anon.send(
        "POST",
        &format!("/v1/webhooks/git/{svc}"),
        Some(body),
        &[
            ("Content-Type", "application/json"),
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Event-UUID", delivery),
            ("X-Gitlab-Token", token),
        ],
    )
}

fn deployments_of(c: &Client, svc: &str) -> Vec<Value> {
    c.get(&format!("/v1/services/{svc}/deployments?limit=100")).json()["data"].as_array().unwrap().clone()
}

/// Waits for a deployment to end (cancelling it if it is still going, so the next
/// push is not refused as a second deployment in flight).
fn wind_down(c: &Client, dep: &str) -> Value {
    let r = c.post(&format!("/v1/deployments/{dep}/cancel"), &json!({}));
    assert!(r.status == 200 || r.status == 409, "{}", r.text());
    crate::deployments::until(120, &format!("deployment {dep} ends"), || {
        let d = c.get(&format!("/v1/deployments/{dep}")).json();
        matches!(d["status"].as_str(), Some("live" | "failed" | "cancelled" | "superseded")).then_some(d)
    })
}

#[test]
fn webhook_pushes_to_the_branch_deploy_and_nothing_else_does() {
    let b = Berth::start("");
    let admin = b.admin();
    let anon = b.client();
    let project = admin.post("/v1/projects", &json!({"name": "hooks"})).json()["id"].as_str().unwrap().to_string();
    let svc =
        crate::deployments::service(&admin, json!({"project_id": project, "name": "web", "port": 8080, "replicas": 0}));
    let repo_url = "https://git.example.com/org/app.git";
    let hook_path = format!("/v1/services/{svc}/webhook");

    // Settings: checked like a deployment's source; the secret is shown once.
    for (body, code) in [
        (json!({"repo_url": "file:///srv/app.git", "branch": "main"}), 422),
        (json!({"repo_url": "ext::sh -c id", "branch": "main"}), 422),
        (json!({"repo_url": repo_url, "branch": "-uhack"}), 422),
        (json!({"repo_url": repo_url, "branch": "main", "dockerfile": "../Dockerfile"}), 400),
        (json!({"repo_url": repo_url}), 400),
    ] {
        let r = admin.post(&hook_path, &body);
        assert_eq!(r.status, code, "{body}: {}", r.text());
    }
    assert_eq!(admin.get(&hook_path).status, 404);
    let r = admin.post(&hook_path, &json!({"repo_url": repo_url, "branch": "main"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let secret = r.json()["secret"].as_str().unwrap().to_string();
    assert_eq!(secret.len(), 64);
    assert_eq!(r.json()["webhook"]["url"], format!("/v1/webhooks/git/{svc}"));
    let shown = admin.get(&hook_path);
    assert_eq!(shown.status, 200);
    assert_eq!((shown.json()["repo_url"].as_str(), shown.json()["branch"].as_str()), (Some(repo_url), Some("main")));
    assert!(!shown.text().contains(&secret) && shown.json().get("secret").is_none(), "{}", shown.text());
    // Sealed at rest: the secret is nowhere in the database in the clear.
    let db = std::fs::read(b.data_dir().join("state.db")).unwrap();
    let wal = std::fs::read(b.data_dir().join("state.db-wal")).unwrap_or_default();
    let needle = secret.as_bytes();
    assert!(!db.windows(needle.len()).chain(wal.windows(needle.len())).any(|w| w == needle), "secret in clear");

    // A GitHub ping is answered; nothing deploys.
    let r = github(&anon, &svc, &secret, "ping", "p1", b"{\"zen\":\"hi\"}");
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("pong")), "{}", r.text());

    // A signed push to main deploys the pushed commit, from the configured repository.
    let c1 = "1111111111111111111111111111111111111111";
    let body = push_body("refs/heads/main", c1);
    let r = github(&anon, &svc, &secret, "push", "d-1", &body);
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!((r.json()["status"].as_str(), r.json()["commit"].as_str()), (Some("deploying"), Some(c1)));
    let dep = r.json()["deployment_id"].as_str().unwrap().to_string();
    let d = admin.get(&format!("/v1/deployments/{dep}")).json();
    assert_eq!(d["service_id"], svc.as_str());
    assert_eq!(d["source"], json!({"kind": "Git", "repo_url": repo_url, "ref": c1, "dockerfile": null}), "{d}");
    let audit = admin.get("/v1/audit?limit=100").json();
    let entry = audit["data"].as_array().unwrap().iter().find(|e| e["target"] == dep.as_str()).cloned();
    let entry = entry.unwrap_or_else(|| panic!("no audit entry for {dep}: {audit}"));
    assert_eq!(entry["action"], "POST /v1/webhooks/git/{service_id}", "{entry}");
    assert!(entry["actor_name"].as_str().unwrap().contains("git push to main"), "{entry}");

    // Replays start nothing: the same delivery, and the same body under a new id.
    let r = github(&anon, &svc, &secret, "push", "d-1", &body);
    assert_eq!(r.status, 409, "{}", r.text());
    let r = github(&anon, &svc, &secret, "push", "d-2", &body);
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(deployments_of(&admin, &svc).len(), 1);

    // A bad or missing signature: 401, nothing started. An unknown service and a
    // malformed id get the very same answer.
    let c2 = "2222222222222222222222222222222222222222";
    let body2 = push_body("refs/heads/main", c2);
    let forged = github(&anon, &svc, "not-the-secret", "push", "d-3", &body2);
    assert_eq!(forged.status, 401, "{}", forged.text());
    let unsigned = anon.send(
        "POST",
        &format!("/v1/webhooks/git/{svc}"),
        Some(&body2),
        &[("X-GitHub-Event", "push"), ("X-GitHub-Delivery", "d-4")],
    );
    assert_eq!(unsigned.status, 401);
    let tampered = {
        let signature = berth::build::webhook::github_signature(secret.as_bytes(), &body2);
        let other = push_body("refs/heads/main", "3333333333333333333333333333333333333333");
        anon.send(
            "POST",
            &format!("/v1/webhooks/git/{svc}"),
            Some(&other),
            &[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &signature)],
        )
    };
    assert_eq!(tampered.status, 401);
    let unknown = github(&anon, "svc_00000000000000000000000000", &secret, "push", "d-5", &body2);
    let malformed = github(&anon, "nope", &secret, "push", "d-6", &body2);
    for r in [&unsigned, &tampered, &unknown, &malformed] {
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["error"]["message"], forged.json()["error"]["message"]);
    }
    let wrong_token = gitlab(&anon, &svc, "not-the-secret", "g-0", &body2);
    assert_eq!(wrong_token.status, 401);
    assert_eq!(deployments_of(&admin, &svc).len(), 1);

    // Other branches, tags and events: answered, nothing started.
    for (event, body) in [
        ("push", push_body("refs/heads/feature", c2)),
        ("push", push_body("refs/tags/v2", c2)),
        ("push", push_body("refs/heads/main", "0000000000000000000000000000000000000000")),
        ("issues", b"{}".to_vec()),
    ] {
        let r = github(&anon, &svc, &secret, event, &berth::ids::new_id("d"), &body);
        assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ignored")), "{}", r.text());
    }
    // Signed, but not JSON: 400.
    let r = github(&anon, &svc, &secret, "push", "d-7", b"not json");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(deployments_of(&admin, &svc).len(), 1);

    // GitLab style: the token is the secret.
    wind_down(&admin, &dep);
    let r = gitlab(&anon, &svc, &secret, "g-1", &body2);
    assert_eq!(r.status, 202, "{}", r.text());
    let dep2 = r.json()["deployment_id"].as_str().unwrap().to_string();
    assert_eq!(admin.get(&format!("/v1/deployments/{dep2}")).json()["source"]["ref"], c2);
    let r = gitlab(&anon, &svc, &secret, "g-1", &body2);
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(deployments_of(&admin, &svc).len(), 2);
    wind_down(&admin, &dep2);

    // A new secret replaces the old one; off, every delivery is refused.
    let r = admin.post(&hook_path, &json!({"repo_url": repo_url, "branch": "main"}));
    let secret2 = r.json()["secret"].as_str().unwrap().to_string();
    assert_ne!(secret2, secret);
    let c4 = "4444444444444444444444444444444444444444";
    let r = github(&anon, &svc, &secret, "push", "d-8", &push_body("refs/heads/main", c4));
    assert_eq!(r.status, 401);
    assert_eq!(admin.delete(&hook_path).status, 204);
    assert_eq!(admin.delete(&hook_path).status, 404);
    let r = github(&anon, &svc, &secret2, "push", "d-9", &push_body("refs/heads/main", c4));
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(deployments_of(&admin, &svc).len(), 2);

    // The webhook goes with its service.
    let r = admin.post(&hook_path, &json!({"repo_url": repo_url, "branch": "main"}));
    let secret3 = r.json()["secret"].as_str().unwrap().to_string();
    let r = admin.delete(&format!("/v1/services/{svc}"));
    assert!((200..300).contains(&r.status), "{}", r.text());
    let r = github(&anon, &svc, &secret3, "push", "d-10", &push_body("refs/heads/main", c4));
    assert_eq!(r.status, 401, "{}", r.text());
    if require_tool("sqlite3", &["-version"]) {
        let db = b.data_dir().join("state.db");
        let left = run(b.dir.path(), "sqlite3", &["-readonly", db.to_str().unwrap(), "SELECT count(*) FROM webhooks"]);
        assert_eq!(left, "0");
    }
}

// ---------------------------------------------------------------------------------
// End to end (needs the build pipeline: buildah, the `building` state)

/// Waits for a deployment to end, whatever state it passes through.
fn finish(c: &Client, dep: &str, secs: u64) -> Value {
    crate::deployments::until(secs, &format!("deployment {dep} ends"), || {
        let d = c.get(&format!("/v1/deployments/{dep}")).json();
        matches!(d["status"].as_str(), Some("live" | "failed" | "cancelled" | "superseded")).then_some(d)
    })
}

/// `Git` deployments over https and over ssh (with the project's deploy key) build
/// and go live; a webhook push then deploys the pushed commit; hostile sources are
/// refused at create.
#[test]
fn git_deployments_go_live_over_https_and_ssh_and_on_a_push() {
    if !(require_root() && require_busybox() && require_git_tools(true) && require_tool("buildah", &["--version"])) {
        return;
    }
    let tmp = TempDir::new("git-e2e");
    let d = tmp.path();
    let repo = Repo::make(d);
    let https = HttpsGit::start(d, &repo);
    let ssh = SshGit::start(d);
    let (node, admin) = crate::deployments::node(&format!(
        "[build]\ngit_ca_bundle = \"{}\"\ntimeout_seconds = 600\n",
        https.ca.display()
    ));
    let project = crate::deployments::project_id(&admin, "alpha");
    let svc = crate::deployments::service(
        &admin,
        json!({"project_id": project, "name": "web", "port": 8080, "health_check": {"path": "/", "interval_s": 1}}),
    );
    let deploy = |url: &str, r: &str| {
        let source = json!({"kind": "Git", "repo_url": url, "ref": r});
        admin.post("/v1/deployments", &json!({"service_id": svc, "source": source}))
    };

    // Hostile sources: a clear 4xx, nothing started.
    for (url, r) in [
        ("file:///etc", "main"),
        ("ext::sh -c touch% /tmp/pwned", "main"),
        ("-uhack", "main"),
        ("http://127.0.0.1:1/app.git", "main"),
        ("https://user:token@127.0.0.1/app.git", "main"),
        (https.url().as_str(), "-uhack"),
        (https.url().as_str(), "main..x"),
    ] {
        let resp = deploy(url, r);
        assert!(resp.status == 422 || resp.status == 400, "{url} {r}: {} {}", resp.status, resp.text());
    }
    assert!(deployments_of(&admin, &svc).is_empty());

    // https, a branch.
    let r = deploy(&https.url(), "main");
    assert_eq!(r.status, 201, "{}", r.text());
    let dep = r.json()["id"].as_str().unwrap().to_string();
    let out = finish(&admin, &dep, 600);
    assert_eq!(out["status"], "live", "{out}");
    let page = crate::deployments::via_ingress(&node, "web.alpha.localhost", "/");
    assert_eq!(page, Some((200, "v2".to_string())));

    // ssh with the deploy key, a tag.
    let creds = json!({"private_key": ssh.client_key, "known_hosts": ssh.known_hosts});
    let r = admin.post(&format!("/v1/projects/{project}/credentials/git"), &creds);
    assert_eq!(r.status, 201, "{}", r.text());
    let r = deploy(&ssh.url(&repo), "v1");
    assert_eq!(r.status, 201, "{}", r.text());
    let dep = r.json()["id"].as_str().unwrap().to_string();
    let out = finish(&admin, &dep, 600);
    assert_eq!(out["status"], "live", "{out}");
    assert_eq!(crate::deployments::via_ingress(&node, "web.alpha.localhost", "/"), Some((200, "v1".to_string())));

    // A wrong ref fails the deployment with a message that says so; v1 keeps serving.
    let r = deploy(&https.url(), "nope");
    assert_eq!(r.status, 201, "{}", r.text());
    let out = finish(&admin, r.json()["id"].as_str().unwrap(), 600);
    assert_eq!(out["status"], "failed", "{out}");
    assert!(out["error"].as_str().unwrap().contains("no such ref"), "{out}");
    assert_eq!(crate::deployments::via_ingress(&node, "web.alpha.localhost", "/"), Some((200, "v1".to_string())));

    // A webhook push of a new commit on main deploys it.
    let hook = admin.post(&format!("/v1/services/{svc}/webhook"), &json!({"repo_url": https.url(), "branch": "main"}));
    assert_eq!(hook.status, 201, "{}", hook.text());
    let secret = hook.json()["secret"].as_str().unwrap().to_string();
    let c3 = repo.push_main(d, "v3");
    let r = github(&node.b.client(), &svc, &secret, "push", "e2e-1", &push_body("refs/heads/main", &c3));
    assert_eq!(r.status, 202, "{}", r.text());
    let out = finish(&admin, r.json()["deployment_id"].as_str().unwrap(), 600);
    assert_eq!(out["status"], "live", "{out}");
    assert_eq!(crate::deployments::via_ingress(&node, "web.alpha.localhost", "/"), Some((200, "v3".to_string())));
}
