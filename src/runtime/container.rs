//! Containers as the engine sees them: create (rootfs, spec, shim), stop, status,
//! logs, metrics, delete. Each container's state lives in `<containers>/<id>/`:
//! `bundle/config.json`, `rootfs` (the overlay mount point), `upper`, `work`, and
//! the shim's files (see `shim`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::RuntimeError;
use super::cgroups::{Layout, Metrics};
use super::host::CgroupVersion;
use super::runc::{Runc, command};
use super::shim::{self, LogLine, ShimArgs, State, Status};
use super::spec::{self, ContainerSpec};
use crate::error::PathError;

/// Defaults for container logs: 10 MiB per file, 3 rotated files kept.
pub const LOG_MAX_BYTES: u64 = 10 << 20;
pub const LOG_FILES: u32 = 3;

pub struct Runtime {
    /// Set once berth's cgroup subtree is prepared (on the first create).
    prepared: std::sync::OnceLock<()>,
    pub runc: Runc,
    pub layout: Layout,
    pub containers_dir: PathBuf,
    /// The `berth` binary, run as `berth shim`.
    pub shim_exe: PathBuf,
    pub log_max_bytes: u64,
    pub log_files: u32,
    /// The host key file the shim opens sealed environment values with.
    pub host_key: Option<PathBuf>,
}

impl Runtime {
    pub fn new(runc_root: PathBuf, layout: Layout, containers_dir: PathBuf, shim_exe: PathBuf) -> Self {
        Self {
            prepared: std::sync::OnceLock::new(),
            runc: Runc::new(runc_root),
            layout,
            containers_dir,
            shim_exe,
            log_max_bytes: LOG_MAX_BYTES,
            log_files: LOG_FILES,
            host_key: None,
        }
    }

    pub fn state_dir(&self, id: &str) -> PathBuf {
        self.containers_dir.join(id)
    }

    fn oom_file(&self, cgroup: &str) -> PathBuf {
        let rel = cgroup.trim_start_matches('/');
        match self.layout.version {
            CgroupVersion::V2 => self.layout.mount.join(rel).join("memory.events"),
            CgroupVersion::V1 => self.layout.mount.join("memory").join(rel).join("memory.oom_control"),
        }
    }

    /// Creates and starts a container. `lowers` are the image's layer snapshots,
    /// topmost first; when empty, `c.rootfs` is used as it is. On failure nothing
    /// is left behind: no mount, no state directory, no runc state.
    pub fn create(&self, project: &str, c: &ContainerSpec, lowers: &[PathBuf]) -> Result<shim::Started, RuntimeError> {
        // The id names a directory and a runc container: `rep_` and word characters only.
        let id_ok = c.id.starts_with("rep_")
            && c.id.len() <= 64
            && c.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !id_ok {
            return Err(RuntimeError::InvalidSpec(format!("{:?} is not a replica id", c.id)));
        }
        let dir = self.state_dir(&c.id);
        if dir.exists() {
            return Err(RuntimeError::InvalidSpec(format!("container {} already exists", c.id)));
        }
        let result = self.create_in(project, c, lowers, &dir);
        if result.is_err() {
            let _ = self.runc.delete(&c.id);
            let _ = super::rootfs::unmount(&dir.join("rootfs"));
            let _ = std::fs::remove_dir_all(&dir);
            let _ = self.layout.remove(&self.layout.container_path(project, &c.id));
        }
        result
    }

    fn create_in(
        &self,
        project: &str,
        c: &ContainerSpec,
        lowers: &[PathBuf],
        dir: &Path,
    ) -> Result<shim::Started, RuntimeError> {
        c.limits.validate()?;
        self.ensure_prepared()?;
        std::fs::create_dir_all(dir.join("bundle")).map_err(|e| PathError::new("create", dir, e))?;
        let mut c = c.clone();
        if !lowers.is_empty() {
            let rootfs = dir.join("rootfs");
            super::rootfs::mount_overlay(lowers, &dir.join("upper"), &dir.join("work"), &rootfs)?;
            c.rootfs = rootfs;
        }
        c.cgroups_path = self.layout.container_path(project, &c.id);
        for (_, d) in self.layout.dirs(&self.layout.project_path(project)) {
            std::fs::create_dir_all(&d).map_err(|e| PathError::new("create cgroup", &d, e))?;
        }
        let spec = spec::build(&c)?;
        let config = dir.join("bundle").join("config.json");
        let json = serde_json::to_vec_pretty(&spec).map_err(|e| RuntimeError::InvalidSpec(e.to_string()))?;
        std::fs::write(&config, json).map_err(|e| PathError::new("write", &config, e))?;
        self.launch(&c.id, &c.cgroups_path)
    }

