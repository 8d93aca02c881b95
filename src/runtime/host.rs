//! Facts about the host, read from procfs, sysfs and statvfs, and whether systemd is
//! shutting it down.

use std::path::Path;

use serde::Serialize;
use utoipa::ToSchema;

/// Which cgroup hierarchy berth drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// Pure unified hierarchy.
    V2,
    /// Legacy or hybrid hosts: resource controllers are v1.
    V1,
}

/// Facts that do not change while the daemon runs.
#[derive(Debug, Clone)]
pub struct StaticFacts {
    pub cgroup: CgroupVersion,
    pub runc_version: Option<String>,
}

impl StaticFacts {
    pub fn probe() -> Self {
        Self { cgroup: cgroup_version(Path::new("/sys/fs/cgroup")), runc_version: super::runc::version() }
    }
}

/// v2 when the cgroup root is itself the unified hierarchy (it has `cgroup.controllers`).
pub fn cgroup_version(root: &Path) -> CgroupVersion {
    if root.join("cgroup.controllers").exists() { CgroupVersion::V2 } else { CgroupVersion::V1 }
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Memory {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Disk {
    pub path: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
}

/// Live figures, read on each call.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Live {
    pub hostname: String,
    pub host_uptime_s: u64,
    pub cpus: usize,
    /// 1, 5 and 15 minute load averages.
    pub load_avg: [f64; 3],
    pub memory: Memory,
    pub disk: Disk,
}

/// Reads the live figures; `state_dir` is the directory whose filesystem is reported.
pub fn live(state_dir: &Path) -> Live {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    Live {
        hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
        host_uptime_s: parse_uptime(&read("/proc/uptime")),
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        load_avg: parse_loadavg(&read("/proc/loadavg")),
        memory: parse_meminfo(&read("/proc/meminfo")),
        disk: statvfs(state_dir),
    }
}

fn parse_uptime(s: &str) -> u64 {
    s.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()).map(|v| v as u64).unwrap_or(0)
}

fn parse_loadavg(s: &str) -> [f64; 3] {
    let mut it = s.split_whitespace().map(|v| v.parse::<f64>().unwrap_or(0.0));
    [it.next().unwrap_or(0.0), it.next().unwrap_or(0.0), it.next().unwrap_or(0.0)]
}

fn parse_meminfo(s: &str) -> Memory {
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or(0)
    };
    Memory { total_bytes: field("MemTotal"), available_bytes: field("MemAvailable") }
}

/// The filesystem holding `path`: its size, what is free to unprivileged users, and
/// what is used (zeros when it cannot be read).
pub fn statvfs(path: &Path) -> Disk {
    let mut disk = Disk { path: path.display().to_string(), ..Default::default() };
    let Ok(st) = rustix::fs::statvfs(path) else { return disk };
    let [frag, blocks, bavail, bfree] = [st.f_frsize, st.f_blocks, st.f_bavail, st.f_bfree];
    disk.total_bytes = blocks * frag;
    disk.available_bytes = bavail * frag;
    disk.used_bytes = blocks.saturating_sub(bfree) * frag;
    disk
}

/// Whether systemd's manager state is `stopping`: `systemctl is-system-running`
/// prints it from the moment a start job for `shutdown.target` is queued, which every
/// reboot, poweroff, halt and kexec pulls in. No systemctl, no answer within `within`
/// or any other state: false.
#[expect(clippy::disallowed_methods, reason = "runtime is the module that runs processes")]
pub fn system_stopping(within: std::time::Duration) -> bool {
    use std::io::Read;
    let mut child = match std::process::Command::new("systemctl")
        .arg("is-system-running")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "could not ask systemd whether the host is shutting down");
            return false;
        }
    };
    let deadline = std::time::Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            _ => {
                tracing::warn!("systemctl is-system-running did not answer; assuming the host stays up");
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
    let mut out = Vec::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_end(&mut out);
    }
    reports_stopping(&out)
}

/// `systemctl is-system-running`'s output says the system is shutting down (it exits
/// non-zero for every state but `running`, so only the text counts).
fn reports_stopping(output: &[u8]) -> bool {
    String::from_utf8_lossy(output).trim() == "stopping"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_procfs_text() {
        assert_eq!(parse_uptime("350735.47 234388.90\n"), 350735);
        assert_eq!(parse_loadavg("0.20 0.18 0.12 1/80 11206\n"), [0.2, 0.18, 0.12]);
        let m = parse_meminfo("MemTotal:       16303428 kB\nMemFree:  1 kB\nMemAvailable:   9000000 kB\n");
        assert_eq!(m.total_bytes, 16303428 * 1024);
        assert_eq!(m.available_bytes, 9000000 * 1024);
    }

    #[test]
    fn detects_cgroup_version_from_a_fixture_tree() {
        let d = std::env::temp_dir().join(crate::ids::new_id("cgtest"));
        std::fs::create_dir_all(&d).unwrap();
        assert_eq!(cgroup_version(&d), CgroupVersion::V1);
        std::fs::write(d.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        assert_eq!(cgroup_version(&d), CgroupVersion::V2);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn statvfs_reads_a_real_filesystem() {
        let d = statvfs(Path::new("/"));
        assert!(d.total_bytes > 0 && d.total_bytes >= d.available_bytes);
    }

    #[test]
    fn only_a_stopping_system_counts_as_shutting_down() {
        assert!(reports_stopping(b"stopping\n"));
        for other in [&b"running\n"[..], b"degraded\n", b"starting\n", b"maintenance\n", b"offline\n", b"", b"\xff"] {
            assert!(!reports_stopping(other), "{:?}", String::from_utf8_lossy(other));
        }
    }
}
