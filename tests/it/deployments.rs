//! Deployments for real: busybox httpd images pushed to the hosted registry,
//! rolled out to services on runc replicas, switched in the routing table with no
//! failed request, failed health checks, rollback, cancel, the deployment log over
//! SSE, auto-deploy on push, and a daemon killed mid-rollout.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Berth, Client, TempDir};

/// A daemon on a state dir of its own with names of its own (cgroup subtree,
/// links, netns, nftables table, address pool), so its replicas never meet another
/// test's. Dropping it kills the daemon and removes every replica, network and
/// cgroup it made, even when the test failed.
pub struct Node {
    pub b: Berth,
    work: TempDir,
    runtime: Arc<berth::runtime::container::Runtime>,
    net: berth::runtime::network::NetOptions,
}

fn net_options() -> berth::runtime::network::NetOptions {
    let tag = berth::ids::new_id("t").to_lowercase();
    let tag = tag[tag.len() - 4..].to_string();
    berth::runtime::network::NetOptions {
        link_prefix: format!("d{tag}"),
        netns_prefix: format!("berth-it-{tag}-"),
        nft_table: format!("berth_it_{tag}"),
        ..berth::runtime::network::NetOptions::new(crate::harness::test_pool(16))
    }
}

impl Node {
    /// A daemon with `extra` appended to its config (sections other than
    /// `[runtime]` and `[network]`, which the node sets).
    pub fn start(extra: &str) -> Node {
        let work = TempDir::new("dep");
        let net = net_options();
        let cgroup_prefix = net.netns_prefix.trim_end_matches('-').to_string();
        let run_dir = work.path().join("run");
        let config = format!(
            "run_dir = \"{}\"\n{extra}\n[runtime]\ncgroup_prefix = \"{cgroup_prefix}\"\n[network]\npool = \"{}\"\n\
             link_prefix = \"{}\"\nnetns_prefix = \"{}\"\nnft_table = \"{}\"\n",
            run_dir.display(),
            net.pool,
            net.link_prefix,
            net.netns_prefix,
            net.nft_table
        );
        let b = Berth::start(&config);
        let layout = berth::runtime::cgroups::Layout::for_self(&cgroup_prefix).expect("cgroup layout");
        let runtime = Arc::new(berth::runtime::container::Runtime::new(
            run_dir.join("runc"),
            layout,
            b.data_dir().join("containers"),
            PathBuf::from(env!("CARGO_BIN_EXE_berth")),
        ));
        Node { b, work, runtime, net }
    }

    /// Replica ids with container state on disk.
    pub fn containers(&self) -> Vec<String> {
        let mut v = self.runtime.list();
        v.sort();
        v
    }

    /// The runtime dir (runc's root, the shims' opened bundles).
    pub fn run_dir(&self) -> PathBuf {
        self.work.path().join("run")
    }

    /// The environment of a replica's init process, as the kernel holds it.
    pub fn environ(&self, replica: &str) -> Vec<String> {
        let pid = std::fs::read_to_string(self.runtime.state_dir(replica).join("init.pid")).unwrap();
        let bytes = std::fs::read(format!("/proc/{}/environ", pid.trim())).unwrap();
        bytes.split(|b| *b == 0).filter(|e| !e.is_empty()).map(|e| String::from_utf8_lossy(e).into_owned()).collect()
    }

    /// A replica's state directory (shim files, logs, bundle).
    pub fn runtime_state(&self, replica: &str) -> PathBuf {
        self.runtime.state_dir(replica)
    }

