//! cgroups for containers: where they live, project-wide limits, and metrics.
//!
//! berth creates its cgroups beneath the cgroup it runs in (read from
//! `/proc/self/cgroup`), as systemd's `Delegate=yes` expects: `<own>/<prefix>/<project>/<container>`.
//! runc creates the container's own cgroup from the spec's `cgroupsPath` and applies
//! the container's limits; berth creates the project level and writes the project's
//! limits there, so they hold across all of a project's containers.
//!
//! - cgroup v2 (the target): one unified tree. A cgroup with processes cannot hand
//!   controllers to children, so the daemon first moves itself into a `daemon` leaf
//!   of its own cgroup, then enables `+cpu +memory +pids +io` for the subtree.
//! - cgroup v1 / hybrid hosts: one tree per controller. runc uses the same relative
//!   path in every controller, so berth picks the deepest of its own per-controller
//!   paths as the base; in every controller that path is at or beneath berth's own
//!   cgroup (on the CI machines: memory is nested, the others are at the root).
//!
//! Every function takes the mount root as an argument, so unit tests run against
//! fixture trees in a temp dir.

use std::path::{Path, PathBuf};

use serde::Serialize;
use utoipa::ToSchema;

use super::RuntimeError;
use super::host::CgroupVersion;
use crate::error::PathError;

/// Controllers berth needs on a v1 host.
const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids", "blkio"];

/// Where berth's cgroups go.
#[derive(Debug, Clone)]
pub struct Layout {
    pub version: CgroupVersion,
    /// The cgroup filesystem root (`/sys/fs/cgroup`).
    pub mount: PathBuf,
    /// berth's subtree, relative to each hierarchy's root, starting with `/`.
    pub base: String,
    /// Whether the subtree is beneath the daemon's own cgroup (so that, on v2, the
    /// daemon first moves itself into a leaf), or under a parent of its own.
    pub beneath_self: bool,
}

/// Limits for a cgroup.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub memory_bytes: Option<i64>,
    pub cpus: Option<f64>,
    pub pids: Option<i64>,
}

/// The CFS period used for CPU quotas, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// Below this a container cannot even start its init.
pub const MIN_MEMORY_BYTES: i64 = 4 << 20;

impl Limits {
    /// Refuses limits no container could run under.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        if self.memory_bytes.is_some_and(|m| m < MIN_MEMORY_BYTES) {
            return Err(RuntimeError::InvalidSpec(format!(
                "a memory limit below {} MiB cannot run a container",
                MIN_MEMORY_BYTES >> 20
            )));
        }
        if self.cpus.is_some_and(|c| !c.is_finite() || c < 0.01) {
            return Err(RuntimeError::InvalidSpec("a CPU limit must be at least 0.01".into()));
        }
        if self.pids.is_some_and(|p| p < 1) {
            return Err(RuntimeError::InvalidSpec("a pids limit must be at least 1".into()));
        }
        Ok(())
    }

    /// CFS quota for `cpus`, in microseconds per [`CPU_PERIOD_US`].
    pub fn cpu_quota_us(&self) -> Option<i64> {
        self.cpus.map(|c| (c * CPU_PERIOD_US as f64).round() as i64)
    }
}

/// Parses `/proc/self/cgroup` text into (controllers, path) pairs.
fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect();
            Some((controllers, parts.next()?.to_string()))
        })
        .collect()
}

