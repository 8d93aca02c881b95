//! Running a host tool (the system `git`, and the `ssh` it starts) for a build:
//! a clean environment, a process group of its own so that stopping it stops
//! everything it started, its output passed on line by line, a deadline and a
//! cancel signal.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};

use super::RuntimeError;

/// The `PATH` a tool runs with: the environment is cleared, so the daemon's own
/// `PATH` (which a unit file or a shell may set to anything) is not inherited.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Most of a tool's standard output kept for the caller (a commit id, a ref list).
const STDOUT_CAP: usize = 64 << 10;
/// Lines of standard error kept for an error message.
const STDERR_TAIL: usize = 20;
/// Longest line passed on; longer ones are cut.
const LINE_CAP: usize = 4096;

/// A program, its arguments and its whole environment (nothing is inherited but
/// a fixed `PATH`).
#[derive(Debug, Clone, Default)]
pub struct Tool {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
}

impl Tool {
    pub fn new(program: impl Into<OsString>) -> Tool {
        Tool { program: program.into(), ..Tool::default() }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Tool {
        self.args.push(a.into());
        self
    }

    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Tool {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Tool {
        self.cwd = Some(dir.into());
        self
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The tool exited by itself: its exit code (`None` when a signal ended it),
    /// what it printed on standard output (capped) and the last lines of its
    /// standard error.
    Exited { code: Option<i32>, stdout: String, stderr: Vec<String> },
    /// The cancel signal came first; the whole process group was killed.
    Cancelled,
    /// The deadline passed first; the whole process group was killed.
    TimedOut,
}

/// Runs `tool` in a process group of its own, with stdin closed. Every line it
/// prints on standard error (and on standard output when `log_stdout`) goes to
/// `log` as it comes; a full or closed `log` never blocks the tool. A cancel
/// (`*cancel` turning true) or the deadline kills the group (the tool and
/// whatever it started, such as ssh) and waits for the tool.
pub async fn run(
    tool: &Tool,
    log: Option<&mpsc::Sender<String>>,
    log_stdout: bool,
    deadline: Duration,
    cancel: &mut watch::Receiver<bool>,
) -> Result<Ended, RuntimeError> {
    let what = tool.program.to_string_lossy().into_owned();
    let mut std_cmd = super::runc::command(&tool.program);
    std_cmd
        .args(&tool.args)
        .env_clear()
        .env("PATH", PATH)
        .envs(tool.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(d) = &tool.cwd {
        std_cmd.current_dir(d);
    }
    let mut cmd = tokio::process::Command::from(std_cmd);
    cmd.kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| RuntimeError::Command { command: what.clone(), message: format!("cannot start: {e}") })?;
    let group = child.id().and_then(|id| i32::try_from(id).ok()).and_then(rustix::process::Pid::from_raw);
    // Declared after `child`, so dropped first: if this future is dropped midway
    // (its task aborted), the group dies while its leader is not yet reaped, so the
    // group id cannot have been reused.
    let guard = GroupGuard(group);
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(RuntimeError::Command { command: what, message: "no pipes".into() });
    };
    let out_log = if log_stdout { log.cloned() } else { None };
    let stdout = tokio::spawn(pump(out, out_log, STDOUT_CAP, None));
    let stderr = tokio::spawn(pump(err, log.cloned(), 0, Some(STDERR_TAIL)));

    let stop = async {
        loop {
            if *cancel.borrow_and_update() {
                return Ended::Cancelled;
            }
            if cancel.changed().await.is_err() {
                // Nobody can cancel any more: only the deadline is left.
                std::future::pending::<()>().await;
            }
        }
    };
    let ended = tokio::select! {
        status = child.wait() => {
            // Whatever the tool left running in its group goes too. The leader is
            // reaped by now, but a group id is not handed out again while the group
            // has members, and an empty group just makes the kill fail.
            drop(guard);
            let status = status.map_err(|e| RuntimeError::Command { command: what.clone(), message: e.to_string() })?;
            // Something the tool left behind may still hold the pipes open: its
            // output is not waited for past a grace period.
            let (out, _) = drain(stdout).await;
            let (_, tail) = drain(stderr).await;
            return Ok(Ended::Exited { code: status.code(), stdout: out, stderr: tail });
        }
        e = stop => e,
        () = tokio::time::sleep(deadline) => Ended::TimedOut,
    };
    drop(guard);
    let _ = child.kill().await;
    stdout.abort();
    stderr.abort();
    Ok(ended)
}

/// Most a finished tool's output is waited for.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// The result of a pump, or what it has not got when the grace period is over.
async fn drain(pump: tokio::task::JoinHandle<(String, Vec<String>)>) -> (String, Vec<String>) {
    let abort = pump.abort_handle();
    match tokio::time::timeout(DRAIN_GRACE, pump).await {
        Ok(r) => r.unwrap_or_default(),
        Err(_) => {
            abort.abort();
            Default::default()
        }
    }
}

/// Kills a process group when dropped.
struct GroupGuard(Option<rustix::process::Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Reads `from` to its end, splitting lines at `\n` and `\r` (progress output),
/// sending each non-empty line to `log`; keeps up to `cap` bytes of the whole text
/// and, with `tail`, that many last lines.
async fn pump<R: AsyncRead + Unpin>(
    mut from: R,
    log: Option<mpsc::Sender<String>>,
    cap: usize,
    tail: Option<usize>,
) -> (String, Vec<String>) {
    let mut kept = Vec::new();
    let mut last = std::collections::VecDeque::new();
    let mut line = Vec::new();
    let mut buf = [0u8; 8192];
    let mut emit = |line: &mut Vec<u8>| {
        let text = String::from_utf8_lossy(line).trim_end().to_string();
        line.clear();
        if text.is_empty() {
            return;
        }
        if let Some(n) = tail {
            if last.len() == n {
                last.pop_front();
            }
            last.push_back(text.clone());
        }
        if let Some(tx) = &log {
            let _ = tx.try_send(text);
        }
    };
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if kept.len() < cap {
            let room = cap - kept.len();
            kept.extend_from_slice(&chunk[..room.min(n)]);
        }
        for &b in chunk {
            if b == b'\n' || b == b'\r' {
                emit(&mut line);
            } else if line.len() < LINE_CAP {
                line.push(b);
            }
        }
    }
    emit(&mut line);
    (String::from_utf8_lossy(&kept).into_owned(), last.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> (watch::Sender<bool>, watch::Receiver<bool>) {
        watch::channel(false)
    }

    #[tokio::test]
    async fn output_is_split_into_lines_and_the_environment_is_clean() {
        let (tx, mut rx) = mpsc::channel(64);
        let (_keep, mut cancel) = never();
        let tool = Tool::new("sh")
            .arg("-c")
            .arg("echo out; printf 'one\\rtwo\\n' >&2; echo \"home=$HOME x=$X\"; exit 3")
            .env("X", "y");
        let ended = run(&tool, Some(&tx), false, Duration::from_secs(30), &mut cancel).await.unwrap();
        let Ended::Exited { code, stdout, stderr } = ended else { panic!("{ended:?}") };
        assert_eq!(code, Some(3));
        assert_eq!(stdout, "out\nhome= x=y\n");
        assert_eq!(stderr, vec!["one".to_string(), "two".to_string()]);
        drop(tx);
        let mut lines = Vec::new();
        while let Some(l) = rx.recv().await {
            lines.push(l);
        }
        assert_eq!(lines, vec!["one", "two"]);
    }

    #[tokio::test]
    async fn cancel_kills_the_whole_group() {
        let dir = std::env::temp_dir().join(format!("berth-group-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("child.pid");
        // The tool starts a grandchild that would outlive a kill of the tool alone.
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let tool = Tool::new("sh").arg("-c").arg(script);
        let (tx, mut cancel) = never();
        let run = tokio::spawn(async move { run(&tool, None, false, Duration::from_secs(60), &mut cancel).await });
        let mut grandchild = None;
        for _ in 0..100 {
            if let Ok(t) = std::fs::read_to_string(&pidfile) {
                if let Ok(p) = t.trim().parse::<i32>() {
                    grandchild = Some(p);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let grandchild = grandchild.expect("grandchild started");
        tx.send(true).unwrap();
        assert_eq!(run.await.unwrap().unwrap(), Ended::Cancelled);
        let gone = async {
            loop {
                let stat = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
                // Gone, or a zombie waiting for its new parent to reap it.
                if stat.is_empty() || stat.split_whitespace().nth(2) == Some("Z") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), gone).await.expect("the grandchild was killed");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn dropping_the_run_kills_the_whole_group() {
        let dir = std::env::temp_dir().join(format!("berth-group-drop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("child.pid");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let tool = Tool::new("sh").arg("-c").arg(script);
        let (_keep, mut cancel) = never();
        let task = tokio::spawn(async move { run(&tool, None, false, Duration::from_secs(60), &mut cancel).await });
        let mut grandchild = None;
        for _ in 0..100 {
            if let Some(p) = std::fs::read_to_string(&pidfile).ok().and_then(|t| t.trim().parse::<i32>().ok()) {
                grandchild = Some(p);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let grandchild = grandchild.expect("grandchild started");
        task.abort();
        let _ = task.await;
        let gone = async {
            loop {
                let stat = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
                if stat.is_empty() || stat.split_whitespace().nth(2) == Some("Z") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), gone).await.expect("the grandchild was killed");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn what_a_finished_tool_left_running_is_stopped() {
        let (_keep, mut cancel) = never();
        // The background sleep holds standard error open after sh exits.
        let tool = Tool::new("sh").arg("-c").arg("sleep 300 >&2 & echo $!");
        let t = std::time::Instant::now();
        let ended = run(&tool, None, false, Duration::from_secs(60), &mut cancel).await.unwrap();
        let Ended::Exited { code: Some(0), stdout, .. } = ended else { panic!("{ended:?}") };
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
        let pid: i32 = stdout.trim().parse().unwrap();
        let gone = async {
            loop {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                if stat.is_empty() || stat.split_whitespace().nth(2) == Some("Z") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), gone).await.expect("the leftover sleep was killed");
    }

    #[tokio::test]
    async fn the_deadline_stops_a_tool() {
        let (_keep, mut cancel) = never();
        let tool = Tool::new("sleep").arg("300");
        let ended = run(&tool, None, false, Duration::from_millis(200), &mut cancel).await.unwrap();
        assert_eq!(ended, Ended::TimedOut);
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error() {
        let (_keep, mut cancel) = never();
        let e = run(&Tool::new("/nonexistent/tool"), None, false, Duration::from_secs(5), &mut cancel).await;
        assert!(e.unwrap_err().to_string().contains("cannot start"));
    }
}
