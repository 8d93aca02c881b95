//! `berth shim`: one small supervisor per container.
//!
//! The daemon starts it in its own session; it makes itself a child subreaper and
//! runs `runc run --detach` with the container's stdout and stderr on pipes it owns.
//! When runc exits, the container's init is reparented to the
//! shim, which reaps it and so learns its exit status. Meanwhile it writes the
//! output as JSON lines with timestamps and stream tags into size-capped, rotated
//! log files, and answers `status` and `kill <signal>` on a unix socket (a kill goes
//! through a pidfd taken before the first reap, so it can never reach a process that
//! was given the init's pid after it; see adr/011). When the
//! container exits it records the exit code, signal and whether the kernel OOM-killed
//! it in `exit.json` (written atomically), has runc delete the container (and with it
//! the cgroup), and exits.
//!
//! It uses no async runtime: a few threads and blocking calls keep it small. Because
//! it holds everything that matters, containers and their logs and exit codes
//! survive the daemon being killed or restarted; the daemon re-adopts them by
//! talking to the socket, or reading `exit.json` when the shim is gone.
//!
//! Files in the container's state directory: `shim.sock`, `shim.log` (the shim's
//! own messages), `started.json`, `exit.json`, `container.log` (+ `.1` … rotations).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use rustix::io::Errno;
use rustix::process::{Pid, WaitOptions};

use super::RuntimeError;
use super::pidfd::PidFd;
use super::runc::Runc;
use crate::error::PathError;

/// Marks an environment value in a bundle's `config.json` as sealed with the host
/// key (`KEY=<prefix>age:…`). A NUL cannot be part of a real environment value, so
/// the mark cannot collide with one; the shim opens such values into a copy of the
/// config on the runtime dir for runc, so plaintext never lands in the state dir.
pub const SEALED_ENV_PREFIX: &str = "\u{0}sealed:";

/// Everything the shim needs, passed as flags by the daemon.
#[derive(Debug, Clone)]
pub struct ShimArgs {
    pub id: String,
    pub bundle: PathBuf,
    pub runc_root: PathBuf,
    pub state_dir: PathBuf,
    /// `memory.events` (v2) or `memory.oom_control` (v1) of the container's cgroup.
    pub oom_file: Option<PathBuf>,
    pub log_max_bytes: u64,
    pub log_files: u32,
    /// The host key that opens sealed environment values (see [`SEALED_ENV_PREFIX`]).
    pub host_key: Option<PathBuf>,
}

impl ShimArgs {
    /// The command line the daemon runs (after the binary and `shim`).
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec![
            "--id".into(),
            self.id.clone().into(),
            "--bundle".into(),
            self.bundle.clone().into(),
            "--runc-root".into(),
            self.runc_root.clone().into(),
            "--state-dir".into(),
            self.state_dir.clone().into(),
            "--log-max-bytes".into(),
            self.log_max_bytes.to_string().into(),
            "--log-files".into(),
            self.log_files.to_string().into(),
        ];
        if let Some(o) = &self.oom_file {
            a.push("--oom-file".into());
            a.push(o.clone().into());
        }
        if let Some(k) = &self.host_key {
            a.push("--host-key".into());
            a.push(k.clone().into());
        }
        a
    }

    /// Where the config with opened secrets goes while runc reads it: beside runc's
    /// root, on the runtime dir (a tmpfs in production), never in the state dir.
    fn open_bundle_dir(&self) -> PathBuf {
        self.runc_root.with_file_name("bundles").join(&self.id)
    }
}

/// Written once the container runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Started {
    pub pid: i32,
    pub started_at: String,
}

/// How a container ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Exit {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// The kernel's OOM killer ended it.
    pub oom_killed: bool,
    pub finished_at: String,
    /// Set when the container never started (runc run failed).
    pub error: Option<String>,
}

/// What the socket (or the files, once the shim is gone) says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub state: State,
    pub pid: Option<i32>,
    pub started_at: Option<String>,
    pub exit: Option<Exit>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Created,
    Running,
    Exited,
    /// Neither a live shim nor a recorded exit: the shim died (or the host rebooted).
    Lost,
}

