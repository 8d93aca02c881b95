//! Builds for real: buildah builds a context whose `FROM` is an image of the hosted
//! registry, the result lands in the registry as `<project>/<service>:<tag>` and a
//! deployment of it answers through the ingress; a build over its memory limit
//! fails cleanly; a cancelled build leaves no process, cgroup or temp dir; a node
//! without buildah says so.
//!
//! The builder runs in this process against the daemon's own state dir (the same
//! database and blob store), so these tests need no upload or clone; the tests at
//! the end go through `POST /v1/services/{id}/uploads` and `Upload` deployments.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth::build::Stop;
use berth::build::builder::{Builder, Parts};
use berth::engine::deploy::{BuildJob, ExternalImages, Fetched};
use berth::engine::service::Source;
use serde_json::{Value, json};

use crate::deployments::{
    Node, busybox_layer, deploy, node, project_id, push, service, settle, sse, until, via_ingress,
};
use crate::harness::TempDir;

const HTTPD: &str = r#"CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]"#;

fn can_build() -> bool {
    crate::runtime::can_run() && crate::harness::require_tool("buildah", &["--version"])
}

/// An in-process builder over the daemon's state dir, with build cgroups under a
/// prefix of the test's own (removed on drop).
struct Local {
    builder: Arc<Builder>,
    rt: tokio::runtime::Runtime,
    layout: berth::runtime::cgroups::Layout,
    data_dir: PathBuf,
}

impl Local {
    fn new(node: &Node, build: berth::config::BuildConfig) -> Local {
        Local::with(node, build, |_| None)
    }

    /// [`Local::new`] with external images fetched by what `external` makes of the
    /// registry.
    fn with(
        node: &Node,
        build: berth::config::BuildConfig,
        external: impl FnOnce(Arc<berth::registry::Registry>) -> Option<Arc<dyn ExternalImages>>,
    ) -> Local {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let data_dir = node.b.data_dir();
        let tag = berth::ids::new_id("b").to_lowercase();
        let layout = berth::runtime::cgroups::Layout::for_self(&format!("berth-it-bld-{}", &tag[tag.len() - 6..]))
            .expect("cgroup layout");
        let builder = rt.block_on(async {
            let store = berth::store::Store::open(&data_dir.join("state.db")).unwrap();
            let config = berth::config::Config { data_dir: data_dir.clone(), ..Default::default() };
            let registry = Arc::new(berth::registry::Registry::new(
                berth::registry::Settings::from_config(&config),
                store.clone(),
            ));
            let uploads =
                Arc::new(berth::build::uploads::Uploads::new(store.clone(), data_dir.join("uploads"), &build));
            Arc::new(Builder::new(Parts {
                config: build,
                data_dir: data_dir.clone(),
                run_dir: node.run_dir(),
                layout: Some(layout.clone()),
                store,
                sealer: Arc::new(berth::secrets::Sealer::ephemeral()),
                uploads,
                external: external(registry.clone()),
                registry,
            }))
        });
        Local { builder, rt, layout, data_dir }
    }

    /// Builds `context` for `job`; returns the outcome and the log lines.
    fn build(
        &self,
        job: &BuildJob,
        context: &Path,
        cancel: tokio::sync::watch::Receiver<bool>,
    ) -> (Result<String, Stop>, Vec<String>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
        let r = self.rt.block_on(self.builder.build_dir(job, context, &tx, cancel));
        drop(tx);
        let mut lines = Vec::new();
        while let Ok(l) = rx.try_recv() {
            lines.push(l);
        }
        (r, lines)
    }

    /// The build cgroup of `job` in every hierarchy.
    fn cgroup_dirs(&self, job: &BuildJob) -> Vec<PathBuf> {
        self.layout
            .dirs(&format!("{}/builds/{}", self.layout.base, job.deployment_id))
            .into_iter()
            .map(|(_, d)| d)
            .collect()
    }

