//! Background loops. Each is a named task that ticks on an interval and stops when
//! the shutdown channel flips; the daemon starts them after the listener is up and
//! joins them before closing the store.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::state::AppState;

/// Runs `tick` every `every` until shutdown.
pub fn spawn<F, Fut>(
    name: &'static str,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut tick: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        // The first run waits a whole interval: start-up is busy enough.
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => tick().await,
                _ = shutdown.changed() => break,
            }
        }
        tracing::debug!(worker = name, "worker stopped");
    })
}

/// The daemon's workers, in start order.
pub fn start_all(state: &AppState, shutdown: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let s = state.clone();
    let sessions = spawn("session-purge", Duration::from_secs(600), shutdown.clone(), move || {
        let s = s.clone();
        async move {
            let now = crate::ids::now_rfc3339();
            match s.store.write(move |c| crate::store::auth::purge_expired_sessions(c, &now)).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "expired sessions removed"),
                Err(e) => tracing::warn!(error = %e, "session purge failed"),
            }
        }
    });
    let s = state.clone();
    let limits = spawn("ratelimit-prune", Duration::from_secs(60), shutdown.clone(), move || {
        s.gate.limiter.prune();
        s.gate.logins.prune();
        std::future::ready(())
    });
    // Memory freed after a burst (connection buffers, blob chunks) sits in malloc's
    // free lists, fragmented, where the kernel cannot take it back; trimming hands
    // those pages back so the daemon returns to its idle size after load.
    let trim = spawn("memory-trim", Duration::from_secs(5), shutdown.clone(), || {
        trim_heap();
        std::future::ready(())
    });
    let mut all = vec![sessions, limits, trim];
    if let Some(engine) = state.engine.clone() {
        all.push(spawn("replica-supervisor", Duration::from_secs(1), shutdown.clone(), move || {
            let engine = engine.clone();
            async move {
                if let Err(e) = engine.tick().await {
                    tracing::warn!(error = %e, "replica supervision failed");
                }
            }
        }));
    }
    let every = state.config.registry.gc_interval_seconds;
    if every > 0 {
        let s = state.clone();
        all.push(spawn("registry-gc", Duration::from_secs(every), shutdown.clone(), move || {
            let s = s.clone();
            async move {
                if let Err(e) = s.collect_garbage().await {
                    tracing::warn!(error = %e, "registry garbage collection failed");
                }
                if let Err(e) = s.collect_cache_garbage().await {
                    tracing::warn!(error = %e, "layer cache collection failed");
                }
            }
        }));
    }
    all
}

/// Returns free heap pages to the kernel (glibc's `malloc_trim`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim only walks the allocator's own free lists under its locks
    // and madvises pages no allocation uses; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}
