//! The engine over real containers: re-adoption after the daemon goes away, exits
//! recorded while it was gone, leftovers removed, restart policies, replicas stopped
//! for a host shutdown.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::engine::{Engine, ReplicaConfig, RestartPolicy, RootSource};
use berth::store::Store;

use crate::runtime::{Fixture, can_run};

fn config(f: &Fixture, script: &str, restart: RestartPolicy) -> ReplicaConfig {
    shell_replica(&f.project, &f.rootfs, script, restart)
}

/// A replica of `project` running `script` with busybox's sh from the directory
/// `rootfs`, with small limits and no network.
fn shell_replica(project: &str, rootfs: &std::path::Path, script: &str, restart: RestartPolicy) -> ReplicaConfig {
    ReplicaConfig {
        project_id: project.into(),
        service: "web".into(),
        root: RootSource::Rootfs(rootfs.to_path_buf()),
        args: vec!["/bin/busybox".into(), "sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        memory_bytes: Some(64 << 20),
        cpus: None,
        pids: Some(64),
        restart,
        network: false,
        netns: None,
        hosts_file: None,
        resolv_file: None,
        volumes: vec![],
        cmd: None,
        service_id: None,
        deployment_id: None,
        job_run: None,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Network names and an address pool of a test's own, so tests run side by side
/// and never touch the host's berth names; `link` starts the interface names.
fn test_net_options(link: char) -> berth::runtime::network::NetOptions {
    let tag = berth::ids::new_id("t").to_lowercase();
    let tag = tag[tag.len() - 4..].to_string();
    berth::runtime::network::NetOptions {
        link_prefix: format!("{link}{tag}"),
        netns_prefix: format!("berth-it-{tag}-"),
        nft_table: format!("berth_it_{tag}"),
        ..berth::runtime::network::NetOptions::new(crate::harness::test_pool(16))
    }
}

/// Tears a test's networks down when dropped, even when the test failed.
struct NetGuard(Arc<berth::runtime::network::Networks>);

impl Drop for NetGuard {
    fn drop(&mut self) {
        let _ = self.0.teardown_all();
    }
}

fn test_networks(store: &Store, opts: &berth::runtime::network::NetOptions) -> Arc<berth::runtime::network::Networks> {
    let ipam = Arc::new(berth::engine::ipam::StoreIpam::new(store.clone()));
    Arc::new(berth::runtime::network::Networks::new(opts.clone(), ipam).unwrap())
}

/// Splits a fixture's runtime out so two engines (before and after a "restart")
/// can share it.
fn shared(f: &mut Fixture) -> Arc<berth::runtime::container::Runtime> {
    let rt = berth::runtime::container::Runtime::new(
        f.rt.runc.root.clone(),
        f.rt.layout.clone(),
        f.rt.containers_dir.clone(),
        f.rt.shim_exe.clone(),
    );
    Arc::new(rt)
}

#[test]
fn replicas_survive_the_engine_and_are_re_adopted() {
    if !can_run() {
        return;
    }
    let mut f = Fixture::new();
    let runtime = shared(&mut f);
    let db = f.rt.containers_dir.parent().unwrap().join("state.db");
    let tokio = rt();
    let (serving, quitter) = tokio.block_on(async {
        let store = Store::open(&db).unwrap();
        let engine = Engine::new(store.clone(), runtime.clone());
        let a = engine.create(config(&f, "while :; do echo tick; sleep 0.1; done", RestartPolicy::No)).await.unwrap();
        let b = engine.create(config(&f, "sleep 1; exit 7", RestartPolicy::No)).await.unwrap();
        assert_eq!((a.state.as_str(), b.state.as_str()), ("running", "running"));
        store.close();
        (a, b)
    });
    // The "daemon" is gone; nothing stops the shims: the ticker goes on logging and
    // the quitter exits on its own.
    let gone_at = berth::ids::now_rfc3339();
    until_shims_did(&runtime, &serving.id, &gone_at, 10, &quitter.id);
    std::fs::create_dir_all(runtime.containers_dir.join("rep_leftover")).unwrap();

    tokio.block_on(async {
        let store = Store::open(&db).unwrap();
        let engine = Engine::new(store.clone(), runtime.clone());
        engine.reconcile().await.unwrap();
        let a = engine.get(&serving.id).await.unwrap();
        assert_eq!(a.state, "running", "{a:?}");
        assert_eq!(a.pid, serving.pid, "the same process, re-adopted");
        let logs = engine.logs(&serving.id, 1000).await.unwrap();
        let meanwhile = logs.iter().filter(|l| l.log == "tick" && l.time > gone_at).count();
        assert!(meanwhile >= 10, "logs written while the engine was away are there: {meanwhile}");
        let b = engine.get(&quitter.id).await.unwrap();
        assert_eq!((b.state.as_str(), b.exit_code), ("exited", Some(7)), "{b:?}");
        assert!(!runtime.containers_dir.join("rep_leftover").exists(), "state with no replica is removed");
        for r in [&serving, &quitter] {
            engine.delete(&r.id).await.unwrap();
        }
        assert!(engine.list().await.unwrap().is_empty());
        store.close();
    });
}

/// Waits (up to 30 s) until the container `ticker` has logged `ticks` "tick" lines
/// after `since` and the container `quitter` has exited, both seen by their shims
/// alone.
fn until_shims_did(
    runtime: &berth::runtime::container::Runtime,
    ticker: &str,
    since: &str,
    ticks: usize,
    quitter: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logged = runtime.logs(ticker, 1000).iter().filter(|l| l.log == "tick" && l.time.as_str() > since).count();
        let status = runtime.status(quitter);
        if logged >= ticks && status.state == berth::runtime::shim::State::Exited {
            return;
        }
        assert!(Instant::now() < deadline, "after 30 s: {logged} ticks logged, the quitter is {status:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The parent of a process (the shim, for a container's init).
fn parent_of(pid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("PPid:")).unwrap().trim().parse().unwrap()
}

/// What a host restart leaves: replicas in SQLite whose shims, containers and
/// overlay mounts are gone without an exit record, their writable layers and logs on
/// disk. A replica with a restart policy comes back, with what it wrote and logged
/// before; one without is marked failed and cleaned up.
#[test]
fn replicas_come_back_after_a_host_restart() {
    if !can_run() {
        return;
    }
    let mut f = Fixture::new();
    let runtime = shared(&mut f);
    let db = f.rt.containers_dir.parent().unwrap().join("state.db");
    let hosts = f.rt.containers_dir.parent().unwrap().join("hosts");
    let net_opts = test_net_options('h');
    let tokio = rt();
    let script = "if [ -e /data/mark ]; then echo again; else echo first; touch /data/mark; fi; \
                  echo served > /data/index.html; exec httpd -f -p 8080 -h /data";
    let mut guards = Vec::new();
    let (kept, dropped) = tokio.block_on(async {
        let store = Store::open(&db).unwrap();
        let nets = test_networks(&store, &net_opts);
        guards.push(NetGuard(nets.clone()));
        let engine = Engine::new(store.clone(), runtime.clone()).with_networks(nets, hosts.clone());
        let mut cfg = config(&f, script, RestartPolicy::Always);
        // The fixture's root filesystem as an image's one layer: an overlay with a
        // writable layer of the replica's own.
        cfg.root = RootSource::Layers(vec![f.rootfs.clone()]);
        cfg.network = true;
        let kept = engine.create(cfg).await.unwrap();
        let mut cfg = config(&f, "while :; do sleep 0.1; done", RestartPolicy::No);
        cfg.root = RootSource::Layers(vec![f.rootfs.clone()]);
        let dropped = engine.create(cfg).await.unwrap();
        assert_eq!((kept.state.as_str(), dropped.state.as_str()), ("running", "running"), "{kept:?} {dropped:?}");
        store.close();
        (kept, dropped)
    });
    let address: std::net::Ipv4Addr = kept.address.as_deref().expect("an address").parse().unwrap();
    assert_eq!(answers(address, Duration::from_secs(20)).as_deref(), Some("served\n"));

    // The host restarts: shims and containers die without an exit record; mounts,
    // network namespaces (and with them the veths) and bridges go.
    for r in [&kept, &dropped] {
        let init = r.pid.unwrap();
        let shim = parent_of(init);
        // SAFETY: signalling the shim and the container this test started.
        unsafe {
            libc::kill(shim, libc::SIGKILL);
            libc::kill(init, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{init}")).exists() {
            assert!(Instant::now() < deadline, "{init} did not die");
            std::thread::sleep(Duration::from_millis(10));
        }
        berth::runtime::rootfs::unmount(&runtime.state_dir(&r.id).join("rootfs")).unwrap();
    }
    let netns = format!("{}{}", net_opts.netns_prefix, kept.id);
    let ip = |args: &[&str]| assert!(Command::new("ip").args(args).status().unwrap().success(), "ip {args:?}");
    ip(&["netns", "delete", &netns]);
    let bridges: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with(&net_opts.link_prefix) && std::path::Path::new(&format!("/sys/class/net/{n}/bridge")).exists()
        })
        .collect();
    assert_eq!(bridges.len(), 1, "{bridges:?}");
    ip(&["link", "delete", &bridges[0]]);
    assert_eq!(answers(address, Duration::from_millis(300)), None, "nothing answers after the restart");

    tokio.block_on(async {
        // A new daemon's engine and networks over the same state.
        let store = Store::open(&db).unwrap();
        let nets = test_networks(&store, &net_opts);
        guards.push(NetGuard(nets.clone()));
        let mut engine = Engine::new(store.clone(), runtime.clone()).with_networks(nets, hosts.clone());
        engine.backoff_start_s = 0;
        engine.reconcile().await.unwrap();
        let d = engine.get(&dropped.id).await.unwrap();
        assert_eq!(d.state, "failed", "{d:?}");
        assert!(!runtime.state_dir(&dropped.id).exists(), "a replica without a restart policy is cleaned up");
        engine.tick().await.unwrap();
        let k = engine.get(&kept.id).await.unwrap();
        assert_eq!((k.state.as_str(), k.restarts), ("running", 1), "{k:?}");
        assert_ne!(k.pid, kept.pid);
        assert_eq!(k.address, kept.address, "the same address");
        assert!(berth::runtime::rootfs::is_mounted(&runtime.state_dir(&kept.id).join("rootfs")));
        assert_eq!(answers(address, Duration::from_secs(20)).as_deref(), Some("served\n"), "serving again");
        let lines: Vec<String> = engine.logs(&kept.id, 100).await.unwrap().into_iter().map(|l| l.log).collect();
        assert!(lines.contains(&"again".to_string()), "it came back with its writable layer: {lines:?}");
        assert_eq!(lines.first().map(String::as_str), Some("first"), "the logs from before are kept: {lines:?}");
        for r in [&kept, &dropped] {
            engine.delete(&r.id).await.unwrap();
        }
        store.close();
    });
}

/// A host shutdown: the daemon stops every replica at once, SIGKILLing after the
/// grace one whose PID 1 ignores SIGTERM, and records them so that after the boot
/// their restart policy brings them back, even one that exited cleanly on SIGTERM
/// under `on-failure`; one without a policy stays stopped.
#[test]
fn a_host_shutdown_stops_replicas_and_their_policies_bring_them_back() {
    if !can_run() {
        return;
    }
    let mut f = Fixture::new();
    let runtime = shared(&mut f);
    let db = f.rt.containers_dir.parent().unwrap().join("state.db");
    let tokio = rt();
    let polite = "trap 'exit 0' TERM; while :; do sleep 0.1; done";
    let (stubborn, clean, never) = tokio.block_on(async {
        let store = Store::open(&db).unwrap();
        let engine = Engine::new(store.clone(), runtime.clone());
        // PID 1 of its namespace with no handler: SIGTERM does nothing to it.
        let stubborn = engine.create(config(&f, "while :; do sleep 0.1; done", RestartPolicy::Always)).await.unwrap();
        let clean = engine.create(config(&f, polite, RestartPolicy::OnFailure)).await.unwrap();
        let never = engine.create(config(&f, polite, RestartPolicy::No)).await.unwrap();
        // Let the shells install their traps.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        assert_eq!(engine.stop_for_host_shutdown(Duration::from_secs(2)).await.unwrap(), 3);
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(8), "stopped together in {took:?}");
        for r in [&stubborn, &clean, &never] {
            assert_eq!(runtime.status(&r.id).state, berth::runtime::shim::State::Exited, "{} still runs", r.id);
            assert!(!std::path::Path::new(&format!("/proc/{}", r.pid.unwrap())).exists());
        }
        for r in [&stubborn, &clean] {
            let got = engine.get(&r.id).await.unwrap();
            assert_eq!((got.state.as_str(), got.exit_code, got.signal), ("exited", None, None), "{got:?}");
            assert!(got.error.as_deref().unwrap_or_default().contains("host"), "{got:?}");
        }
        let n = engine.get(&never.id).await.unwrap();
        assert_eq!((n.state.as_str(), n.exit_code), ("stopped", Some(0)), "{n:?}");
        store.close();
        (stubborn, clean, never)
    });

    tokio.block_on(async {
        // The next boot's daemon.
        let store = Store::open(&db).unwrap();
        let mut engine = Engine::new(store.clone(), runtime.clone());
        engine.backoff_start_s = 0;
        engine.reconcile().await.unwrap();
        engine.tick().await.unwrap();
        for r in [&stubborn, &clean] {
            let got = engine.get(&r.id).await.unwrap();
            assert_eq!((got.state.as_str(), got.restarts), ("running", 1), "{got:?}");
        }
        assert_eq!(engine.get(&never.id).await.unwrap().state, "stopped");
        for r in [&stubborn, &clean, &never] {
            engine.delete(&r.id).await.unwrap();
        }
        store.close();
    });
}

#[test]
fn restart_policies_back_off_and_detect_crash_loops() {
    if !can_run() {
        return;
    }
    let mut f = Fixture::new();
    let runtime = shared(&mut f);
    let db = f.rt.containers_dir.parent().unwrap().join("state.db");
    rt().block_on(async {
        let store = Store::open(&db).unwrap();
        let mut engine = Engine::new(store.clone(), runtime.clone());
        engine.backoff_start_s = 0;
        let crashing = engine.create(config(&f, "echo boot; exit 1", RestartPolicy::OnFailure)).await.unwrap();
        let done = engine.create(config(&f, "exit 0", RestartPolicy::OnFailure)).await.unwrap();
        let never = engine.create(config(&f, "exit 2", RestartPolicy::No)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            engine.tick().await.unwrap();
            if engine.get(&crashing.id).await.unwrap().state == "crash_loop" || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let c = engine.get(&crashing.id).await.unwrap();
        assert_eq!(c.state, "crash_loop", "{c:?}");
        assert_eq!(c.restarts, 5);
        assert_eq!(c.exit_code, Some(1));
        let boots = engine.logs(&crashing.id, 100).await.unwrap().iter().filter(|l| l.log == "boot").count();
        assert_eq!(boots, 6, "one log across restarts: the first run and five restarts");
        let d = engine.get(&done.id).await.unwrap();
        assert_eq!(
            (d.state.as_str(), d.restarts, d.exit_code),
            ("exited", 0, Some(0)),
            "on-failure leaves a clean exit alone"
        );
        let n = engine.get(&never.id).await.unwrap();
        assert_eq!((n.state.as_str(), n.restarts, n.exit_code), ("exited", 0, Some(2)));
        for r in [&crashing, &done, &never] {
            engine.delete(&r.id).await.unwrap();
        }
        store.close();
    });
}

/// Layers in the image below: more than one overlay mount of this test's snapshot
/// paths can name, so the engine has to flatten the bottom ones.
const WEB_LAYERS: usize = 48;

/// A busybox httpd image of [`WEB_LAYERS`] layers pushed through the registry's
/// HTTP API: busybox, then one page per layer, then a layer deleting page 1 (which
/// ends up in the flattened part) and one adding the index.
fn push_web_image(c: &crate::harness::Client) -> String {
    let layer = |files: &[(&str, &[u8], u32)]| {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, data, mode) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, path, *data).unwrap();
        }
        tar.into_inner().unwrap()
    };
    let mut layers = vec![layer(&[("bin/busybox", &std::fs::read("/bin/busybox").unwrap(), 0o755)])];
    for i in 1..WEB_LAYERS - 2 {
        layers.push(layer(&[(&format!("www/page{i}.html"), format!("page {i}\n").as_bytes(), 0o644)]));
    }
    layers.push(layer(&[("www/.wh.page1.html", b"", 0o644)]));
    layers.push(layer(&[("www/index.html", b"served by the engine\n", 0o644)]));
    let diff_ids: Vec<String> = layers.iter().map(|l| crate::registry::digest(l)).collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes();
    let refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
    crate::registry::push_image(c, "alpha/web", "v1", &config, &refs);
    crate::registry::digest(&crate::registry::image_manifest(&config, &refs))
}

