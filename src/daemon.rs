//! Start-up and shutdown order.
//!
//! Start: state dirs → the state dir's lock (`crate::lock`: one daemon per dir) → store (migrations) → bootstrap token if there are no users →
//! host facts → engine (re-adopts replicas) → services and deployments recovered
//! (routing table rebuilt, verified custom domains with it) → the custom domains'
//! challenge answers → stored certificates loaded → listeners (API, then the
//! ingress's HTTP and HTTPS listeners) → `READY=1` → workers (ACME renewal among
//! them). Stop (SIGTERM/SIGINT): the listeners stop accepting and drain
//! in-flight requests for at most `api.shutdown_grace_seconds`, stop workers, then
//! close the store (the writer finishes queued commits, the WAL is checkpointed).
//! Replicas keep running across a daemon stop, except when systemd says the host
//! itself is shutting down: then, once the workers have ended and while the listeners
//! drain, every replica is stopped (SIGTERM, SIGKILL after `deploy.stop_grace_seconds`)
//! so a container ignoring SIGTERM does not hold the shutdown (adr/026).

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::api;
use crate::config::Config;
use crate::error::PathError;
use crate::state::AppState;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error(
        "the state dir {} is not writable ({source}): berth keeps its database, images and containers there; \
         check its owner and mode, and that its filesystem is not mounted read-only",
        path.display()
    )]
    NotWritable { path: std::path::PathBuf, source: std::io::Error },
    #[error("the ingress's certificates: {0}")]
    Tls(#[from] crate::ingress::tls::TlsError),
    #[error("the ingress's tls settings: {0}")]
    TlsConfig(rustls::Error),
}

