//! The engine: decides and records what runs. It is the only caller of `runtime`
//! and `store` together; the API (later: services and deployments) asks it to
//! create, stop, delete and inspect replicas.
//!
//! - Every replica is a row in SQLite (`store::replicas`) plus a container in the
//!   runtime, supervised by its own `berth shim`.
//! - `reconcile` runs at start-up: replicas whose shim still answers are re-adopted
//!   as they are; those that exited while the daemon was away get their exit
//!   recorded (and their restart policy applied on the next tick); a replica whose
//!   shim vanished without an exit record is marked failed; container state on disk
//!   with no row is removed.
//! - `tick` runs every second: it notices exits and applies the restart policy
//!   (`no`, `on-failure`, `always`) with exponential backoff (1 s doubling to 5 min)
//!   and crash-loop detection (5 restarts within 5 minutes stops restarting).
//!
//! Limits: images are given as layer snapshot directories or a plain rootfs; the
//! image store and network attachment are wired in by the callers that have them.

pub mod image;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::runtime::RuntimeError;
use crate::runtime::cgroups::{Limits, Metrics};
use crate::runtime::container::Runtime;
use crate::runtime::shim::{LogLine, State};
use crate::runtime::spec::ContainerSpec;
use crate::store::replicas::{self, Replica};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("replica {0} not found")]
    NotFound(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("engine task: {0}")]
    Task(String),
    #[error("image: {0}")]
    Image(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    No,
    #[default]
    OnFailure,
    Always,
}

/// Where a replica's filesystem comes from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum RootSource {
    /// Layer snapshot directories, topmost first, overlaid with a private upper dir.
    Layers(Vec<PathBuf>),
    /// A plain directory used as it is.
    Rootfs(PathBuf),
}

/// Everything needed to (re)create a replica; stored with it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplicaConfig {
    pub project_id: String,
    pub service: String,
    pub root: RootSource,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub memory_bytes: Option<i64>,
    pub cpus: Option<f64>,
    pub pids: Option<i64>,
    pub restart: RestartPolicy,
    pub netns: Option<PathBuf>,
    pub hosts_file: Option<PathBuf>,
    pub resolv_file: Option<PathBuf>,
    pub volumes: Vec<(PathBuf, String)>,
}

const BACKOFF_START: i64 = 1;
const BACKOFF_MAX: i64 = 300;
const CRASH_WINDOW: i64 = 300;
const CRASH_RESTARTS: i64 = 5;

pub struct Engine {
    store: Store,
    runtime: Arc<Runtime>,
    /// The first restart delay in seconds (doubling after); tests set 0.
    pub backoff_start_s: i64,
}