#[test]
fn a_replica_runs_from_a_pushed_image_on_its_project_network() {
    if !can_run() {
        return;
    }
    let (b, pat) = crate::registry::setup("[registry]\ngc_grace_seconds = 0\n");
    let manifest = push_web_image(&pat);
    let mut f = Fixture::new();
    let runtime = shared(&mut f);
    let work = crate::harness::TempDir::new("eng-img");
    rt().block_on(async {
        let store = Store::open(&work.path().join("state.db")).unwrap();
        let nets = test_networks(&store, &test_net_options('e'));
        let _guard = NetGuard(nets.clone());
        let engine = Engine::new(store.clone(), runtime.clone())
            .with_networks(nets.clone(), work.path().join("hosts"))
            .with_images(
                berth::registry::blobs::BlobStore::new(b.data_dir().join("registry")),
                berth::images::snapshots::SnapshotStore::new(work.path().join("snapshots")),
            );
        let mut cfg = config(&f, "", RestartPolicy::Always);
        cfg.root = RootSource::Image { manifest };
        cfg.args = vec![];
        cfg.network = true;
        let r = engine.create(cfg).await.unwrap();
        assert_eq!(r.state, "running", "{r:?}");
        let address: std::net::Ipv4Addr = r.address.as_deref().expect("an address").parse().unwrap();
        let client = crate::harness::Client { addr: std::net::SocketAddr::from((address, 8080)), token: None };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match client.try_send("GET", "/index.html", None, &[]) {
                Ok(resp) if resp.status == 200 => {
                    assert_eq!(resp.text(), "served by the engine\n");
                    break;
                }
                _ => assert!(Instant::now() < deadline, "no answer at {address}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Pages from the flattened bottom layers and from the layers mounted as they
        // are; the page a higher layer deleted stays deleted.
        for (path, status, body) in
            [("/page2.html", 200, "page 2\n"), ("/page45.html", 200, "page 45\n"), ("/page1.html", 404, "")]
        {
            let resp = client.send("GET", path, None, &[]);
            assert_eq!(resp.status, status, "GET {path}");
            if status == 200 {
                assert_eq!(resp.text(), body, "GET {path}");
            }
        }
        let flattened = std::fs::read_dir(work.path().join("snapshots"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("flat-"))
            .count();
        assert_eq!(flattened, 1, "the bottom layers were flattened into one snapshot");
        // Network counters come from the replica's own namespace: what it served.
        let m = engine.metrics(&r.id).await.unwrap();
        assert!(m.net_rx_packets >= 4 && m.net_tx_packets >= 4, "{m:?}");
        assert!(m.net_tx_bytes > "served by the engine\npage 2\npage 45\n".len() as u64 + 3 * 100, "{m:?}");
        assert!(m.net_rx_bytes > 4 * "GET /index.html HTTP/1.1\r\n".len() as u64, "{m:?}");
        // Image GC: nothing goes while the registry has the blobs and the replica
        // runs; once the image is deleted from the registry, only the layers no
        // mount uses go (the flattened ones), and the replica keeps serving.
        let snapshot_names = || {
            let mut v: Vec<String> = std::fs::read_dir(work.path().join("snapshots"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let all = snapshot_names();
        assert_eq!(all.len(), WEB_LAYERS + 1, "{all:?}");
        assert_eq!(engine.gc_images().await.unwrap(), Default::default());
        assert_eq!(pat.delete("/v2/alpha/web/manifests/v1").status, 202);
        let gc = b.admin_session().post("/v1/registry/gc", &serde_json::json!({}));
        assert_eq!(gc.status, 200, "{}", gc.text());
        let report = engine.gc_images().await.unwrap();
        let mounted = berth::runtime::rootfs::mounted_lowers();
        let used: Vec<&std::path::PathBuf> =
            mounted.iter().filter(|p| p.starts_with(work.path().join("snapshots"))).collect();
        assert!(used.len() > 1 && used.len() < WEB_LAYERS, "{used:?}");
        assert_eq!(report.removed.len(), WEB_LAYERS + 1 - used.len(), "{report:?}");
        assert!(used.iter().all(|p| p.exists()), "a mounted snapshot was collected");
        assert_eq!(snapshot_names().len(), used.len());
        for path in ["/index.html", "/page2.html", "/page45.html"] {
            assert_eq!(client.send("GET", path, None, &[]).status, 200, "GET {path} after image GC");
        }
        let netns = nets.netns_path(&r.id);
        assert!(netns.exists());
        engine.delete(&r.id).await.unwrap();
        assert!(!netns.exists(), "delete takes the replica off its network");
        let report = engine.gc_images().await.unwrap();
        assert_eq!(report.removed.len(), used.len(), "{report:?}");
        assert!(snapshot_names().is_empty(), "{:?}", snapshot_names());
        let leased = store.read(berth::store::ipam::has_leases).await.unwrap();
        assert!(!leased, "the address went back to the pool");
        store.close();
    });
}

/// A daemon on a state dir of its own with names of its own (cgroup subtree,
/// links, netns, nftables table, address pool), plus what the test needs to act
/// on the same state outside it. Dropping it kills the daemon and removes every
/// replica, network and cgroup it made, even when the test failed.
struct Node {
    b: crate::harness::Berth,
    work: crate::harness::TempDir,
    runtime: Arc<berth::runtime::container::Runtime>,
    net: berth::runtime::network::NetOptions,
}

impl Node {
    fn start() -> Node {
        let work = crate::harness::TempDir::new("adopt");
        let net = test_net_options('a');
        let pool = net.pool;
        let cgroup_prefix = net.netns_prefix.trim_end_matches('-').to_string();
        let run_dir = work.path().join("run");
        let config = format!(
            "run_dir = \"{}\"\n[runtime]\ncgroup_prefix = \"{cgroup_prefix}\"\n[network]\npool = \"{pool}\"\n\
             link_prefix = \"{}\"\nnetns_prefix = \"{}\"\nnft_table = \"{}\"\n",
            run_dir.display(),
            net.link_prefix,
            net.netns_prefix,
            net.nft_table
        );
        let b = crate::harness::Berth::start(&config);
        let layout = berth::runtime::cgroups::Layout::for_self(&cgroup_prefix).expect("cgroup layout");
        layout.prepare().expect("prepare cgroups");
        let runtime = Arc::new(berth::runtime::container::Runtime::new(
            run_dir.join("runc"),
            layout,
            b.data_dir().join("containers"),
            std::path::PathBuf::from(env!("CARGO_BIN_EXE_berth")),
        ));
        Node { b, work, runtime, net }
    }

    /// An engine over the daemon's state, as the daemon builds its own; only while
    /// the daemon is not running (one writer per database).
    fn engine(&self) -> (Store, Engine, Arc<berth::runtime::network::Networks>) {
        let store = Store::open(&self.b.data_dir().join("state.db")).unwrap();
        let nets = test_networks(&store, &self.net);
        let engine = Engine::new(store.clone(), self.runtime.clone())
            .with_networks(nets.clone(), self.work.path().join("run").join("hosts"));
        (store, engine, nets)
    }

    /// (state, pid, exit_code, restarts) of a replica as the daemon recorded it,
    /// read from its database while it runs.
    #[expect(clippy::disallowed_types, clippy::disallowed_methods, reason = "reads the daemon's database from outside")]
    fn recorded(&self, id: &str) -> (String, Option<i32>, Option<i64>, i64) {
        let c = rusqlite::Connection::open_with_flags(
            self.b.data_dir().join("state.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        c.query_row("SELECT state, pid, exit_code, restarts FROM replicas WHERE id = ?1", [id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.b.kill9();
        rt().block_on(async {
            let (store, engine, nets) = self.engine();
            for r in engine.list().await.unwrap_or_default() {
                let _ = engine.delete(&r.id).await;
            }
            let _ = nets.teardown_all();
            store.close();
        });
        for d in crate::runtime::cgroup_dirs(&self.runtime.layout) {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

fn answers(address: std::net::Ipv4Addr, within: Duration) -> Option<String> {
    let client = crate::harness::Client { addr: std::net::SocketAddr::from((address, 8080)), token: None };
    let deadline = Instant::now() + within;
    loop {
        match client.try_send("GET", "/index.html", None, &[]) {
            Ok(resp) if resp.status == 200 => return Some(resp.text()),
            _ if Instant::now() > deadline => return None,
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// `kill -9` of the real daemon: its replicas keep serving; the next daemon
/// re-adopts them (same processes, no duplicates), the logs written meanwhile are
/// there, the exit of one that ended meanwhile is recorded, and it supervises the
/// adopted ones (restarts one whose process dies, by its policy).
#[test]
fn the_daemon_re_adopts_its_replicas_after_kill_9() {
    if !can_run() {
        return;
    }
    let mut node = Node::start();
    node.b.stop();
    let rootfs = crate::runtime::busybox_rootfs(node.work.path());
    std::fs::create_dir_all(rootfs.join("www")).unwrap();
    std::fs::write(rootfs.join("www/index.html"), "adopted\n").unwrap();
    let replica = |script: &str, restart, network| ReplicaConfig {
        network,
        ..shell_replica("prj_adopt", &rootfs, script, restart)
    };
    // Replicas made on the daemon's state while it is stopped, as a previous run of it would have.
    let (web, ticker, quitter) = rt().block_on(async {
        let (store, engine, _nets) = node.engine();
        let web = engine.create(replica("exec httpd -f -p 8080 -h /www", RestartPolicy::Always, true)).await.unwrap();
        let ticker =
            engine.create(replica("while :; do echo tick; sleep 0.1; done", RestartPolicy::No, false)).await.unwrap();
        let quitter = engine
            .create(replica("while [ ! -e /tmp/go ]; do sleep 0.1; done; exit 7", RestartPolicy::No, false))
            .await
            .unwrap();
        store.close();
        (web, ticker, quitter)
    });
    let address: std::net::Ipv4Addr = web.address.as_deref().expect("an address").parse().unwrap();

    node.b.spawn();
    assert_eq!(answers(address, Duration::from_secs(20)).as_deref(), Some("adopted\n"));
    for r in [&web, &ticker, &quitter] {
        let (state, pid, ..) = node.recorded(&r.id);
        assert_eq!((state.as_str(), pid), ("running", r.pid), "{} after the first adoption", r.id);
    }

    node.b.kill9();
    let gone_at = berth::ids::now_rfc3339();
    assert_eq!(answers(address, Duration::from_secs(5)).as_deref(), Some("adopted\n"), "serving without the daemon");
    std::fs::write(rootfs.join("tmp/go"), b"").unwrap();
    until_shims_did(&node.runtime, &ticker.id, &gone_at, 5, &quitter.id);
    assert_eq!(answers(address, Duration::from_secs(5)).as_deref(), Some("adopted\n"));

    node.b.spawn();
    let (state, pid, exit_code, _) = node.recorded(&quitter.id);
    assert_eq!((state.as_str(), exit_code), ("exited", Some(7)), "the exit while the daemon was away");
    assert_eq!(pid, quitter.pid);
    for r in [&web, &ticker] {
        let (state, pid, _, restarts) = node.recorded(&r.id);
        assert_eq!((state.as_str(), pid, restarts), ("running", r.pid, 0), "{} re-adopted as it was", r.id);
    }
    let logs = node.runtime.logs(&ticker.id, 1000);
    let meanwhile = logs.iter().filter(|l| l.log == "tick" && l.time > gone_at).count();
    assert!(meanwhile >= 5, "logs written while the daemon was away are there: {meanwhile}");
    let shims = node.runtime.list();
    assert_eq!(shims.len(), 3, "no duplicate and no orphan container: {shims:?}");

    // The new daemon supervises what it adopted: the web server's process dies and
    // comes back by its restart policy, serving again.
    // SAFETY: signalling the container's init, a process this test started.
    unsafe { libc::kill(web.pid.unwrap(), libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let restarted = loop {
        let (state, pid, _, restarts) = node.recorded(&web.id);
        if state == "running" && restarts == 1 && pid != web.pid {
            break pid;
        }
        assert!(Instant::now() < deadline, "the daemon did not restart {}: {state} {pid:?} {restarts}", web.id);
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(restarted.is_some());
    assert_eq!(answers(address, Duration::from_secs(20)).as_deref(), Some("adopted\n"), "serving after the restart");
    assert_eq!(node.b.stop(), Some(0));
}
