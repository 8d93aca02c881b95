//! Process trees berth runs itself in a cgroup of their own (builds): limits on the
//! whole tree, its output as lines, and a stop that kills every process in it.
//!
//! The child joins the cgroup between fork and exec (it writes `0` to each
//! hierarchy's `cgroup.procs`, opened beforehand), so not one of its descendants
//! is ever outside it. Stopping kills what the cgroup lists, again and again, until
//! it is empty: a tree that forks while being killed cannot leave a process behind.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

use super::RuntimeError;
use super::cgroups::{Layout, Limits};
use crate::error::PathError;

/// Longest line passed on; the rest of a longer one is cut.
const MAX_LINE: usize = 4096;
/// How long a kill may take to empty the cgroup.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// A cgroup with limits for one job's processes.
#[derive(Debug)]
pub struct Job {
    layout: Layout,
    rel: String,
}

/// One command to run in a job.
#[derive(Debug, Clone)]
pub struct Run {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    /// Set on top of the daemon's environment.
    pub env: Vec<(String, String)>,
}

/// How a command of a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// Stopped from outside: every process of the job was killed.
    Stopped,
}

impl Job {
    /// Creates the cgroup `<berth's subtree>/<group>/<name>` with `limits`.
    pub fn create(layout: &Layout, group: &str, name: &str, limits: &Limits) -> Result<Job, RuntimeError> {
        layout.prepare()?;
        let rel = layout.ensure_job(group, name, limits)?;
        Ok(Job { layout: layout.clone(), rel })
    }

    /// The job cgroup `<berth's subtree>/<group>/<name>` a previous daemon made, as
    /// it is: its limits are not touched (on v1, lifting a memory limit below the
    /// memory+swap one is refused, so re-creating it with other limits can fail).
    pub fn existing(layout: &Layout, group: &str, name: &str) -> Job {
        Job { layout: layout.clone(), rel: format!("{}/{group}/{name}", layout.base) }
    }

    /// The processes in the job now.
    pub fn pids(&self) -> Vec<i32> {
        self.layout.procs(&self.rel)
    }

    /// How many times the kernel's OOM killer has killed a process of the job.
    pub fn oom_kills(&self) -> u64 {
        self.layout.metrics(&self.rel).oom_kills
    }

    /// Kills every process of the job until none is left (or a while has passed);
    /// true when the job is empty.
    pub fn kill_all(&self) -> bool {
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                tracing::warn!(cgroup = self.rel, left = pids.len(), "processes of a job outlived its kill");
                return false;
            }
            for pid in pids {
                // A pid read from the job's own cgroup.procs: it names a process of
                // the job unless that process ended since, and then the kill fails.
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills what is left and removes the cgroup.
    pub fn remove(&self) -> Result<(), RuntimeError> {
        self.kill_all();
        let mut tries = 0;
        loop {
            match self.layout.remove(&self.rel) {
                Ok(()) => return Ok(()),
                // An exiting process keeps its cgroup busy for a moment.
                Err(_) if tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs `run` in the job, sending its output (stdout and stderr) line by line
    /// to `lines`, until it exits or `stop` resolves; then every process of the job
    /// is killed.
    pub async fn run(
        &self,
        run: &Run,
        lines: &mpsc::Sender<String>,
        stop: impl std::future::Future,
    ) -> Result<Exit, RuntimeError> {
        let what = || {
            format!("{} {}", run.program.display(), run.args.first().map(|a| a.to_string_lossy()).unwrap_or_default())
        };
        let mut procs: Vec<OwnedFd> = Vec::new();
        for f in self.layout.procs_files(&self.rel) {
            let fd = rustix::fs::open(
                &f,
                rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| PathError::new("open", &f, e.into()))?;
            procs.push(fd);
        }
        let mut cmd = super::runc::command(&run.program);
        cmd.args(&run.args)
            .current_dir(&run.cwd)
            .envs(run.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe work is allowed: one write(2) per file descriptor opened
        // before the fork, through rustix, with no allocation or lock. It moves the
        // child into the job's cgroup before it runs anything, so every descendant
        // starts inside.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &procs {
                    rustix::io::write(fd.as_fd(), b"0")?;
                }
                Ok(())
            });
        }
        let mut child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| RuntimeError::Command { command: what(), message: e.to_string() })?;
        let out = child.stdout.take().map(|o| tokio::spawn(forward(o, lines.clone())));
        let err = child.stderr.take().map(|e| tokio::spawn(forward(e, lines.clone())));
        let status = tokio::select! {
            s = child.wait() => Some(s.map_err(|e| RuntimeError::Command { command: what(), message: e.to_string() })?),
            _ = stop => None,
        };
        let exit = match status {
            Some(s) => {
                use std::os::unix::process::ExitStatusExt;
                match (s.code(), s.signal()) {
                    (Some(c), _) => Exit::Code(c),
                    (None, Some(sig)) => Exit::Signal(sig),
                    (None, None) => Exit::Signal(0),
                }
            }
            None => Exit::Stopped,
        };
        // Whatever the command left running (or all of it, when stopped) goes now.
        let me = Job { layout: self.layout.clone(), rel: self.rel.clone() };
        let _ = tokio::task::spawn_blocking(move || me.kill_all()).await;
        let _ = child.wait().await;
        for t in [out, err].into_iter().flatten() {
            let _ = t.await;
        }
        Ok(exit)
    }
}

/// Sends each line read from `from` (lossy UTF-8, cut at [`MAX_LINE`]) to `to`.
async fn forward(from: impl AsyncRead + Unpin, to: mpsc::Sender<String>) {
    let mut reader = BufReader::new(from);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let end = buf.len().min(MAX_LINE);
                let line = String::from_utf8_lossy(&buf[..end]).trim_end().to_string();
                if to.send(line).await.is_err() {
                    // Nobody reads any more; keep draining so the writer never blocks.
                    continue;
                }
            }
        }
    }
}

/// The first line of `program args…`'s output, when it runs and succeeds (a
/// version probe); `None` otherwise.
pub fn first_line(program: &Path, args: &[&str]) -> Option<String> {
    let out = super::runc::command(program).args(args).stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).lines().next().map(|l| l.trim().to_string())
}
