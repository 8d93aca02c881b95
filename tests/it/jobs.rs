//! Jobs for real: busybox commands run in runc containers on a cron schedule and
//! on demand; concurrency, timeouts, exit codes and logs; a daemon restart with
//! the missed-run policies; bad input; the containers gone after each run.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::deployments::{busybox_layer, node, project_id, push, until};
use crate::harness::{Berth, Client};

const ENDED: &[&str] = &["succeeded", "failed", "timed_out", "cancelled", "skipped"];

/// A busybox image with `/bin/sh` as `alpha/tools:v1`.
fn push_tools(c: &Client) {
    push(c, "alpha/tools", "v1", &[busybox_layer()], &["/bin/sh"]);
}

fn create(c: &Client, body: Value) -> Value {
    let r = c.post("/v1/jobs", &body);
    assert_eq!(r.status, 201, "create job: {}", r.text());
    r.json()
}

/// A job of `alpha` running `script` with `/bin/sh -c` in `alpha/tools:v1`; `extra`
/// adds settings.
fn shell_job(c: &Client, project: &str, name: &str, script: &str, extra: Value) -> String {
    let mut body = json!({"project_id": project, "name": name, "command": ["/bin/sh", "-c", script],
        "image": "alpha/tools:v1"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    create(c, body)["id"].as_str().unwrap().to_string()
}

/// Every run of the job, newest first.
fn runs(c: &Client, job: &str) -> Vec<Value> {
    let r = c.get(&format!("/v1/jobs/{job}/runs?limit=100"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["data"].as_array().unwrap().clone()
}

fn run(c: &Client, job: &str, id: &str) -> Value {
    runs(c, job).into_iter().find(|r| r["id"] == id).unwrap_or_else(|| panic!("run {id} of {job} is not listed"))
}

/// Waits for the run to end; returns it.
fn settle(c: &Client, job: &str, id: &str, secs: u64) -> Value {
    until(secs, &format!("run {id} ends"), || {
        let r = run(c, job, id);
        ENDED.contains(&r["status"].as_str().unwrap()).then_some(r)
    })
}

/// The run's log lines as `(stream, text)`.
fn logs(c: &Client, job: &str, id: &str) -> Vec<(String, String)> {
    let r = c.get(&format!("/v1/jobs/{job}/runs/{id}/logs"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["stream"].as_str().unwrap().to_string(), l["log"].as_str().unwrap().to_string()))
        .collect()
}

fn unix(t: &Value) -> i64 {
    berth::ids::parse_time(t.as_str().unwrap()).unwrap().unix_timestamp()
}

/// Stops the job's schedule and waits for every run to end.
fn quiesce(c: &Client, job: &str) {
    let r = c.put(&format!("/v1/jobs/{job}"), &json!({"schedule": null}));
    assert_eq!(r.status, 200, "{}", r.text());
    until(60, "every run of the job ends", || {
        runs(c, job).iter().all(|r| ENDED.contains(&r["status"].as_str().unwrap())).then_some(())
    });
}

#[test]
fn scheduled_and_on_demand_runs_keep_exit_codes_and_logs_and_forbid_and_timeouts_hold() {
    if !crate::runtime::can_run() {
        return;
    }
    let (node, admin) = node("");
    let project = project_id(&admin, "alpha");
    push_tools(&admin);

    // Every second, on schedule, recorded with exit 0 and the output.
    let tick = shell_job(
        &admin,
        &project,
        "tick",
        "echo tick; echo warn >&2",
        json!({"schedule": "* * * * * *", "concurrency": "allow"}),
    );
    let job = admin.get(&format!("/v1/jobs/{tick}")).json();
    assert!(job["next_run_at"].is_string(), "{job}");
    let done = until(60, "four scheduled runs succeed", || {
        let ok: Vec<Value> = runs(&admin, &tick).into_iter().filter(|r| r["status"] == "succeeded").collect();
        (ok.len() >= 4).then_some(ok)
    });
    quiesce(&admin, &tick);
    let mut fired: Vec<i64> = done.iter().map(|r| unix(&r["scheduled_for"])).collect();
    fired.sort();
    fired.dedup();
    assert_eq!(fired.len(), done.len(), "one run per fire time: {done:?}");
    // Consecutive fire times are about a second apart (a busy machine may merge two).
    assert!(fired.windows(2).all(|w| (1..=3).contains(&(w[1] - w[0]))), "{fired:?}");
    for r in &done {
        assert_eq!((r["trigger"].as_str(), r["exit_code"].as_i64()), (Some("schedule"), Some(0)), "{r}");
        assert!(r["started_at"].is_string() && r["finished_at"].is_string(), "{r}");
        let lines = logs(&admin, &tick, r["id"].as_str().unwrap());
        assert!(lines.contains(&("stdout".into(), "tick".into())), "{lines:?}");
        assert!(lines.contains(&("stderr".into(), "warn".into())), "{lines:?}");
    }
    let last = admin.get(&format!("/v1/jobs/{tick}")).json();
    assert!(last["last_run"]["id"].is_string() && last["next_run_at"].is_null(), "{last}");
    // Without its schedule, it runs no more.
    let count = runs(&admin, &tick).len();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(runs(&admin, &tick).len(), count, "a run after the schedule was removed");

    // On demand: starts at once; a failing command's exit code and output are kept.
    let fail = shell_job(&admin, &project, "fail", "echo out; echo err >&2; exit 3", json!({}));
    let r = admin.post(&format!("/v1/jobs/{fail}/run"), &json!({}));
    assert_eq!(r.status, 201, "{}", r.text());
    let started = r.json();
    assert_eq!((started["status"].as_str(), started["trigger"].as_str()), (Some("queued"), Some("manual")));
    let ended = settle(&admin, &fail, started["id"].as_str().unwrap(), 60);
    assert_eq!((ended["status"].as_str(), ended["exit_code"].as_i64()), (Some("failed"), Some(3)), "{ended}");
    assert_eq!(ended["error"], "exited with code 3");
    // stdout and stderr are two pipes: their lines keep no order between them.
    let mut lines = logs(&admin, &fail, started["id"].as_str().unwrap());
    lines.sort();
    assert_eq!(lines, vec![("stderr".into(), "err".into()), ("stdout".into(), "out".into())]);

    // forbid with a command that runs past its timeout: the runs due meanwhile are
    // skipped and recorded, a run asked for by hand too; the timeout kills it.
    let slow = create(
        &admin,
        json!({"project_id": project, "name": "slow", "command": ["/bin/busybox", "sleep", "600"],
            "image": "alpha/tools:v1", "schedule": "* * * * * *", "timeout_s": 3}),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let first = until(30, "the slow run starts", || runs(&admin, &slow).into_iter().find(|r| r["status"] == "running"));
    let r = admin.post(&format!("/v1/jobs/{slow}/run"), &json!({}));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["status"], "skipped", "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains(first["id"].as_str().unwrap()), "{}", r.text());
    let first = settle(&admin, &slow, first["id"].as_str().unwrap(), 60);
    quiesce(&admin, &slow);
    assert_eq!(first["status"], "timed_out", "{first}");
    assert_eq!(first["error"], "killed after its timeout of 3 s");
    assert!(first["signal"].as_i64().is_some(), "{first}");
    let took = unix(&first["finished_at"]) - unix(&first["started_at"]);
    assert!((3..=20).contains(&took), "killed {took} s after it started");
    let all = runs(&admin, &slow);
    let (from, to) = (unix(&first["started_at"]), unix(&first["finished_at"]));
    let skipped: Vec<&Value> = all
        .iter()
        .filter(|r| r["status"] == "skipped" && r["trigger"] == "schedule")
        .filter(|r| (from + 1..to).contains(&unix(&r["scheduled_for"])))
        .collect();
    assert!(skipped.len() >= 2, "the fire times while it ran are skipped: {all:?}");
    let going = first["id"].as_str().unwrap();
    assert!(skipped.iter().all(|r| r["error"].as_str().unwrap().contains(going)), "{skipped:?}");

    // Every container a run made is gone.
    until(30, "no container is left", || node.containers().is_empty().then_some(()));

    // The runs' endings are counted for Prometheus.
    let metrics = admin.get("/metrics").text();
    let count = |status: &str| -> u64 {
        let prefix = format!("berth_job_runs_finished_total{{status=\"{status}\"}} ");
        let line = metrics.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("{prefix}: {metrics}"));
        line[prefix.len()..].trim().parse().unwrap()
    };
    assert!(count("succeeded") >= 4 && count("timed_out") >= 1 && count("skipped") >= 3, "{metrics}");
    assert!(count("failed") >= 1, "{metrics}");

    // Who created, changed and ran which job.
    let audit = admin.get("/v1/audit?limit=100").json();
    let entries = audit["data"].as_array().unwrap();
    let has = |action: &str, target: &str| {
        entries.iter().any(|e| e["action"] == action && e["target"] == target && e["actor_name"] == "admin")
    };
    assert!(has("POST /v1/jobs", &tick), "{entries:?}");
    assert!(has("PUT /v1/jobs/{id}", &tick), "{entries:?}");
    assert!(has("POST /v1/jobs/{id}/run", &fail), "{entries:?}");
    assert!(entries.iter().filter(|e| e["action"] == "POST /v1/jobs").all(|e| e["project_id"] == project.as_str()));
}

#[test]
fn replace_cancels_the_going_run_and_retries_try_again() {
    if !crate::runtime::can_run() {
        return;
    }
    let (node, admin) = node("");
    let project = project_id(&admin, "alpha");
    push_tools(&admin);
    let job = shell_job(&admin, &project, "again", "sleep 600", json!({"concurrency": "replace"}));
    let first = admin.post(&format!("/v1/jobs/{job}/run"), &json!({})).json();
    until(30, "the first run starts", || {
        (run(&admin, &job, first["id"].as_str().unwrap())["status"] == "running").then_some(())
    });
    let second = admin.post(&format!("/v1/jobs/{job}/run"), &json!({})).json();
    assert_eq!(second["status"], "queued", "{second}");
    let first = settle(&admin, &job, first["id"].as_str().unwrap(), 60);
    assert_eq!(first["status"], "cancelled", "{first}");
    until(30, "the second run starts", || {
        (run(&admin, &job, second["id"].as_str().unwrap())["status"] == "running").then_some(())
    });
    let r = admin.delete(&format!("/v1/jobs/{job}"));
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(admin.get(&format!("/v1/jobs/{job}")).status, 404);

    // Two retries of a failing command: three tries in all, then it stays failed.
    let flaky = shell_job(&admin, &project, "flaky", "echo try; exit 1", json!({"retries": 2, "keep_runs": 2}));
    admin.post(&format!("/v1/jobs/{flaky}/run"), &json!({}));
    until(60, "three tries", || {
        let all = admin.get(&format!("/v1/jobs/{flaky}")).json();
        (all["last_run"]["attempt"] == 3 && all["last_run"]["status"] == "failed").then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let all = runs(&admin, &flaky);
    // keep_runs 2: the first try was pruned with its log.
    let attempts: Vec<i64> = all.iter().map(|r| r["attempt"].as_i64().unwrap()).collect();
    assert_eq!(attempts, vec![3, 2], "{all:?}");
    assert!(all.iter().all(|r| r["status"] == "failed" && r["exit_code"] == 1), "{all:?}");
    assert_eq!(all[0]["trigger"], "retry");
    until(30, "no container is left", || node.containers().is_empty().then_some(()));
}

#[test]
fn after_a_restart_the_schedule_continues_and_missed_runs_follow_the_policy() {
    if !crate::runtime::can_run() {
        return;
    }
    let (mut node, admin) = node("");
    let project = project_id(&admin, "alpha");
    push_tools(&admin);
    let every = json!({"schedule": "* * * * * *", "concurrency": "allow"});
    let mut once = every.clone();
    once["missed"] = json!("run_once");
    let catch_up = shell_job(&admin, &project, "catch-up", "echo once", once);
    let mut skip = every.clone();
    skip["missed"] = json!("skip");
    let skipper = shell_job(&admin, &project, "skipper", "echo skip", skip);
    for job in [&catch_up, &skipper] {
        until(60, "a scheduled run succeeds", || {
            runs(&admin, job).iter().any(|r| r["status"] == "succeeded").then_some(())
        });
    }
    node.b.stop();
    let down = berth::ids::unix_now();
    std::thread::sleep(Duration::from_secs(4));
    node.b.spawn();
    let up = berth::ids::unix_now();
    let admin = node.b.admin_session();
    let after = |job: &str| -> Vec<Value> {
        runs(&admin, job)
            .into_iter()
            .filter(|r| r["trigger"] == "schedule" && unix(&r["scheduled_for"]) >= up)
            .collect()
    };
    for job in [&catch_up, &skipper] {
        until(60, "the schedule continues after the restart", || (after(job).len() >= 3).then_some(()));
    }
    let started = Instant::now();
    let caught: Vec<Value> = runs(&admin, &catch_up).into_iter().filter(|r| r["trigger"] == "catch_up").collect();
    assert_eq!(caught.len(), 1, "run_once: exactly one catch-up run: {caught:?}");
    let missed_at = unix(&caught[0]["scheduled_for"]);
    assert!(missed_at > down - 2 && missed_at <= up, "it ran for a missed fire time: {missed_at} in {down}..{up}");
    assert_eq!(settle(&admin, &catch_up, caught[0]["id"].as_str().unwrap(), 60)["status"], "succeeded");
    assert!(runs(&admin, &skipper).iter().all(|r| r["trigger"] != "catch_up"), "skip: no catch-up run");
    // Nothing fires for the down time later either.
    let missed = |job: &str| -> usize {
        runs(&admin, job)
            .iter()
            .filter(|r| r["trigger"] == "schedule" && (down + 1..=missed_at).contains(&unix(&r["scheduled_for"])))
            .count()
    };
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!((missed(&catch_up), missed(&skipper)), (0, 0));
    for job in [&catch_up, &skipper] {
        quiesce(&admin, job);
    }
    until(30, "no container is left", || node.containers().is_empty().then_some(()));
}

/// A daemon without containers (runs fail with a clear message), a project with
/// an image, and an operator of another project.
fn storing_node() -> (Berth, Client, String) {
    let b = Berth::start("[runtime]\nenabled = false\n");
    let admin = b.admin();
    let r = admin.post("/v1/projects", &json!({"name": "alpha"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let alpha = r.json()["id"].as_str().unwrap().to_string();
    push(&admin, "alpha/tools", "v1", &[crate::deployments::layer(&[("hello", b"hi\n", 0o644)])], &["/hello"]);
    (b, admin, alpha)
}

#[test]
fn bad_jobs_are_refused_with_clear_errors_and_other_projects_jobs_are_invisible() {
    let (b, admin, alpha) = storing_node();
    let ok = json!({"project_id": alpha, "name": "nightly", "command": ["/hello"], "image": "alpha/tools:v1",
        "schedule": "0 3 * * *", "timezone": "Europe/Paris"});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = ok.clone();
        b.as_object_mut().unwrap().remove(k);
        b
    };
    let cases: Vec<(Value, u16, &str)> = vec![
        (with("schedule", json!("61 * * * *")), 400, "schedule"),
        (with("schedule", json!("* * * *")), 400, "5 fields"),
        (with("schedule", json!("0 0 30 2 *")), 400, "never fires"),
        (with("timezone", json!("Mars/Olympus")), 400, "Mars/Olympus"),
        (with("command", json!("echo hi")), 400, "expected a sequence"),
        (with("command", json!([])), 400, "command"),
        (without("image"), 400, "image"),
        (with("image", json!("alpha/nope:v1")), 422, "alpha/nope:v1"),
        (with("image", json!("alpha/tools:v9")), 422, "alpha/tools:v9"),
        (with("image", json!("docker.io/UPPER/case")), 400, "UPPER"),
        (with("service_id", json!("svc_nope")), 400, "not both"),
        (with("surprise", json!(1)), 400, "surprise"),
        (with("concurrency", json!("sometimes")), 400, "sometimes"),
        (with("missed", json!("twice")), 400, "twice"),
        (with("timeout_s", json!(0)), 400, "timeout_s"),
        (with("keep_runs", json!(0)), 400, "keep_runs"),
        (with("name", json!("Not A Label")), 400, "name"),
    ];
    for (body, status, needle) in cases {
        let r = admin.post("/v1/jobs", &body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(needle), "{body}: {message}");
    }
    let job = create(&admin, ok.clone());
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!((job["concurrency"].as_str(), job["missed"].as_str()), (Some("forbid"), Some("skip")));
    assert_eq!((job["timeout_s"].as_u64(), job["keep_runs"].as_u64()), (Some(3600), Some(20)));
    // 03:00 in Paris is 01:00 or 02:00 UTC.
    let next = job["next_run_at"].as_str().unwrap();
    assert!(next.ends_with("T01:00:00Z") || next.ends_with("T02:00:00Z"), "{next}");
    assert_eq!(admin.post("/v1/jobs", &ok).status, 409, "a name is taken once per project");
    let r = admin.put(&format!("/v1/jobs/{id}"), &json!({"schedule": "not cron"}));
    assert_eq!(r.status, 400, "{}", r.text());
    let r = admin.put(&format!("/v1/jobs/{id}"), &json!({"image": null}));
    assert_eq!(r.status, 400, "{}", r.text());

    // No engine: the job is stored and its run fails, saying why.
    let r = admin.post(&format!("/v1/jobs/{id}/run"), &json!({}));
    assert_eq!(r.status, 201, "{}", r.text());
    let ended = settle(&admin, &id, r.json()["id"].as_str().unwrap(), 30);
    assert_eq!(ended["status"], "failed");
    assert!(ended["error"].as_str().unwrap().contains("does not run containers"), "{ended}");

    // An operator of another project sees nothing of it.
    let r = admin.post("/v1/projects", &json!({"name": "beta"}));
    let beta = r.json()["id"].as_str().unwrap().to_string();
    let r = admin.post("/v1/users", &json!({"username": "bob", "password": "password-123"}));
    let bob_id = r.json()["id"].as_str().unwrap().to_string();
    let r = admin.post(&format!("/v1/projects/{beta}/members"), &json!({"user_id": bob_id, "role": "operator"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let bob = b.login("bob", "password-123");
    let run_id = ended["id"].as_str().unwrap();
    for (method, path) in [
        ("GET", format!("/v1/jobs/{id}")),
        ("PUT", format!("/v1/jobs/{id}")),
        ("DELETE", format!("/v1/jobs/{id}")),
        ("POST", format!("/v1/jobs/{id}/run")),
        ("GET", format!("/v1/jobs/{id}/runs")),
        ("GET", format!("/v1/jobs/{id}/runs/{run_id}/logs")),
    ] {
        let r = bob.send(method, &path, Some(b"{}"), &[("Content-Type", "application/json")]);
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
        assert_eq!(r.json()["error"]["message"], format!("job {id} not found"));
    }
    assert_eq!(bob.get("/v1/jobs").json()["data"].as_array().unwrap().len(), 0);
    let r = bob.post("/v1/jobs", &with("project_id", json!(alpha)));
    assert_eq!(r.status, 404, "{}", r.text());
    // A run of another job is not this job's.
    let other = create(&admin, with("name", json!("other")));
    let r = admin.get(&format!("/v1/jobs/{}/runs/{run_id}/logs", other["id"].as_str().unwrap()));
    assert_eq!(r.status, 404, "{}", r.text());
}

#[test]
fn a_service_image_job_runs_with_the_services_env_under_its_own_and_secrets_open_only_inside() {
    if !crate::runtime::can_run() {
        return;
    }
    let (node, admin) = node("");
    let project = project_id(&admin, "alpha");
    crate::deployments::push_web(&admin, "alpha/web", "v1", "v1\n", true);
    // No replicas: the deployment goes live with its image and nothing running.
    let svc = crate::deployments::service(
        &admin,
        json!({"project_id": project, "name": "web", "port": 8080, "replicas": 0,
            "env": [{"key": "GREETING", "value": "hello"}, {"key": "TOKEN", "value": "s3cret-value", "secret": true}]}),
    );
    let dep = crate::deployments::deploy(&admin, &svc, "alpha/web", "v1");
    assert_eq!(crate::deployments::settle(&admin, &dep, 60)["status"], "live");
    let job = create(
        &admin,
        json!({"project_id": project, "name": "report", "service_id": svc,
            "command": ["/bin/sh", "-c", "echo $GREETING $TOKEN; [ \"$OWN\" = mine-\"value\" ] && echo own-ok"],
            "env": [{"key": "GREETING", "value": "hi"}, {"key": "OWN", "value": "mine-value", "secret": true}]}),
    );
    assert_eq!(job["env"][1]["value"], "***", "{job}");
    let id = job["id"].as_str().unwrap();
    let r = admin.post(&format!("/v1/jobs/{id}/run"), &json!({}));
    let ended = settle(&admin, id, r.json()["id"].as_str().unwrap(), 60);
    assert_eq!(ended["status"], "succeeded", "{ended}");
    let lines = logs(&admin, id, ended["id"].as_str().unwrap());
    assert_eq!(lines, vec![("stdout".into(), "hi s3cret-value".into()), ("stdout".into(), "own-ok".into())]);
    assert!(!admin.get(&format!("/v1/jobs/{id}")).text().contains("mine-value"));
    let nowhere = crate::deployments::nowhere_in(&node.b.data_dir(), "mine-value");
    assert!(nowhere.is_ok(), "a secret is readable at rest: {nowhere:?}");
    until(30, "no container is left", || node.containers().is_empty().then_some(()));
}

#[test]
fn a_run_going_when_the_daemon_is_killed_is_watched_again_and_ends_with_its_log() {
    if !crate::runtime::can_run() {
        return;
    }
    let (mut node, admin) = node("");
    let project = project_id(&admin, "alpha");
    push_tools(&admin);
    let job = shell_job(&admin, &project, "long", "echo begin; sleep 4; echo end; exit 5", json!({}));
    let id = admin.post(&format!("/v1/jobs/{job}/run"), &json!({})).json()["id"].as_str().unwrap().to_string();
    until(30, "the run starts", || (run(&admin, &job, &id)["status"] == "running").then_some(()));
    // While it runs, its log is read from its container.
    until(10, "the running run's log shows its first line", || {
        logs(&admin, &job, &id).contains(&("stdout".into(), "begin".into())).then_some(())
    });
    node.b.kill9();
    node.b.spawn();
    let admin = node.b.admin_session();
    let ended = settle(&admin, &job, &id, 60);
    assert_eq!((ended["status"].as_str(), ended["exit_code"].as_i64()), (Some("failed"), Some(5)), "{ended}");
    let mut lines = logs(&admin, &job, &id);
    lines.sort();
    assert_eq!(lines, vec![("stdout".into(), "begin".into()), ("stdout".into(), "end".into())]);
    until(30, "no container is left", || node.containers().is_empty().then_some(()));
}

#[test]
fn an_external_image_is_pulled_through_the_cache_with_the_projects_login() {
    if !crate::runtime::can_run() {
        return;
    }
    // The image lives on a second berth, which wants a token.
    let remote = Berth::start("");
    let radmin = remote.admin();
    assert_eq!(radmin.post("/v1/projects", &json!({"name": "alpha"})).status, 201);
    let t = radmin.post("/v1/api-tokens", &json!({"name": "pull", "scopes": ["registry:pull", "registry:push"]}));
    let pat = t.json()["token"].as_str().unwrap().to_string();
    push_tools(&radmin.with_token(&pat));

    let (node, admin) = node("");
    let project = project_id(&admin, "alpha");
    let image = format!("{}/alpha/tools:v1", remote.addr);
    let body =
        json!({"project_id": project, "name": "remote", "image": image, "command": ["/bin/sh", "-c", "echo pulled"]});
    // No login for that server yet: the pull fails at run time, saying so.
    let job = create(&admin, body)["id"].as_str().unwrap().to_string();
    let r = admin.post(&format!("/v1/jobs/{job}/run"), &json!({}));
    let failed = settle(&admin, &job, r.json()["id"].as_str().unwrap(), 60);
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["error"].as_str().unwrap().starts_with(&format!("pull {image}")), "{failed}");

    let r = admin.post(
        &format!("/v1/projects/{project}/registries"),
        &json!({"name": "second", "server": remote.addr.to_string(), "username": "admin", "password": pat}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = admin.post(&format!("/v1/jobs/{job}/run"), &json!({}));
    let ended = settle(&admin, &job, r.json()["id"].as_str().unwrap(), 120);
    assert_eq!(ended["status"], "succeeded", "{ended}");
    assert_eq!(logs(&admin, &job, ended["id"].as_str().unwrap()), vec![("stdout".into(), "pulled".into())]);
    until(30, "no container is left", || node.containers().is_empty().then_some(()));
}
