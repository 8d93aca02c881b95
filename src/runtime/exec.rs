//! Running another process inside a running container (`runc exec`), with pipes
//! or with a terminal: what the console and one-off commands are built on.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use rustix::termios::Winsize;

use super::RuntimeError;
use super::container::Runtime;
use super::shim::{self, State};
use crate::error::PathError;

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    pub args: Vec<String>,
    /// `KEY=value` entries added to the container's environment (a key already
    /// there takes the new value).
    pub env: Vec<String>,
    /// Working directory; the container's own when `None`.
    pub cwd: Option<String>,
    /// Give the process a pseudo-terminal instead of pipes.
    pub tty: bool,
    /// The terminal's first size, (rows, columns).
    pub size: Option<(u16, u16)>,
}

/// A process started inside a container. Wait for `child` (`runc exec`, which
/// exits with the process's status); dropping this removes the files it used.
///
/// With a terminal, runc runs in a session of its own on a pty berth opens, with
/// that pty as its stdin, stdout, stderr and controlling terminal; runc gives the
/// process a pty of its own inside the container and copies between the two, and
/// on `SIGWINCH` (which the kernel sends when the size of berth's pty changes) it
/// passes the new size on.
pub struct Exec {
    /// Without a terminal its stdin, stdout and stderr are the process's, piped.
    pub child: Child,
    /// With a terminal: the master side of the pty (the process's input and
    /// output, runc's errors too); resize with `TIOCSWINSZ`.
    pub terminal: Option<File>,
    _process_file: ProcessFile,
    /// Where runc writes the host pid of the process it started.
    pid_file: ProcessFile,
}

impl Exec {
    /// The host pid of the process started in the container, once runc has
    /// started it.
    pub fn process_pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pid_file.0).ok()?.trim().parse().ok().filter(|p| *p > 1)
    }

    /// Kills the process started in the container, with its process group when it
    /// leads one (a terminal's session: the shell and what it runs in the
    /// foreground), and runc. Best effort: what is already gone is fine.
    pub fn kill(&mut self) {
        if let Some(pid) = self.process_pid() {
            use rustix::process::{Pid, Signal, kill_process, kill_process_group};
            if let Some(pid) = Pid::from_raw(pid) {
                let _ = kill_process_group(pid, Signal::KILL);
                let _ = kill_process(pid, Signal::KILL);
            }
        }
        let _ = self.child.kill();
    }
}

/// A file of runc's for one exec (the process it reads, the pid it writes);
/// removed when dropped.
struct ProcessFile(PathBuf);

