//! The OCI runtime config (`config.json`) for a container, built with `oci-spec`.
//!
//! Starts from the runtime spec's defaults (the `runc spec` set: default mounts,
//! default capabilities, masked and read-only paths) and adds what berth decides:
//! the process from the image config and service overrides, generated `/etc/hosts`
//! and `/etc/resolv.conf`, volumes, all namespaces (network by path when the
//! container is attached to a project network), `no_new_privs`, a deny-list seccomp
//! profile, rlimits, and `linux.resources` under the project's cgroup.

use std::path::PathBuf;

use oci_spec::runtime::{
    Arch, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, RootBuilder, Spec, UserBuilder,
};

use super::RuntimeError;
use super::cgroups::{CPU_PERIOD_US, Limits};

/// What a container is made of, as the engine decides it.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub id: String,
    pub hostname: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// The mounted root filesystem (the overlay).
    pub rootfs: PathBuf,
    /// Files bind-mounted read-only over `/etc/hosts` and `/etc/resolv.conf`.
    pub hosts_file: Option<PathBuf>,
    pub resolv_file: Option<PathBuf>,
    /// Named volumes: host directory → path in the container.
    pub volumes: Vec<(PathBuf, String)>,
    /// The network namespace to join; `None` makes a fresh, isolated one.
    pub netns: Option<PathBuf>,
    pub limits: Limits,
    /// Relative cgroup path (see `cgroups::Layout::container_path`).
    pub cgroups_path: String,
}

/// Syscalls refused (EPERM) beyond what missing capabilities already prevent: kernel
/// modules, kexec, reboot, swap, clock and keyring changes, BPF, perf, userfaultfd,
/// handle-based opens, cross-process memory access, and obsolete calls.
const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "umount",
    "umount2",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
    "mount",
    "unshare",
    "setns",
];

fn oci(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::InvalidSpec(format!("runtime spec: {e}"))
}

/// Builds the runtime config.
pub fn build(c: &ContainerSpec) -> Result<Spec, RuntimeError> {
    c.limits.validate()?;
    if c.args.is_empty() {
        return Err(RuntimeError::InvalidSpec("the container has no command to run".into()));
    }
    let mut spec = Spec::default();
    spec.set_hostname(Some(c.hostname.clone()));
    spec.set_root(Some(RootBuilder::default().path(c.rootfs.clone()).readonly(false).build().map_err(oci)?));

    let mut process = spec.process().clone().unwrap_or_default();
    process.set_terminal(Some(false));
    process.set_args(Some(c.args.clone()));
    process.set_env(Some(c.env.clone()));
    process.set_cwd(PathBuf::from(if c.cwd.is_empty() { "/" } else { &c.cwd }));
    let user =
        UserBuilder::default().uid(c.uid).gid(c.gid).additional_gids(c.additional_gids.clone()).build().map_err(oci)?;
    process.set_user(user);
    process.set_no_new_privileges(Some(true));
    let nofile = nofile_limit();
    process.set_rlimits(Some(vec![
        PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(nofile)
            .soft(nofile)
            .build()
            .map_err(oci)?,
        PosixRlimitBuilder::default().typ(PosixRlimitType::RlimitCore).hard(0u64).soft(0u64).build().map_err(oci)?,
    ]));
    process.set_oom_score_adj(Some(500));
    spec.set_process(Some(process));

    let mut mounts = spec.mounts().clone().unwrap_or_default();
    let bind = |src: &PathBuf, dst: &str, ro: bool| {
        let mut opts = vec!["rbind".to_string(), "nosuid".into(), "nodev".into()];
        opts.push(if ro { "ro".into() } else { "rw".into() });
        MountBuilder::default().destination(dst).typ("bind").source(src.clone()).options(opts).build().map_err(oci)
    };
    if let Some(h) = &c.hosts_file {
        mounts.push(bind(h, "/etc/hosts", true)?);
    }
    if let Some(r) = &c.resolv_file {
        mounts.push(bind(r, "/etc/resolv.conf", true)?);
    }
    for (host, path) in &c.volumes {
        if !path.starts_with('/') || path.split('/').any(|p| p == "..") {
            return Err(RuntimeError::InvalidSpec(format!("volume path {path:?} must be absolute with no '..'")));
        }
        mounts.push(bind(host, path, false)?);
    }
    spec.set_mounts(Some(mounts));

    let mut linux = spec.linux().clone().unwrap_or_default();
    let ns = |t: LinuxNamespaceType| LinuxNamespaceBuilder::default().typ(t).build().map_err(oci);
    let mut namespaces: Vec<LinuxNamespace> = vec![
        ns(LinuxNamespaceType::Pid)?,
        ns(LinuxNamespaceType::Ipc)?,
        ns(LinuxNamespaceType::Uts)?,
        ns(LinuxNamespaceType::Mount)?,
        ns(LinuxNamespaceType::Cgroup)?,
    ];
    namespaces.push(match &c.netns {
        Some(path) => {
            LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network).path(path.clone()).build().map_err(oci)?
        }
        None => ns(LinuxNamespaceType::Network)?,
    });
    linux.set_namespaces(Some(namespaces));
    linux.set_cgroups_path(Some(PathBuf::from(&c.cgroups_path)));

    let mut resources = LinuxResourcesBuilder::default();
    if let Some(m) = c.limits.memory_bytes {
        // Swap at the same value: no swap beyond the memory limit.
        resources = resources.memory(LinuxMemoryBuilder::default().limit(m).swap(m).build().map_err(oci)?);
    }
    if let Some(q) = c.limits.cpu_quota_us() {
        resources = resources.cpu(LinuxCpuBuilder::default().quota(q).period(CPU_PERIOD_US).build().map_err(oci)?);
    }
    if let Some(p) = c.limits.pids {
        resources = resources.pids(LinuxPidsBuilder::default().limit(p).build().map_err(oci)?);
    }
    let mut resources = resources.build().map_err(oci)?;
    resources.set_devices(linux.resources().as_ref().and_then(|r| r.devices().clone()));
    linux.set_resources(Some(resources));

    let denied = LinuxSyscallBuilder::default()
        .names(DENIED_SYSCALLS.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(libc::EPERM as u32)
        .build()
        .map_err(oci)?;
    linux.set_seccomp(Some(
        LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .architectures(vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32, Arch::ScmpArchAarch64])
            .syscalls(vec![denied])
            .build()
            .map_err(oci)?,
    ));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// Open files allowed in a container: 65536, or the daemon's own hard limit when
