//! The engine over real containers: re-adoption after the daemon goes away, exits
//! recorded while it was gone, leftovers removed, restart policies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::engine::{Engine, ReplicaConfig, RestartPolicy, RootSource};
use berth::store::Store;

use crate::runtime::{Fixture, can_run};

fn config(f: &Fixture, script: &str, restart: RestartPolicy) -> ReplicaConfig {
    ReplicaConfig {
        project_id: f.project.clone(),
        service: "web".into(),
        root: RootSource::Rootfs(f.rootfs.clone()),
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
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
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
    // The "daemon" is gone; nothing stops the shims.
    let gone_at = berth::ids::now_rfc3339();
    std::thread::sleep(Duration::from_millis(2500));
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
    let (b, pat) = crate::registry::setup("");
    let manifest = push_web_image(&pat);
    let mut f = Fixture::new();
    let runtime = shared(&mut f);
    let work = crate::harness::TempDir::new("eng-img");
    let tag = berth::ids::new_id("t").to_lowercase();
    let tag = tag[tag.len() - 4..].to_string();
    rt().block_on(async {
        let store = Store::open(&work.path().join("state.db")).unwrap();
        let mut opts = berth::runtime::network::NetOptions::new(
            format!("10.{}.0.0/16", 200 + tag.bytes().map(u32::from).sum::<u32>() % 50).parse().unwrap(),
        );
        opts.link_prefix = format!("e{tag}");
        opts.netns_prefix = format!("berth-it-{tag}-");
        opts.nft_table = format!("berth_it_{tag}");
        let ipam = Arc::new(berth::engine::ipam::StoreIpam::new(store.clone()));
        let nets = Arc::new(berth::runtime::network::Networks::new(opts, ipam).unwrap());
        struct Teardown(Arc<berth::runtime::network::Networks>);
        impl Drop for Teardown {
            fn drop(&mut self) {
                let _ = self.0.teardown_all();
            }
        }
        let _guard = Teardown(nets.clone());
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
        let netns = nets.netns_path(&r.id);
        assert!(netns.exists());
        engine.delete(&r.id).await.unwrap();
        assert!(!netns.exists(), "delete takes the replica off its network");
        let leases: i64 =
            store.read(|c| Ok(c.query_row("SELECT count(*) FROM net_leases", [], |r| r.get(0))?)).await.unwrap();
        assert_eq!(leases, 0, "the address went back to the pool");
        store.close();
    });
}