    /// The root filesystem of a replica, as mounted on the host.
    pub fn rootfs(&self, replica: &str) -> PathBuf {
        self.runtime.state_dir(replica).join("rootfs")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.b.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- the daemon's last log lines ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        self.b.kill9();
        // Builds a killed daemon leaves running (a test that failed mid-build): their
        // processes and cgroups.
        let layout = &self.runtime.layout;
        for (_, dir) in layout.dirs(&format!("{}/builds", layout.base)) {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let _ = berth::runtime::confined::Job::existing(layout, "builds", &name).remove();
                }
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = berth::store::Store::open(&self.b.data_dir().join("state.db")).unwrap();
            let ipam = Arc::new(berth::engine::ipam::StoreIpam::new(store.clone()));
            let nets = Arc::new(berth::runtime::network::Networks::new(self.net.clone(), ipam).unwrap());
            let engine = berth::engine::Engine::new(store.clone(), self.runtime.clone())
                .with_networks(nets.clone(), self.work.path().join("run").join("hosts"));
            for r in engine.list().await.unwrap_or_default() {
                let _ = engine.delete(&r.id).await;
            }
            for id in self.runtime.list() {
                let _ = self.runtime.delete("orphans", &id);
            }
            let _ = nets.teardown_all();
            store.close();
        });
        for d in crate::runtime::cgroup_dirs(&self.runtime.layout) {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

/// A tar layer of `(path, bytes, mode)` files (a mode of 0 makes a symlink to the bytes).
pub fn layer(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let mut h = tar::Header::new_ustar();
        if *mode == 0 {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            tar.append_link(&mut h, path, std::str::from_utf8(data).unwrap()).unwrap();
        } else {
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, path, *data).unwrap();
        }
    }
    tar.into_inner().unwrap()
}

/// Pushes an image of `layers` with `cmd` to `repo:tag`; returns its manifest digest.
pub fn push(c: &Client, repo: &str, tag: &str, layers: &[Vec<u8>], cmd: &[&str]) -> String {
    let diff_ids: Vec<String> = layers.iter().map(|l| crate::registry::digest(l)).collect();
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes();
    let refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
    crate::registry::push_image(c, repo, tag, &config, &refs);
    crate::registry::digest(&crate::registry::image_manifest(&config, &refs))
}

/// Busybox with `/bin/sh`, as the image's first layer.
pub fn busybox_layer() -> Vec<u8> {
    layer(&[("bin/busybox", &std::fs::read("/bin/busybox").unwrap(), 0o755), ("bin/sh", b"busybox", 0)])
}

/// The httpd command every web image runs.
pub const HTTPD: &[&str] = &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"];

/// A busybox httpd image serving `page` at `/` (and `/health` unless `healthy` is
/// false), with a CGI script at `/cgi-bin/env` that prints the environment.
pub fn push_web(c: &Client, repo: &str, tag: &str, page: &str, healthy: bool) -> String {
    let cgi = b"#!/bin/sh\necho 'Content-Type: text/plain'\necho\nenv\n";
    let mut files: Vec<(&str, &[u8], u32)> =
        vec![("www/index.html", page.as_bytes(), 0o644), ("www/cgi-bin/env", cgi, 0o755)];
    if healthy {
        files.push(("www/health", b"ok\n", 0o644));
    }
    push(c, repo, tag, &[busybox_layer(), layer(&files)], HTTPD)
}

/// Waits (up to `secs`) for `f` to return `Some`.
pub fn until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "after {secs} s: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for the deployment to reach a terminal status; returns it.
pub fn settle(c: &Client, dep: &str, secs: u64) -> Value {
    until(secs, &format!("deployment {dep} ends"), || {
        let d = c.get(&format!("/v1/deployments/{dep}")).json();
        (!matches!(d["status"].as_str(), Some("queued" | "building" | "pulling" | "starting"))).then_some(d)
    })
}