impl Drop for ProcessFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Runtime {
    /// Starts `spec` in the running container `id`, with the init process's user,
    /// capabilities, rlimits and no_new_privs, in its namespaces and cgroup.
    pub fn exec(&self, id: &str, spec: &ExecSpec) -> Result<Exec, RuntimeError> {
        let dir = self.state_dir(id);
        if !dir.exists() {
            return Err(RuntimeError::NotFound(id.into()));
        }
        if shim::status(&dir).state != State::Running {
            return Err(RuntimeError::InvalidSpec(format!("container {id} is not running")));
        }
        if spec.args.is_empty() {
            return Err(RuntimeError::InvalidSpec("exec needs a command".into()));
        }
        if let Some(cwd) = spec.cwd.as_deref().filter(|c| !c.starts_with('/')) {
            return Err(RuntimeError::InvalidSpec(format!("working directory {cwd:?} is not absolute")));
        }
        if let Some(bad) = spec.env.iter().find(|e| e.split_once('=').is_none_or(|(k, _)| k.is_empty())) {
            return Err(RuntimeError::InvalidSpec(format!("environment entry {bad:?} is not KEY=value")));
        }
        let config_path = dir.join("bundle").join("config.json");
        let config = std::fs::read(&config_path).map_err(|e| PathError::new("read", &config_path, e))?;
        let config: serde_json::Value = serde_json::from_slice(&config)
            .map_err(|e| RuntimeError::InvalidSpec(format!("{}: {e}", config_path.display())))?;
        let process = process_json(&config["process"], spec);
        let tag = format!("{:016x}", rand::random::<u64>());
        let process_file = ProcessFile(dir.join(format!("exec-{tag}.json")));
        write_private(&process_file.0, process.to_string().as_bytes())?;
        let pid_file = ProcessFile(dir.join(format!("exec-{tag}.pid")));
        let mut cmd = self.runc.cmd();
        cmd.arg("exec").arg("--process").arg(&process_file.0).arg("--pid-file").arg(&pid_file.0).arg(id);
        let master = if spec.tty {
            match open_pty(spec.size) {
                Ok((master, slave)) => {
                    let io = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
                    match (io(&slave), io(&slave)) {
                        (Ok(a), Ok(b)) => {
                            cmd.stdin(Stdio::from(slave)).stdout(a).stderr(b);
                        }
                        (Err(e), _) | (_, Err(e)) => return Err(pty_error(e)),
                    }
                    // SAFETY: the closure runs in the child between fork and exec,
                    // where only async-signal-safe work is allowed: setsid and
                    // ioctl(TIOCSCTTY) are one raw system call each through rustix,
                    // with no allocation or lock. They make runc a session leader
                    // whose controlling terminal is the pty on its stdin, so it gets
                    // SIGWINCH.
                    unsafe {
                        cmd.pre_exec(|| {
                            rustix::process::setsid()?;
                            rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
                            Ok(())
                        });
                    }
                    Some(master)
                }
                Err(e) => return Err(pty_error(e)),
            }
        } else {
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            None
        };
        let child = cmd.spawn();
        // The slave's copies in `cmd` close with it, so the master reads EIO once
        // runc and the process are gone.
        drop(cmd);
        match child {
            Ok(child) => Ok(Exec { child, terminal: master.map(File::from), _process_file: process_file, pid_file }),
            Err(e) => Err(RuntimeError::Command { command: format!("runc exec {id}"), message: e.to_string() }),
        }
    }
}

fn pty_error(e: std::io::Error) -> RuntimeError {
    RuntimeError::Command { command: "openpty".into(), message: e.to_string() }
}

/// A new pty pair (master, slave), close-on-exec, with the given (rows, columns).
fn open_pty(size: Option<(u16, u16)>) -> std::io::Result<(OwnedFd, OwnedFd)> {
    use rustix::pty::OpenptFlags;
    // What openpty(3) does, minus the termios it leaves alone when given none.
    // Command dup2s the slave onto the child's stdio, which clears CLOEXEC there.
    let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    let master = rustix::pty::openpt(flags)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    // The slave straight from the master (TIOCGPTPEER), not by its /dev/pts name.
    let slave = rustix::pty::ioctl_tiocgptpeer(&master, flags)?;
    let (rows, cols) = size.unwrap_or((24, 80));
    rustix::termios::tcsetwinsize(&slave, Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 })?;
    Ok((master, slave))
}

/// The init process's settings with the command, environment, directory and
/// terminal of `spec`.
fn process_json(init: &serde_json::Value, spec: &ExecSpec) -> serde_json::Value {
    let mut p = init.clone();
    // Sealed values stay with the container's init: a process started beside it
    // does not get them (the daemon that starts it holds no plaintext).
    let mut env: Vec<String> = p["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .filter(|e| !e.split_once('=').is_some_and(|(_, v)| v.starts_with(super::shim::SEALED_ENV_PREFIX)))
        .collect();
    for entry in &spec.env {
        let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        env.push(entry.clone());
    }
    p["args"] = serde_json::json!(spec.args);
    p["env"] = serde_json::json!(env);
    p["terminal"] = serde_json::json!(spec.tty);
    if let Some(cwd) = &spec.cwd {
        p["cwd"] = serde_json::json!(cwd);
    }
    if let Some(o) = p.as_object_mut() {
        o.remove("consoleSize");
    }
    // The terminal's first size is set inside the container before the process
    // starts: runc's own copy of the size from its pty comes a moment later, after
    // the process may already have asked (and seen 0x0).
    if let (true, Some((rows, cols))) = (spec.tty, spec.size) {
        p["consoleSize"] = serde_json::json!({"height": rows, "width": cols});
    }
    p
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| PathError::new("create", path, e))?;
    f.write_all(bytes).map_err(|e| PathError::new("write", path, e))?;
    Ok(())
}
