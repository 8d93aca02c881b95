//! The measurements behind `bench/start.sh`, as one ignored test (run it with
//! `cargo test --release --test it bench_start -- --ignored --nocapture`):
//!
//! 1. berth: a busybox httpd image pushed with the Docker CLI to berth's registry and
//!    unpacked beforehand; timed from just before `Networks::attach` (plus the hosts
//!    file) and `Runtime::create` until `GET /index.html` at the replica's address
//!    answers 200. The phases are timed too: attach, create (until the shim wrote
//!    `started.json`), start (until the container's init has exec'd busybox, seen in
//!    `/proc/PID/comm`) and listen (until the 200). Then, for the diagnosis only, more
//!    starts with a thread watching the state dir for the files each step leaves.
//! 2. the limit: `runc run -d` of an equivalent bundle (the same layers in an overlay,
//!    the `config.json` that `spec::build` makes for the same container, in a netns
//!    attached beforehand); and, for the diagnosis only, `runc create` + `runc start`,
//!    the two calls the shim makes.
//! 3. `docker run -d --network host` of the same image, pulled back from berth's
//!    registry into a private engine, with the same limits (and, with the cgroupfs
//!    driver, a cgroup parent inside the fixture's subtree), until a 200 on loopback.
//!    The private engine has no bridge, so its figure has no network setup at all.
//! 4. unpacking one gzip layer (200 MiB of many text files of mixed sizes) with
//!    `unpack_layer` against `tar -xzf` of the same file.
//! 5. each shim's memory while its replica runs (the release build of `berth`): VmRSS, and
//!    with several replicas running at once Pss (the budget) and where the pages come from.
//!
//! Each is repeated (7 rounds, 2 with `BENCH_SMOKE=1`, after one untimed warm-up
//! round for the starts) and the medians are reported. All traffic goes to the
//! containers' own addresses and to loopback. It prints a summary and then, as its
//! last line, the verdict `start: ...` that `bench/start.sh` repeats. It never fails
//! on a target (the script decides that); it fails when something does not work.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth::engine::image::prepare;
use berth::images::snapshots::SnapshotStore;
use berth::images::unpack::{Limits as UnpackLimits, unpack_layer};
use berth::registry::blobs::BlobStore;
use berth::runtime::cgroups::Limits;
use berth::runtime::network::ipam::MemIpam;
use berth::runtime::network::{NetOptions, Networks};
use berth::runtime::spec::{self, ContainerSpec};
use rand::{Rng, SeedableRng};

use crate::harness::{TempDir, require_tool};
use crate::runtime::{Fixture, can_run, find_shim};
use crate::tools::{Dockerd, free_port};

/// Targets of the issue (on a 2-core machine).
const TARGET_VS_RUNC: f64 = 1.5;
const TARGET_VS_DOCKER: f64 = 0.7;
const TARGET_UNPACK_SPEED: f64 = 0.8;
/// Budget for each shim's proportional share of memory (Pss) with several replicas
/// running: what a shim really costs, its shared text counted once across shims.
const BUDGET_SHIM_PSS_KIB: u64 = 4096;

/// How often a start is checked for an HTTP answer.
const POLL: Duration = Duration::from_millis(2);
const PROJECT: &str = "prj_bench";
const SERVICE: &str = "web";
const PAGE: &str = "hello from berth\n";
/// The same limits for every contender.
const MEMORY_BYTES: i64 = 64 << 20;
const CPUS: f64 = 1.0;
const PIDS: i64 = 64;
/// Read from the shim's /proc/PID/status (KiB, but for Threads).
const SHIM_STATUS: [&str; 5] = ["VmRSS:", "RssAnon:", "RssFile:", "VmHWM:", "Threads:"];
/// Read from the shim's /proc/PID/smaps_rollup (KiB): what is its own, and its share
/// of pages mapped by others too (the `berth` binary's text, shared by every shim).
const SHIM_SMAPS: [&str; 3] = ["Pss:", "Private_Clean:", "Private_Dirty:"];
/// Replicas running at once when the shims' shared memory is looked at.
const SHIMS_TOGETHER: usize = 4;
/// How often the traced starts look at the state dir.
const WATCH_EVERY: Duration = Duration::from_micros(250);
/// Files in a replica's state dir, in the order a start makes them, and what each
/// marks.
const WATCHED: [(&str, &str); 5] = [
    ("bundle/config.json", "config.json written (overlay mounted, cgroup dirs made)"),
    ("shim.log", "shim about to be spawned"),
    ("container.log", "shim running (exec'd, its main began)"),
    ("init.pid", "runc create wrote the init's pid"),
    ("started.json", "the shim wrote started.json (fsync'd)"),
];

struct Config {
    smoke: bool,
    rounds: usize,
    layer_mib: u64,
}