fn now() -> String {
    crate::ids::now_rfc3339()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PathError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| PathError::new("create", &tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| PathError::new("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| PathError::new("rename", path, e))
}

/// Atomic for readers (rename) but not flushed to disk.
fn write_renamed(path: &Path, bytes: &[u8]) -> Result<(), PathError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| PathError::new("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| PathError::new("rename", path, e))
}

fn oom_kills(path: Option<&Path>) -> u64 {
    let Some(p) = path else { return 0 };
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0)
}

/// Size-capped, rotated JSON-lines log.
struct LogWriter {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    max_bytes: u64,
    files: u32,
}

impl LogWriter {
    fn open(path: PathBuf, max_bytes: u64, files: u32) -> std::io::Result<LogWriter> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter { path, file, size, max_bytes: max_bytes.max(4096), files: files.max(1) })
    }

    fn line(&mut self, stream: &str, text: &[u8]) {
        let entry = serde_json::json!({"time": now(), "stream": stream, "log": String::from_utf8_lossy(text)});
        let mut bytes = entry.to_string().into_bytes();
        bytes.push(b'\n');
        if self.size + bytes.len() as u64 > self.max_bytes {
            self.rotate();
        }
        if self.file.write_all(&bytes).is_ok() {
            self.size += bytes.len() as u64;
        }
    }

    fn rotate(&mut self) {
        for i in (1..self.files).rev() {
            let from = rotated(&self.path, i);
            let _ = std::fs::rename(&from, rotated(&self.path, i + 1));
        }
        let _ = std::fs::rename(&self.path, rotated(&self.path, 1));
        if let Ok(f) = std::fs::OpenOptions::new().create(true).append(true).truncate(false).open(&self.path) {
            self.file = f;
            self.size = 0;
        }
        let _ = std::fs::remove_file(rotated(&self.path, self.files + 1));
    }
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Longest line kept whole; longer output is split.
const MAX_LINE: usize = 16 * 1024;

fn pump(
    mut from: impl Read + Send + 'static,
    stream: &'static str,
    log: Arc<Mutex<LogWriter>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(64 * 1024, &mut from);
        let mut line = Vec::with_capacity(1024);
        loop {
            line.clear();
            let n = match (&mut reader).take(MAX_LINE as u64).read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let text = line.strip_suffix(b"\n").unwrap_or(&line[..n]);
            log.lock().unwrap_or_else(|e| e.into_inner()).line(stream, text);
        }
    })
}

/// Runs the shim; returns the process exit code.
pub fn run(args: ShimArgs) -> i32 {
    match supervise(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("shim {}: {e}", args.id);
            let exit = Exit {
                exit_code: None,
                signal: None,
                oom_killed: false,
                finished_at: now(),
                error: Some(e.to_string()),
            };
            let _ = write_atomic(&args.state_dir.join("exit.json"), &serde_json::to_vec(&exit).unwrap_or_default());
            1
        }
    }
}