/// Refuses a state dir the daemon cannot write, before anything is made in it:
/// a file is created, synced and removed.
fn ensure_writable(dir: &Path) -> Result<(), DaemonError> {
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    let written =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&probe).and_then(|f| f.sync_all());
    let _ = std::fs::remove_file(&probe);
    written.map_err(|source| DaemonError::NotWritable { path: dir.to_path_buf(), source })
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> Result<(), DaemonError> {
    let config = Arc::new(config);
    if !config.not_yet_used.is_empty() {
        tracing::warn!(keys = config.not_yet_used.join(", "), "these settings are accepted but not used yet");
    }
    for dir in [&config.data_dir, &config.run_dir] {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => {
                DaemonError::NotWritable { path: dir.to_path_buf(), source: e }
            }
            _ => PathError::new("create", dir, e).into(),
        })?;
        ensure_writable(dir)?;
    }
    // Held until this function returns: a second daemon on this dir is refused.
    let _lock = crate::lock::acquire(&config.data_dir)?;
    let db = config.data_dir.join("state.db");
    let store = tokio::task::spawn_blocking(move || Store::open(&db))
        .await
        .map_err(|e| StoreError::Corrupt(e.to_string()))??;
    ensure_bootstrap_token(&store, &config).await?;
    let host = tokio::task::spawn_blocking(crate::runtime::host::StaticFacts::probe)
        .await
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let engine = start_engine(&config, &store, &host).await;
    let surfaces = Arc::new(api::router::Surfaces {
        body_limit: config.api.body_limit_bytes as u64,
        upload_limit: config.build.max_upload_bytes,
    });
    let gate = Arc::new(crate::http::Gate::new(config.clone(), store.clone(), surfaces));
    let secrets_dir = config.data_dir.join("secrets");
    let sealer = tokio::task::spawn_blocking(move || crate::secrets::Sealer::load_or_create(&secrets_dir))
        .await
        .map_err(|e| StoreError::Corrupt(e.to_string()))??;
    // Handshakes for names without a certificate of their own get a self-signed one.
    let mut fallback_names = vec!["localhost".to_string(), format!("*.{}", config.ingress.apps_domain)];
    fallback_names.extend(config.ingress.control_domain.clone());
    let certs = Arc::new(crate::ingress::tls::CertStore::new(&fallback_names)?);
    let state = AppState::new(crate::state::Parts {
        config: config.clone(),
        store: store.clone(),
        gate,
        host,
        engine,
        sealer: Arc::new(sealer),
        certs,
    });
    state.registry.blobs.init()?;
    // Deployments a previous run left in flight end, replicas of no live
    // deployment go, and the routing table comes back before anything is served.
    if let Err(e) = state.deployer.recover().await {
        tracing::error!(error = %e, "recovering services and deployments failed");
    }
    // Builds a previous run left (their deployments just ended as failed) leave
    // no process, cgroup or temp dir behind.
    state.builder.recover().await;
    // Job runs that outlived the previous daemon are watched again, and the fire
    // times it was down for follow each job's missed-run policy.
    if let Err(e) = state.jobs.recover().await {
        tracing::error!(error = %e, "recovering the jobs failed");
    }
    // Custom domains' verification answers, before the ingress accepts.
    if let Err(e) = api::domains::restore(&state).await {
        tracing::error!(error = %e, "restoring the domains' challenge answers failed");
    }
    // Certificates issued before are served from the first handshake.
    match crate::workers::acme::load_stored(&state.store, &state.sealer, &state.certs, &state.acme).await {
        Ok(n) => tracing::debug!(certificates = n, "stored certificates loaded"),
        Err(e) => tracing::error!(error = %e, "loading the stored certificates failed"),
    }
    let app = api::router::build(state.clone());
    // Every ingress connection may hold one to a replica as well.
    raise_open_files_limit(config.api.max_connections + 2 * config.ingress.max_connections);

    let (listener, addr) = bind(config.api.listen).await?;
    tracing::info!(%addr, dev = config.dev, data_dir = %config.data_dir.display(), "api listening");
    let (http_listener, http_addr) = bind(config.ingress.http_listen).await?;
    tracing::info!(addr = %http_addr, "ingress listening (http)");
    let (https_listener, https_addr) = bind(config.ingress.https_listen).await?;
    tracing::info!(addr = %https_addr, "ingress listening (https)");
    state.https_port.store(https_addr.port(), std::sync::atomic::Ordering::Relaxed);
    let tls = tokio_rustls::TlsAcceptor::from(state.certs.server_config().map_err(DaemonError::TlsConfig)?);

    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut sigint =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let grace = Duration::from_secs(config.api.shutdown_grace_seconds);
    let limits = crate::http::serve::Limits::from_config(&config.api);
    let conns = Arc::new(crate::http::serve::Connections::default());
    let server = tokio::spawn(crate::http::serve::serve(listener, app.clone(), limits, conns, stop_rx.clone(), grace));
    let front = crate::ingress::proxy::Front {
        redirect: config
            .ingress
            .https_redirect
            .then(|| crate::ingress::proxy::Redirect { certs: state.certs.clone(), https_port: https_addr.port() }),
        control: config.ingress.control_domain.as_deref().map(|d| (crate::ingress::routes::normalize_host(d), app)),
        upstream_timeout: Duration::from_secs(config.ingress.upstream_timeout_seconds),
    };
    let proxy = crate::ingress::proxy::Proxy::with_front(
        state.routes.clone(),
        state.challenges.clone(),
        state.access_log.clone(),
        state.gate.metrics.clone(),
        front,
    );
    // Both ingress listeners count connections together: the caps are per client,
    // whichever port it uses.
    let ingress_conns = Arc::new(crate::http::serve::Connections::default());
    let ingress_limits = crate::http::serve::Limits::for_ingress(&config.ingress);
    let ingress = tokio::spawn(crate::http::serve::serve(
        http_listener,
        proxy.clone(),
        ingress_limits,
        ingress_conns.clone(),
        stop_rx.clone(),
        grace,
    ));
    let ingress_tls = tokio::spawn(crate::http::serve::serve_tls(
        https_listener,
        tls,
        proxy.clone(),
        ingress_limits,
        ingress_conns,
        stop_rx.clone(),
        grace,
    ));
    let pruner = {
        let stop = stop_rx.clone();
        tokio::spawn(async move { proxy.prune_until(stop).await })
    };
    sd_notify(&format!("READY=1\nSTATUS=api listening on {addr}; ingress on {http_addr}; https on {https_addr}"));
    let workers = crate::workers::start_all(&state, &stop_rx);

    let signal = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    // Only a host going down takes the replicas along; a daemon stop or restart
    // leaves them running for the next daemon to re-adopt.
    let host_down = signal == "SIGTERM" && host_shutting_down().await;
    tracing::info!(signal, host_shutting_down = host_down, "shutting down");
    sd_notify("STOPPING=1");
    let _ = stop_tx.send(true);
    // Log streams would otherwise hold the drain for its whole grace period.
    state.deployer.shut_down();
    // Builds in progress stop: their processes are killed, their temp dirs removed.
    state.builder.shut_down().await;
    state.jobs.shut_down();
    let engine = state.engine.clone().filter(|_| host_down);
    let stop_grace = state.deployer.settings().stop_grace;
    // The replicas stop while the listeners drain, once the workers (the ticker that
    // applies restart policies among them) have ended.
    let replicas_stopped = async move {
        for w in workers {
            let _ = w.await;
        }
        let Some(engine) = engine else { return };
        match engine.stop_for_host_shutdown(stop_grace).await {
            Ok(n) => tracing::info!(replicas = n, "the host is shutting down: replicas stopped"),
            Err(e) => tracing::error!(error = %e, "stopping the replicas for the host shutdown failed"),
        }
    };
    // Both listeners drain at once, within the same grace.
    let ((api_drained, ingress_drained, https_drained), ()) =
        tokio::join!(async { tokio::join!(server, ingress, ingress_tls) }, replicas_stopped);
    for (listener, drained) in [("api", api_drained), ("ingress", ingress_drained), ("ingress https", https_drained)] {
        match drained {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                listener,
                seconds = grace.as_secs(),
                "in-flight requests did not finish in time; closed them"
            ),
            Err(e) => tracing::warn!(listener, error = %e, "server task failed"),
        }
    }
    let _ = pruner.await;
    drop(state);
    tokio::task::spawn_blocking(move || store.close()).await.map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tracing::info!("stopped");
    Ok(())
}