    /// Starts an exited container again with the same bundle, writable layer and
    /// log files (a restart, as a restart policy does it).
    pub fn restart(&self, project: &str, id: &str) -> Result<shim::Started, RuntimeError> {
        let dir = self.state_dir(id);
        let st = shim::status(&dir);
        if !matches!(st.state, State::Exited | State::Lost) {
            return Err(RuntimeError::InvalidSpec(format!("container {id} is {:?}, not exited", st.state)));
        }
        self.runc.delete(id)?;
        for f in ["exit.json", "started.json", "init.pid"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        self.launch(id, &self.layout.container_path(project, id))
    }

    /// Whether [`Runtime::restart`] can start the container again as it is: its
    /// state, bundle and (for an image) overlay mount are there, and so is the
    /// network namespace it joins. After a host restart they are not; the caller
    /// then makes the network namespace again and calls [`Runtime::revive`].
    pub fn can_restart(&self, id: &str) -> bool {
        let dir = self.state_dir(id);
        let Ok(config) = std::fs::read(dir.join("bundle").join("config.json")) else { return false };
        if dir.join("upper").is_dir() && !super::rootfs::is_mounted(&dir.join("rootfs")) {
            return false;
        }
        let config: serde_json::Value = serde_json::from_slice(&config).unwrap_or_default();
        let netns_missing = config["linux"]["namespaces"].as_array().into_iter().flatten().any(|ns| {
            ns["type"] == "network" && ns["path"].as_str().is_some_and(|p| !std::path::Path::new(p).exists())
        });
        !netns_missing
    }

    /// Starts a container again whose overlay mount, network namespace or runc state
    /// went away (a host restart): the same bundle, writable layer and logs, the
    /// overlay of `lowers` mounted again if it is not there. The caller makes the
    /// network namespace first.
    pub fn revive(&self, project: &str, id: &str, lowers: &[PathBuf]) -> Result<shim::Started, RuntimeError> {
        let dir = self.state_dir(id);
        if !dir.join("bundle").join("config.json").exists() {
            return Err(RuntimeError::NotFound(id.into()));
        }
        if shim::status(&dir).state == State::Running {
            return Err(RuntimeError::InvalidSpec(format!("container {id} is running")));
        }
        self.runc.delete(id)?;
        let rootfs = dir.join("rootfs");
        if !lowers.is_empty() && !super::rootfs::is_mounted(&rootfs) {
            super::rootfs::mount_overlay(lowers, &dir.join("upper"), &dir.join("work"), &rootfs)?;
        }
        for f in ["exit.json", "started.json", "init.pid", "shim.sock"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        self.ensure_prepared()?;
        for (_, d) in self.layout.dirs(&self.layout.project_path(project)) {
            std::fs::create_dir_all(&d).map_err(|e| PathError::new("create cgroup", &d, e))?;
        }
        self.launch(id, &self.layout.container_path(project, id))
    }

    /// Prepares berth's cgroup subtree once, before the first container of this process.
    fn ensure_prepared(&self) -> Result<(), RuntimeError> {
        if self.prepared.get().is_none() {
            self.layout.prepare()?;
            let _ = self.prepared.set(());
        }
        Ok(())
    }

    fn launch(&self, id: &str, cgroups_path: &str) -> Result<shim::Started, RuntimeError> {
        self.ensure_prepared()?;
        let dir = self.state_dir(id);
        let args = ShimArgs {
            id: id.to_string(),
            bundle: dir.join("bundle"),
            runc_root: self.runc.root.clone(),
            state_dir: dir.to_path_buf(),
            oom_file: Some(self.oom_file(cgroups_path)),
            log_max_bytes: self.log_max_bytes,
            log_files: self.log_files,
            host_key: self.host_key.clone(),
        };
        self.spawn_shim(&args)?;
        // Wait for the shim to report the container running (or failed).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(b) = std::fs::read(dir.join("started.json")) {
                if let Ok(s) = serde_json::from_slice::<shim::Started>(&b) {
                    return Ok(s);
                }
            }
            let st = shim::status(&dir);
            if let Some(exit) = st.exit {
                if let Some(e) = exit.error {
                    return Err(RuntimeError::Shim { id: id.to_string(), message: e });
                }
            }
            if Instant::now() > deadline {
                return Err(RuntimeError::Shim { id: id.to_string(), message: "did not start within 30 s".into() });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn spawn_shim(&self, args: &ShimArgs) -> Result<(), RuntimeError> {
        let log_path = args.state_dir.join("shim.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| PathError::new("open", &log_path, e))?;
        let err = log.try_clone().map_err(|e| PathError::new("open", &log_path, e))?;
        let mut cmd = command(&self.shim_exe);
        cmd.arg("shim").args(args.to_args()).stdin(Stdio::null()).stdout(log).stderr(err).current_dir("/");
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe work is allowed: setsid is one raw system call through
        // rustix, with no allocation or lock. It touches only the new child, which
        // then runs in a session of its own, detached from the daemon's.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::setsid()?;
                Ok(())
            });
        }
        let mut child =
            cmd.spawn().map_err(|e| RuntimeError::Command { command: "berth shim".into(), message: e.to_string() })?;
        // Reap the shim when it ends while we live; after a daemon restart its new
        // parent (init or systemd) does.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        Ok(())
    }

    pub fn status(&self, id: &str) -> Status {
        shim::status(&self.state_dir(id))
    }

    /// Stops a container: SIGTERM, then SIGKILL after `grace`; returns its status.
    pub fn stop(&self, id: &str, grace: Duration) -> Result<Status, RuntimeError> {
        let dir = self.state_dir(id);
        if !dir.exists() {
            return Err(RuntimeError::NotFound(id.into()));
        }
        if shim::status(&dir).state != State::Running {
            return Ok(shim::status(&dir));
        }
        let _ = shim::kill(&dir, libc::SIGTERM);
        if let Some(s) = wait_exit(&dir, grace) {
            return Ok(s);
        }
        let _ = shim::kill(&dir, libc::SIGKILL);
        Ok(wait_exit(&dir, Duration::from_secs(10)).unwrap_or_else(|| shim::status(&dir)))
    }

    pub fn logs(&self, id: &str, tail: usize) -> Vec<LogLine> {
        shim::logs(&self.state_dir(id), tail, self.log_files)
    }

    pub fn metrics(&self, project: &str, id: &str) -> Metrics {
        let mut m = self.layout.metrics(&self.layout.container_path(project, id));
        // The init process's view of /proc/net is its network namespace's.
        let status = self.status(id);
        if let Some(pid) = status.pid.filter(|_| status.state == State::Running) {
            let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap_or_default();
            (m.net_rx_bytes, m.net_rx_packets, m.net_tx_bytes, m.net_tx_packets) = super::cgroups::parse_net_dev(&text);
        }
        m
    }

    /// Removes everything of a container: its process, runc state, cgroup, rootfs
    /// mount, upper layer, logs.
    pub fn delete(&self, project: &str, id: &str) -> Result<(), RuntimeError> {
        let dir = self.state_dir(id);
        if dir.exists() && shim::status(&dir).state == State::Running {
            self.stop(id, Duration::from_secs(0))?;
        }
        self.runc.delete(id)?;
        super::rootfs::unmount(&dir.join("rootfs"))?;
        self.layout.remove(&self.layout.container_path(project, id))?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PathError::new("remove", &dir, e).into()),
        }
    }

    /// Ids of the containers with state on disk (to re-adopt after a restart).
    pub fn list(&self) -> Vec<String> {
        std::fs::read_dir(&self.containers_dir)
            .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }
}

fn wait_exit(dir: &Path, within: Duration) -> Option<Status> {
    let deadline = Instant::now() + within;
    loop {
        let s = shim::status(dir);
        if s.state == State::Exited && dir.join("exit.json").exists() && !dir.join("shim.sock").exists() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
