//! Real registry clients and peers for the tests: a private dockerd, skopeo, CNCF distribution.
//!
//! - [`Dockerd`]: a private Docker engine (its own data root, exec root, socket,
//!   containerd and client config) that runs next to other tests' engines and a
//!   system one; stopped by pid, unmounted and removed on drop.
//! - [`Distribution`]: Debian's `docker-registry` (CNCF distribution 2.8) on a free
//!   loopback port with throw-away filesystem storage, delete enabled and no auth.
//! - [`skopeo`] / [`skopeo_ok`], plus [`oci_layout_with_random_layers`] and
//!   [`oci_index_two_platforms`], which write OCI image layouts on disk by hand
//!   (uncompressed tar layers, sha256 digests) for `skopeo copy oci:DIR:TAG ...`.
//!
//! Every `start()` returns `None` when a tool is missing and skipping is allowed
//! (see [`crate::harness::require`]: otherwise the test fails, naming the tool).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::{Client, TempDir, require_tool};

/// The Docker client. `/usr/local/bin/docker` may be a different (newer) client that
/// shadows Debian's on PATH; the tests use the one that matches the engine.
pub const DOCKER: &str = "/usr/bin/docker";

/// The tag under which [`oci_layout_with_random_layers`] stores its image.
pub const LAYOUT_TAG: &str = "v1";

/// The tag under which [`oci_index_two_platforms`] stores its image index.
pub const MULTI_TAG: &str = "multi";

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

// ---------------------------------------------------------------------------------
// dockerd

/// A private Docker engine. Everything it owns lives under one short dir in /tmp
/// (unix socket paths are limited to 108 bytes): `root/` (data root), `exec/` (exec
/// root; dockerd starts its own containerd there, with its own socket and state),
/// `docker.sock`, `docker.pid`, `daemon.json` (empty, so the host's
/// /etc/docker/daemon.json is not read), `config/` (the client's DOCKER_CONFIG, so
/// `docker login` credentials stay private) and `dockerd.log`.
pub struct Dockerd {
    dir: PathBuf,
    child: Option<Child>,
}

impl Dockerd {
    /// Starts an engine and waits (up to 60 s) until `docker info` answers. `None`
    /// when docker or dockerd is missing and skipping is allowed ([`crate::harness::require`]).
    pub fn start() -> Option<Dockerd> {
        if !require_tool(DOCKER, &["--version"]) || !require_tool("dockerd", &["--version"]) {
            return None;
        }
        let dir = short_temp_dir("bdk");
        std::fs::create_dir_all(dir.join("config")).expect("create docker client config dir");
        std::fs::write(dir.join("daemon.json"), "{}\n").expect("write daemon.json");
        let log = std::fs::File::create(dir.join("dockerd.log")).expect("create dockerd log");
        let child = Command::new("dockerd")
            .args(dockerd_args(&dir))
            .env_remove("DOCKER_HOST")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        let mut d = Dockerd { dir, child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().expect("wait dockerd")) {
                d.child = None;
                panic!("dockerd exited during start-up with {status}; log:\n{}", d.log());
            }
            let out = d.docker(&["info", "--format", "{{.ServerVersion}}"]);
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer `docker info` within 60 s: {}; log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                d.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(d)
    }

    /// The engine's own dir (see the type's docs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// `DOCKER_HOST` for this engine.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// A `docker` command aimed at this engine, with a private client config.
    pub fn command(&self) -> Command {
        let mut c = Command::new(DOCKER);
        c.env("DOCKER_HOST", self.host())
            .env("DOCKER_CONFIG", self.dir.join("config"))
            .env("DOCKER_BUILDKIT", "0")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .stdin(Stdio::null());
        c
    }