fn supervise(a: &ShimArgs) -> Result<(), RuntimeError> {
    let shim_err = |m: String| RuntimeError::Shim { id: a.id.clone(), message: m };
    // Orphans in this subtree, the container's init first, become this process's
    // children. (The argument is a flag; any pid turns it on.)
    rustix::process::set_child_subreaper(Some(Pid::INIT)).map_err(|e| shim_err(format!("become a subreaper: {e}")))?;
    let log = LogWriter::open(a.state_dir.join("container.log"), a.log_max_bytes, a.log_files)
        .map_err(|e| PathError::new("open", a.state_dir.join("container.log"), e))?;
    let log = Arc::new(Mutex::new(log));
    let (out_r, out_w) = std::io::pipe().map_err(|e| shim_err(format!("pipe: {e}")))?;
    let (err_r, err_w) = std::io::pipe().map_err(|e| shim_err(format!("pipe: {e}")))?;
    let pumps = [pump(out_r, "stdout", log.clone()), pump(err_r, "stderr", log.clone())];
    let runc = Runc::new(a.runc_root.clone());
    let pid_file = a.state_dir.join("init.pid");
    let oom_before = oom_kills(a.oom_file.as_deref());
    let opened = open_sealed_env(a)?;
    let bundle = opened.as_deref().unwrap_or(&a.bundle);
    // One `runc run --detach` creates and starts the container (a separate create and
    // start would cost a second runc process on every start); the container's init
    // is then reparented to this shim.
    let created = runc
        .cmd()
        .arg("run")
        .arg("--detach")
        .arg("--bundle")
        .arg(bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&a.id)
        .stdin(std::process::Stdio::null())
        .stdout(out_w)
        .stderr(err_w)
        .status();
    if let Some(dir) = &opened {
        // runc has read it; the plaintext goes at once.
        let _ = std::fs::remove_dir_all(dir);
    }
    let created = created.map_err(|e| shim_err(format!("run runc run: {e}")))?;
    if !created.success() {
        // runc's own error went to the stderr pipe; let the pump finish writing it.
        for p in pumps {
            let _ = p.join();
        }
        let tail = tail_lines(&a.state_dir.join("container.log"), 5).join(" | ");
        return Err(shim_err(format!("runc run failed ({created}): {tail}")));
    }
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| shim_err("runc run wrote no pid".into()))?;
    // Taken before the first wait below: nothing has reaped the init yet (runc does
    // not, and it is this shim's child now), so `pid` is still the container's init
    // and the handle refers to it, never to a later process given the same pid.
    let init = match PidFd::open(pid) {
        Ok(p) => p,
        Err(e) => {
            let _ = runc.delete(&a.id);
            return Err(shim_err(format!("pidfd_open {pid}: {e} (berth needs Linux 5.3 or later)")));
        }
    };
    let started = Started { pid, started_at: now() };
    let exit: Arc<Mutex<Option<Exit>>> = Arc::new(Mutex::new(None));
    serve_socket(a, started.clone(), exit.clone(), init)?;
    // Not fsynced: after a power cut the container is gone anyway; exit.json is the
    // record that must last.
    write_renamed(&a.state_dir.join("started.json"), &serde_json::to_vec(&started).unwrap_or_default())?;
    // Reap until the container's init is gone.
    let recorded = loop {
        match rustix::process::wait(WaitOptions::empty()) {
            Ok(Some((p, status))) if p.as_raw_nonzero().get() == pid => break Some(status),
            Ok(_) => {}
            Err(Errno::CHILD) => break None,
            // EINTR: wait again.
            Err(_) => {}
        }
    };
    let oom_after = oom_kills(a.oom_file.as_deref());
    let (exit_code, signal) = match recorded {
        Some(s) if s.exited() => (s.exit_status(), None),
        Some(s) if s.signaled() => (None, s.terminating_signal()),
        _ => (None, None),
    };
    let result = Exit {
        exit_code,
        signal,
        oom_killed: oom_after > oom_before,
        finished_at: now(),
        error: recorded.is_none().then(|| "the container's init could not be reaped".to_string()),
    };
    for p in pumps {
        let _ = p.join();
    }
    write_atomic(&a.state_dir.join("exit.json"), &serde_json::to_vec(&result).unwrap_or_default())?;
    *exit.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
    if let Err(e) = runc.delete(&a.id) {
        eprintln!("shim {}: {e}", a.id);
    }
    let _ = std::fs::remove_file(a.state_dir.join("shim.sock"));
    Ok(())
}

