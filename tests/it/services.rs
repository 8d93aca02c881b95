//! Services over the API: replicas scaled, stopped, started and restarted; secret
//! env values sealed, redacted and given only to the container; settings checked
//! against the project; logs merged across replicas, with a stream that resumes;
//! volumes that outlive replicas; an unhealthy replica out of the routing table.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::deployments::{
    backends, deploy, fetch, node, nowhere_in, project_id, push, push_web, service, settle, sse, until, via_ingress,
};

fn instances(c: &crate::harness::Client, svc: &str) -> Vec<Value> {
    c.get(&format!("/v1/services/{svc}")).json()["instances"].as_array().unwrap().clone()
}

/// The addresses of the service's running instances, once there are `n` and all run.
fn running(c: &crate::harness::Client, svc: &str, n: usize) -> BTreeSet<String> {
    until(60, &format!("{n} running instances of {svc}"), || {
        let i = instances(c, svc);
        let ok = i.len() == n && i.iter().all(|i| i["status"] == "running");
        ok.then(|| i.iter().map(|i| i["address"].as_str().unwrap().to_string()).collect())
    })
}

fn routed(c: &crate::harness::Client, host: &str) -> BTreeSet<String> {
    backends(c, host).unwrap_or_default().into_iter().collect()
}

#[test]
fn replicas_scale_stop_start_and_restart() {
    if !crate::runtime::can_run() {
        return;
    }
    let (node, admin) = node("");
    let project = project_id(&admin, "alpha");
    push_web(&admin, "alpha/web", "v1", "v1\n", true);
    let svc = service(
        &admin,
        json!({"project_id": project, "name": "web", "port": 8080, "replicas": 3,
               "health_check": {"path": "/health", "interval_s": 1}}),
    );
    let dep = deploy(&admin, &svc, "alpha/web", "v1");
    assert_eq!(settle(&admin, &dep, 90)["status"], "live");
    let three = running(&admin, &svc, 3);
    assert_eq!(three.len(), 3, "three addresses: {three:?}");
    for a in &three {
        assert_eq!(fetch(a, "/"), Some((200, "v1\n".to_string())), "{a}");
    }
    let host = "web.alpha.localhost";
    assert_eq!(routed(&admin, host), three);
    assert_eq!(node.containers().len(), 3);
    // Through the ingress, requests reach all three (the access log names who answered).
    for _ in 0..12 {
        assert_eq!(via_ingress(&node, host, "/"), Some((200, "v1\n".to_string())));
    }
    let seen = admin.get(&format!("/v1/services/{svc}/requests?limit=12")).json();
    let answered: BTreeSet<String> = seen["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["upstream"].as_str().unwrap().rsplit_once(':').unwrap().0.to_string())
        .collect();
    let ips: BTreeSet<String> = three.iter().map(|a| a.rsplit_once(':').unwrap().0.to_string()).collect();
    assert_eq!(answered, ips, "{seen}");

    // To zero: the host stays routed, to nothing (503 at the ingress).
    let r = admin.put(&format!("/v1/services/{svc}"), &json!({"replicas": 0}));
    assert_eq!((r.status, r.json()["replicas"].as_u64()), (200, Some(0)), "{}", r.text());
    running(&admin, &svc, 0);
    assert_eq!(backends(&admin, host), Some(vec![]));
    assert_eq!(via_ingress(&node, host, "/").map(|r| r.0), Some(503), "no replica: 503");
    assert!(node.containers().is_empty(), "{:?}", node.containers());
    let r = admin.put(&format!("/v1/services/{svc}"), &json!({"replicas": 2}));
    assert_eq!(r.status, 200, "{}", r.text());
    let two = running(&admin, &svc, 2);
    until(30, "two routed", || (routed(&admin, host) == two).then_some(()));
    for a in &two {
        assert_eq!(fetch(a, "/").map(|r| r.0), Some(200));
    }

    // Stop: no replica, the service says so; start: back to two.
    let r = admin.post(&format!("/v1/services/{svc}/stop"), &json!({}));
    assert_eq!(r.status, 202, "{}", r.text());
    running(&admin, &svc, 0);
    assert_eq!(admin.get(&format!("/v1/services/{svc}")).json()["status"], "stopped");
    assert_eq!(backends(&admin, host), Some(vec![]));
    assert!(node.containers().is_empty());
    assert_eq!(admin.post(&format!("/v1/services/{svc}/start"), &json!({})).status, 202);
    let again = running(&admin, &svc, 2);
    until(30, "routed again", || (routed(&admin, host) == again).then_some(()));
    assert_eq!(via_ingress(&node, host, "/"), Some((200, "v1\n".to_string())));
    assert_eq!(admin.get(&format!("/v1/services/{svc}")).json()["status"], "running");

    // Restart: every replica replaced by a new one, still two, all answering.
    let before: BTreeSet<String> =
        instances(&admin, &svc).iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(admin.post(&format!("/v1/services/{svc}/restart"), &json!({})).status, 202);
    let after = until(90, "every replica replaced", || {
        let i = instances(&admin, &svc);
        let ids: BTreeSet<String> = i.iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
        let done = i.len() == 2 && i.iter().all(|i| i["status"] == "running") && ids.is_disjoint(&before);
        done.then_some(i)
    });
    for i in &after {
        assert_eq!(i["deployment_id"], dep.as_str(), "a restart keeps the deployment");
        assert_eq!(fetch(i["address"].as_str().unwrap(), "/").map(|r| r.0), Some(200));
    }
    assert_eq!(node.containers().len(), 2, "the replaced replicas are gone");
    assert_eq!(admin.delete(&format!("/v1/services/{svc}")).status, 204);
    assert!(node.containers().is_empty());
}

#[test]
fn secret_env_is_sealed_redacted_and_reaches_only_the_container() {
    if !crate::runtime::can_run() {
        return;
    }
    let (node, admin) = node("");
    let project = project_id(&admin, "alpha");
    let secret = "Sekret-Env-Value-0xC0FFEE";
    let r =
        admin.put(&format!("/v1/projects/{project}"), &json!({"env": {"SHARED": "from-project", "PLAIN": "project"}}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(admin.post("/v1/users", &json!({"username": "vera", "password": "password-123"})).status, 201);
    let vera = node.b.login("vera", "password-123");
    let vid = vera.get("/v1/me").json()["user"]["id"].as_str().unwrap().to_string();
    let r = admin.post(&format!("/v1/projects/{project}/members"), &json!({"user_id": vid, "role": "viewer"}));
    assert_eq!(r.status, 201);
    push_web(&admin, "alpha/web", "v1", "v1\n", true);
    let svc = service(
        &admin,
        json!({"project_id": project, "name": "web", "port": 8080,
               "env": [{"key": "PLAIN", "value": "service"}, {"key": "TOKEN", "value": secret, "secret": true}],
               // A command check runs beside the init, which alone holds the secret.
               "health_check": {"command": ["/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/health"],
                                "interval_s": 1}}),
    );
    for who in [&admin, &vera] {
        let s = who.get(&format!("/v1/services/{svc}")).json();
        assert_eq!(
            s["env"],
            json!([{"key": "PLAIN", "value": "service", "secret": false},
                                     {"key": "TOKEN", "value": "***", "secret": true}])
        );
    }
    assert_eq!(vera.get(&format!("/v1/services/{svc}/logs")).status, 403, "logs are for Operators");
    let dep = deploy(&admin, &svc, "alpha/web", "v1");
    assert_eq!(settle(&admin, &dep, 90)["status"], "live");
    let replica = instances(&admin, &svc)[0]["id"].as_str().unwrap().to_string();
    let env = node.environ(&replica);
    for want in [format!("TOKEN={secret}"), "PLAIN=service".into(), "SHARED=from-project".into()] {
        assert!(env.contains(&want), "{want} in {env:?}");
    }
    // Sent back as read ("***"), the secret stays; the replicas restart with it.
    let env_back = json!([{"key": "PLAIN", "value": "changed", "secret": false}, {"key": "TOKEN", "value": "***", "secret": true}]);
    assert_eq!(admin.put(&format!("/v1/services/{svc}"), &json!({"env": env_back})).status, 200);
    let replaced = until(90, "the replica restarted with the new env", || {
        let i = instances(&admin, &svc);
        (i.len() == 1 && i[0]["id"] != replica.as_str() && i[0]["status"] == "running")
            .then(|| i[0]["id"].as_str().unwrap().to_string())
    });
    let env = node.environ(&replaced);
    assert!(env.contains(&format!("TOKEN={secret}")) && env.contains(&"PLAIN=changed".to_string()), "{env:?}");
    // Nowhere at rest: not in the database, the container state, the logs, the runtime dir.
    nowhere_in(&node.b.data_dir(), secret).unwrap_or_else(|f| panic!("{f} holds the secret in plain text"));
    nowhere_in(&node.run_dir(), secret).unwrap_or_else(|f| panic!("{f} holds the secret in plain text"));
    assert!(!node.b.log().contains(secret), "the daemon's log holds the secret");
}

#[test]
fn bad_settings_are_refused_and_the_service_stays_as_it_was() {
    let b = crate::harness::Berth::start("");
    let admin = b.admin();
    let project = admin.post("/v1/projects", &json!({"name": "alpha"})).json()["id"].as_str().unwrap().to_string();
    let r = admin.put(&format!("/v1/projects/{project}"), &json!({"limits": {"memory_mb": 256, "cpus": 1.0}}));
    assert_eq!(r.status, 200);
    let ok = json!({"project_id": project, "name": "web", "port": 8080});
    let svc = service(&admin, ok.clone());
    let with = |k: &str, v: Value| {
        let mut body = ok.clone();
        body["name"] = json!("other");
        body[k] = v;
        body
    };
    let cases = [
        (with("name", json!("Web_1")), 400),
        (with("name", json!("-web")), 400),
        (with("port", json!(0)), 400),
        (with("port", json!(70000)), 400),
        (with("replicas", json!(65)), 400),
        (with("replicas", json!(-1)), 400),
        (with("resources", json!({"memory_mb": 512})), 422),
        (with("resources", json!({"cpus": 2.0})), 422),
        (
            json!({"project_id": project, "name": "other", "port": 80, "replicas": 3, "resources": {"memory_mb": 128}}),
            422,
        ),
        (with("health_check", json!({"path": "/", "command": ["true"]})), 400),
        (with("health_check", json!({"interval_s": 5})), 400),
        (with("health_check", json!({"path": "/", "failure_threshold": 0})), 400),
        (with("env", json!([{"key": "1BAD", "value": "x"}])), 400),
        (with("volumes", json!([{"name": "data", "path": "relative"}])), 400),
        (with("follow", json!({"repository": "beta/web", "tag": "main"})), 422),
        (with("restart_policy", json!("sometimes")), 400),
        (with("surprise", json!(1)), 400),
    ];
    for (body, status) in cases {
        let r = admin.post("/v1/services", &body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
    }
    let listed = admin.get(&format!("/v1/services?project_id={project}")).json();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["data"][0]["id"], svc.as_str());
    let elsewhere = admin.get("/v1/services?project_id=prj_00000000000000000000000000").json();
    assert_eq!(elsewhere["data"], json!([]));
    let dup = admin.post("/v1/services", &ok);
    assert_eq!(dup.status, 409, "{}", dup.text());
    let before = admin.get(&format!("/v1/services/{svc}")).json();
    for (body, status) in [
        (json!({"replicas": 65}), 400),
        (json!({"port": -4}), 400),
        (json!({"resources": {"pids": 0}}), 400),
        (json!({"resources": {"memory_mb": 300}}), 422),
        (json!({"name": "Nope"}), 400),
    ] {
        let r = admin.put(&format!("/v1/services/{svc}"), &body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
    }
    assert_eq!(admin.get(&format!("/v1/services/{svc}")).json(), before, "a refused change changes nothing");
    // Others: an outsider cannot see the project, a Viewer cannot create.
    assert_eq!(admin.post("/v1/users", &json!({"username": "olga", "password": "password-123"})).status, 201);
    let olga = b.login("olga", "password-123");
    let r = olga.post("/v1/services", &with("name", json!("x")));
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"), "{}", r.text());
    assert_eq!(olga.get(&format!("/v1/services/{svc}")).status, 404);
    assert_eq!(olga.get("/v1/services").status, 403, "a member of no project");
    // A project with services cannot be deleted.
    let r = admin.delete(&format!("/v1/projects/{project}"));
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(admin.delete(&format!("/v1/services/{svc}")).status, 204);
    assert_eq!(admin.delete(&format!("/v1/projects/{project}")).status, 204);
}

/// A replica that logs its start and then a numbered tick every 0.2 s.
fn push_ticker(c: &crate::harness::Client) {
    let script =
        "echo start; i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.2; done & exec httpd -f -p 8080 -h /www";
    let www = crate::deployments::layer(&[("www/index.html", b"ticker\n", 0o644)]);
    push(c, "alpha/ticker", "v1", &[crate::deployments::busybox_layer(), www], &["/bin/sh", "-c", script]);
}

#[test]
fn logs_merge_replicas_and_the_stream_resumes_without_gap_or_duplicate() {
    if !crate::runtime::can_run() {
        return;
    }
    let (mut node, admin) = node("");
    let project = project_id(&admin, "alpha");
    push_ticker(&admin);
    let svc = service(&admin, json!({"project_id": project, "name": "ticker", "port": 8080, "replicas": 2}));
    let dep = deploy(&admin, &svc, "alpha/ticker", "v1");
    assert_eq!(settle(&admin, &dep, 90)["status"], "live");
    let ids: BTreeSet<String> = instances(&admin, &svc).iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
    let lines = until(30, "ticks from both replicas", || {
        let l = admin.get(&format!("/v1/services/{svc}/logs?tail=10000")).json()["lines"].as_array().unwrap().clone();
        let from: BTreeSet<String> =
            l.iter().filter(|l| l["log"] == "tick 5").map(|l| l["replica_id"].as_str().unwrap().to_string()).collect();
        (from == ids).then_some(l)
    });
    // Merged in time order; each replica's own lines in the order it wrote them.
    let times: Vec<&str> = lines.iter().map(|l| l["time"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    for id in &ids {
        let mine: Vec<&str> =
            lines.iter().filter(|l| l["replica_id"] == id.as_str()).map(|l| l["log"].as_str().unwrap()).collect();
        assert_eq!(mine[0], "start");
        let ticks: Vec<u64> = mine[1..].iter().map(|t| t.strip_prefix("tick ").unwrap().parse().unwrap()).collect();
        assert_eq!(ticks, (0..ticks.len() as u64).collect::<Vec<_>>(), "{id}: {mine:?}");
    }
    let tail = admin.get(&format!("/v1/services/{svc}/logs?tail=3")).json()["lines"].as_array().unwrap().clone();
    assert_eq!(tail.len(), 3);
    let future = admin.get(&format!("/v1/services/{svc}/logs?since=2999-01-01T00:00:00Z")).json();
    assert_eq!(future["lines"], json!([]));
    let since = lines.last().unwrap()["time"].as_str().unwrap().to_string();
    let recent = admin.get(&format!("/v1/services/{svc}/logs?tail=10000&since={since}")).json()["lines"]
        .as_array()
        .unwrap()
        .clone();
    assert!(!recent.is_empty() && recent.iter().all(|l| l["time"].as_str().unwrap() >= since.as_str()));
    assert_eq!(admin.get(&format!("/v1/services/{svc}/logs?tail=x")).status, 400);
    assert_eq!(admin.get(&format!("/v1/services/{svc}/logs?since=yesterday")).status, 400);

    // The stream: 40 events; then a resume from the 15th gives the 16th onwards,
    // exactly, however the replicas' lines interleave.
    let path = format!("/v1/services/{svc}/logs/stream?tail=5");
    let first = crate::deployments::sse(&admin, &path, None, 60, |e| e.len() >= 40);
    assert!(first.len() >= 40, "{}", first.len());
    let ids_seen: Vec<String> = first.iter().map(|e| e.id.clone().unwrap()).collect();
    let unique: BTreeSet<&String> = ids_seen.iter().collect();
    assert_eq!(unique.len(), ids_seen.len(), "no duplicate event");
    let resumed = sse(&admin, &path, Some(&ids_seen[14]), 60, |e| e.len() >= 25);
    assert_eq!(
        resumed[..25].iter().map(|e| (e.id.clone(), e.data.clone())).collect::<Vec<_>>(),
        first[15..40].iter().map(|e| (e.id.clone(), e.data.clone())).collect::<Vec<_>>(),
        "a resume goes on right after the last event seen"
    );
    let r = admin.send("GET", &path, None, &[("Last-Event-ID", "not-an-id")]);
    assert_eq!(r.status, 400);
    let m = admin.get(&format!("/v1/services/{svc}/metrics")).json();
    let reps = m["replicas"].as_array().unwrap();
    assert_eq!(reps.len(), 2, "{m}");
    assert!(reps.iter().all(|r| r["memory_bytes"].as_u64().unwrap() > 0 && r["pids"].as_u64().unwrap() >= 2), "{m}");
    // A stream open at shutdown ends with it instead of holding the drain.
    let follower = {
        let admin = admin.clone();
        let path = path.clone();
        std::thread::spawn(move || sse(&admin, &path, None, 120, |_| false).len())
    };
    until(30, "the follower reads", || (!follower.is_finished()).then_some(()));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(node.b.stop(), Some(0));
    assert!(follower.join().unwrap() > 0);
    assert!(!node.b.log().contains("did not finish in time"), "a log stream held the shutdown");
}

#[test]
fn volumes_outlive_replicas_and_go_with_the_service() {
    if !crate::runtime::can_run() {
        return;
    }
    let (node, admin) = node("");
    let project = project_id(&admin, "alpha");
    let script = "echo boot >> /data/boots; exec httpd -f -p 8080 -h /data";
    push(&admin, "alpha/vol", "v1", &[crate::deployments::busybox_layer()], &["/bin/sh", "-c", script]);
    let svc = service(
        &admin,
        json!({"project_id": project, "name": "vol", "port": 8080, "volumes": [{"name": "data", "path": "/data"}]}),
    );
    let boots = |n: usize| {
        until(60, &format!("{n} boots recorded"), || {
            let i = instances(&admin, &svc);
            let a = i.first()?.get("address")?.as_str()?.to_string();
            fetch(&a, "/boots").filter(|(s, b)| *s == 200 && b.lines().count() == n).map(|_| ())
        })
    };
    let dep = deploy(&admin, &svc, "alpha/vol", "v1");
    assert_eq!(settle(&admin, &dep, 90)["status"], "live");
    boots(1);
    assert_eq!(admin.post(&format!("/v1/services/{svc}/restart"), &json!({})).status, 202);
    boots(2);
    let dep2 = deploy(&admin, &svc, "alpha/vol", "v1");
    assert_eq!(settle(&admin, &dep2, 90)["status"], "live");
    boots(3);
    let dir = node.b.data_dir().join("volumes").join(&svc).join("data");
    assert_eq!(std::fs::read_to_string(dir.join("boots")).unwrap(), "boot\nboot\nboot\n");
    assert_eq!(admin.delete(&format!("/v1/services/{svc}")).status, 204);
    assert!(!dir.exists() && !dir.parent().unwrap().exists(), "the volumes went with the service");
}

#[test]
fn an_unhealthy_replica_leaves_the_routing_table_and_comes_back() {
    if !crate::runtime::can_run() {
        return;
    }
    let (node, admin) = node("");
    let project = project_id(&admin, "alpha");
    push_web(&admin, "alpha/web", "v1", "v1\n", true);
    let svc = service(
        &admin,
        json!({"project_id": project, "name": "web", "port": 8080, "replicas": 2,
               "health_check": {"path": "/health", "interval_s": 1, "failure_threshold": 2}}),
    );
    let dep = deploy(&admin, &svc, "alpha/web", "v1");
    assert_eq!(settle(&admin, &dep, 90)["status"], "live");
    let host = "web.alpha.localhost";
    let both = running(&admin, &svc, 2);
    let sick = instances(&admin, &svc)[0].clone();
    let (sick_id, sick_addr) =
        (sick["id"].as_str().unwrap().to_string(), sick["address"].as_str().unwrap().to_string());
    // Its health page goes: out of the table, shown as unhealthy.
    let page = node.rootfs(&sick_id).join("www/health");
    std::fs::remove_file(&page).unwrap();
    until(30, "the sick replica leaves the table", || (!routed(&admin, host).contains(&sick_addr)).then_some(()));
    assert_eq!(routed(&admin, host).len(), 1);
    let shown = instances(&admin, &svc).into_iter().find(|i| i["id"] == sick_id.as_str()).unwrap();
    assert_eq!(shown["status"], "unhealthy");
    assert_eq!(admin.get(&format!("/v1/services/{svc}")).json()["status"], "degraded");
    std::fs::write(&page, "ok\n").unwrap();
    until(30, "back in the table", || (routed(&admin, host) == both).then_some(()));
    // Its process dies: the restart policy brings it back at the same address, in the table.
    let pid = std::fs::read_to_string(node.runtime_state(&sick_id).join("init.pid")).unwrap();
    // SAFETY: signalling a container's init this test started.
    unsafe { libc::kill(pid.trim().parse().unwrap(), libc::SIGKILL) };
    until(30, "restarted and routed", || {
        let i = instances(&admin, &svc).into_iter().find(|i| i["id"] == sick_id.as_str())?;
        (i["restarts"].as_i64() == Some(1) && i["status"] == "running" && routed(&admin, host) == both).then_some(())
    });
    assert_eq!(fetch(&sick_addr, "/"), Some((200, "v1\n".to_string())));
}