    /// Runs `docker ARGS` against this engine.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run docker")
    }

    /// Runs `docker ARGS`, asserts it succeeded and returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {} failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `docker build -t TAG DIR` (the classic builder, which needs no network for
    /// `FROM scratch`).
    pub fn build(&self, dir: &Path, tag: &str) {
        let dir = dir.to_str().expect("build context path is UTF-8");
        self.ok(&["build", "-q", "-t", tag, dir]);
    }

    /// `docker image inspect --format {{.Id}} REF`.
    pub fn image_id(&self, reference: &str) -> String {
        self.ok(&["image", "inspect", "--format", "{{.Id}}", reference]).trim().to_string()
    }

    /// `docker login ADDR -u USER --password-stdin`; returns the raw output so a test
    /// can check refusals too.
    pub fn login(&self, registry: &str, user: &str, password: &str) -> Output {
        let mut child = self
            .command()
            .args(["login", registry, "-u", user, "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run docker login");
        child.stdin.take().expect("stdin").write_all(password.as_bytes()).expect("write password");
        child.wait_with_output().expect("wait docker login")
    }
}

/// The flags a private engine runs with; see [`Dockerd`].
fn dockerd_args(dir: &Path) -> Vec<String> {
    let p = |s: &str| dir.join(s).display().to_string();
    vec![
        "--config-file".into(),
        p("daemon.json"),
        "--data-root".into(),
        p("root"),
        "--exec-root".into(),
        p("exec"),
        "--pidfile".into(),
        p("docker.pid"),
        "-H".into(),
        format!("unix://{}", p("docker.sock")),
        // No host networking changes: no bridge, no NAT/filter rules, no docker-proxy.
        "--bridge=none".into(),
        "--iptables=false".into(),
        "--ip6tables=false".into(),
        "--ip-masq=false".into(),
        "--userland-proxy=false".into(),
    ]
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // dockerd starts containerd as its child; on SIGTERM it stops it itself. Note
        // its pid first, for the case where dockerd has to be killed.
        let containerd_pid = std::fs::read_to_string(self.dir.join("exec/containerd/containerd.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if let Some(mut child) = self.child.take() {
            if !stop_child(&mut child, Duration::from_secs(30)) {
                if let Some(pid) = containerd_pid.filter(|p| *p > 0) {
                    // SAFETY: signalling the containerd that our dockerd started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        unmount_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL; reaps the child. True when it exited
/// on SIGTERM.
fn stop_child(child: &mut Child, grace: Duration) -> bool {
    if child.try_wait().ok().flatten().is_some() {
        return true;
    }
    // SAFETY: signalling a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Lazily unmounts every mount at or below `dir`, deepest first (dockerd bind-mounts
/// its data root onto itself and leaves overlay mounts behind when it is killed).
fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    // No dedup: mounts stacked on one point each need their own umount.
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(&p).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A new, empty, uniquely named dir directly in /tmp with a short name (for unix
/// sockets), e.g. `/tmp/bdk-3f9k2m7q1x`.
fn short_temp_dir(tag: &str) -> PathBuf {
    for _ in 0..100 {
        let id = berth::ids::new_id("x").to_lowercase();
        let p = PathBuf::from(format!("/tmp/{tag}-{}", &id[id.len() - 10..]));
        match std::fs::create_dir(&p) {
            Ok(()) => return p,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("create {}: {e}", p.display()),
        }
    }
    panic!("could not make a unique dir in /tmp");
}

/// Writes a `docker build` context to `dir`: a `FROM scratch` Dockerfile with the
/// static busybox (from `busybox-static`) as `/bin/busybox`, run as
/// `busybox httpd -f -p 8080`. With `extra_random_mib > 0` it also adds a file of
/// that many MiB of random bytes, `/random.bin`, in a layer of its own.
pub fn busybox_context(dir: &Path, extra_random_mib: usize) {
    std::fs::create_dir_all(dir).expect("create build context");
    std::fs::copy("/bin/busybox", dir.join("busybox"))
        .expect("copy /bin/busybox into the build context (apt-get install -y busybox-static)");
    let mut dockerfile = String::from("FROM scratch\nCOPY busybox /bin/busybox\n");
    if extra_random_mib > 0 {
        write_random_file(&dir.join("random.bin"), extra_random_mib as u64 * 1024 * 1024);
        dockerfile.push_str("COPY random.bin /random.bin\n");
    }
    dockerfile.push_str("CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\"]\n");
    std::fs::write(dir.join("Dockerfile"), dockerfile).expect("write Dockerfile");
}

/// Copies `n` bytes of /dev/urandom into `w`, in 1 MiB chunks.
fn copy_random(w: &mut impl Write, mut n: u64) {
    let mut urandom = std::fs::File::open("/dev/urandom").expect("open /dev/urandom");
    let mut buf = vec![0u8; 1 << 20];
    while n > 0 {
        let k = n.min(buf.len() as u64) as usize;
        urandom.read_exact(&mut buf[..k]).expect("read /dev/urandom");
        w.write_all(&buf[..k]).expect("write random bytes");
        n -= k as u64;
    }
}

fn write_random_file(path: &Path, n: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create random file"));
    copy_random(&mut f, n);
    f.flush().expect("flush random file");
}

// ---------------------------------------------------------------------------------
// CNCF distribution

/// Debian's `docker-registry serve CONFIG` on a free loopback port: filesystem
/// storage in a temp dir, delete enabled, no auth, plain HTTP.
pub struct Distribution {
    pub addr: SocketAddr,
    child: Option<Child>,
    dir: TempDir,
}

impl Distribution {
    /// Starts a registry and waits (up to 30 s) until `GET /v2/` answers 200. `None`
    /// when `docker-registry` is missing and skipping is allowed ([`crate::harness::require`]).
    pub fn start() -> Option<Distribution> {
        if !require_tool("docker-registry", &["--version"]) {
            return None;
        }
        let mut dir = TempDir::new("dist");
        let log_path = dir.path().join("registry.log");
        // The port is picked by binding :0 and released before the registry binds
        // it; another process may grab it in between, so retry on an early exit.
        for attempt in 1..=5 {
            let addr = free_port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\n\
                     log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     http:\n  addr: {addr}\n",
                    dir.path().join("data").display()
                ),
            )
            .expect("write registry config");
            let log = std::fs::File::create(&log_path).expect("create registry log");
            let mut cmd = Command::new("docker-registry");
            // It reads REGISTRY_* variables as overrides of its configuration.
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("REGISTRY_") {
                    cmd.env_remove(k);
                }
            }
            let child = cmd
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log fd"))
                .stderr(log)
                .spawn()
                .expect("spawn docker-registry");
            // From here on the child is stopped on drop, even if the wait panics.
            let mut d = Distribution { addr, child: Some(child), dir };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().expect("wait registry")) {
                    d.child = None;
                    assert!(attempt < 5, "docker-registry exited with {status}; log:\n{}", d.log());
                    break;
                }
                let client = Client { addr, token: None };
                if client.try_send("GET", "/v2/", None, &[]).is_ok_and(|r| r.status == 200) {
                    return Some(d);
                }
                assert!(Instant::now() < deadline, "docker-registry did not answer /v2/ in 30 s; log:\n{}", d.log());
                std::thread::sleep(Duration::from_millis(50));
            }
            // It exited early, most likely because the port was taken: try another.
            dir = std::mem::replace(&mut d.dir, TempDir(PathBuf::new()));
        }
        unreachable!("the last attempt panics instead of looping")
    }

    /// `127.0.0.1:PORT`, as used in image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
}

// ---------------------------------------------------------------------------------
// skopeo and OCI layouts

/// `skopeo --insecure-policy ARGS` (the global flag goes before the subcommand; the
/// default policy.json may be missing or strict).
///
/// Pass `--preserve-digests` to `copy` when digests matter: without it skopeo gzips
/// uncompressed layers on the way to a registry, and again when writing `oci:`.
pub fn skopeo(args: &[&str]) -> Output {
    Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run skopeo (apt-get install -y skopeo)")
}

/// [`skopeo`], asserting success; returns stdout.
pub fn skopeo_ok(args: &[&str]) -> String {
    let out = skopeo(args);
    assert!(
        out.status.success(),
        "skopeo {} failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether skopeo is installed, through [`crate::harness::require`].
pub fn have_skopeo() -> bool {
    require_tool("skopeo", &["--version"])
}

/// `sha256:HEX` of some bytes.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OCI content descriptor.
fn descriptor(media_type: &str, digest: &str, size: u64) -> Value {
    json!({"mediaType": media_type, "digest": digest, "size": size})
}

fn init_layout(dir: &Path) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("create blobs/sha256");
    std::fs::write(dir.join("oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}").expect("write oci-layout");
}

/// Stores bytes as a blob of the layout; returns its digest.
fn put_blob(dir: &Path, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    std::fs::write(blob_path(dir, &digest), data).expect("write blob");
    digest
}

/// The path of a blob in a layout.
pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    layout.join("blobs/sha256").join(hex)
}

/// Writes index.json with one tagged descriptor.
fn write_index_json(dir: &Path, mut desc: Value, tag: &str) {
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).expect("write index.json");
}

/// A ustar header for one regular file of `size` bytes.
fn tar_header(name: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    let mut field = |off: usize, len: usize, val: &[u8]| {
        assert!(val.len() <= len, "tar field too long");
        h[off..off + val.len()].copy_from_slice(val);
    };
    field(0, 100, name.as_bytes());
    field(100, 8, b"0000644\0");
    field(108, 8, b"0000000\0");
    field(116, 8, b"0000000\0");
    field(124, 12, format!("{size:011o}\0").as_bytes());
    field(136, 12, format!("{:011o}\0", 1_700_000_000u64).as_bytes()); // a fixed mtime (2023-11-14)
    field(148, 8, b"        ");
    field(156, 1, b"0");
    field(257, 6, b"ustar\0");
    field(263, 2, b"00");
    field(265, 32, b"root");
    field(297, 32, b"root");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Hashes and counts what passes through.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    n: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.hasher.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes an uncompressed tar layer holding one regular file `name` of `size` random
/// bytes straight into the layout's blobs; returns (digest, blob size).
fn put_random_tar_layer(dir: &Path, name: &str, size: u64) -> (String, u64) {
    let tmp = dir.join(format!("blobs/sha256/.tmp-{}", berth::ids::new_id("l").to_lowercase()));
    let file = std::fs::File::create(&tmp).expect("create layer");
    let mut w = HashingWriter { inner: std::io::BufWriter::with_capacity(1 << 20, file), hasher: Sha256::new(), n: 0 };
    w.write_all(&tar_header(name, size)).unwrap();
    copy_random(&mut w, size);
    let pad = (512 - size % 512) % 512;
    w.write_all(&vec![0u8; pad as usize + 1024]).unwrap();
    w.flush().unwrap();
    let digest = format!("sha256:{}", hex(&w.hasher.finalize_reset()));
    let n = w.n;
    drop(w);
    std::fs::rename(&tmp, blob_path(dir, &digest)).expect("move layer into place");
    (digest, n)
}

/// Writes one image (config + layers + manifest) into the layout's blobs; returns
/// the manifest's descriptor.
fn put_image(dir: &Path, arch: &str, layer_sizes: &[u64]) -> Value {
    let layers: Vec<(String, u64)> = layer_sizes
        .iter()
        .enumerate()
        .map(|(i, n)| put_random_tar_layer(dir, &format!("random-{i}.bin"), *n))
        .collect();
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/random-0.bin"]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>()},
        "history": layers.iter().map(|_| json!({"created_by": "berth tests"})).collect::<Vec<_>>(),
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = put_blob(dir, &config);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config_digest, config.len() as u64),
        "layers": layers.iter().map(|(d, n)| descriptor(OCI_LAYER_TAR, d, *n)).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let digest = put_blob(dir, &manifest);
    descriptor(OCI_MANIFEST, &digest, manifest.len() as u64)
}

/// Writes an OCI image layout at `dir` (created if needed) holding one image, tagged
/// [`LAYOUT_TAG`]: a small config and one uncompressed tar layer per entry of
/// `layers`, each a single file of that many random bytes. Returns `dir`; copy it
/// with `skopeo copy oci:DIR:v1 docker://...`.
pub fn oci_layout_with_random_layers(dir: &Path, layers: &[usize]) -> PathBuf {
    init_layout(dir);
    let sizes: Vec<u64> = layers.iter().map(|n| *n as u64).collect();
    let desc = put_image(dir, "amd64", &sizes);
    write_index_json(dir, desc, LAYOUT_TAG);
    dir.to_path_buf()
}

/// Writes an OCI image layout at `dir` whose tag [`MULTI_TAG`] is an OCI image index
/// of two images, linux/amd64 and linux/arm64, each with its own config and one
/// small random layer. Returns `dir`; copy it with
/// `skopeo copy --all oci:DIR:multi docker://...`.
pub fn oci_index_two_platforms(dir: &Path) -> PathBuf {
    init_layout(dir);
    let mut manifests = Vec::new();
    for (arch, size) in [("amd64", 3000u64), ("arm64", 5000u64)] {
        let mut desc = put_image(dir, arch, &[size]);
        desc["platform"] = json!({"architecture": arch, "os": "linux"});
        manifests.push(desc);
    }
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    let index = serde_json::to_vec(&index).unwrap();
    let digest = put_blob(dir, &index);
    write_index_json(dir, descriptor(OCI_INDEX, &digest, index.len() as u64), MULTI_TAG);
    dir.to_path_buf()
}

/// The manifest digest that `tag` names in a layout's index.json.
pub fn layout_tag_digest(layout: &Path, tag: &str) -> String {
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("read index.json"))
        .expect("index.json");
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .and_then(|d| d["digest"].as_str())
        .unwrap_or_else(|| panic!("no tag {tag} in {}", layout.display()))
        .to_string()
}

/// The digests of every blob in a layout.
pub fn layout_blobs(layout: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(layout.join("blobs/sha256"))
        .expect("read blobs/sha256")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .map(|n| format!("sha256:{n}"))
        .collect();
    out.sort();
    out
}

/// Asserts every blob of layout `a` is in layout `b` with the same bytes.
pub fn assert_blobs_copied(a: &Path, b: &Path) {
    for digest in layout_blobs(a) {
        let want = std::fs::read(blob_path(a, &digest)).unwrap();
        let got = std::fs::read(blob_path(b, &digest))
            .unwrap_or_else(|e| panic!("{digest} is missing from {}: {e}", b.display()));
        assert!(want == got, "{digest} differs between {} and {}", a.display(), b.display());
        assert_eq!(sha256_digest(&got), digest, "{digest} in {} does not hash to its name", b.display());
    }
}

// ---------------------------------------------------------------------------------

/// The tooling itself works on this machine, independent of berth: skopeo pushes and
/// pulls hand-made OCI layouts (one image, and an image index with `--all`) through
/// CNCF distribution byte for byte, and a private dockerd builds, pushes, removes and
/// pulls back a busybox image with the same image id.
#[test]
fn peers_work() {
    if !have_skopeo() {
        return;
    }
    let Some(dist) = Distribution::start() else { return };
    let tmp = TempDir::new("tools");
    let t0 = Instant::now();

    // An image of three uncompressed tar layers, odd sizes included.
    let src = oci_layout_with_random_layers(&tmp.path().join("src"), &[1 << 20, 70_001, 1]);
    assert_eq!(layout_blobs(&src).len(), 5, "3 layers, a config and a manifest");
    let dest = format!("docker://{}/proj/random:v1", dist.host());
    skopeo_ok(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:{LAYOUT_TAG}", src.display()),
        &dest,
    ]);
    let back = tmp.path().join("back");
    skopeo_ok(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &dest,
        &format!("oci:{}:{LAYOUT_TAG}", back.display()),
    ]);
    assert_blobs_copied(&src, &back);
    assert_eq!(layout_tag_digest(&back, LAYOUT_TAG), layout_tag_digest(&src, LAYOUT_TAG));
    let inspect: Value = serde_json::from_str(&skopeo_ok(&["inspect", "--tls-verify=false", "--raw", &dest])).unwrap();
    assert_eq!(inspect["mediaType"], OCI_MANIFEST);

    // An image index of two platforms, copied whole.
    let multi = oci_index_two_platforms(&tmp.path().join("multi"));
    let dest = format!("docker://{}/proj/multi:{MULTI_TAG}", dist.host());
    skopeo_ok(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:{MULTI_TAG}", multi.display()),
        &dest,
    ]);
    let back = tmp.path().join("multi-back");
    skopeo_ok(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        &dest,
        &format!("oci:{}:{MULTI_TAG}", back.display()),
    ]);
    assert_blobs_copied(&multi, &back);
    assert_eq!(layout_tag_digest(&back, MULTI_TAG), layout_tag_digest(&multi, MULTI_TAG));
    let raw: Value = serde_json::from_str(&skopeo_ok(&["inspect", "--tls-verify=false", "--raw", &dest])).unwrap();
    assert_eq!(raw["mediaType"], OCI_INDEX);
    assert_eq!(raw["manifests"].as_array().map(Vec::len), Some(2));
    eprintln!("peers_work: skopeo with distribution took {:.2?}", t0.elapsed());

    // A private dockerd: build, push, remove, pull back.
    let t1 = Instant::now();
    let Some(docker) = Dockerd::start() else { return };
    eprintln!("peers_work: dockerd answered after {:.2?}", t1.elapsed());
    let t2 = Instant::now();
    let ctx = tmp.path().join("ctx");
    busybox_context(&ctx, 2);
    let tag = format!("{}/proj/busybox:v1", dist.host());
    // distribution without auth accepts any login; the credentials stay in the
    // engine's private client config.
    let login = docker.login(&dist.host(), "someone", "secret");
    assert!(login.status.success(), "docker login: {}", String::from_utf8_lossy(&login.stderr));
    let config = std::fs::read_to_string(docker.dir().join("config/config.json")).unwrap();
    assert!(config.contains(&dist.host()), "login is recorded in the private config: {config}");
    docker.build(&ctx, &tag);
    let id = docker.image_id(&tag);
    docker.ok(&["push", &tag]);
    docker.ok(&["rmi", &tag]);
    assert!(!docker.docker(&["image", "inspect", &tag]).status.success(), "the image is gone before the pull");
    docker.ok(&["pull", &tag]);
    assert_eq!(docker.image_id(&tag), id, "pulled image has the id of the pushed one");
    eprintln!("peers_work: docker build/push/rmi/pull took {:.2?}", t2.elapsed());

    // A second engine runs next to the first and gets the same image.
    let second = Dockerd::start().expect("a second dockerd");
    assert_ne!(second.socket(), docker.socket());
    second.ok(&["pull", &tag]);
    assert_eq!(second.image_id(&tag), id, "the second engine pulls the same image");
    drop(second);

    let dir = docker.dir().to_path_buf();
    let t3 = Instant::now();
    drop(docker);
    eprintln!("peers_work: dockerd stopped and cleaned up in {:.2?}", t3.elapsed());
    assert!(!dir.exists(), "{} is removed", dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(dir.to_str().unwrap()), "nothing stays mounted under {}", dir.display());
}