impl Engine {
    pub fn new(store: Store, runtime: Arc<Runtime>) -> Self {
        Self { store, runtime, backoff_start_s: BACKOFF_START }
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Runtime) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        let rt = self.runtime.clone();
        tokio::task::spawn_blocking(move || f(&rt)).await.map_err(|e| EngineError::Task(e.to_string()))
    }

    /// Creates and starts a replica. A replica that cannot start leaves nothing in
    /// the runtime and is recorded as `failed` with the reason.
    pub async fn create(&self, cfg: ReplicaConfig) -> Result<Replica, EngineError> {
        let mut r = Replica {
            id: crate::ids::new_id("rep"),
            project_id: cfg.project_id.clone(),
            service: cfg.service.clone(),
            state: "starting".into(),
            pid: None,
            restarts: 0,
            exit_code: None,
            signal: None,
            oom_killed: false,
            error: None,
            created_at: crate::ids::now_rfc3339(),
            started_at: None,
            finished_at: None,
            next_restart_at: None,
            window_start: None,
            window_restarts: 0,
        };
        let json = serde_json::to_string(&cfg).map_err(|e| EngineError::Task(e.to_string()))?;
        let row = r.clone();
        self.store.write(move |c| replicas::insert(c, &row, &json)).await?;
        let spec = container_spec(&r.id, &cfg);
        let lowers = match &cfg.root {
            RootSource::Layers(l) => l.clone(),
            RootSource::Rootfs(_) => Vec::new(),
        };
        let project = cfg.project_id.clone();
        let started = self.blocking(move |rt| rt.create(&project, &spec, &lowers)).await?;
        match started {
            Ok(s) => {
                r.state = "running".into();
                r.pid = Some(s.pid);
                r.started_at = Some(s.started_at);
            }
            Err(e) => {
                r.state = "failed".into();
                r.error = Some(e.to_string());
            }
        }
        self.save(&r).await?;
        Ok(r)
    }

    async fn save(&self, r: &Replica) -> Result<(), EngineError> {
        let row = r.clone();
        Ok(self.store.write(move |c| replicas::update(c, &row)).await?)
    }

    pub async fn get(&self, id: &str) -> Result<Replica, EngineError> {
        let lookup = id.to_string();
        self.store.read(move |c| replicas::get(c, &lookup)).await?.ok_or_else(|| EngineError::NotFound(id.into()))
    }

    pub async fn list(&self) -> Result<Vec<Replica>, EngineError> {
        Ok(self.store.read(replicas::list).await?)
    }

    /// Stops a replica (SIGTERM, then SIGKILL after `grace`); it is not restarted.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<Replica, EngineError> {
        let mut r = self.get(id).await?;
        let rid = id.to_string();
        let status = self.blocking(move |rt| rt.stop(&rid, grace)).await??;
        record_exit(&mut r, &status);
        r.state = "stopped".into();
        self.save(&r).await?;
        Ok(r)
    }

    /// Removes a replica and everything it had.
    pub async fn delete(&self, id: &str) -> Result<(), EngineError> {
        let r = self.get(id).await?;
        let (project, rid) = (r.project_id.clone(), id.to_string());
        self.blocking(move |rt| rt.delete(&project, &rid)).await??;
        let rid = id.to_string();
        self.store.write(move |c| replicas::delete(c, &rid)).await?;
        Ok(())
    }

    pub async fn logs(&self, id: &str, tail: usize) -> Result<Vec<LogLine>, EngineError> {
        self.get(id).await?;
        let rid = id.to_string();
        self.blocking(move |rt| rt.logs(&rid, tail)).await
    }

    pub async fn metrics(&self, id: &str) -> Result<Metrics, EngineError> {
        let r = self.get(id).await?;
        let rid = id.to_string();
        self.blocking(move |rt| rt.metrics(&r.project_id, &rid)).await
    }

    /// Re-adopts what survived a daemon restart; see the module docs.
    pub async fn reconcile(&self) -> Result<(), EngineError> {
        let rows = self.list().await?;
        for mut r in rows.clone() {
            if !matches!(r.state.as_str(), "starting" | "running") {
                continue;
            }
            let rid = r.id.clone();
            let status = self.blocking(move |rt| rt.status(&rid)).await?;
            match status.state {
                State::Running => {
                    r.state = "running".into();
                    r.pid = status.pid;
                    tracing::info!(replica = r.id, pid = ?status.pid, "re-adopted a running replica");
                }
                State::Exited => {
                    record_exit(&mut r, &status);
                    r.state = "exited".into();
                    tracing::info!(replica = r.id, code = ?r.exit_code, signal = ?r.signal, "replica exited while the daemon was away");
                }
                State::Lost | State::Created => {
                    r.state = "failed".into();
                    r.error = Some("its supervisor went away without recording an exit".into());
                    let (project, rid) = (r.project_id.clone(), r.id.clone());
                    let _ = self.blocking(move |rt| rt.delete(&project, &rid)).await;
                }
            }
            self.save(&r).await?;
        }
        // Container state on disk that no replica row owns is a leftover.
        let known: std::collections::HashSet<String> = rows.iter().map(|r| r.id.clone()).collect();
        let on_disk = self.blocking(|rt| rt.list()).await?;
        for id in on_disk.into_iter().filter(|id| !known.contains(id)) {
            tracing::warn!(container = id, "removing container state no replica owns");
            let _ = self.blocking(move |rt| rt.delete("orphans", &id)).await;
        }
        Ok(())
    }

    /// Notices exits and applies restart policies; call about once a second.
    pub async fn tick(&self) -> Result<(), EngineError> {
        let now = crate::ids::unix_now();
        for mut r in self.list().await? {
            match r.state.as_str() {
                "running" => {
                    let rid = r.id.clone();
                    let status = self.blocking(move |rt| rt.status(&rid)).await?;
                    if status.state == State::Running {
                        continue;
                    }
                    record_exit(&mut r, &status);
                    r.state = "exited".into();
                    self.save(&r).await?;
                }
                "exited" => {}
                _ => continue,
            }
            let cfg = self.config(&r.id).await?;
            let failed = r.exit_code != Some(0) || r.signal.is_some();
            let wants = match cfg.restart {
                RestartPolicy::No => false,
                RestartPolicy::OnFailure => failed,
                RestartPolicy::Always => true,
            };
            if !wants {
                continue;
            }
            if r.window_start.is_none_or(|w| now - w > CRASH_WINDOW) {
                r.window_start = Some(now);
                r.window_restarts = 0;
            }
            if r.window_restarts >= CRASH_RESTARTS {
                r.state = "crash_loop".into();
                r.error = Some(format!("restarted {CRASH_RESTARTS} times within {CRASH_WINDOW} s; not restarting"));
                self.save(&r).await?;
                tracing::warn!(replica = r.id, "crash loop detected");
                continue;
            }
            let due = *r.next_restart_at.get_or_insert(now + backoff(self.backoff_start_s, r.window_restarts));
            if now < due {
                self.save(&r).await?;
                continue;
            }
            let (project, rid) = (r.project_id.clone(), r.id.clone());
            match self.blocking(move |rt| rt.restart(&project, &rid)).await? {
                Ok(s) => {
                    r.state = "running".into();
                    r.pid = Some(s.pid);
                    r.started_at = Some(s.started_at);
                    r.restarts += 1;
                    r.window_restarts += 1;
                    r.next_restart_at = None;
                    tracing::info!(replica = r.id, restarts = r.restarts, "replica restarted");
                }
                Err(e) => {
                    r.error = Some(e.to_string());
                    r.window_restarts += 1;
                    r.next_restart_at = Some(now + backoff(self.backoff_start_s, r.window_restarts));
                }
            }
            self.save(&r).await?;
        }
        Ok(())
    }

    async fn config(&self, id: &str) -> Result<ReplicaConfig, EngineError> {
        let rid = id.to_string();
        let json = self
            .store
            .read(move |c| replicas::config(c, &rid))
            .await?
            .ok_or_else(|| EngineError::NotFound(id.into()))?;
        serde_json::from_str(&json).map_err(|e| EngineError::Task(format!("stored config of {id}: {e}")))
    }
}