/// When the bundle's config holds sealed environment values, writes a copy with
/// them opened (by the host key) to [`ShimArgs::open_bundle_dir`] and returns that
/// bundle; `None` when there is nothing to open.
fn open_sealed_env(a: &ShimArgs) -> Result<Option<PathBuf>, RuntimeError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let shim_err = |m: String| RuntimeError::Shim { id: a.id.clone(), message: m };
    let path = a.bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| PathError::new("read", &path, e))?;
    let marker = serde_json::to_string(SEALED_ENV_PREFIX).unwrap_or_default();
    let marker = marker.trim_matches('"');
    if !text.windows(marker.len()).any(|w| w == marker.as_bytes()) {
        return Ok(None);
    }
    let key = a.host_key.as_deref().filter(|k| k.is_file()).ok_or_else(|| {
        shim_err("the container's environment has sealed values and the host key that opens them is missing".into())
    })?;
    let sealer = crate::secrets::Sealer::load_or_create(key.parent().unwrap_or(Path::new("/")))
        .map_err(|e| shim_err(format!("host key: {e}")))?;
    let mut config: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| shim_err(format!("{}: {e}", path.display())))?;
    if let Some(env) = config["process"]["env"].as_array_mut() {
        for entry in env.iter_mut() {
            let Some((k, v)) = entry.as_str().and_then(|e| e.split_once('=')) else { continue };
            let Some(sealed) = v.strip_prefix(SEALED_ENV_PREFIX) else { continue };
            let plain = sealer
                .open_string(sealed)
                .map_err(|_| shim_err(format!("the sealed value of {k} cannot be opened with this host's key")))?;
            *entry = serde_json::Value::String(format!("{k}={}", plain.as_str()));
        }
    }
    let dir = a.open_bundle_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| PathError::new("create", &dir, e))?;
    let out = dir.join("config.json");
    let bytes = serde_json::to_vec(&config).map_err(|e| shim_err(e.to_string()))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&out)
        .and_then(|mut f| f.write_all(&bytes))
        .map_err(|e| PathError::new("write", &out, e))?;
    Ok(Some(dir))
}

fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["log"].as_str().map(str::to_string))
                .unwrap_or_default()
        })
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Answers `status` and `kill <signal>` on `shim.sock`. A kill goes through
/// `init`'s pidfd: once the reaper has reaped the container's init it fails with
/// ESRCH, whatever process holds that pid by then.
fn serve_socket(
    a: &ShimArgs,
    started: Started,
    exit: Arc<Mutex<Option<Exit>>>,
    init: PidFd,
) -> Result<(), RuntimeError> {
    let path = a.state_dir.join("shim.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| PathError::new("bind", &path, e))?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut line = String::new();
            if BufReader::new(&conn).read_line(&mut line).is_err() {
                continue;
            }
            let reply = match line.trim().split_once(' ').unwrap_or((line.trim(), "")) {
                ("status", _) => {
                    let exit = exit.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let state = if exit.is_some() { State::Exited } else { State::Running };
                    serde_json::to_string(&Status {
                        state,
                        pid: Some(started.pid),
                        started_at: Some(started.started_at.clone()),
                        exit,
                    })
                    .unwrap_or_default()
                }
                ("kill", sig) => match sig.trim().parse::<i32>().map(|s| init.signal(s)) {
                    Ok(Ok(())) => "ok".to_string(),
                    Ok(Err(e)) => format!("error {e}"),
                    Err(_) => "error bad signal".to_string(),
                },
                _ => "error unknown command".to_string(),
            };
            let _ = conn.write_all(reply.as_bytes());
            let _ = conn.write_all(b"\n");
        }
    });
    Ok(())
}

/// Asks a shim something; `None` when no shim answers.
fn ask(state_dir: &Path, request: &str) -> Option<String> {
    let mut s = UnixStream::connect(state_dir.join("shim.sock")).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("{request}\n").as_bytes()).ok()?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).ok()?;
    Some(reply.trim().to_string())
}

/// The container's status: from the live shim, else from the files it left.
pub fn status(state_dir: &Path) -> Status {
    if let Some(s) = ask(state_dir, "status").and_then(|r| serde_json::from_str::<Status>(&r).ok()) {
        return s;
    }
    let read = |f: &str| std::fs::read(state_dir.join(f)).ok();
    let started: Option<Started> = read("started.json").and_then(|b| serde_json::from_slice(&b).ok());
    let exit: Option<Exit> = read("exit.json").and_then(|b| serde_json::from_slice(&b).ok());
    let state = match (&started, &exit) {
        (_, Some(_)) => State::Exited,
        (Some(_), None) => State::Lost,
        (None, None) => State::Created,
    };
    Status { state, pid: started.as_ref().map(|s| s.pid), started_at: started.map(|s| s.started_at), exit }
}