impl Layout {
    /// Works out the layout from the mount root and `/proc/self/cgroup` text;
    /// `prefix` names berth's subtree (e.g. `berth`, or a unique one per test).
    pub fn detect(mount: &Path, proc_self_cgroup: &str, prefix: &str) -> Result<Layout, RuntimeError> {
        let version = super::host::cgroup_version(mount);
        let entries = parse_proc_cgroup(proc_self_cgroup);
        let own = match version {
            CgroupVersion::V2 => entries
                .iter()
                .find(|(c, _)| c.is_empty())
                .map(|(_, p)| p.clone())
                .ok_or_else(|| RuntimeError::Cgroup("no unified entry in /proc/self/cgroup".into()))?,
            CgroupVersion::V1 => {
                let mut paths: Vec<&String> = Vec::new();
                for ctl in V1_CONTROLLERS {
                    let p = entries
                        .iter()
                        .find(|(c, _)| c.iter().any(|x| x == ctl))
                        .map(|(_, p)| p)
                        .ok_or_else(|| RuntimeError::Cgroup(format!("controller {ctl} is not mounted")))?;
                    paths.push(p);
                }
                let deepest = paths.iter().max_by_key(|p| p.len()).map(|p| p.to_string()).unwrap_or_default();
                for p in &paths {
                    let nested = deepest == **p || p.as_str() == "/" || deepest.starts_with(&format!("{p}/"));
                    if !nested {
                        return Err(RuntimeError::Cgroup(format!(
                            "berth's v1 cgroups {p} and {deepest} are not nested; cannot use one path for all controllers"
                        )));
                    }
                }
                deepest
            }
        };
        let mut own = own.trim_end_matches('/').to_string();
        // On v2 `prepare` moves the daemon into `<own>/daemon`; seen from there, berth's
        // subtree still belongs next to that leaf, not inside it.
        if version == CgroupVersion::V2 {
            if let Some(parent) = own.strip_suffix("/daemon") {
                own = parent.to_string();
            }
        }
        Ok(Layout { version, mount: mount.to_path_buf(), base: format!("{own}/{prefix}"), beneath_self: true })
    }

    /// The layout under `parent`, a cgroup path of its own (`/` puts berth's subtree
    /// at `/<prefix>`), outside the daemon's cgroup: containers then never sit below
    /// the service that runs the daemon, so the service manager can restart the
    /// daemon while they run (on cgroup v2 it cannot start a process in a cgroup
    /// whose children use controllers).
    pub fn under(mount: &Path, parent: &str, prefix: &str) -> Layout {
        let version = super::host::cgroup_version(mount);
        let parent = parent.trim_end_matches('/');
        Layout { version, mount: mount.to_path_buf(), base: format!("{parent}/{prefix}"), beneath_self: false }
    }

    /// The layout for this process.
    pub fn for_self(prefix: &str) -> Result<Layout, RuntimeError> {
        let text =
            std::fs::read_to_string("/proc/self/cgroup").map_err(|e| PathError::new("read", "/proc/self/cgroup", e))?;
        Layout::detect(Path::new("/sys/fs/cgroup"), &text, prefix)
    }

    /// The relative cgroup path of a project (`<base>/<project>`).
    pub fn project_path(&self, project: &str) -> String {
        format!("{}/{project}", self.base)
    }

    /// The relative cgroup path of a container, for the spec's `cgroupsPath`.
    pub fn container_path(&self, project: &str, container: &str) -> String {
        format!("{}/{project}/{container}", self.base)
    }

    /// Directories of a relative cgroup path, one per hierarchy that matters.
    pub fn dirs(&self, rel: &str) -> Vec<(String, PathBuf)> {
        let rel = rel.trim_start_matches('/');
        match self.version {
            CgroupVersion::V2 => vec![("unified".into(), self.mount.join(rel))],
            CgroupVersion::V1 => V1_CONTROLLERS.iter().map(|c| (c.to_string(), self.mount.join(c).join(rel))).collect(),
        }
    }

    fn dir(&self, controller: &str, rel: &str) -> PathBuf {
        let rel = rel.trim_start_matches('/');
        match self.version {
            CgroupVersion::V2 => self.mount.join(rel),
            CgroupVersion::V1 => self.mount.join(controller).join(rel),
        }
    }