/// Whether the whole system, not just this daemon, is going down. Only under systemd
/// (`NOTIFY_SOCKET` set, as for the packaged `Type=notify` unit): systemd's manager
/// state is `stopping` from the moment a start job for `shutdown.target` is queued
/// (every reboot, poweroff, halt and kexec pulls it in) and `systemctl
/// is-system-running` prints it. Anything else (no systemd, systemctl missing or not
/// answering within 5 s, any other state) counts as not going down, so a plain
/// `systemctl stop` or `restart` leaves the containers running (adr/026).
async fn host_shutting_down() -> bool {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return false;
    }
    tokio::task::spawn_blocking(|| crate::runtime::host::system_stopping(Duration::from_secs(5))).await.unwrap_or(false)
}

/// Binds a listener and says which address it got (the port may have been 0).
async fn bind(want: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), DaemonError> {
    let listener =
        tokio::net::TcpListener::bind(want).await.map_err(|source| DaemonError::Listen { addr: want, source })?;
    let addr = listener.local_addr().map_err(|source| DaemonError::Listen { addr: want, source })?;
    Ok((listener, addr))
}

/// The container engine, when this daemon can run containers: re-adopts what
/// survived the last run before the API opens.
async fn start_engine(
    config: &Config,
    store: &Store,
    host: &crate::runtime::host::StaticFacts,
) -> Option<std::sync::Arc<crate::engine::Engine>> {
    let root = rustix::process::geteuid().is_root();
    if !config.runtime.enabled || !root || host.runc_version.is_none() {
        tracing::warn!(
            enabled = config.runtime.enabled,
            root,
            runc = host.runc_version.is_some(),
            "not running containers: the runtime needs root and runc"
        );
        return None;
    }
    let layout = match config.runtime.cgroup_parent.as_str() {
        "" => crate::runtime::cgroups::Layout::for_self(&config.runtime.cgroup_prefix),
        parent => Ok(crate::runtime::cgroups::Layout::under(
            std::path::Path::new("/sys/fs/cgroup"),
            parent,
            &config.runtime.cgroup_prefix,
        )),
    };
    let layout = match layout {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "not running containers: no usable cgroup layout");
            return None;
        }
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| "berth".into());
    let mut runtime = crate::runtime::container::Runtime::new(
        config.run_dir.join("runc"),
        layout,
        config.data_dir.join("containers"),
        exe,
    );
    runtime.host_key = Some(config.data_dir.join("secrets").join("host.key"));
    let mut engine = crate::engine::Engine::new(store.clone(), std::sync::Arc::new(runtime)).with_images(
        crate::registry::blobs::BlobStore::new(config.data_dir.join("registry")),
        crate::images::snapshots::SnapshotStore::new(config.data_dir.join("images").join("snapshots")),
    );
    match networks(config, store).await {
        Ok(nets) => engine = engine.with_networks(nets, config.run_dir.join("hosts")),
        Err(e) => tracing::warn!(error = %e, "containers get no project networks"),
    }
    let engine = std::sync::Arc::new(engine);
    if let Err(e) = engine.reconcile().await {
        tracing::error!(error = %e, "re-adopting containers failed");
    }
    Some(engine)
}