/// that is lower (a container cannot be given more than its creator holds).
fn nofile_limit() -> u64 {
    // `None` is unlimited.
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    hard.map_or(65_536, |max| max.min(65_536))
}

/// Resolves an image's `User` (`name`, `uid`, `uid:gid`, `name:group`) against the
/// rootfs's `/etc/passwd` and `/etc/group`; returns (uid, gid).
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<(u32, u32), RuntimeError> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let entry =
        |name: &str| passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.len() >= 4 && f[0] == name);
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (
            n,
            passwd
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 4 && f[2] == u)
                .and_then(|f| f[3].parse().ok())
                .unwrap_or(0),
        ),
        Err(_) => {
            let f = entry(u)
                .ok_or_else(|| RuntimeError::InvalidSpec(format!("user {u:?} is not in the image's /etc/passwd")))?;
            (
                f[2].parse().map_err(|_| RuntimeError::InvalidSpec(format!("bad uid for {u}")))?,
                f[3].parse().unwrap_or(0),
            )
        }
    };
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| RuntimeError::InvalidSpec(format!("group {g:?} is not in the image's /etc/group")))?,
        },
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ContainerSpec {
        ContainerSpec {
            id: "rep_1".into(),
            hostname: "web".into(),
            args: vec!["/bin/busybox".into(), "httpd".into(), "-f".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 1000,
            gid: 1000,
            additional_gids: vec![],
            rootfs: "/tmp/rootfs".into(),
            hosts_file: Some("/tmp/hosts".into()),
            resolv_file: None,
            volumes: vec![("/var/lib/berth/volumes/data".into(), "/data".into())],
            netns: Some("/run/netns/x".into()),
            limits: Limits { memory_bytes: Some(64 << 20), cpus: Some(0.5), pids: Some(100) },
            cgroups_path: "/berth/prj/rep_1".into(),
        }
    }

    #[test]
    fn spec_carries_process_limits_and_hardening() {
        let spec = build(&sample()).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["process"]["args"][1], "httpd");
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["process"]["terminal"], false);
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 100);
        assert_eq!(v["linux"]["cgroupsPath"], "/berth/prj/rep_1");
        let ns: Vec<&str> =
            v["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect();
        for t in ["pid", "ipc", "uts", "mount", "cgroup", "network"] {
            assert!(ns.contains(&t), "{t} namespace: {ns:?}");
        }
        assert!(v["linux"]["maskedPaths"].as_array().unwrap().iter().any(|p| p == "/proc/kcore"));
        assert!(v["linux"]["readonlyPaths"].as_array().unwrap().iter().any(|p| p == "/proc/sys"));
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        let caps = v["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN"), "no CAP_SYS_ADMIN: {caps:?}");
        let mounts = v["mounts"].as_array().unwrap();
        assert!(mounts.iter().any(|m| m["destination"] == "/etc/hosts" && m["options"].as_array().unwrap().iter().any(|o| o == "ro")));
        assert!(mounts.iter().any(|m| m["destination"] == "/data"));
        assert!(
            mounts
                .iter()
                .any(|m| m["destination"] == "/sys" && m["options"].as_array().unwrap().iter().any(|o| o == "ro"))
        );
    }

    #[test]
    fn refuses_what_cannot_run() {
        let mut c = sample();
        c.limits.memory_bytes = Some(1 << 20);
        assert!(build(&c).is_err(), "memory below 4 MiB");
        let mut c = sample();
        c.args.clear();
        assert!(build(&c).is_err(), "no command");
        let mut c = sample();
        c.volumes = vec![("/x".into(), "../etc".into())];
        assert!(build(&c).is_err(), "relative volume path");
    }

    #[test]
    fn users_resolve_from_the_image() {
        let passwd = "root:x:0:0::/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\n";
        let group = "root:x:0:\nstaff:x:50:\n";
        assert_eq!(resolve_user("", passwd, group).unwrap(), (0, 0));
        assert_eq!(resolve_user("www", passwd, group).unwrap(), (33, 33));
        assert_eq!(resolve_user("www:staff", passwd, group).unwrap(), (33, 50));
        assert_eq!(resolve_user("1234", passwd, group).unwrap(), (1234, 0));
        assert_eq!(resolve_user("1234:5", passwd, group).unwrap(), (1234, 5));
        assert!(resolve_user("nobody", passwd, group).is_err());
    }
}