impl Config {
    fn from_env() -> Config {
        let smoke = std::env::var("BENCH_SMOKE").as_deref() == Ok("1");
        let num = |k: &str, default: u64| -> u64 {
            std::env::var(k)
                .ok()
                .map(|v| v.parse().unwrap_or_else(|_| panic!("{k}={v} is not a number")))
                .unwrap_or(default)
        };
        Config {
            smoke,
            rounds: num("BENCH_ROUNDS", if smoke { 2 } else { 7 }).max(1) as usize,
            layer_mib: num("BENCH_LAYER_MIB", if smoke { 20 } else { 200 }).max(1),
        }
    }
}

// ---------------------------------------------------------------------------------
// Clean-up guards

/// Networks with names and a pool of their own; Drop tears everything down.
struct Nets(Networks);

impl Drop for Nets {
    fn drop(&mut self) {
        let _ = self.0.teardown_all();
    }
}

fn nets() -> Nets {
    let tag = berth::ids::new_id("t").to_lowercase();
    let tag = &tag[tag.len() - 6..];
    let mut opts = NetOptions::new(crate::harness::test_pool(24));
    opts.link_prefix = format!("bs{}", &tag[..4]);
    opts.netns_prefix = format!("berth-it-{tag}-");
    opts.nft_table = format!("berth_it_{tag}");
    Nets(Networks::new(opts, Arc::new(MemIpam::new())).unwrap())
}

/// The bare runc containers and their overlay mounts; Drop deletes them.
struct Bare {
    runc_root: PathBuf,
    mounts: RefCell<Vec<PathBuf>>,
}

impl Bare {
    fn runc(&self) -> Command {
        let mut c = Command::new("runc");
        c.arg("--root").arg(&self.runc_root).stdin(Stdio::null());
        c
    }

    fn delete(&self, id: &str) {
        let out = self.runc().args(["delete", "--force", id]).output().expect("run runc delete");
        assert!(out.status.success(), "runc delete {id}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn mount(&self, lowers: &[PathBuf], dir: &Path) -> PathBuf {
        let rootfs = dir.join("rootfs");
        berth::runtime::rootfs::mount_overlay(lowers, &dir.join("upper"), &dir.join("work"), &rootfs).unwrap();
        self.mounts.borrow_mut().push(rootfs.clone());
        rootfs
    }

    fn unmount(&self, rootfs: &Path) {
        berth::runtime::rootfs::unmount(rootfs).unwrap();
        self.mounts.borrow_mut().retain(|m| m != rootfs);
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let ids = self.runc().args(["list", "-q"]).output().map(|o| o.stdout).unwrap_or_default();
        for id in String::from_utf8_lossy(&ids).lines().filter(|l| !l.is_empty()) {
            let _ = self.runc().args(["delete", "--force", id]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        for m in self.mounts.borrow().iter() {
            let _ = berth::runtime::rootfs::unmount(m);
        }
    }
}

/// Removes every container of the private engine (before the engine stops).
struct DockerContainers<'a>(&'a Dockerd);

impl Drop for DockerContainers<'_> {
    fn drop(&mut self) {
        let ids = self.0.docker(&["ps", "-aq"]).stdout;
        for id in String::from_utf8_lossy(&ids).split_whitespace() {
            let _ = self.0.docker(&["rm", "-f", id]);
        }
    }
}

// ---------------------------------------------------------------------------------
// Helpers

fn web_image(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy("/bin/busybox", dir.join("busybox")).unwrap();
    std::fs::write(dir.join("index.html"), PAGE).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY index.html /www/index.html\n\
         CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
    )
    .unwrap();
}

/// The container the berth replica and the bare runc bundle both run.
fn web_spec(id: &str, args: &[String], netns: &Path, hosts: &Path, rootfs: PathBuf) -> ContainerSpec {
    ContainerSpec {
        id: id.into(),
        hostname: SERVICE.into(),
        args: args.to_vec(),
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        additional_gids: vec![],
        rootfs,
        hosts_file: Some(hosts.to_path_buf()),
        resolv_file: None,
        volumes: vec![],
        netns: Some(netns.to_path_buf()),
        limits: Limits { memory_bytes: Some(MEMORY_BYTES), cpus: Some(CPUS), pids: Some(PIDS) },
        cgroups_path: String::new(),
    }
}

/// One `GET /index.html` over a fresh connection: true on a 200 with the page.
fn http_ok(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /index.html HTTP/1.0\r\nHost: bench\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1) == Some("200") && text.ends_with(PAGE)
}