/// Creates a service; returns its id.
pub fn service(c: &Client, body: Value) -> String {
    let r = c.post("/v1/services", &body);
    assert_eq!(r.status, 201, "create service: {}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

/// Deploys `repo:reference` to the service; returns the deployment id.
pub fn deploy(c: &Client, service: &str, repo: &str, reference: &str) -> String {
    let r = c.post(
        "/v1/deployments",
        &json!({"service_id": service, "source": {"kind": "Image", "repository": repo, "reference": reference}}),
    );
    assert_eq!(r.status, 201, "deploy: {}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

/// `GET path` at a replica's `ip:port`: (status, body) or `None` when nothing answers.
pub fn fetch(address: &str, path: &str) -> Option<(u16, String)> {
    let client = Client { addr: address.parse().unwrap(), token: None };
    client.try_send("GET", path, None, &[]).ok().map(|r| (r.status, r.text()))
}

/// `GET path` through the daemon's ingress with `Host: host`: (status, body), or
/// `None` when the connection failed.
pub fn via_ingress(node: &Node, host: &str, path: &str) -> Option<(u16, String)> {
    crate::harness::get_as(node.b.ingress_addr(), host, path).ok().map(|r| (r.status, r.text()))
}

/// The backends the routing table holds for `host`, as `GET /v1/ingress/routes` shows them.
pub fn backends(c: &Client, host: &str) -> Option<Vec<String>> {
    let routes = c.get("/v1/ingress/routes?limit=100").json();
    routes["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"] == host)
        .map(|r| r["replicas"].as_array().unwrap().iter().map(|b| b["address"].as_str().unwrap().to_string()).collect())
}

/// A daemon with project `alpha`, a fast drain and health deadline, and an admin;
/// `deploy` holds `[deploy]` settings that replace those defaults, `extra` more
/// sections.
pub fn node_with(deploy: &str, extra: &str) -> (Node, Client) {
    let mut section = String::from("[deploy]\n");
    for (k, v) in [("drain_seconds", "1"), ("stop_grace_seconds", "2"), ("health_deadline_seconds", "30")] {
        if !deploy.contains(k) {
            section.push_str(&format!("{k} = {v}\n"));
        }
    }
    let node = Node::start(&format!("{section}{deploy}\n{extra}"));
    let admin = node.b.admin();
    assert_eq!(admin.post("/v1/projects", &json!({"name": "alpha"})).status, 201);
    (node, admin)
}

/// [`node_with`] the defaults.
pub fn node(extra: &str) -> (Node, Client) {
    node_with("", extra)
}

pub fn project_id(c: &Client, name: &str) -> String {
    let list = c.get("/v1/projects").json();
    list["data"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["id"].as_str().unwrap().to_string()
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Reads events from an SSE stream until `done` says so (or `secs` pass), then drops
/// the connection.
pub fn sse(
    c: &Client,
    path: &str,
    last_event_id: Option<&str>,
    secs: u64,
    done: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = std::net::TcpStream::connect(c.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", c.addr);
    if let Some(t) = &c.token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(id) = last_event_id {
        req.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains(" 200 "), "{path}: {line}");
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.trim_end().is_empty() {
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut text = String::new();
    let mut events = Vec::new();
    while Instant::now() < deadline {
        // One chunk of the chunked body.
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        let mut chunk = vec![0; n + 2];
        r.read_exact(&mut chunk).unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk[..n]));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut e = Event { id: None, event: None, data: String::new() };
            let mut any = false;
            for l in block.lines() {
                if let Some(v) = l.strip_prefix("id: ") {
                    e.id = Some(v.to_string());
                    any = true;
                } else if let Some(v) = l.strip_prefix("event: ") {
                    e.event = Some(v.to_string());
                    any = true;
                } else if let Some(v) = l.strip_prefix("data: ") {
                    e.data.push_str(v);
                    any = true;
                }
            }
            if any {
                events.push(e);
            }
        }
        if done(&events) {
            break;
        }
    }
    events
}

/// The whole state dir holds `needle` nowhere (files read whole, symlinks not followed).
pub fn nowhere_in(dir: &std::path::Path, needle: &str) -> Result<(), String> {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if m.is_dir() {
            // Container root filesystems are the image's files, mounted.
            if p.file_name().is_some_and(|n| n == "rootfs") {
                continue;
            }
            nowhere_in(&p, needle)?;
        } else if m.is_file() {
            let bytes = std::fs::read(&p).unwrap_or_default();
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                return Err(p.display().to_string());
            }
        }
    }
    Ok(())
}

#[test]
fn a_pushed_image_deploys_and_answers_at_its_replica_and_route() {
    if !crate::runtime::can_run() {
        return;
    }
    let (node, admin) = node("");
    let project = project_id(&admin, "alpha");
    let digest = push_web(&admin, "alpha/web", "v1", "hello from v1\n", true);
    let svc = service(
        &admin,
        json!({"project_id": project, "name": "web", "port": 8080, "health_check": {"path": "/health", "interval_s": 1}}),
    );
    let s = admin.get(&format!("/v1/services/{svc}")).json();
    assert_eq!((s["status"].as_str(), s["replicas"].as_u64()), (Some("not_deployed"), Some(1)), "{s}");
    assert_eq!(s["default_hostname"], "web.alpha.localhost");
    let dep = deploy(&admin, &svc, "alpha/web", "v1");
    let d = settle(&admin, &dep, 90);
    assert_eq!(d["status"], "live", "{d}");
    assert_eq!(d["image_digest"], digest.as_str());
    assert!(d["started_at"].is_string() && d["finished_at"].is_string(), "{d}");
    let s = admin.get(&format!("/v1/services/{svc}")).json();
    assert_eq!(
        (s["status"].as_str(), s["current_deployment_id"].as_str()),
        (Some("running"), Some(dep.as_str())),
        "{s}"
    );
    let instances = s["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1, "{s}");
    assert_eq!(
        (instances[0]["status"].as_str(), instances[0]["deployment_id"].as_str()),
        (Some("running"), Some(dep.as_str()))
    );
    let address = instances[0]["address"].as_str().unwrap().to_string();
    assert_eq!(fetch(&address, "/"), Some((200, "hello from v1\n".to_string())));
    assert_eq!(backends(&admin, "web.alpha.localhost"), Some(vec![address.clone()]));
    // From outside, through the ingress, by the default hostname.
    assert_eq!(via_ingress(&node, "web.alpha.localhost", "/"), Some((200, "hello from v1\n".to_string())));
    assert_eq!(
        via_ingress(&node, "WEB.alpha.localhost:8080", "/").map(|r| r.0),
        Some(200),
        "host names ignore case and port"
    );
    assert_eq!(via_ingress(&node, "other.alpha.localhost", "/").map(|r| r.0), Some(404));
    let seen = admin.get(&format!("/v1/services/{svc}/requests?limit=10")).json();
    let last = &seen["data"][0];
    assert_eq!(
        (last["method"].as_str(), last["path"].as_str(), last["status"].as_u64()),
        (Some("GET"), Some("/"), Some(200)),
        "{seen}"
    );
    assert_eq!(last["upstream"].as_str().unwrap().split(':').next(), address.split(':').next(), "{seen}");
    assert_eq!(admin.get(&format!("/v1/services/{svc}/requests?limit=0")).status, 400);
    let list = admin.get(&format!("/v1/services/{svc}/deployments")).json();
    assert_eq!(list["data"][0]["id"], dep.as_str());
    assert_eq!(list["data"][0]["source"], json!({"kind": "Image", "repository": "alpha/web", "reference": "v1"}));

    // The deployment's log over SSE: numbered from 1, ending with the final status;
    // a resume from any line goes on right after it.
    let path = format!("/v1/deployments/{dep}/logs/stream");
    let all = sse(&admin, &path, None, 30, |e| e.last().is_some_and(|e| e.event.as_deref() == Some("end")));
    let lines: Vec<&Event> = all.iter().filter(|e| e.id.is_some()).collect();
    let ids: Vec<String> = lines.iter().map(|e| e.id.clone().unwrap()).collect();
    let expected: Vec<String> = (1..=ids.len()).map(|i| i.to_string()).collect();
    assert_eq!(ids, expected, "{all:?}");
    let text: Vec<String> = lines
        .iter()
        .map(|e| serde_json::from_str::<Value>(&e.data).unwrap()["line"].as_str().unwrap().to_string())
        .collect();
    assert!(text.iter().any(|l| l.starts_with("live: web.alpha.localhost")), "{text:?}");
    assert!(text.iter().any(|l| l.contains("passed its health check")), "{text:?}");
    assert_eq!(all.last().unwrap().event.as_deref(), Some("end"));
    let rest = sse(&admin, &path, Some("3"), 30, |e| e.last().is_some_and(|e| e.event.as_deref() == Some("end")));
    let rest_ids: Vec<String> = rest.iter().filter_map(|e| e.id.clone()).collect();
    assert_eq!(rest_ids, ids[3..].to_vec());

    // Deleting the service takes its replica, routes and volumes.
    assert_eq!(admin.delete(&format!("/v1/services/{svc}")).status, 204);
    assert_eq!(admin.get(&format!("/v1/services/{svc}")).status, 404);
    assert_eq!(admin.get(&format!("/v1/deployments/{dep}")).status, 404);
    assert_eq!(backends(&admin, "web.alpha.localhost"), None);
    assert_eq!(via_ingress(&node, "web.alpha.localhost", "/").map(|r| r.0), Some(404));
    assert!(node.containers().is_empty(), "{:?}", node.containers());
    assert_eq!(fetch(&address, "/"), None, "nothing answers at the old address");
    // An empty project can go now.
    assert_eq!(admin.delete(&format!("/v1/projects/{project}")).status, 409, "the repository is still there");
}

/// The ids of the service's instances.
fn instance_ids(c: &Client, svc: &str) -> Vec<String> {
    c.get(&format!("/v1/services/{svc}")).json()["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

/// Hits the service through the daemon's ingress, by host name, until stopped;
/// returns (requests, failures, last body).
fn load_loop(
    ingress: std::net::SocketAddr,
    host: &'static str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(usize, Vec<String>, String)> {
    std::thread::spawn(move || {
        let (mut n, mut failures, mut last) = (0usize, Vec::new(), String::new());
        let deadline = Instant::now() + Duration::from_secs(300);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
            match crate::harness::get_as(ingress, host, "/") {
                Ok(r) if r.status == 200 => last = r.text(),
                Ok(r) => failures.push(format!("{}: {}", r.status, r.text())),
                Err(e) => failures.push(e.to_string()),
            }
            n += 1;
        }
        (n, failures, last)
    })
}

#[test]
fn redeploys_drop_no_request_a_failing_one_changes_nothing_and_rollback_runs_the_old_digest() {
    if !crate::runtime::can_run() {
        return;
    }
    let (node, admin) = node_with("drain_seconds = 3", "[registry]\ngc_grace_seconds = 0\n");
    let project = project_id(&admin, "alpha");
    let d1 = push_web(&admin, "alpha/web", "v1", "v1\n", true);
    let svc = service(
        &admin,
        json!({"project_id": project, "name": "web", "port": 8080, "replicas": 2,
               "health_check": {"path": "/health", "interval_s": 1}}),
    );
    let dep1 = deploy(&admin, &svc, "alpha/web", "v1");
    assert_eq!(settle(&admin, &dep1, 90)["status"], "live");
    let host = "web.alpha.localhost";
    until(30, "two routed", || (backends(&admin, host)?.len() == 2).then_some(()));

    // v1 → v2 under load: every request answered, the last ones by v2.
    let d2 = push_web(&admin, "alpha/web", "v2", "v2\n", true);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = load_loop(node.b.ingress_addr(), host, stop.clone());
    let dep2 = deploy(&admin, &svc, "alpha/web", "v2");
    let d = settle(&admin, &dep2, 90);
    assert_eq!((d["status"].as_str(), d["image_digest"].as_str()), (Some("live"), Some(d2.as_str())), "{d}");
    // Past the drain: the old replicas are gone and v2 alone answers.
    until(60, "v1's replicas removed", || (node.containers().len() == 2).then_some(()));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (requests, failures, last) = load.join().unwrap();
    assert!(failures.is_empty(), "{} of {requests} requests failed: {failures:?}", failures.len());
    assert!(requests > 20, "{requests} requests");
    assert_eq!(last, "v2\n");
    assert_eq!(admin.get(&format!("/v1/deployments/{dep1}")).json()["status"], "superseded");
    let v2_replicas = instance_ids(&admin, &svc);
    let v2_routes = backends(&admin, host).unwrap();

    // v3 never passes its health check: failed, v2 untouched, nothing of v3 left.
    push_web(&admin, "alpha/web", "v3", "v3\n", false);
    let dep3 = deploy(&admin, &svc, "alpha/web", "v3");
    let d = settle(&admin, &dep3, 90);
    assert_eq!(d["status"], "failed", "{d}");
    assert!(d["error"].as_str().unwrap().contains("health check"), "{d}");
    assert_eq!(instance_ids(&admin, &svc), v2_replicas);
    assert_eq!(
        node.containers(),
        v2_replicas.iter().cloned().collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>()
    );
    assert_eq!(backends(&admin, host).unwrap(), v2_routes);
    let s = admin.get(&format!("/v1/services/{svc}")).json();
    assert_eq!(s["current_deployment_id"], dep2.as_str());
    for a in &v2_routes {
        assert_eq!(fetch(a, "/"), Some((200, "v2\n".to_string())));
    }

    // Rollback to v1's deployment: its digest, with the tag gone from the registry
    // and the registry collected meanwhile (a rollback's image is kept).
    assert_eq!(admin.delete("/v2/alpha/web/manifests/v1").status, 202);
    assert_eq!(admin.post("/v1/registry/gc", &json!({})).status, 200);
    let r = admin.post(&format!("/v1/deployments/{dep1}/rollback"), &json!({}));
    assert_eq!(r.status, 201, "{}", r.text());
    let back = r.json();
    assert_eq!((back["image_digest"].as_str(), back["rollback_of"].as_str()), (Some(d1.as_str()), Some(dep1.as_str())));
    let d = settle(&admin, back["id"].as_str().unwrap(), 90);
    assert_eq!(d["status"], "live", "{d}");
    until(60, "serving v1 again", || {
        let table = backends(&admin, host)?;
        (table.len() == 2 && table.iter().all(|a| fetch(a, "/") == Some((200, "v1\n".to_string())))).then_some(())
    });
    until(30, "the ingress serves v1 again", || {
        (via_ingress(&node, host, "/") == Some((200, "v1\n".to_string()))).then_some(())
    });
    assert_eq!(admin.get(&format!("/v1/deployments/{dep2}")).json()["status"], "superseded");
}

#[test]
fn cancel_stops_a_rollout_and_the_previous_deployment_keeps_serving() {
    if !crate::runtime::can_run() {
        return;
    }
    let (node, admin) = node("");
    let project = project_id(&admin, "alpha");
    push_web(&admin, "alpha/web", "v1", "v1\n", true);
    // An image whose server never comes up: its rollout waits for the port.
    push(&admin, "alpha/web", "mute", &[busybox_layer()], &["/bin/busybox", "sleep", "3600"]);
    let svc = service(
        &admin,
        json!({"project_id": project, "name": "web", "port": 8080, "health_check": {"path": "/health", "interval_s": 1}}),
    );
    let dep1 = deploy(&admin, &svc, "alpha/web", "v1");
    assert_eq!(settle(&admin, &dep1, 90)["status"], "live");
    let v1 = instance_ids(&admin, &svc);
    let dep2 = deploy(&admin, &svc, "alpha/web", "mute");
    until(60, "the new replica is up", || (instance_ids(&admin, &svc).len() == 2).then_some(()));
    let r = admin.post(&format!("/v1/deployments/{dep2}/cancel"), &json!({}));
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("cancelled")), "{}", r.text());
    assert_eq!(instance_ids(&admin, &svc), v1);
    assert_eq!(node.containers(), v1);
    let s = admin.get(&format!("/v1/services/{svc}")).json();
    assert_eq!((s["current_deployment_id"].as_str(), s["status"].as_str()), (Some(dep1.as_str()), Some("running")));
    let addr = s["instances"][0]["address"].as_str().unwrap().to_string();
    assert_eq!(fetch(&addr, "/"), Some((200, "v1\n".to_string())));
    let r = admin.post(&format!("/v1/deployments/{dep2}/cancel"), &json!({}));
    assert_eq!((r.status, r.code().as_str()), (409, "conflict"), "{}", r.text());
    let r = admin.post(&format!("/v1/deployments/{dep1}/cancel"), &json!({}));
    assert_eq!(r.status, 409, "a live deployment cannot be cancelled");
    let log = sse(&admin, &format!("/v1/deployments/{dep2}/logs/stream"), None, 30, |e| {
        e.last().is_some_and(|e| e.event.as_deref() == Some("end"))
    });
    assert!(log.iter().any(|e| e.data.contains("\"cancelled\"")), "{log:?}");
}

#[test]
fn bad_deployments_are_refused_and_state_stays_consistent() {
    if !crate::runtime::can_run() {
        return;
    }
    let (_node, admin) = node("");
    let project = project_id(&admin, "alpha");
    let beta = admin.post("/v1/projects", &json!({"name": "beta"})).json()["id"].as_str().unwrap().to_string();
    push_web(&admin, "alpha/web", "v1", "v1\n", true);
    push_web(&admin, "beta/web", "v1", "beta\n", true);
    let tiny = layer(&[("hello", b"hi\n", 0o644)]);
    push(&admin, "alpha/tiny", "v1", &[tiny], &["/hello"]);
    let svc = service(&admin, json!({"project_id": project, "name": "web", "port": 8080, "replicas": 0}));
    let other = service(&admin, json!({"project_id": project, "name": "other", "port": 8080, "replicas": 0}));
    let src = |repo: &str, reference: &str| json!({"kind": "Image", "repository": repo, "reference": reference});
    let cases = [
        (json!({"service_id": svc, "source": src("alpha/nope", "v1")}), 404, "repository alpha/nope not found"),
        (json!({"service_id": svc, "source": src("beta/web", "v1")}), 404, "repository beta/web not found"),
        (json!({"service_id": svc, "source": src("alpha/web", "v9")}), 404, "v9"),
        (json!({"service_id": svc, "source": src("alpha/web", "no spaces")}), 400, "neither a tag nor a digest"),
        (json!({"service_id": svc, "source": src("alpha/web", "sha256:abc")}), 400, "digest"),
        (json!({"service_id": svc, "source": src("NOPE", "v1")}), 400, "repository name"),
        (
            json!({"service_id": svc, "source": {"kind": "ExternalImage", "image": "docker.io/library/Nginx::1"}}),
            400,
            "Nginx::1",
        ),
        (
            json!({"service_id": svc, "source": {"kind": "Git", "repo_url": "https://example.com/x.git", "ref": "main",
                   "dockerfile": "../Dockerfile"}}),
            422,
            "inside the context",
        ),
        (json!({"service_id": svc, "source": {"kind": "Upload", "upload_id": "upl_x"}}), 422, "not found"),
        (
            json!({"service_id": svc, "source": {"kind": "Upload", "upload_id": "upl_x", "build_args": {"1A": "x"}}}),
            422,
            "build arg name",
        ),
        (json!({"service_id": svc, "source": {"kind": "Floppy"}}), 400, "Floppy"),
        (json!({"service_id": "svc_00000000000000000000000000", "source": src("alpha/web", "v1")}), 404, "not found"),
        (json!({"service_id": svc}), 400, "source"),
    ];
    for (body, status, says) in cases {
        let r = admin.post("/v1/deployments", &body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert!(r.text().contains(says), "{body}: {}", r.text());
    }
    let list = admin.get(&format!("/v1/services/{svc}/deployments")).json();
    assert_eq!(list["data"], json!([]), "nothing recorded for a refused deployment");
    let _ = beta;

    // A deployment of `other`, live with no replicas; its rollback for `svc` is refused.
    let dep = deploy(&admin, &other, "alpha/tiny", "v1");
    assert_eq!(settle(&admin, &dep, 60)["status"], "live");
    let r = admin.post(&format!("/v1/deployments/{dep}/rollback"), &json!({"service_id": svc}));
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("is a deployment of service"), "{}", r.text());
    let r = admin.post(&format!("/v1/deployments/{dep}/cancel"), &json!({}));
    assert_eq!(r.status, 409, "{}", r.text());
    // An image that cannot run fails its deployment (with a reason) and changes nothing.
    let not_a_tar = crate::registry::random(2000, 3);
    push(&admin, "alpha/broken", "v1", &[not_a_tar], &["/x"]);
    let bad = deploy(&admin, &other, "alpha/broken", "v1");
    let d = settle(&admin, &bad, 60);
    assert_eq!(d["status"], "failed", "{d}");
    assert!(d["error"].as_str().unwrap().starts_with("image sha256:"), "{d}");
    let r = admin.post(&format!("/v1/deployments/{bad}/rollback"), &json!({}));
    assert_eq!(r.status, 422, "a deployment that never went live: {}", r.text());
    assert_eq!(admin.get(&format!("/v1/services/{other}")).json()["current_deployment_id"], dep.as_str());
    // The project holds services: 409.
    assert_eq!(admin.delete(&format!("/v1/projects/{project}")).status, 409);
}

#[test]
fn a_daemon_killed_mid_rollout_ends_it_and_keeps_serving_the_previous_one() {
    if !crate::runtime::can_run() {
        return;
    }
    let (mut node, admin) = node("");
    let project = project_id(&admin, "alpha");
    push_web(&admin, "alpha/web", "v1", "v1\n", true);
    push(&admin, "alpha/web", "mute", &[busybox_layer()], &["/bin/busybox", "sleep", "3600"]);
    let svc = service(
        &admin,
        json!({"project_id": project, "name": "web", "port": 8080, "health_check": {"path": "/health", "interval_s": 1}}),
    );
    let dep1 = deploy(&admin, &svc, "alpha/web", "v1");
    assert_eq!(settle(&admin, &dep1, 90)["status"], "live");
    let v1 = instance_ids(&admin, &svc);
    let addr =
        admin.get(&format!("/v1/services/{svc}")).json()["instances"][0]["address"].as_str().unwrap().to_string();

    // kill -9 with a live service: it serves while the daemon is down and is
    // re-adopted, not duplicated.
    node.b.kill9();
    assert_eq!(fetch(&addr, "/"), Some((200, "v1\n".to_string())), "serving without the daemon");
    node.b.spawn();
    let admin = node.b.admin_session();
    assert_eq!(instance_ids(&admin, &svc), v1);
    assert_eq!(node.containers(), v1);
    assert_eq!(backends(&admin, "web.alpha.localhost"), Some(vec![addr.clone()]), "the routes come back");
    assert_eq!(via_ingress(&node, "web.alpha.localhost", "/"), Some((200, "v1\n".to_string())));

    // kill -9 mid-rollout.
    let dep2 = deploy(&admin, &svc, "alpha/web", "mute");
    let v2 = until(60, "the new replica is up", || instance_ids(&admin, &svc).into_iter().find(|id| !v1.contains(id)));
    node.b.kill9();
    node.b.spawn();
    let admin = node.b.admin_session();
    let d = admin.get(&format!("/v1/deployments/{dep2}")).json();
    assert_eq!(
        (d["status"].as_str(), d["error"].as_str()),
        (Some("failed"), Some("interrupted by a daemon restart")),
        "{d}"
    );
    assert_eq!(instance_ids(&admin, &svc), v1);
    assert_eq!(node.containers(), v1, "no orphan container");
    assert_eq!(backends(&admin, "web.alpha.localhost"), Some(vec![addr.clone()]));
    assert_eq!(fetch(&addr, "/"), Some((200, "v1\n".to_string())));
    // Nothing of the interrupted replica is left: mount, network namespace, cgroup.
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(&v2), "a mount of {v2} is left");
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(!netns.iter().any(|n| n.contains(&v2)), "{netns:?}");
    let cgroups = crate::runtime::cgroup_dirs(&node.runtime.layout);
    assert!(!cgroups.iter().any(|c| c.to_string_lossy().contains(&v2)), "{cgroups:?}");
    let s = admin.get(&format!("/v1/services/{svc}")).json();
    assert_eq!((s["current_deployment_id"].as_str(), s["status"].as_str()), (Some(dep1.as_str()), Some("running")));
    assert_eq!(via_ingress(&node, "web.alpha.localhost", "/"), Some((200, "v1\n".to_string())));
}

#[test]
fn a_push_of_a_followed_tag_deploys_it() {
    if !crate::runtime::can_run() {
        return;
    }
    let (_node, admin) = node("");
    let project = project_id(&admin, "alpha");
    let svc = service(
        &admin,
        json!({"project_id": project, "name": "web", "port": 8080, "follow": {"repository": "alpha/web", "tag": "main"},
               "health_check": {"path": "/health", "interval_s": 1}}),
    );
    let live_digest = |admin: &Client| {
        let s = admin.get(&format!("/v1/services/{svc}")).json();
        let dep = s["current_deployment_id"].as_str()?.to_string();
        let d = admin.get(&format!("/v1/deployments/{dep}")).json();
        (d["status"] == "live").then(|| d["image_digest"].as_str().unwrap().to_string())
    };
    // Another tag deploys nothing.
    push_web(&admin, "alpha/web", "other", "other\n", true);
    let d1 = push_web(&admin, "alpha/web", "main", "first\n", true);
    until(90, "the first push is live", || (live_digest(&admin)? == d1).then_some(()));
    let d2 = push_web(&admin, "alpha/web", "main", "second\n", true);
    until(90, "the second push is live", || (live_digest(&admin)? == d2).then_some(()));
    let list = admin.get(&format!("/v1/services/{svc}/deployments")).json();
    let deps = list["data"].as_array().unwrap();
    assert_eq!(deps.len(), 2, "{list}");
    assert_eq!(deps[0]["source"], json!({"kind": "Image", "repository": "alpha/web", "reference": "main"}));
    until(30, "the second image answers", || {
        let s = admin.get(&format!("/v1/services/{svc}")).json();
        let current =
            s["instances"].as_array()?.iter().find(|i| i["deployment_id"] == s["current_deployment_id"])?.clone();
        (fetch(current["address"].as_str()?, "/")? == (200, "second\n".to_string())).then_some(())
    });
}
