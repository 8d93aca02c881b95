//! Signalling a process through a pidfd, so a signal sent after the process is
//! gone fails with `ESRCH` instead of reaching whichever process got its pid.
//!
//! A pid is only a number: once its process is reaped the kernel may hand it to a
//! new process, and `kill(pid, …)` would hit that one. A pidfd refers to the
//! process itself. It must be opened while the pid is certainly still the process
//! meant: for the shim, the container's init after `runc run` and before the shim's
//! reaper has waited for anything, because a child nobody has reaped (even a
//! zombie) keeps its pid.

use std::io;
use std::os::fd::OwnedFd;

use rustix::process::{Pid, PidfdFlags, Signal};

/// A handle on one process (Linux 5.3 or later).
#[derive(Debug)]
pub(crate) struct PidFd(OwnedFd);

impl PidFd {
    /// Opens a pidfd for `pid`. The caller must know `pid` cannot have been reused
    /// yet: its own child (or one reparented to it) that it has not reaped.
    pub(crate) fn open(pid: i32) -> io::Result<PidFd> {
        // Pid::from_raw asserts the number is not negative.
        let p = (pid > 0)
            .then(|| Pid::from_raw(pid))
            .flatten()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{pid} is not a process id")))?;
        Ok(PidFd(rustix::process::pidfd_open(p, PidfdFlags::empty())?))
    }

    /// Sends signal number `signal` to the process; `ESRCH` once it has been
    /// reaped. Only the named signals (1–31) are taken.
    pub(crate) fn signal(&self, signal: i32) -> io::Result<()> {
        let sig = Signal::from_named_raw(signal).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{signal} is not a signal berth sends"))
        })?;
        Ok(rustix::process::pidfd_send_signal(&self.0, sig)?)
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Stdio};

    use super::*;
    use crate::runtime::runc::command;

    fn sleeper() -> Child {
        command("sleep").arg("1000").stdin(Stdio::null()).spawn().expect("spawn sleep")
    }

    fn is_esrch(r: io::Result<()>) -> bool {
        matches!(r, Err(e) if e.raw_os_error() == Some(libc::ESRCH))
    }

    #[test]
    fn a_reaped_process_cannot_be_signalled() {
        let mut child = sleeper();
        let pidfd = PidFd::open(child.id() as i32).unwrap();
        assert!(child.try_wait().unwrap().is_none());
        pidfd.signal(libc::SIGTERM).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGTERM));
        // Reaped now: the pid is free for the kernel to reuse.
        assert!(is_esrch(pidfd.signal(libc::SIGKILL)), "{:?}", pidfd.signal(libc::SIGKILL));
    }

    #[test]
    fn only_named_signals_and_real_pids() {
        let mut child = sleeper();
        let pidfd = PidFd::open(child.id() as i32).unwrap();
        for bad in [0, -1, 64, 1000] {
            assert_eq!(pidfd.signal(bad).unwrap_err().kind(), io::ErrorKind::InvalidInput, "signal {bad}");
        }
        assert!(child.try_wait().unwrap().is_none(), "a refused signal was sent");
        child.kill().unwrap();
        child.wait().unwrap();
        for bad in [0, -1, -42] {
            assert_eq!(PidFd::open(bad).unwrap_err().kind(), io::ErrorKind::InvalidInput, "pid {bad}");
        }
    }

    /// The kill path cannot reach a recycled pid: in a pid namespace of its own
    /// (where this test can choose the next pid through `ns_last_pid`), a new
    /// process is given the very pid of a reaped one, and the old pidfd still
    /// fails with ESRCH while the new process runs on untouched. Runs
    /// [`recycled_pid_inside_a_pid_namespace`] there.
    #[test]
    fn a_recycled_pid_is_not_signalled() {
        let mut missing = Vec::new();
        if !rustix::process::geteuid().is_root() {
            missing.push("root");
        }
        if !command("unshare").arg("--version").output().is_ok_and(|o| o.status.success()) {
            missing.push("unshare");
        }
        if !missing.is_empty() {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "needs {missing:?} under CI");
            eprintln!("SKIPPED: a_recycled_pid_is_not_signalled needs {missing:?}");
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let out = command("unshare")
            .args(["--pid", "--fork", "--kill-child"])
            .arg(exe)
            .args(["--exact", "runtime::pidfd::tests::recycled_pid_inside_a_pid_namespace", "--ignored"])
            .args(["--nocapture", "--test-threads=1"])
            .env("BERTH_PIDFD_TEST_IN_NAMESPACE", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
        assert!(stdout.contains("1 passed"), "the inner test did not run:\n{stdout}\n{stderr}");
    }

    #[test]
    #[ignore = "run by a_recycled_pid_is_not_signalled as pid 1 of a new pid namespace"]
    fn recycled_pid_inside_a_pid_namespace() {
        assert_eq!(std::env::var("BERTH_PIDFD_TEST_IN_NAMESPACE").as_deref(), Ok("1"));
        assert_eq!(rustix::process::getpid(), Pid::INIT, "must run as pid 1 of its own pid namespace");
        let mut old = sleeper();
        let pid = old.id() as i32;
        let pidfd = PidFd::open(pid).unwrap();
        old.kill().unwrap();
        old.wait().unwrap();
        // The next process in this namespace gets `pid` again.
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let mut new = sleeper();
        assert_eq!(new.id() as i32, pid, "the pid was recycled");
        assert!(is_esrch(pidfd.signal(libc::SIGKILL)), "the old handle reached the new process");
        assert!(new.try_wait().unwrap().is_none(), "the new process was signalled");
        new.kill().unwrap();
        new.wait().unwrap();
    }
}