/// Polls `addr` every [`POLL`] (calling `each` first every time) until it answers
/// 200; the instant it did, or `None` after `within`.
fn wait_http(addr: SocketAddr, within: Duration, mut each: impl FnMut()) -> Option<Instant> {
    let deadline = Instant::now() + within;
    loop {
        each();
        if http_ok(addr) {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Whether a container's init has left `runc init` for its own program.
fn execed(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| !c.starts_with("runc"))
}

fn status_kib(pid: i32, key: &str) -> u64 {
    proc_kib(pid, "status", key)
}

fn proc_kib(pid: i32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0)))
        .unwrap_or(0)
}

/// Records when each of [`WATCHED`] first exists under `dir`, until `stop`.
fn watch(dir: &Path, stop: &AtomicBool) -> Vec<Option<Instant>> {
    let mut seen = vec![None; WATCHED.len()];
    let paths: Vec<PathBuf> = WATCHED.iter().map(|(p, _)| dir.join(p)).collect();
    loop {
        let done = stop.load(Ordering::Relaxed);
        for (s, p) in seen.iter_mut().zip(&paths) {
            if s.is_none() && p.exists() {
                *s = Some(Instant::now());
            }
        }
        if done || seen.iter().all(Option::is_some) {
            return seen;
        }
        std::thread::sleep(WATCH_EVERY);
    }
}

/// [`SHIM_STATUS`] then [`SHIM_SMAPS`] of a process, then the Rss of its mappings of
/// the `berth` binary (KiB).
fn shim_memory(pid: i32) -> Vec<u64> {
    let mut mem: Vec<u64> = SHIM_STATUS
        .iter()
        .map(|k| status_kib(pid, k))
        .chain(SHIM_SMAPS.iter().map(|k| proc_kib(pid, "smaps_rollup", k)))
        .collect();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut ours, mut binary) = (false, 0);
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if first.contains('-') && first.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            ours = words.nth(4).is_some_and(|p| p == env!("CARGO_BIN_EXE_berth"));
        } else if ours && first == "Rss:" {
            binary += words.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    mem.push(binary);
    mem
}

fn secs(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64()
}

fn median(v: &[f64]) -> f64 {
    assert!(!v.is_empty(), "no samples");
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

fn sync() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn run_ok(cmd: &mut Command, what: &str, log: &Path) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(status.success(), "{what} failed ({status}): {}", std::fs::read_to_string(log).unwrap_or_default());
}

// ---------------------------------------------------------------------------------
// The contenders

/// Timed samples, in seconds, per phase.
#[derive(Default)]
struct Samples {
    total: Vec<f64>,
    phases: Vec<Vec<f64>>,
}

impl Samples {
    fn push(&mut self, total: f64, phases: &[f64]) {
        self.total.push(total);
        if self.phases.is_empty() {
            self.phases = vec![Vec::new(); phases.len()];
        }
        for (p, v) in self.phases.iter_mut().zip(phases) {
            p.push(*v);
        }
    }
    fn median(&self) -> f64 {
        median(&self.total)
    }
    fn phase(&self, i: usize) -> f64 {
        median(&self.phases[i])
    }
}

struct Bench<'a> {
    f: &'a Fixture,
    nets: &'a Networks,
    bare: &'a Bare,
    docker: &'a Dockerd,
    work: &'a Path,
    layers: &'a [PathBuf],
    args: &'a [String],
    image: &'a str,
    bare_netns: PathBuf,
    bare_hosts: PathBuf,
    bare_addr: SocketAddr,
    docker_cgroup_parent: Option<String>,
    berth: Samples,
    /// [`SHIM_STATUS`] of each recorded replica's shim.
    shim_mem: Vec<Vec<u64>>,
    /// Per traced start: when each of [`WATCHED`] appeared, then create's return, the
    /// exec and the 200, in seconds since create was called.
    trace: Vec<Vec<f64>>,
    run: Samples,
    create_start: Samples,
    docker_run: Samples,
    n: usize,
}