/// Seconds to wait before the next restart: 1 s doubling up to 5 minutes.
fn backoff(start: i64, restarts_in_window: i64) -> i64 {
    (start << restarts_in_window.clamp(0, 16)).min(BACKOFF_MAX)
}

fn record_exit(r: &mut Replica, s: &crate::runtime::shim::Status) {
    if let Some(e) = &s.exit {
        r.exit_code = e.exit_code;
        r.signal = e.signal;
        r.oom_killed = e.oom_killed;
        r.finished_at = Some(e.finished_at.clone());
        if e.error.is_some() {
            r.error = e.error.clone();
        }
    }
}

fn container_spec(id: &str, cfg: &ReplicaConfig) -> ContainerSpec {
    ContainerSpec {
        id: id.to_string(),
        hostname: cfg.service.clone(),
        args: cfg.args.clone(),
        env: cfg.env.clone(),
        cwd: cfg.cwd.clone(),
        uid: cfg.uid,
        gid: cfg.gid,
        additional_gids: vec![],
        rootfs: match &cfg.root {
            RootSource::Rootfs(p) => p.clone(),
            RootSource::Layers(_) => PathBuf::new(),
        },
        hosts_file: cfg.hosts_file.clone(),
        resolv_file: cfg.resolv_file.clone(),
        volumes: cfg.volumes.clone(),
        netns: cfg.netns.clone(),
        limits: Limits { memory_bytes: cfg.memory_bytes, cpus: cfg.cpus, pids: cfg.pids },
        cgroups_path: String::new(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_doubles_to_a_ceiling() {
        let seq: Vec<i64> = (0..12).map(|n| super::backoff(1, n)).collect();
        assert_eq!(&seq[..5], &[1, 2, 4, 8, 16]);
        assert_eq!(seq[11], 300);
    }
}