/// Signals the container through its shim.
pub fn kill(state_dir: &Path, signal: i32) -> Result<(), String> {
    match ask(state_dir, &format!("kill {signal}")) {
        Some(r) if r == "ok" => Ok(()),
        Some(r) => Err(r),
        None => Err("no shim answers".into()),
    }
}

/// One line of a container's log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct LogLine {
    pub time: String,
    pub stream: String,
    pub log: String,
}

/// The last `tail` lines across the rotated files, oldest first.
pub fn logs(state_dir: &Path, tail: usize, files: u32) -> Vec<LogLine> {
    let base = state_dir.join("container.log");
    let mut out: Vec<LogLine> = Vec::new();
    let mut paths: Vec<PathBuf> = (1..=files).rev().map(|n| rotated(&base, n)).collect();
    paths.push(base);
    for p in paths {
        let Ok(text) = std::fs::read_to_string(&p) else { continue };
        out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
    }
    let skip = out.len().saturating_sub(tail);
    out.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_within_the_cap() {
        let dir = std::env::temp_dir().join(crate::ids::new_id("logtest"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = LogWriter::open(dir.join("container.log"), 4096, 2).unwrap();
        for i in 0..500 {
            w.line(if i % 2 == 0 { "stdout" } else { "stderr" }, format!("line {i}").as_bytes());
        }
        let total: u64 = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        assert!(total <= 3 * 4096, "three files at most of 4 KiB: {total}");
        assert!(!dir.join("container.log.3").exists());
        let tail = logs(&dir, 3, 2);
        assert_eq!(tail.iter().map(|l| l.log.as_str()).collect::<Vec<_>>(), vec!["line 497", "line 498", "line 499"]);
        assert_eq!(tail[2].stream, "stderr");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The socket's `kill` goes through the pidfd: once the init is reaped it
    /// answers an error instead of signalling whatever holds the pid next.
    #[test]
    fn kill_after_the_init_is_reaped_reaches_nothing() {
        let dir = std::env::temp_dir().join(crate::ids::new_id("shimkill"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child =
            super::super::runc::command("sleep").arg("1000").stdin(std::process::Stdio::null()).spawn().unwrap();
        let pid = child.id() as i32;
        let a = ShimArgs {
            id: "t".into(),
            bundle: dir.clone(),
            runc_root: dir.clone(),
            state_dir: dir.clone(),
            oom_file: None,
            log_max_bytes: 4096,
            log_files: 1,
            host_key: None,
        };
        let started = Started { pid, started_at: "t".into() };
        serve_socket(&a, started, Arc::new(Mutex::new(None)), PidFd::open(pid).unwrap()).unwrap();
        assert_eq!(kill(&dir, 1000).unwrap_err(), "error 1000 is not a signal berth sends");
        assert!(child.try_wait().unwrap().is_none());
        kill(&dir, libc::SIGTERM).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGTERM));
        let err = kill(&dir, libc::SIGKILL).unwrap_err();
        assert!(err.contains("os error 3"), "ESRCH once reaped: {err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn status_from_files_when_no_shim_answers() {
        let dir = std::env::temp_dir().join(crate::ids::new_id("shimtest"));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(status(&dir).state, State::Created);
        write_atomic(&dir.join("started.json"), br#"{"pid":42,"started_at":"t"}"#).unwrap();
        assert_eq!(status(&dir).state, State::Lost);
        let exit = Exit { exit_code: Some(3), signal: None, oom_killed: false, finished_at: "t".into(), error: None };
        write_atomic(&dir.join("exit.json"), &serde_json::to_vec(&exit).unwrap()).unwrap();
        let s = status(&dir);
        assert_eq!((s.state, s.pid, s.exit.unwrap().exit_code), (State::Exited, Some(42), Some(3)));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
