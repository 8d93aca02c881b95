//! Background loops. Each is a named task that ticks on an interval and stops when
//! the shutdown channel flips; the daemon starts them after the listener is up and
//! joins them before closing the store.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::state::AppState;

pub mod acme;

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
        let deployer = state.deployer.clone();
        all.push(spawn("health-probes", Duration::from_secs(1), shutdown.clone(), move || {
            let deployer = deployer.clone();
            async move { deployer.probe_due().await }
        }));
    }
    // Runs fail with a clear message on a node without an engine, so the
    // scheduler runs there too.
    let jobs = state.jobs.clone();
    all.push(spawn("job-scheduler", crate::engine::jobs::TICK, shutdown.clone(), move || {
        let jobs = jobs.clone();
        async move { jobs.tick().await }
    }));
    let s = state.clone();
    let every = (state.config.build.upload_ttl_seconds / 2).clamp(1, 600);
    all.push(spawn("upload-expiry", Duration::from_secs(every), shutdown.clone(), move || {
        let s = s.clone();
        async move {
            match s.uploads.expire().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "expired build context uploads removed"),
                Err(e) => tracing::warn!(error = %e, "upload expiry failed"),
            }
        }
    }));
    all.push(auto_deploy(state.clone(), shutdown.clone()));
    if state.config.acme.enabled {
        all.push(acme::spawn(state.clone(), shutdown.clone()));
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

/// Deploys pushed tags to the services that follow them. A push that arrives while
/// a service has a deployment in progress waits (the latest push per service
/// wins) and is deployed once that one has ended; a push of the digest the service
/// already runs deploys nothing.
fn auto_deploy(state: AppState, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    use std::collections::HashMap;
    let mut pushes = state.pushes.subscribe();
    tokio::spawn(async move {
        // service id → the push waiting for it.
        let mut waiting: HashMap<String, crate::state::Pushed> = HashMap::new();
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                p = pushes.recv() => match p {
                    Ok(p) => {
                        let (repo, tag) = (p.repository.clone(), p.tag.clone());
                        match state.store.read(move |c| crate::store::services::following(c, &repo, &tag)).await {
                            Ok(services) => {
                                for s in services {
                                    waiting.insert(s.id, p.clone());
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "auto-deploy: could not find the followers of a push"),
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "auto-deploy fell behind the registry's pushes");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                _ = retry.tick() => {}
                _ = shutdown.changed() => break,
            }
            let ids: Vec<String> = waiting.keys().cloned().collect();
            for id in ids {
                let Some(p) = waiting.get(&id).cloned() else { continue };
                match deploy_push(&state, &id, &p).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => tracing::warn!(service = id, error = %e, "auto-deploy failed"),
                }
                waiting.remove(&id);
            }
        }
        tracing::debug!(worker = "auto-deploy", "worker stopped");
    })
}

/// Deploys `p` to the service; `Ok(false)` when it must wait for the deployment in
/// progress.
async fn deploy_push(
    state: &AppState,
    service_id: &str,
    p: &crate::state::Pushed,
) -> Result<bool, crate::engine::deploy::DeployError> {
    let id = service_id.to_string();
    let Some(svc) = state.store.read(move |c| crate::store::services::get(c, &id)).await? else { return Ok(true) };
    // The service may have stopped following since.
    if svc.follow.as_ref() != Some(&(p.repository.clone(), p.tag.clone())) {
        return Ok(true);
    }
    let id = service_id.to_string();
    if state.store.read(move |c| crate::store::deployments::in_flight(c, &id)).await?.is_some() {
        return Ok(false);
    }
    if let Some(live) = svc.current_deployment_id.clone() {
        let current = state.store.read(move |c| crate::store::deployments::get(c, &live)).await?;
        if current.is_some_and(|d| d.image_digest.as_deref() == Some(p.digest.as_str())) {
            return Ok(true);
        }
    }
    let source = crate::engine::service::Source::Image { repository: p.repository.clone(), reference: p.tag.clone() };
    match state.deployer.deploy(&svc, source, Some(p.digest.clone()), None).await {
        Ok(d) => {
            tracing::info!(service = svc.id, deployment = d.id, digest = p.digest, "deploying a followed tag's push");
            Ok(true)
        }
        Err(crate::engine::deploy::DeployError::Store(crate::store::StoreError::Conflict(_))) => Ok(false),
        Err(e) => Err(e),
    }
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
