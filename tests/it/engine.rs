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