/// Project networks with their addresses in berth's database. Recovery (which
/// removes berth netns and bridges nothing leases) runs only when leases exist, so
/// a fresh node never touches the host's networking before its first container.
async fn networks(config: &Config, store: &Store) -> Result<std::sync::Arc<crate::runtime::network::Networks>, String> {
    use crate::runtime::network::{NetOptions, Networks};
    let opts = NetOptions::from_config(&config.network).map_err(|e| e.to_string())?;
    let ipam = std::sync::Arc::new(crate::engine::ipam::StoreIpam::new(store.clone()));
    let nets = std::sync::Arc::new(Networks::new(opts, ipam.clone()).map_err(|e| e.to_string())?);
    let n = nets.clone();
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        if ipam.has_leases().map_err(|e| e.to_string())? {
            let r = n.recover().map_err(|e| e.to_string())?;
            tracing::info!(live = r.live.len(), missing = r.missing.len(), "project networks recovered");
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())??;
    Ok(nets)
}

/// Raises the soft limit on open files to the hard limit, so the connection cap,
/// not the descriptor limit, is what refuses clients (the default soft limit, 1024,
/// is below the default `api.max_connections`). `descriptors` is what the listeners'
/// caps may use together.
fn raise_open_files_limit(descriptors: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    let want = lim.maximum.unwrap_or(u64::MAX);
    if lim.current.is_some_and(|c| c < want) {
        lim.current = Some(want);
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::warn!(error = %e, "could not raise the open files limit");
        }
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    // Connections, plus files, sockets and pipes for everything else.
    if now < descriptors as u64 + 512 {
        tracing::warn!(
            open_files = now,
            descriptors,
            "the open files limit is below what api.max_connections and ingress.max_connections need; clients may be refused at accept"
        );
    }
}

/// On a node with no users, writes a fresh one-time bootstrap token to
/// `<data_dir>/bootstrap-token` (mode 0600) and keeps only its hash.
async fn ensure_bootstrap_token(store: &Store, config: &Config) -> Result<(), DaemonError> {
    let path = config.data_dir.join("bootstrap-token");
    if store.read(crate::store::users::count).await? > 0 {
        return Ok(());
    }
    let secret = crate::auth::new_secret();
    let token = format!("{}{}", crate::auth::BOOTSTRAP_PREFIX, secret);
    let hash = crate::auth::hex(&crate::auth::hash_secret(&secret));
    write_secret_file(&path, &token)?;
    store.write(move |c| crate::store::auth::meta_set(c, crate::auth::BOOTSTRAP_META_KEY, &hash)).await?;
    tracing::info!(path = %path.display(), "no users yet: bootstrap token written; POST /v1/bootstrap with it");
    if config.dev {
        let api = config.api.listen;
        eprintln!(
            "\n  berth dev mode: bootstrap token in {path}\n\n  create the first super-admin:\n    curl -s -X POST http://{api}/v1/bootstrap \\\n      -H \"Authorization: Bearer $(cat {path})\" \\\n      -H 'Content-Type: application/json' \\\n      -d '{{\"username\":\"admin\",\"password\":\"change-me-please\"}}'\n",
            path = path.display(),
        );
    }
    Ok(())
}

fn write_secret_file(path: &Path, contents: &str) -> Result<(), PathError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| PathError::new("create", &tmp, e))?;
    f.write_all(contents.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| PathError::new("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| PathError::new("rename", path, e))
}

/// Tells systemd (or whoever set `NOTIFY_SOCKET`) about our state; a no-op otherwise.
pub fn sd_notify(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|a| sock.send_to_addr(message.as_bytes(), &a))
    } else {
        sock.send_to(message.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}