    /// Prepares berth's subtree. On v2, moves this process into a `daemon` leaf of its
    /// own cgroup and enables the controllers for children.
    pub fn prepare(&self) -> Result<(), RuntimeError> {
        if self.version == CgroupVersion::V2 && !self.beneath_self {
            // Every level from the root down hands the controllers on.
            let mut dir = self.mount.clone();
            enable_controllers(&dir)?;
            for part in self.base.trim_start_matches('/').split('/').filter(|p| !p.is_empty()) {
                dir = dir.join(part);
                mkdir(&dir)?;
                enable_controllers(&dir)?;
            }
        } else if self.version == CgroupVersion::V2 {
            let own =
                self.mount.join(self.base.trim_start_matches('/')).parent().map(Path::to_path_buf).unwrap_or_default();
            let leaf = own.join("daemon");
            mkdir(&leaf)?;
            write(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
            enable_controllers(&own)?;
            mkdir(&self.mount.join(self.base.trim_start_matches('/')))?;
            enable_controllers(&self.mount.join(self.base.trim_start_matches('/')))?;
        } else {
            for (_, d) in self.dirs(&self.base) {
                mkdir(&d)?;
            }
        }
        Ok(())
    }

    /// Creates a project's cgroup and writes its limits (unset limits are lifted).
    pub fn ensure_project(&self, project: &str, limits: &Limits) -> Result<(), RuntimeError> {
        limits.validate()?;
        let rel = self.project_path(project);
        for (_, d) in self.dirs(&rel) {
            mkdir(&d)?;
        }
        if self.version == CgroupVersion::V2 {
            enable_controllers(&self.dir("", &rel))?;
        }
        self.write_limits(&rel, limits)
    }

    /// Writes limits into an existing cgroup.
    pub fn write_limits(&self, rel: &str, l: &Limits) -> Result<(), RuntimeError> {
        match self.version {
            CgroupVersion::V2 => {
                let d = self.dir("", rel);
                write(&d.join("memory.max"), &l.memory_bytes.map_or("max".into(), |m| m.to_string()))?;
                let cpu = l.cpu_quota_us().map_or(format!("max {CPU_PERIOD_US}"), |q| format!("{q} {CPU_PERIOD_US}"));
                write(&d.join("cpu.max"), &cpu)?;
                write(&d.join("pids.max"), &l.pids.map_or("max".into(), |p| p.to_string()))?;
            }
            CgroupVersion::V1 => {
                let mem = self.dir("memory", rel);
                write(&mem.join("memory.limit_in_bytes"), &l.memory_bytes.unwrap_or(-1).to_string())?;
                let cpu = self.dir("cpu", rel);
                write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(&cpu.join("cpu.cfs_quota_us"), &l.cpu_quota_us().unwrap_or(-1).to_string())?;
                let pids = self.dir("pids", rel);
                write(&pids.join("pids.max"), &l.pids.map_or("max".into(), |p| p.to_string()))?;
            }
        }
        Ok(())
    }

    /// Reads a cgroup's usage.
    pub fn metrics(&self, rel: &str) -> Metrics {
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        let num = |s: String| s.trim().parse::<u64>().unwrap_or(0);
        match self.version {
            CgroupVersion::V2 => {
                let d = self.dir("", rel);
                let cpu_usec = read(d.join("cpu.stat"))
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec ").map(|v| v.trim().parse::<u64>().unwrap_or(0)))
                    .unwrap_or(0);
                let (read_bytes, write_bytes) = parse_io_stat(&read(d.join("io.stat")));
                Metrics {
                    cpu_usage_ns: cpu_usec * 1000,
                    memory_bytes: num(read(d.join("memory.current"))),
                    memory_limit_bytes: read(d.join("memory.max")).trim().parse().ok(),
                    pids: num(read(d.join("pids.current"))),
                    io_read_bytes: read_bytes,
                    io_write_bytes: write_bytes,
                    oom_kills: events_field(&read(d.join("memory.events")), "oom_kill"),
                    ..Metrics::default()
                }
            }
            CgroupVersion::V1 => {
                let limit = num(read(self.dir("memory", rel).join("memory.limit_in_bytes")));
                let (read_bytes, write_bytes) =
                    parse_blkio(&read(self.dir("blkio", rel).join("blkio.throttle.io_service_bytes")));
                Metrics {
                    cpu_usage_ns: num(read(self.dir("cpuacct", rel).join("cpuacct.usage"))),
                    memory_bytes: num(read(self.dir("memory", rel).join("memory.usage_in_bytes"))),
                    memory_limit_bytes: (limit < (1 << 62)).then_some(limit),
                    pids: num(read(self.dir("pids", rel).join("pids.current"))),
                    io_read_bytes: read_bytes,
                    io_write_bytes: write_bytes,
                    oom_kills: events_field(&read(self.dir("memory", rel).join("memory.oom_control")), "oom_kill"),
                    ..Metrics::default()
                }
            }
        }
    }

    /// Creates `<base>/<group>/<name>`, a cgroup for a process tree berth runs itself
    /// (a build), writes its limits with no swap beyond them, and returns its
    /// relative path. The `group` level hands the controllers on (v2).
    pub fn ensure_job(&self, group: &str, name: &str, limits: &Limits) -> Result<String, RuntimeError> {
        limits.validate()?;
        let parent = format!("{}/{group}", self.base);
        for (_, d) in self.dirs(&parent) {
            mkdir(&d)?;
        }
        if self.version == CgroupVersion::V2 {
            enable_controllers(&self.dir("", &parent))?;
        }
        let rel = format!("{parent}/{name}");
        for (_, d) in self.dirs(&rel) {
            mkdir(&d)?;
        }
        self.write_limits(&rel, limits)?;
        // Past its memory limit a job is to be stopped, not swapped out; hosts
        // without swap accounting have no such file, which is fine.
        match (self.version, limits.memory_bytes) {
            (CgroupVersion::V2, Some(_)) => {
                let _ = std::fs::write(self.dir("", &rel).join("memory.swap.max"), "0");
            }
            (CgroupVersion::V1, Some(m)) => {
                let _ = std::fs::write(self.dir("memory", &rel).join("memory.memsw.limit_in_bytes"), m.to_string());
            }
            (_, None) => {}
        }
        Ok(rel)
    }

    /// The `cgroup.procs` file of each hierarchy of a cgroup: writing a pid (or `0`,
    /// the writer itself) there moves a process in.
    pub fn procs_files(&self, rel: &str) -> Vec<PathBuf> {
        self.dirs(rel).into_iter().map(|(_, d)| d.join("cgroup.procs")).collect()
    }

    /// The processes in a cgroup (read from the hierarchy that tracks pids).
    pub fn procs(&self, rel: &str) -> Vec<i32> {
        let file = match self.version {
            CgroupVersion::V2 => self.dir("", rel).join("cgroup.procs"),
            CgroupVersion::V1 => self.dir("pids", rel).join("cgroup.procs"),
        };
        std::fs::read_to_string(file).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// Removes a cgroup (it must be empty); missing is fine.
    pub fn remove(&self, rel: &str) -> Result<(), RuntimeError> {
        for (_, d) in self.dirs(rel) {
            match std::fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(PathError::new("remove cgroup", &d, e).into()),
            }
        }
        Ok(())
    }
}

/// A container's usage, as `/v1/services/{id}/metrics` will show it: the cgroup's
/// counters, and the network counters of the container's network namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct Metrics {
    pub cpu_usage_ns: u64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub pids: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    pub oom_kills: u64,
    /// Received through every interface but loopback.
    pub net_rx_bytes: u64,
    pub net_rx_packets: u64,
    /// Sent through every interface but loopback.
    pub net_tx_bytes: u64,
    pub net_tx_packets: u64,
}