impl Bench<'_> {
    fn next(&mut self) -> usize {
        self.n += 1;
        self.n
    }

    /// berth: attach + hosts file + create, until HTTP 200; then the shim's memory.
    /// With `trace`, a thread watches the state dir every 0.25 ms for the files each
    /// step leaves (for the diagnosis only: the watching costs time of its own).
    fn berth(&mut self, record: bool, trace: bool) {
        let id = berth::ids::new_id("rep");
        let hosts = self.work.join(format!("{id}.hosts"));
        let state_dir = self.f.rt.state_dir(&id);
        let t0 = Instant::now();
        let att = self.nets.attach(PROJECT, &id, SERVICE).unwrap();
        std::fs::write(&hosts, self.nets.hosts_file(PROJECT).unwrap()).unwrap();
        let spec = web_spec(&id, self.args, &att.netns_path, &hosts, PathBuf::new());
        let t1 = Instant::now();
        let stop = AtomicBool::new(false);
        let (started, t2, seen) = std::thread::scope(|s| {
            let watcher = trace.then(|| s.spawn(|| watch(&state_dir, &stop)));
            let started = self.f.rt.create(PROJECT, &spec, self.layers);
            let t2 = Instant::now();
            stop.store(true, Ordering::Relaxed);
            (started, t2, watcher.map(|w| w.join().unwrap()))
        });
        let started = started.unwrap();
        let mut t3 = None;
        let addr = SocketAddr::from((att.address, 8080));
        let t4 = wait_http(addr, Duration::from_secs(30), || {
            if t3.is_none() && execed(started.pid) {
                t3 = Some(Instant::now());
            }
        })
        .unwrap_or_else(|| panic!("berth replica {id} gave no HTTP answer at {addr}: {:?}", self.f.rt.logs(&id, 20)));
        let t3 = t3.unwrap_or(t4);
        let shim = find_shim(&state_dir).expect("the replica's shim process");
        let mem = shim_memory(shim);
        assert!(mem[0] > 0, "VmRSS of shim {shim}");
        if record {
            self.berth.push(secs(t0, t4), &[secs(t0, t1), secs(t1, t2), secs(t2, t3), secs(t3, t4)]);
            self.shim_mem.push(mem);
        }
        if let Some(seen) = seen {
            let mut marks: Vec<f64> = seen.iter().map(|t| t.map_or(f64::NAN, |t| secs(t1, t))).collect();
            marks.extend([secs(t1, t2), secs(t1, t3), secs(t1, t4)]);
            self.trace.push(marks);
        }
        self.f.rt.delete(PROJECT, &id).unwrap();
        self.nets.detach(&id).unwrap();
        let _ = std::fs::remove_file(&hosts);
    }

    /// Starts [`SHIMS_TOGETHER`] replicas, untimed, and reads each shim's memory
    /// while all of them run ([`SHIM_STATUS`] then [`SHIM_SMAPS`]).
    fn shims_together(&mut self) -> Vec<Vec<u64>> {
        let mut running = Vec::new();
        for _ in 0..SHIMS_TOGETHER {
            let id = berth::ids::new_id("rep");
            let hosts = self.work.join(format!("{id}.hosts"));
            let att = self.nets.attach(PROJECT, &id, SERVICE).unwrap();
            std::fs::write(&hosts, self.nets.hosts_file(PROJECT).unwrap()).unwrap();
            let spec = web_spec(&id, self.args, &att.netns_path, &hosts, PathBuf::new());
            self.f.rt.create(PROJECT, &spec, self.layers).unwrap();
            running.push((id, hosts, SocketAddr::from((att.address, 8080))));
        }
        let mut mem = Vec::new();
        for (id, _, addr) in &running {
            wait_http(*addr, Duration::from_secs(30), || {}).unwrap_or_else(|| panic!("replica {id}: no HTTP answer"));
        }
        for (id, _, _) in &running {
            let shim = find_shim(&self.f.rt.state_dir(id)).expect("the replica's shim process");
            mem.push(shim_memory(shim));
        }
        for (id, hosts, _) in running {
            self.f.rt.delete(PROJECT, &id).unwrap();
            self.nets.detach(&id).unwrap();
            let _ = std::fs::remove_file(&hosts);
        }
        mem
    }

    /// A bare bundle: the same layers in an overlay, `spec::build`'s config.json for
    /// the same container in the netns attached beforehand, a cgroup of its own.
    fn bundle(&mut self, tag: &str) -> (String, PathBuf, PathBuf) {
        let i = self.next();
        let id = format!("bare-{tag}-{i}");
        let dir = self.work.join("bare").join(&id);
        std::fs::create_dir_all(dir.join("bundle")).unwrap();
        let rootfs = self.bare.mount(self.layers, &dir);
        let mut spec = web_spec(&id, self.args, &self.bare_netns, &self.bare_hosts, rootfs.clone());
        spec.cgroups_path = self.f.rt.layout.container_path(PROJECT, &id);
        let config = spec::build(&spec).unwrap();
        std::fs::write(dir.join("bundle/config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        (id, dir, rootfs)
    }

    fn bare_done(&self, id: &str, rootfs: &Path) {
        self.bare.delete(id);
        self.bare.unmount(rootfs);
    }

    /// The limit: `runc run -d` until HTTP 200.
    fn runc_run(&mut self, record: bool) {
        let (id, dir, rootfs) = self.bundle("run");
        let log = dir.join("runc.log");
        let out = std::fs::File::create(&log).unwrap();
        let t0 = Instant::now();
        run_ok(
            self.bare
                .runc()
                .args(["run", "--detach", "--bundle"])
                .arg(dir.join("bundle"))
                .arg("--pid-file")
                .arg(dir.join("init.pid"))
                .arg(&id)
                .stdout(out.try_clone().unwrap())
                .stderr(out),
            "runc run -d",
            &log,
        );
        let t1 = Instant::now();
        let t2 = wait_http(self.bare_addr, Duration::from_secs(30), || {})
            .unwrap_or_else(|| panic!("bare runc {id} gave no HTTP answer at {}", self.bare_addr));
        if record {
            self.run.push(secs(t0, t2), &[secs(t0, t1), secs(t1, t2)]);
        }
        self.bare_done(&id, &rootfs);
    }

    /// What the shim does, without the shim: `runc create`, then `runc start`.
    fn runc_create_start(&mut self, record: bool) {
        let (id, dir, rootfs) = self.bundle("cs");
        let log = dir.join("runc.log");
        let out = std::fs::File::create(&log).unwrap();
        let t0 = Instant::now();
        run_ok(
            self.bare
                .runc()
                .args(["create", "--bundle"])
                .arg(dir.join("bundle"))
                .arg("--pid-file")
                .arg(dir.join("init.pid"))
                .arg(&id)
                .stdout(out.try_clone().unwrap())
                .stderr(out.try_clone().unwrap()),
            "runc create",
            &log,
        );
        let t1 = Instant::now();
        run_ok(self.bare.runc().args(["start", &id]).stdout(out.try_clone().unwrap()).stderr(out), "runc start", &log);
        let t2 = Instant::now();
        let t3 = wait_http(self.bare_addr, Duration::from_secs(30), || {})
            .unwrap_or_else(|| panic!("bare runc {id} gave no HTTP answer at {}", self.bare_addr));
        if record {
            self.create_start.push(secs(t0, t3), &[secs(t0, t1), secs(t1, t2), secs(t2, t3)]);
        }
        self.bare_done(&id, &rootfs);
    }

    /// `docker run -d --rm --network host` until HTTP 200 on loopback.
    fn docker_run(&mut self, record: bool) {
        let name = format!("bench-start-{}", self.next());
        let addr = free_port();
        let listen = addr.to_string();
        let (memory, cpus, pids) = (format!("{}m", MEMORY_BYTES >> 20), CPUS.to_string(), PIDS.to_string());
        let mut args: Vec<&str> = vec!["run", "-d", "--rm", "--name", &name, "--network", "host"];
        if let Some(parent) = &self.docker_cgroup_parent {
            args.extend(["--cgroup-parent", parent]);
        }
        args.extend(["--memory", &memory, "--cpus", &cpus, "--pids-limit", &pids, self.image]);
        args.extend(["/bin/busybox", "httpd", "-f", "-p", &listen, "-h", "/www"]);
        let t0 = Instant::now();
        let out = self.docker.docker(&args);
        let t1 = Instant::now();
        assert!(out.status.success(), "docker run: {}", String::from_utf8_lossy(&out.stderr));
        let t2 = wait_http(addr, Duration::from_secs(30), || {})
            .unwrap_or_else(|| panic!("docker container {name} gave no HTTP answer at {addr}: {}", self.docker.log()));
        if record {
            self.docker_run.push(secs(t0, t2), &[secs(t0, t1), secs(t1, t2)]);
        }
        let _ = self.docker.docker(&["rm", "-f", &name]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.docker.docker(&["container", "inspect", &name]).status.success() {
            assert!(Instant::now() < deadline, "docker container {name} was not removed within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

// ---------------------------------------------------------------------------------
// The unpack layer

/// Writes a gzip (level 1) tar layer of about `mib` MiB: directories and many
/// regular files of random text (words from a fixed vocabulary, so it compresses
/// about as well as source code), most small, a few large; the same bytes every
/// time. Returns (files, uncompressed bytes of file data).
fn write_layer(path: &Path, mib: u64) -> (u64, u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261123);
    let vocabulary: Vec<Vec<u8>> =
        (0..2048).map(|_| (0..rng.gen_range(2..11)).map(|_| rng.gen_range(b'a'..=b'z')).collect()).collect();
    let file = std::fs::File::create(path).unwrap();
    let gz =
        flate2::write::GzEncoder::new(std::io::BufWriter::with_capacity(1 << 20, file), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    };
    let target = mib << 20;
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut data = Vec::new();
    let mut dirs = 0;
    while bytes < target {
        if files % 64 == 0 {
            let dir = format!("usr/share/bench/d{dirs:03}/");
            let mut h = header(tar::EntryType::Directory, 0o755, 0);
            tar.append_data(&mut h, &dir, std::io::empty()).unwrap();
            dirs += 1;
        }
        // 97% log-uniform 64 B..64 KiB, 3% 64 KiB..4 MiB: most files are small, most
        // bytes are in the large ones.
        let (lo, hi) = if rng.gen_bool(0.97) { (6.0f64, 16.0f64) } else { (16.0, 22.0) };
        let size = 2f64.powf(rng.gen_range(lo..hi)) as u64;
        let size = size.min(target - bytes).max(1);
        data.clear();
        while (data.len() as u64) < size {
            // Skewed towards the first words, as in real text.
            let word = (rng.r#gen::<f64>().powi(3) * vocabulary.len() as f64) as usize;
            data.extend_from_slice(&vocabulary[word.min(vocabulary.len() - 1)]);
            data.push(if rng.gen_ratio(1, 12) { b'\n' } else { b' ' });
        }
        data.truncate(size as usize);
        let name = format!("usr/share/bench/d{:03}/f{files:06}.txt", dirs - 1);
        let mut h = header(tar::EntryType::Regular, 0o644, size);
        tar.append_data(&mut h, &name, &data[..]).unwrap();
        files += 1;
        bytes += size;
    }
    let gz = tar.into_inner().unwrap();
    let mut w = gz.finish().unwrap();
    w.flush().unwrap();
    (files, bytes)
}

struct Unpack {
    berth: Vec<f64>,
    tar: Vec<f64>,
    files: u64,
    bytes: u64,
    gz_bytes: u64,
}

fn bench_unpack(cfg: &Config, dir: &Path) -> Unpack {
    std::fs::create_dir_all(dir).unwrap();
    let layer = dir.join("layer.tar.gz");
    let (files, bytes) = write_layer(&layer, cfg.layer_mib);
    let gz_bytes = std::fs::metadata(&layer).unwrap().len();
    let mut u = Unpack { berth: vec![], tar: vec![], files, bytes, gz_bytes };
    for round in 0..cfg.rounds {
        let order = if round % 2 == 0 { ["berth", "tar"] } else { ["tar", "berth"] };
        for who in order {
            let dest = dir.join(format!("{who}-{round}"));
            std::fs::create_dir(&dest).unwrap();
            sync();
            let t0 = Instant::now();
            if who == "berth" {
                let stats =
                    unpack_layer(std::fs::File::open(&layer).unwrap(), &dest, &UnpackLimits::default()).unwrap();
                u.berth.push(t0.elapsed().as_secs_f64());
                assert_eq!(stats.bytes, bytes, "berth unpacked every byte");
            } else {
                let log = dir.join("tar.log");
                let out = std::fs::File::create(&log).unwrap();
                run_ok(
                    Command::new("tar")
                        .arg("-xzf")
                        .arg(&layer)
                        .arg("-C")
                        .arg(&dest)
                        .stdin(Stdio::null())
                        .stdout(out.try_clone().unwrap())
                        .stderr(out),
                    "tar -xzf",
                    &log,
                );
                u.tar.push(t0.elapsed().as_secs_f64());
            }
            let last = dest.join(format!("usr/share/bench/d{:03}", (files - 1) / 64));
            assert!(last.is_dir(), "{who} unpacked the whole layer");
            std::fs::remove_dir_all(&dest).unwrap();
        }
    }
    let _ = std::fs::remove_file(&layer);
    sync();
    u
}

// ---------------------------------------------------------------------------------

#[test]
#[ignore = "a benchmark: bench/start.sh runs it on a release build"]
fn start_unpack_and_shim_memory() {
    let cfg = Config::from_env();
    if !can_run()
        || !require_tool("ip", &["-V"])
        || !require_tool("nft", &["--version"])
        || !require_tool("tar", &["--version"])
        || !require_tool("gzip", &["--version"])
    {
        return;
    }
    // Declared in the order that makes them drop right: bare containers, docker's
    // containers, the engine, berth's replicas and cgroups, files, then the network.
    let nets = nets();
    let work = TempDir::new("bench-start");
    let f = Fixture::new();
    let Some(docker) = Dockerd::start() else { return };
    let _docker_containers = DockerContainers(&docker);
    let bare = Bare { runc_root: work.path().join("bare-runc"), mounts: RefCell::new(Vec::new()) };

    // The image: built and pushed with the Docker CLI, unpacked from berth's registry
    // files, and pulled back into the private engine.
    let (b, pat) = crate::registry::setup("");
    let registry = b.addr.to_string();
    let ctx = work.path().join("ctx");
    web_image(&ctx);
    let image = format!("{registry}/alpha/web:v1");
    assert!(docker.login(&registry, "admin", pat.token.as_deref().unwrap()).status.success());
    docker.build(&ctx, &image);
    docker.ok(&["push", &image]);
    docker.ok(&["rmi", &image]);
    docker.ok(&["pull", &image]);
    let manifest = pat.get("/v2/alpha/web/manifests/v1").body;
    let snapshots = SnapshotStore::new(work.path().join("snapshots"));
    let prepared = prepare(&BlobStore::new(b.data_dir().join("registry")), &snapshots, manifest).unwrap();
    drop(b);
    let args = prepared.config.command(None).unwrap();
    assert_eq!(args, vec!["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]);
    let driver = docker.ok(&["info", "--format", "{{.CgroupDriver}}"]).trim().to_string();
    // Under the fixture's cgroup subtree, so its clean-up covers docker's too.
    let docker_cgroup_parent = (driver == "cgroupfs").then(|| format!("{}/docker", f.rt.layout.base));

    // The project network exists before any start, as it would for a redeploy; the
    // bare bundle's netns is made once, untimed.
    nets.0.ensure_project(PROJECT).unwrap();
    let bare_id = berth::ids::new_id("rep");
    let bare_att = nets.0.attach(PROJECT, &bare_id, SERVICE).unwrap();
    let bare_hosts = work.path().join("bare.hosts");
    std::fs::write(&bare_hosts, nets.0.hosts_file(PROJECT).unwrap()).unwrap();
    for (_, d) in f.rt.layout.dirs(&f.rt.layout.project_path(PROJECT)) {
        std::fs::create_dir_all(d).unwrap();
    }

    let mut bench = Bench {
        f: &f,
        nets: &nets.0,
        bare: &bare,
        docker: &docker,
        work: work.path(),
        layers: &prepared.layers,
        args: &args,
        image: &image,
        bare_netns: bare_att.netns_path.clone(),
        bare_hosts,
        bare_addr: SocketAddr::from((bare_att.address, 8080)),
        docker_cgroup_parent,
        berth: Samples::default(),
        shim_mem: vec![],
        trace: vec![],
        run: Samples::default(),
        create_start: Samples::default(),
        docker_run: Samples::default(),
        n: 0,
    };
    // One untimed warm-up round (page cache, first-use paths), then the rounds, each
    // contender going first in turn.
    for round in 0..=cfg.rounds {
        let record = round > 0;
        for k in 0..4 {
            match (k + round) % 4 {
                0 => bench.berth(record, false),
                1 => bench.runc_run(record),
                2 => bench.runc_create_start(record),
                _ => bench.docker_run(record),
            }
        }
    }
    // Where berth's start goes: the same start with the state dir watched.
    for _ in 0..cfg.rounds {
        bench.berth(false, true);
    }
    let together = bench.shims_together();
    let unpack = bench_unpack(&cfg, &work.path().join("unpack"));

    // ------------------------------------------------------------------ report
    let (berth, run, cs, dock) = (&bench.berth, &bench.run, &bench.create_start, &bench.docker_run);
    let vs_runc = berth.median() / run.median();
    let vs_docker = berth.median() / dock.median();
    let (unpack_berth, unpack_tar) = (median(&unpack.berth), median(&unpack.tar));
    let unpack_speed = unpack_tar / unpack_berth;
    let rss_max = bench.shim_mem.iter().chain(&together).map(|m| m[0]).max().unwrap();
    let pss_max = together.iter().map(|m| m[5]).max().unwrap();
    let mem_med = |i: usize| median(&bench.shim_mem.iter().map(|m| m[i] as f64).collect::<Vec<_>>());
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let ms = |s: f64| format!("{:.1} ms", s * 1000.0);
    let mode = if cfg.smoke { "smoke, " } else { "" };
    println!();
    println!(
        "berth start benchmark ({mode}medians of {} rounds after 1 warm-up; busybox httpd image of {} layers; \
         {} MiB / {CPUS} CPU / {PIDS} pids for every contender; polled every {} ms)",
        cfg.rounds,
        prepared.layers.len(),
        MEMORY_BYTES >> 20,
        POLL.as_millis()
    );
    println!(
        "  berth             {:>9} = attach+hosts {} + create (shim, runc create, started.json) {} + start (runc start, exec) {} + listen {}",
        ms(berth.median()),
        ms(berth.phase(0)),
        ms(berth.phase(1)),
        ms(berth.phase(2)),
        ms(berth.phase(3))
    );
    println!("                              at the replica's address; includes the netns and veth setup");
    println!(
        "  runc run -d       {:>9} = runc run {} + listen {}   (the limit; netns made beforehand, same overlay and config.json)",
        ms(run.median()),
        ms(run.phase(0)),
        ms(run.phase(1))
    );
    println!(
        "  runc create+start {:>9} = create {} + start {} + listen {}   (no target: the two calls the shim makes)",
        ms(cs.median()),
        ms(cs.phase(0)),
        ms(cs.phase(1)),
        ms(cs.phase(2))
    );
    println!(
        "  docker run -d     {:>9} = docker run {} + listen {}   (--network host on loopback: no netns setup at all)",
        ms(dock.median()),
        ms(dock.phase(0)),
        ms(dock.phase(1))
    );
    println!(
        "  ratios            berth/runc {vs_runc:.2} (target <= {TARGET_VS_RUNC})   berth/docker {vs_docker:.2} (target <= {TARGET_VS_DOCKER})"
    );
    println!(
        "  unpack            {:.0} MiB in {} files, {:.1} MiB gzip -1: berth {:.2}s ({:.0} MiB/s)   tar -xzf {:.2}s ({:.0} MiB/s)   \
         speed {unpack_speed:.2} of tar's (target >= {TARGET_UNPACK_SPEED})",
        mib(unpack.bytes),
        unpack.files,
        mib(unpack.gz_bytes),
        unpack_berth,
        mib(unpack.bytes) / unpack_berth,
        unpack_tar,
        mib(unpack.bytes) / unpack_tar,
    );
    println!(
        "  shim memory       Pss max {pss_max} KiB with {SHIMS_TOGETHER} running (budget {BUDGET_SHIM_PSS_KIB} KiB); VmRSS max {rss_max} KiB over {} replicas; medians: VmRSS {:.0} = RssAnon {:.0} + RssFile {:.0} KiB \
         ({:.0} KiB of it the berth binary's pages), VmHWM {:.0} KiB, {:.0} threads",
        bench.shim_mem.len() + together.len(),
        mem_med(0),
        mem_med(1),
        mem_med(2),
        mem_med(8),
        mem_med(3),
        mem_med(4)
    );
    let together_med = |i: usize| median(&together.iter().map(|m| m[i] as f64).collect::<Vec<_>>());
    println!(
        "                    with {SHIMS_TOGETHER} replicas running at once, per shim: VmRSS {:.0} KiB, Pss {:.0} KiB (its share of what it maps), Private_Dirty {:.0} KiB",
        together_med(0),
        together_med(5),
        together_med(7)
    );
    println!(
        "                    the shim is {} ({:.1} MiB on disk)",
        env!("CARGO_BIN_EXE_berth"),
        mib(std::fs::metadata(env!("CARGO_BIN_EXE_berth")).map(|m| m.len()).unwrap_or(0))
    );
    println!(
        "  berth's create, step by step (medians of {} more starts with the state dir watched every 0.25 ms; ms since create was called):",
        bench.trace.len()
    );
    let labels: Vec<&str> = WATCHED
        .iter()
        .map(|(_, what)| *what)
        .chain([
            "create returned (it polls for started.json every 5 ms)",
            "the init exec'd busybox (runc start done)",
            "HTTP 200",
        ])
        .collect();
    let mut before = 0.0;
    for (i, what) in labels.iter().enumerate() {
        let at: Vec<f64> = bench.trace.iter().map(|m| m[i]).filter(|v| v.is_finite()).collect();
        if at.is_empty() {
            println!("    {:>7}            {what} (never seen)", "-");
            continue;
        }
        let at = median(&at);
        println!("    {:>7.1}  (+{:>5.1})  {what}", at * 1000.0, (at - before) * 1000.0);
        before = at;
    }
    println!(
        "  samples (ms)      berth {:?} runc {:?} docker {:?}",
        berth.total.iter().map(|s| (s * 1000.0).round()).collect::<Vec<_>>(),
        run.total.iter().map(|s| (s * 1000.0).round()).collect::<Vec<_>>(),
        dock.total.iter().map(|s| (s * 1000.0).round()).collect::<Vec<_>>()
    );

    let mut missed = Vec::new();
    if vs_runc > TARGET_VS_RUNC {
        missed.push("vs_runc");
    }
    if vs_docker > TARGET_VS_DOCKER {
        missed.push("vs_docker");
    }
    if unpack_speed < TARGET_UNPACK_SPEED {
        missed.push("unpack");
    }
    if pss_max > BUDGET_SHIM_PSS_KIB {
        missed.push("shim_pss");
    }
    let mut targets =
        if missed.is_empty() { "targets=met".to_string() } else { format!("targets=missed:{}", missed.join(",")) };
    if cfg.smoke {
        targets.push_str("(smoke: not enforced)");
    }
    println!(
        "start: berth={:.3}s ({vs_runc:.2} of runc {:.3}s) docker={:.3}s ({vs_docker:.2} of docker) \
         unpack={unpack_berth:.2}s ({unpack_speed:.2} of tar -x speed, tar {unpack_tar:.2}s, {:.0} MiB) \
         shim_pss_kib={pss_max} ({:.2} of {BUDGET_SHIM_PSS_KIB}) shim_rss_kib={rss_max} {targets}",
        berth.median(),
        run.median(),
        dock.median(),
        mib(unpack.bytes),
        pss_max as f64 / BUDGET_SHIM_PSS_KIB as f64,
    );

    nets.0.detach(&bare_id).unwrap();
}