    fn tmp_dir(&self, job: &BuildJob) -> PathBuf {
        self.data_dir.join("builds").join("tmp").join(&job.deployment_id)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        for d in crate::runtime::cgroup_dirs(&self.layout) {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

fn job(project: &str, service: &str, args: &[(&str, &str)]) -> BuildJob {
    let build_args: BTreeMap<String, String> = args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    BuildJob {
        deployment_id: berth::ids::new_id("dep").to_lowercase(),
        project_id: project.into(),
        service_id: service.into(),
        source: Source::Upload {
            upload_id: "local".into(),
            dockerfile: None,
            build_args: (!build_args.is_empty()).then_some(build_args),
        },
    }
}

/// A context dir with `files` (`(path, content)`).
fn context(files: &[(&str, &str)]) -> TempDir {
    let t = TempDir::new("ctx");
    for (p, c) in files {
        let path = t.path().join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, c).unwrap();
    }
    t
}

/// Processes whose command line holds `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                out.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

fn web_service(admin: &crate::harness::Client, project: &str, name: &str) -> String {
    service(
        admin,
        json!({"project_id": project, "name": name, "port": 8080, "health_check": {"path": "/index.html", "interval_s": 1}}),
    )
}

#[test]
fn a_context_built_from_a_hosted_base_goes_live_through_the_ingress() {
    if !can_build() {
        return;
    }
    let (node, admin) = node("");
    let project = project_id(&admin, "alpha");
    push(&admin, "alpha/base", "v1", &[busybox_layer()], &["/bin/sh"]);
    let svc = web_service(&admin, &project, "web");
    let local = Local::new(&node, berth::config::BuildConfig::default());
    let ctx = context(&[
        (
            "Dockerfile",
            &format!(
                "FROM alpha/base:v1\nARG GREETING\nRUN /bin/busybox mkdir -p /www && echo built-by-run > /www/run.txt \
                 && echo \"$GREETING\" > /www/arg.txt\nCOPY index.html /www/index.html\n{HTTPD}\n"
            ),
        ),
        ("index.html", "hello from a build\n"),
    ]);
    let j = job(&project, &svc, &[("GREETING", "hi there")]);
    let (_keep, cancel) = tokio::sync::watch::channel(false);
    let (r, lines) = local.build(&j, ctx.path(), cancel);
    let digest = r.unwrap_or_else(|e| panic!("build failed: {e}\n{}", lines.join("\n")));
    assert!(digest.starts_with("sha256:"), "{digest}");
    for step in ["STEP 1/5: FROM oci:bases/", "STEP 3/5: RUN", "STEP 4/5: COPY index.html", "stored as sha256:"] {
        assert!(lines.iter().any(|l| l.contains(step)), "no {step:?} in the log:\n{}", lines.join("\n"));
    }
    // The image is in the hosted registry under the build's tag, with its digest.
    let r = admin.send(
        "GET",
        &format!("/v2/alpha/web/manifests/{}", j.deployment_id),
        None,
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
    // Nothing of the build is left: no temp dir, no cgroup, no image in buildah's storage.
    assert!(!local.tmp_dir(&j).exists());
    assert!(local.cgroup_dirs(&j).iter().all(|d| !d.exists()), "{:?}", local.cgroup_dirs(&j));
    let images = std::process::Command::new("buildah")
        .args(["--root", &local.data_dir.join("builds/storage").to_string_lossy(), "--storage-driver", "vfs"])
        .args(["--runroot", &node.run_dir().join("builds").to_string_lossy(), "images", "--format", "{{.Name}}"])
        .output()
        .unwrap();
    let images = String::from_utf8_lossy(&images.stdout);
    assert!(!images.contains("berth-build"), "{images}");
    // Its deployment goes live and answers through the ingress with what RUN and COPY made.
    let dep = deploy(&admin, &svc, "alpha/web", &j.deployment_id);
    let d = settle(&admin, &dep, 90);
    assert_eq!((d["status"].as_str(), d["image_digest"].as_str()), (Some("live"), Some(digest.as_str())), "{d}");
    let host = "web.alpha.localhost";
    for (path, want) in [("/", "hello from a build\n"), ("/run.txt", "built-by-run\n"), ("/arg.txt", "hi there\n")] {
        let got = until(30, &format!("{path} through the ingress"), || via_ingress(&node, host, path));
        assert_eq!(got, (200, want.to_string()), "{path}");
    }
}

/// External images for the in-process builder: the registry client with one login.
struct Pulls {
    puller: berth::images::remote::Puller,
    registry: Arc<berth::registry::Registry>,
    login: (String, String),
}

impl ExternalImages for Pulls {
    fn fetch<'a>(
        &'a self,
        _project_id: &'a str,
        image: &'a str,
        _registry_id: Option<&'a str>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Fetched, String>> + Send + 'a>> {
        Box::pin(async move {
            let image = berth::images::remote::ImageRef::parse(image).map_err(|e| e.to_string())?;
            let login = berth::images::remote::RegistryLogin {
                username: self.login.0.clone(),
                password: self.login.1.clone().into(),
            };
            let p = self.puller.pull(&self.registry, &image, Some(&login)).await.map_err(|e| e.to_string())?;
            Ok(Fetched {
                digest: p.manifest.to_string(),
                blobs_fetched: p.blobs_fetched,
                bytes_fetched: p.bytes_fetched,
            })
        })
    }
}

#[test]
fn an_external_base_comes_through_the_layer_cache_and_builds_offline_once_cached() {
    if !can_build() {
        return;
    }
    // The base lives on a second berth, reached as an external registry.
    let mut remote = crate::harness::Berth::start("");
    let ra = remote.admin();
    assert_eq!(ra.post("/v1/projects", &json!({"name": "lib"})).status, 201);
    push(&ra, "lib/base", "v1", &[busybox_layer()], &["/bin/sh"]);
    let (node, admin) = node("");
    let project = project_id(&admin, "alpha");
    let svc = web_service(&admin, &project, "web");
    let local = Local::with(&node, berth::config::BuildConfig::default(), |registry| {
        let pulls = Pulls {
            puller: berth::images::remote::Puller::new(Default::default()),
            registry,
            login: ("admin".into(), crate::harness::ADMIN_PASSWORD.into()),
        };
        Some(Arc::new(pulls) as Arc<dyn ExternalImages>)
    });
    let base = format!("{}/lib/base:v1", remote.addr);
    let ctx = context(&[
        ("Dockerfile", &format!("FROM {base}\nCOPY index.html /www/index.html\n{HTTPD}\n")),
        ("index.html", "from an external base\n"),
    ]);
    let (_keep, cancel) = tokio::sync::watch::channel(false);
    let (r, lines) = local.build(&job(&project, &svc, &[]), ctx.path(), cancel.clone());
    assert!(r.is_ok(), "{r:?}\n{}", lines.join("\n"));
    assert!(lines.iter().any(|l| l == &format!("fetching {base} through the layer cache")), "{}", lines.join("\n"));
    // The remote goes away: the next build uses the cached base.
    remote.stop();
    let (r, lines) = local.build(&job(&project, &svc, &[]), ctx.path(), cancel);
    let digest = r.unwrap_or_else(|e| panic!("{e}\n{}", lines.join("\n")));
    assert!(lines.iter().any(|l| l.contains("building on the cached sha256:")), "{}", lines.join("\n"));
    assert!(digest.starts_with("sha256:"));
}

#[test]
fn bad_contexts_fail_with_a_reason_and_other_projects_images_are_not_found() {
    if !can_build() {
        return;
    }
    let (node, admin) = node("");
    assert_eq!(admin.post("/v1/projects", &json!({"name": "beta"})).status, 201);
    let project = project_id(&admin, "alpha");
    push(&admin, "alpha/base", "v1", &[busybox_layer()], &["/bin/sh"]);
    push(&admin, "beta/base", "v1", &[busybox_layer()], &["/bin/sh"]);
    let svc = web_service(&admin, &project, "web");
    let local = Local::new(&node, berth::config::BuildConfig::default());
    let cases: &[(&[(&str, &str)], &str)] = &[
        // Another project's image reads exactly like one that does not exist.
        (&[("Dockerfile", "FROM beta/base:v1\n")], "FROM beta/base:v1: no such image in this project's registry"),
        (&[("Dockerfile", "FROM alpha/nope:v1\n")], "FROM alpha/nope:v1: no such image in this project's registry"),
        (&[("Dockerfile", "FROM busybox\n")], "fully qualified"),
        (&[("Dockerfile", "ARG BASE\nFROM $BASE\n")], "neither a build arg nor its ARG default"),
        (&[("index.html", "no Dockerfile\n")], "the context has no Dockerfile"),
        (
            &[("Dockerfile", "FROM alpha/base:v1\nRUN /bin/busybox false\n")],
            "the build failed (buildah exited with code",
        ),
        (&[("Dockerfile", "FROM alpha/base:v1\nCOPY missing.txt /x\n")], "the build failed"),
    ];
    for (files, says) in cases {
        let ctx = context(files);
        let j = job(&project, &svc, &[]);
        let (_keep, cancel) = tokio::sync::watch::channel(false);
        let (r, lines) = local.build(&j, ctx.path(), cancel);
        match r {
            Err(Stop::Failed(m)) => assert!(m.contains(says), "{files:?}: {m}\n{}", lines.join("\n")),
            other => panic!("{files:?}: {other:?}"),
        }
        assert!(!local.tmp_dir(&j).exists(), "{files:?}");
        assert!(local.cgroup_dirs(&j).iter().all(|d| !d.exists()), "{files:?}");
    }
}

#[test]
fn a_build_over_its_memory_limit_fails_cleanly() {
    if !can_build() {
        return;
    }
    let (node, admin) = node("");
    let project = project_id(&admin, "alpha");
    push(&admin, "alpha/base", "v1", &[busybox_layer()], &["/bin/sh"]);
    let svc = web_service(&admin, &project, "web");
    // Any storage is over this limit: every build is followed by a collection.
    let config = berth::config::BuildConfig { memory_mb: 96, storage_max_bytes: 1, ..Default::default() };
    let local = Local::new(&node, config);
    let ctx = context(&[(
        "Dockerfile",
        "FROM alpha/base:v1\nRUN /bin/busybox dd if=/dev/zero of=/dev/null bs=400M count=1\n",
    )]);
    let j = job(&project, &svc, &[]);
    let (_keep, cancel) = tokio::sync::watch::channel(false);
    let (r, lines) = local.build(&j, ctx.path(), cancel);
    match r {
        Err(Stop::Failed(m)) => {
            assert!(m.contains("out of memory") && m.contains("96 MiB"), "{m}\n{}", lines.join("\n"))
        }
        other => panic!("{other:?}\n{}", lines.join("\n")),
    }
    assert!(!local.tmp_dir(&j).exists());
    assert!(local.cgroup_dirs(&j).iter().all(|d| !d.exists()));
    // The daemon did not notice, and the next build (in bounds) works.
    assert_eq!(admin.get("/v1/node").status, 200);
    let ctx = context(&[("Dockerfile", "FROM alpha/base:v1\nRUN echo fine > /fine\n")]);
    let (_keep, cancel) = tokio::sync::watch::channel(false);
    let (r, lines) = local.build(&job(&project, &svc, &[]), ctx.path(), cancel);
    assert!(r.is_ok(), "{r:?}\n{}", lines.join("\n"));
    // Build storage went over its limit after each build and was emptied (in the
    // background, once the build had answered).
    until(60, "two collections", || (local.builder.status().storage_collections == 2).then_some(()));
    assert_eq!(buildah_images(&local, &node), "", "{:?}", local.builder.status());
}

/// The images in the builder's storage, one name (or id) a line.
fn buildah_images(local: &Local, node: &Node) -> String {
    let out = std::process::Command::new("buildah")
        .args(["--root", &local.data_dir.join("builds/storage").to_string_lossy(), "--storage-driver", "vfs"])
        .args(["--runroot", &node.run_dir().join("builds").to_string_lossy(), "images", "-a", "-q"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_cancelled_build_leaves_no_process_cgroup_or_temp_dir() {
    if !can_build() {
        return;
    }
    let (node, admin) = node("");
    let project = project_id(&admin, "alpha");
    push(&admin, "alpha/base", "v1", &[busybox_layer()], &["/bin/sh"]);
    let svc = web_service(&admin, &project, "web");
    let local = Local::new(&node, berth::config::BuildConfig::default());
    // A sleep no other process on the machine runs.
    let secs = 600_000 + (std::process::id() % 100_000);
    let needle = format!("sleep {secs}");
    let ctx = context(&[("Dockerfile", &format!("FROM alpha/base:v1\nRUN /bin/busybox {needle}\n"))]);
    let j = job(&project, &svc, &[]);
    let (tx, cancel) = tokio::sync::watch::channel(false);
    let n = needle.clone();
    let canceller = std::thread::spawn(move || {
        until(120, "the build's RUN is running", || (!processes_with(&n).is_empty()).then_some(()));
        tx.send(true).unwrap();
        tx
    });
    let started = std::time::Instant::now();
    let (r, lines) = local.build(&j, ctx.path(), cancel);
    let _tx = canceller.join().unwrap();
    assert_eq!(r, Err(Stop::Cancelled), "{}", lines.join("\n"));
    assert!(started.elapsed() < Duration::from_secs(150));
    assert!(processes_with(&needle).is_empty(), "{:?}", processes_with(&needle));
    assert!(processes_with(&j.deployment_id).is_empty(), "{:?}", processes_with(&j.deployment_id));
    assert!(!local.tmp_dir(&j).exists());
    assert!(local.cgroup_dirs(&j).iter().all(|d| !d.exists()), "{:?}", local.cgroup_dirs(&j));
}

#[test]
fn builds_wait_in_line_and_one_past_its_timeout_is_stopped() {
    if !can_build() {
        return;
    }
    let (node, admin) = node("");
    let project = project_id(&admin, "alpha");
    push(&admin, "alpha/base", "v1", &[busybox_layer()], &["/bin/sh"]);
    let svc = web_service(&admin, &project, "web");
    let config = berth::config::BuildConfig { concurrency: 1, timeout_seconds: 4, ..Default::default() };
    let local = Arc::new(Local::new(&node, config));
    let secs = 800_000 + (std::process::id() % 100_000);
    let needle = format!("sleep {secs}");
    let slow = context(&[("Dockerfile", &format!("FROM alpha/base:v1\nRUN /bin/busybox {needle}\n"))]);
    let quick = context(&[("Dockerfile", "FROM alpha/base:v1\nRUN echo quick > /quick\n")]);
    let (slow_job, quick_job) = (job(&project, &svc, &[]), job(&project, &svc, &[]));
    let (l, p, j) = (local.clone(), slow.path().to_path_buf(), slow_job.clone());
    let first = std::thread::spawn(move || {
        let (_keep, cancel) = tokio::sync::watch::channel(false);
        l.build(&j, &p, cancel)
    });
    until(60, "the slow build runs", || (!processes_with(&needle).is_empty()).then_some(()));
    let (_keep, cancel) = tokio::sync::watch::channel(false);
    let (quick_result, quick_lines) = local.build(&quick_job, quick.path(), cancel);
    let (slow_result, slow_lines) = first.join().unwrap();
    match slow_result {
        Err(Stop::Failed(m)) => assert!(m.contains("longer than 4 s"), "{m}"),
        other => panic!("{other:?}\n{}", slow_lines.join("\n")),
    }
    assert!(quick_result.is_ok(), "{quick_result:?}\n{}", quick_lines.join("\n"));
    assert!(quick_lines[0].starts_with("waiting for a build slot: 1 build(s) running"), "{}", quick_lines.join("\n"));
    assert!(processes_with(&needle).is_empty(), "{:?}", processes_with(&needle));
    assert!(!local.tmp_dir(&slow_job).exists());
    assert!(local.cgroup_dirs(&slow_job).iter().all(|d| !d.exists()));
    let status = local.builder.status();
    assert_eq!((status.running, status.waiting), (0, 0), "{status:?}");
}

#[test]
fn shutting_the_builder_down_stops_its_builds() {
    if !can_build() {
        return;
    }
    let (node, admin) = node("");
    let project = project_id(&admin, "alpha");
    push(&admin, "alpha/base", "v1", &[busybox_layer()], &["/bin/sh"]);
    let svc = web_service(&admin, &project, "web");
    let local = Arc::new(Local::new(&node, berth::config::BuildConfig::default()));
    let secs = 850_000 + (std::process::id() % 50_000);
    let needle = format!("sleep {secs}");
    let ctx = context(&[("Dockerfile", &format!("FROM alpha/base:v1\nRUN /bin/busybox {needle}\n"))]);
    let j = job(&project, &svc, &[]);
    let (l, p, jj) = (local.clone(), ctx.path().to_path_buf(), j.clone());
    let build = std::thread::spawn(move || {
        let (_keep, cancel) = tokio::sync::watch::channel(false);
        l.build(&jj, &p, cancel)
    });
    until(60, "the build runs", || (!processes_with(&needle).is_empty()).then_some(()));
    local.rt.block_on(local.builder.shut_down());
    let (r, lines) = build.join().unwrap();
    match r {
        Err(Stop::Failed(m)) => assert!(m.contains("daemon stopped"), "{m}"),
        other => panic!("{other:?}\n{}", lines.join("\n")),
    }
    assert!(processes_with(&needle).is_empty(), "{:?}", processes_with(&needle));
    assert!(!local.tmp_dir(&j).exists());
    assert!(local.cgroup_dirs(&j).iter().all(|d| !d.exists()));
}

#[test]
fn a_node_without_buildah_says_so_and_fails_builds_at_once() {
    if !can_build() {
        return;
    }
    let (node, admin) = node("[build]\nbuildah = \"/nonexistent/buildah\"\n");
    let n = admin.get("/v1/node").json();
    assert_eq!(n["builder"], json!({"available": false, "version": null}), "{n}");
    let s = admin.get("/v1/builds/status").json();
    assert_eq!(s["builder"]["available"], false, "{s}");
    let project = project_id(&admin, "alpha");
    let local =
        Local::new(&node, berth::config::BuildConfig { buildah: "/nonexistent/buildah".into(), ..Default::default() });
    let ctx = context(&[("Dockerfile", "FROM alpha/base:v1\n")]);
    let (_keep, cancel) = tokio::sync::watch::channel(false);
    let (r, _) = local.build(&job(&project, "svc_x", &[]), ctx.path(), cancel);
    match r {
        Err(Stop::Failed(m)) => assert!(m.contains("install it") && m.contains("buildah"), "{m}"),
        other => panic!("{other:?}"),
    }
    // And a node with it reports its version.
    let (_node2, admin2) = crate::deployments::node("");
    let n = admin2.get("/v1/node").json();
    assert_eq!(n["builder"]["available"], true, "{n}");
    assert!(n["builder"]["version"].as_str().is_some_and(|v| v.starts_with('1')), "{n}");
}

/// A `tar.gz` of `files`.
fn targz(files: &[(&str, &str)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (p, c) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(c.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, p, c.as_bytes()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// Uploads `files` as the service's build context; returns the upload id.
fn upload(admin: &crate::harness::Client, svc: &str, files: &[(&str, &str)]) -> String {
    let r = admin.send(
        "POST",
        &format!("/v1/services/{svc}/uploads"),
        Some(&targz(files)),
        &[("Content-Type", "application/gzip")],
    );
    assert_eq!(r.status, 201, "upload: {}", r.text());
    r.json()["upload_id"].as_str().unwrap().to_string()
}

fn deploy_upload(admin: &crate::harness::Client, svc: &str, upload_id: &str) -> String {
    let r = admin
        .post("/v1/deployments", &json!({"service_id": svc, "source": {"kind": "Upload", "upload_id": upload_id}}));
    assert_eq!(r.status, 201, "deploy: {}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

/// Done when 1: an uploaded context goes `building → … → live`, and the SSE log
/// shows the build's steps.
#[test]
fn an_uploaded_context_builds_and_goes_live_with_its_steps_in_the_log() {
    if !can_build() {
        return;
    }
    let (node, admin) = node("");
    let project = project_id(&admin, "alpha");
    push(&admin, "alpha/base", "v1", &[busybox_layer()], &["/bin/sh"]);
    let svc = web_service(&admin, &project, "web");
    let files = [
        (
            "Dockerfile",
            format!(
                "FROM alpha/base:v1\nRUN /bin/busybox mkdir -p /www && echo built-by-run > /www/run.txt\n\
                 COPY index.html /www/index.html\n{HTTPD}\n"
            ),
        ),
        ("index.html", "uploaded\n".to_string()),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    let up = upload(&admin, &svc, &files);
    let dep = deploy_upload(&admin, &svc, &up);
    until(60, "building", || {
        let d = admin.get(&format!("/v1/deployments/{dep}")).json();
        (d["status"] != "queued").then_some(())
    });
    let d = settle(&admin, &dep, 180);
    assert_eq!(d["status"], "live", "{d}");
    let events = sse(&admin, &format!("/v1/deployments/{dep}/logs/stream"), None, 30, |e| {
        e.iter().any(|e| e.data.contains("live:"))
    });
    let text: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    let at = |needle: &str| {
        text.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} in {text:#?}"))
    };
    assert!(at("building") < at("STEP 2/4: RUN"));
    assert!(at("STEP 3/4: COPY") < at("pulling"));
    assert!(at("pulling") < at("live:"));
    let got = until(30, "the built page", || via_ingress(&node, "web.alpha.localhost", "/run.txt"));
    assert_eq!(got, (200, "built-by-run\n".to_string()));
    // A rollback runs the same digest with no build.
    let again = admin.post(&format!("/v1/deployments/{dep}/rollback"), &json!({}));
    assert_eq!(again.status, 201, "{}", again.text());
    let again: Value = again.json();
    let a = settle(&admin, again["id"].as_str().unwrap(), 90);
    assert_eq!(a["image_digest"], d["image_digest"]);
}

/// Without buildah an Upload deployment fails at once, saying to install it.
#[test]
fn without_buildah_an_upload_deployment_fails_at_once() {
    if !crate::runtime::can_run() {
        return;
    }
    let (_node, admin) = node("[build]\nbuildah = \"/nonexistent\"\n");
    let project = project_id(&admin, "alpha");
    let svc = web_service(&admin, &project, "web");
    let up = upload(&admin, &svc, &[("Dockerfile", "FROM alpha/base:v1\n")]);
    let d = settle(&admin, &deploy_upload(&admin, &svc, &up), 30);
    assert_eq!(d["status"], "failed", "{d}");
    assert!(d["error"].as_str().unwrap().contains("install it"), "{d}");
}

/// Done when 5 through the API: the memory limit and cancel during `building`.
#[test]
fn uploaded_builds_fail_on_memory_and_cancel_while_building() {
    if !can_build() {
        return;
    }
    let (_node, admin) = node("[build]\nmemory_mb = 96\n");
    let project = project_id(&admin, "alpha");
    push(&admin, "alpha/base", "v1", &[busybox_layer()], &["/bin/sh"]);
    let svc = web_service(&admin, &project, "web");
    let up = upload(
        &admin,
        &svc,
        &[("Dockerfile", "FROM alpha/base:v1\nRUN /bin/busybox dd if=/dev/zero of=/dev/null bs=400M count=1\n")],
    );
    let d = settle(&admin, &deploy_upload(&admin, &svc, &up), 180);
    assert_eq!(d["status"], "failed", "{d}");
    assert!(d["error"].as_str().unwrap().contains("out of memory"), "{d}");

    let secs = 700_000 + (std::process::id() % 100_000);
    let needle = format!("sleep {secs}");
    let up = upload(&admin, &svc, &[("Dockerfile", &format!("FROM alpha/base:v1\nRUN /bin/busybox {needle}\n"))]);
    let dep = deploy_upload(&admin, &svc, &up);
    until(120, "the build's RUN is running", || (!processes_with(&needle).is_empty()).then_some(()));
    let r = admin.post(&format!("/v1/deployments/{dep}/cancel"), &json!({}));
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("cancelled")), "{}", r.text());
    until(20, "no process of the build", || processes_with(&needle).is_empty().then_some(()));
    assert!(!_node.b.data_dir().join("builds/tmp").join(&dep).exists());
}

/// A daemon stopped mid-build (SIGTERM) kills the build; one killed outright
/// (SIGKILL) leaves it running, and the next start kills it and removes its
/// cgroup and temp dir. Either way the deployment ends failed.
#[test]
fn builds_do_not_outlive_the_daemon() {
    if !can_build() {
        return;
    }
    let (mut node, admin) = node("");
    let project = project_id(&admin, "alpha");
    push(&admin, "alpha/base", "v1", &[busybox_layer()], &["/bin/sh"]);
    let svc = web_service(&admin, &project, "web");
    for (round, how) in ["SIGTERM", "SIGKILL"].iter().enumerate() {
        let admin = node.b.admin_session();
        let secs = 900_000 + (std::process::id() % 50_000) * 2 + round as u32;
        let needle = format!("sleep {secs}");
        let up = upload(&admin, &svc, &[("Dockerfile", &format!("FROM alpha/base:v1\nRUN /bin/busybox {needle}\n"))]);
        let dep = deploy_upload(&admin, &svc, &up);
        until(120, "the build's RUN is running", || (!processes_with(&needle).is_empty()).then_some(()));
        let tmp = node.b.data_dir().join("builds/tmp").join(&dep);
        assert!(tmp.exists());
        if *how == "SIGTERM" {
            node.b.stop();
            assert!(processes_with(&needle).is_empty(), "{how}: {:?}", processes_with(&needle));
            assert!(!tmp.exists(), "{how}");
        } else {
            node.b.kill9();
            assert!(!processes_with(&needle).is_empty(), "a SIGKILL leaves the build to the next start");
        }
        node.b.spawn();
        until(20, "no process of the build", || processes_with(&needle).is_empty().then_some(()));
        assert!(!tmp.exists(), "{how}");
        let d = node.b.admin_session().get(&format!("/v1/deployments/{dep}")).json();
        assert_eq!(d["status"], "failed", "{how}: {d}");
    }
}