/// (rx bytes, rx packets, tx bytes, tx packets) summed over the interfaces of a
/// `/proc/<pid>/net/dev` table, loopback left out.
pub fn parse_net_dev(text: &str) -> (u64, u64, u64, u64) {
    let mut sum = (0, 0, 0, 0);
    for line in text.lines().skip(2) {
        let Some((iface, counters)) = line.split_once(':') else { continue };
        if iface.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = counters.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
        if f.len() >= 10 {
            sum = (sum.0 + f[0], sum.1 + f[1], sum.2 + f[8], sum.3 + f[9]);
        }
    }
    sum
}

fn events_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')).map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0)
}

fn parse_io_stat(text: &str) -> (u64, u64) {
    let mut r = 0;
    let mut w = 0;
    for field in text.split_whitespace() {
        if let Some(v) = field.strip_prefix("rbytes=") {
            r += v.parse::<u64>().unwrap_or(0);
        } else if let Some(v) = field.strip_prefix("wbytes=") {
            w += v.parse::<u64>().unwrap_or(0);
        }
    }
    (r, w)
}

fn parse_blkio(text: &str) -> (u64, u64) {
    let mut r = 0;
    let mut w = 0;
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() == 3 {
            match f[1] {
                "Read" => r += f[2].parse::<u64>().unwrap_or(0),
                "Write" => w += f[2].parse::<u64>().unwrap_or(0),
                _ => {}
            }
        }
    }
    (r, w)
}

fn enable_controllers(dir: &Path) -> Result<(), RuntimeError> {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let want: Vec<String> = ["cpu", "memory", "pids", "io"]
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if want.is_empty() {
        return Ok(());
    }
    write(&dir.join("cgroup.subtree_control"), &want.join(" "))
}

fn mkdir(d: &Path) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(d).map_err(|e| PathError::new("create cgroup", d, e).into())
}

fn write(p: &Path, v: &str) -> Result<(), RuntimeError> {
    std::fs::write(p, v).map_err(|e| PathError::new("write", p, e).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str =
        "9:name=systemd:/\n8:pids:/\n7:blkio:/\n4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n";

    #[test]
    fn net_dev_sums_every_interface_but_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n\
             \x20   lo:    5000      50    0    0    0     0          0         0     5000      50    0    0    0     0       0          0\n\
             \x20 eth0:    1200      10    0    0    0     0          0         0      800       8    0    0    0     0       0          0\n\
             \x20 eth1:      34       1    0    0    0     0          0         0       66       2    0    0    0     0       0          0\n";
        assert_eq!(parse_net_dev(text), (1234, 11, 866, 10));
        assert_eq!(parse_net_dev(""), (0, 0, 0, 0));
        assert_eq!(parse_net_dev("a\nb\n eth0: garbage\n"), (0, 0, 0, 0));
    }

    #[test]
    fn v1_hybrid_uses_the_deepest_nested_path() {
        let dir = std::env::temp_dir().join(crate::ids::new_id("cgfix"));
        std::fs::create_dir_all(&dir).unwrap();
        let with_cpuacct = HYBRID.replace("1:cpu:/", "1:cpu,cpuacct:/");
        let l = Layout::detect(&dir, &with_cpuacct, "berth").unwrap();
        assert_eq!(l.version, CgroupVersion::V1);
        assert_eq!(l.base, "/process_api/abc/berth");
        assert_eq!(l.container_path("p", "c"), "/process_api/abc/berth/p/c");
        assert_eq!(l.dirs("/x")[0].1, dir.join("memory").join("x"));
        let skewed = HYBRID.replace("8:pids:/", "8:pids:/other");
        assert!(Layout::detect(&dir, &skewed, "berth").is_err(), "paths that do not nest are refused");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn v2_fixture_tree_gets_limits_and_metrics() {
        let dir = std::env::temp_dir().join(crate::ids::new_id("cgfix"));
        std::fs::create_dir_all(dir.join("svc/berth/prj")).unwrap();
        std::fs::write(dir.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        let l = Layout::detect(&dir, "0::/svc\n", "berth").unwrap();
        assert_eq!(l.version, CgroupVersion::V2);
        let again = Layout::detect(&dir, "0::/svc/daemon\n", "berth").unwrap();
        assert_eq!(again.base, "/svc/berth", "a daemon already in its leaf keeps the same subtree");
        assert_eq!(Layout::detect(&dir, "0::/daemon\n", "berth").unwrap().base, "/berth");
        let d = dir.join("svc/berth/prj");
        std::fs::write(d.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let limits = Limits { memory_bytes: Some(64 << 20), cpus: Some(0.5), pids: Some(50) };
        l.ensure_project("prj", &limits).unwrap();
        assert_eq!(std::fs::read_to_string(d.join("memory.max")).unwrap(), (64u64 << 20).to_string());
        assert_eq!(std::fs::read_to_string(d.join("cpu.max")).unwrap(), "50000 100000");
        assert_eq!(std::fs::read_to_string(d.join("pids.max")).unwrap(), "50");
        assert_eq!(std::fs::read_to_string(d.join("cgroup.subtree_control")).unwrap(), "+cpu +memory +pids");
        std::fs::write(d.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
        std::fs::write(d.join("memory.current"), "4096\n").unwrap();
        std::fs::write(d.join("pids.current"), "3\n").unwrap();
        std::fs::write(d.join("memory.events"), "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n").unwrap();
        std::fs::write(d.join("io.stat"), "8:0 rbytes=100 wbytes=200 rios=1 wios=2\n").unwrap();
        let m = l.metrics("/svc/berth/prj");
        assert_eq!((m.cpu_usage_ns, m.memory_bytes, m.pids, m.oom_kills), (1_500_000, 4096, 3, 1));
        assert_eq!((m.io_read_bytes, m.io_write_bytes), (100, 200));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_parent_of_its_own_puts_the_subtree_outside_the_daemon_and_hands_controllers_down() {
        let dir = std::env::temp_dir().join(crate::ids::new_id("cgfix"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("cgroup.controllers"),
            "cpuset cpu io memory pids
",
        )
        .unwrap();
        let l = Layout::under(&dir, "/", "berth");
        assert_eq!((l.version, l.base.as_str(), l.beneath_self), (CgroupVersion::V2, "/berth", false));
        assert_eq!(l.container_path("p", "c"), "/berth/p/c");
        assert_eq!(Layout::under(&dir, "/a/b/", "x").base, "/a/b/x");
        // The fixture has no kernel to fill the new dirs' controller lists; give them.
        std::fs::create_dir_all(dir.join("berth")).unwrap();
        std::fs::write(
            dir.join("berth/cgroup.controllers"),
            "cpu io memory pids
",
        )
        .unwrap();
        l.prepare().unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap(), "+cpu +memory +pids +io");
        assert_eq!(
            std::fs::read_to_string(dir.join("berth/cgroup.subtree_control")).unwrap(),
            "+cpu +memory +pids +io"
        );
        assert!(!dir.join("daemon").exists(), "the daemon stays where it is");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_v2_job_cgroup_gets_limits_no_swap_and_lists_its_processes() {
        let dir = std::env::temp_dir().join(crate::ids::new_id("cgjob"));
        std::fs::create_dir_all(dir.join("berth/builds")).unwrap();
        std::fs::write(dir.join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
        std::fs::write(dir.join("berth/builds/cgroup.controllers"), "cpu memory pids\n").unwrap();
        let l = Layout::under(&dir, "/", "berth");
        let limits = Limits { memory_bytes: Some(96 << 20), cpus: Some(2.0), pids: Some(4096) };
        let rel = l.ensure_job("builds", "dep_1", &limits).unwrap();
        assert_eq!(rel, "/berth/builds/dep_1");
        let d = dir.join("berth/builds/dep_1");
        assert_eq!(std::fs::read_to_string(d.join("memory.max")).unwrap(), (96u64 << 20).to_string());
        assert_eq!(std::fs::read_to_string(d.join("memory.swap.max")).unwrap(), "0");
        assert_eq!(std::fs::read_to_string(d.join("cpu.max")).unwrap(), "200000 100000");
        assert_eq!(
            std::fs::read_to_string(dir.join("berth/builds/cgroup.subtree_control")).unwrap(),
            "+cpu +memory +pids"
        );
        assert_eq!(l.procs_files(&rel), vec![d.join("cgroup.procs")]);
        std::fs::write(d.join("cgroup.procs"), "12\n34\n").unwrap();
        assert_eq!(l.procs(&rel), vec![12, 34]);
        assert!(l.ensure_job("builds", "x", &Limits { memory_bytes: Some(1), ..Default::default() }).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn impossible_limits_are_refused() {
        assert!(Limits { memory_bytes: Some(1 << 20), ..Default::default() }.validate().is_err());
        assert!(Limits { pids: Some(0), ..Default::default() }.validate().is_err());
        assert!(Limits { cpus: Some(0.001), ..Default::default() }.validate().is_err());
        assert!(Limits { memory_bytes: Some(32 << 20), cpus: Some(0.5), pids: Some(10) }.validate().is_ok());
        assert_eq!(Limits { cpus: Some(0.5), ..Default::default() }.cpu_quota_us(), Some(50_000));
    }

    #[test]
    fn blkio_text() {
        let t = "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\nTotal 12288\n";
        assert_eq!(parse_blkio(t), (4096, 8192));
    }
}
