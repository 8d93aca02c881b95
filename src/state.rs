//! What every handler shares, `/v1` and `/v2` alike: built once by the daemon.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use crate::config::Config;
use crate::http::Gate;
use crate::store::Store;

/// Everything handlers share; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub config: Arc<Config>,
    pub store: Store,
    /// Credentials, rate limits and password hashing (see `http::context`).
    pub gate: Arc<Gate>,
    pub started: Instant,
    pub host: crate::runtime::host::StaticFacts,
    pub registry: Arc<crate::registry::Registry>,
    /// `None` when this daemon does not run containers (no runc, not root, or off).
    pub engine: Option<Arc<crate::engine::Engine>>,
    /// Seals and opens secrets at rest with the host key.
    pub sealer: Arc<crate::secrets::Sealer>,
    /// The ingress's live routing table.
    pub routes: Arc<crate::ingress::routes::RoutingTable>,
    /// Certificates by host, read by the TLS listener's handshakes.
    pub certs: Arc<crate::ingress::tls::CertStore>,
    /// Answers on the ingress's challenge paths (domain verification, ACME HTTP-01).
    pub challenges: Arc<crate::ingress::challenge::Challenges>,
    /// Each host's ACME certificate status, and forced renewals for the worker.
    pub acme: Arc<crate::ingress::acme::Acme>,
    /// Each service's recent ingress requests (`GET /v1/services/{id}/requests`).
    pub access_log: Arc<crate::ingress::access_log::AccessLog>,
    /// The client for external registries: one connection pool and token cache.
    pub puller: crate::images::remote::Puller,
    /// Services and their deployments (rollouts, scaling, health, recovery).
    pub deployer: Arc<crate::engine::deploy::Deployer>,
    /// Tags pushed to the hosted registry, for the services that follow them. The
    /// registry announces; it knows nothing of who listens.
    pub pushes: tokio::sync::broadcast::Sender<Pushed>,
    /// The state dir's size for `GET /metrics`, walked at most once a minute.
    pub state_dir_usage: Arc<crate::metrics::CachedDiskUsage>,
    /// Jobs: their runs, the scheduler's work and start-up recovery.
    pub jobs: Arc<crate::engine::jobs::Jobs>,
    /// Build contexts uploaded for `Upload` deployments.
    pub uploads: Arc<crate::build::uploads::Uploads>,
    /// The port the HTTPS ingress is bound to (0 until it is): what clients of the
    /// control domain are told to come back to when the config asks for any port.
    pub https_port: std::sync::atomic::AtomicU16,
    /// Builds of `Upload` and `Git` deployments (buildah, the queue, build storage).
    pub builder: Arc<crate::build::builder::Builder>,
    /// Console sessions open now (the per-user cap).
    pub console: Arc<crate::api::console::Sessions>,
}

/// A manifest stored under a tag in the hosted registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub repository: String,
    pub tag: String,
    pub digest: String,
}

impl Shared {
    /// Announces a push; nobody listening is fine.
    pub fn announce_push(&self, pushed: Pushed) {
        let _ = self.pushes.send(pushed);
    }
}

/// External images for deployments: the registry client with the project's sealed
/// login (the one named, or the only one for the image's server), into the store.
struct ExternalPulls {
    puller: crate::images::remote::Puller,
    registry: Arc<crate::registry::Registry>,
    store: Store,
    sealer: Arc<crate::secrets::Sealer>,
}

impl ExternalPulls {
    async fn pull(
        &self,
        project_id: &str,
        image: &str,
        registry_id: Option<&str>,
    ) -> Result<crate::engine::deploy::Fetched, String> {
        use crate::secrets::credentials::{login_for_server, registry_login};
        let image = crate::images::remote::ImageRef::parse(image).map_err(|e| e.to_string())?;
        let login = match registry_id {
            Some(id) => Some(
                registry_login(&self.store, &self.sealer, project_id, id, &image.registry)
                    .await
                    .map_err(|e| e.to_string())?,
            ),
            None => login_for_server(&self.store, &self.sealer, project_id, &image.registry)
                .await
                .map_err(|e| e.to_string())?,
        };
        let login = login.map(|l| crate::images::remote::RegistryLogin { username: l.username, password: l.password });
        let pulled = self.puller.pull(&self.registry, &image, login.as_ref()).await.map_err(|e| e.to_string())?;
        if let Err(e) = crate::images::remote::cache::touch_image(&self.registry, &pulled.manifest).await {
            tracing::warn!(error = %e, image = %pulled.reference, "could not mark a pulled image used");
        }
        Ok(crate::engine::deploy::Fetched {
            digest: pulled.manifest.to_string(),
            blobs_fetched: pulled.blobs_fetched,
            bytes_fetched: pulled.bytes_fetched,
        })
    }
}

impl crate::engine::deploy::ExternalImages for ExternalPulls {
    fn fetch<'a>(
        &'a self,
        project_id: &'a str,
        image: &'a str,
        registry_id: Option<&'a str>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<crate::engine::deploy::Fetched, String>> + Send + 'a>>
    {
        Box::pin(self.pull(project_id, image, registry_id))
    }
}

/// What the daemon builds before the shared state, handed over in one piece.
pub struct Parts {
    pub config: Arc<Config>,
    pub store: Store,
    pub gate: Arc<Gate>,
    pub host: crate::runtime::host::StaticFacts,
    pub engine: Option<Arc<crate::engine::Engine>>,
    pub sealer: Arc<crate::secrets::Sealer>,
    /// The ingress's certificates (the TLS listener resolves through it).
    pub certs: Arc<crate::ingress::tls::CertStore>,
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(parts: Parts) -> Self {
        let Parts { config, store, gate, host, engine, sealer, certs } = parts;
        let registry =
            Arc::new(crate::registry::Registry::new(crate::registry::Settings::from_config(&config), store.clone()));
        let routes = Arc::new(crate::ingress::routes::RoutingTable::new());
        let settings = crate::engine::deploy::Settings {
            apps_domain: config.ingress.apps_domain.clone(),
            volumes_dir: config.data_dir.join("volumes"),
            drain: std::time::Duration::from_secs(config.deploy.drain_seconds),
            stop_grace: std::time::Duration::from_secs(config.deploy.stop_grace_seconds),
            health_deadline: std::time::Duration::from_secs(config.deploy.health_deadline_seconds),
        };
        let puller = crate::images::remote::Puller::new(config.dns.overrides.clone());
        let external = Arc::new(ExternalPulls {
            puller: puller.clone(),
            registry: registry.clone(),
            store: store.clone(),
            sealer: sealer.clone(),
        });
        let jobs = Arc::new(crate::engine::jobs::Jobs::new(
            store.clone(),
            engine.clone(),
            registry.clone(),
            Some(external.clone()),
            crate::engine::jobs::Settings {
                stop_grace: settings.stop_grace,
                retry_backoff: std::time::Duration::from_secs(1),
            },
            gate.metrics.clone(),
        ));
        let uploads = Arc::new(crate::build::uploads::Uploads::new(
            store.clone(),
            config.data_dir.join("uploads"),
            &config.build,
        ));
        let builder = Arc::new(crate::build::builder::Builder::new(crate::build::builder::Parts {
            config: config.build.clone(),
            data_dir: config.data_dir.clone(),
            run_dir: config.run_dir.clone(),
            layout: engine.as_ref().map(|e| e.runtime().layout.clone()),
            store: store.clone(),
            registry: registry.clone(),
            sealer: sealer.clone(),
            uploads: uploads.clone(),
            external: Some(external.clone()),
        }));
        let deployer = Arc::new(
            crate::engine::deploy::Deployer::new(
                store.clone(),
                engine.clone(),
                routes.clone(),
                settings,
                Some(external),
                gate.metrics.clone(),
            )
            .with_builds(builder.clone()),
        );
        let (pushes, _) = tokio::sync::broadcast::channel(256);
        let state_dir_usage =
            Arc::new(crate::metrics::CachedDiskUsage::new(config.data_dir.clone(), std::time::Duration::from_secs(60)));
        AppState(Arc::new(Shared {
            engine,
            registry,
            config,
            gate,
            store,
            started: Instant::now(),
            host,
            sealer,
            routes,
            certs,
            challenges: Arc::new(crate::ingress::challenge::Challenges::default()),
            acme: Arc::new(crate::ingress::acme::Acme::default()),
            access_log: Arc::new(crate::ingress::access_log::AccessLog::default()),
            puller,
            deployer,
            pushes,
            state_dir_usage,
            jobs,
            uploads,
            https_port: std::sync::atomic::AtomicU16::new(0),
            builder,
            console: Arc::default(),
        }))
    }
}

impl AppState {
    /// A state for in-process tests: the store given, defaults elsewhere, no engine,
    /// an ephemeral host key.
    #[cfg(test)]
    pub fn for_tests(store: Store, dir: &std::path::Path) -> AppState {
        let config = crate::config::Config { data_dir: dir.into(), run_dir: dir.join("run"), ..Default::default() };
        let config = Arc::new(config);
        let surfaces = Arc::new(crate::api::router::Surfaces {
            body_limit: config.api.body_limit_bytes as u64,
            upload_limit: config.build.max_upload_bytes,
        });
        let gate = Arc::new(Gate::new(config.clone(), store.clone(), surfaces));
        let host =
            crate::runtime::host::StaticFacts { cgroup: crate::runtime::host::CgroupVersion::V2, runc_version: None };
        AppState::new(Parts {
            config,
            store,
            gate,
            host,
            engine: None,
            sealer: Arc::new(crate::secrets::Sealer::ephemeral()),
            certs: Arc::new(
                crate::ingress::tls::CertStore::new(&["localhost".into()]).expect("a self-signed certificate"),
            ),
        })
    }

    /// Blobs no collection may take: every blob a replica runs from and those a
    /// rollback may need (the images of a service's earlier deployments).
    pub async fn pinned_blobs(&self) -> Result<std::collections::HashSet<String>, crate::engine::deploy::DeployError> {
        self.deployer.pinned_blobs().await
    }

    /// Registry garbage collection, keeping every blob a replica runs from, then the
    /// unpacked layers whose blobs are gone.
    pub async fn collect_garbage(
        &self,
    ) -> Result<crate::store::registry::GcReport, crate::registry::error::RegistryError> {
        let pinned =
            self.pinned_blobs().await.map_err(|e| crate::registry::error::RegistryError::Internal(e.to_string()))?;
        let report = crate::registry::gc::run(&self.registry, &pinned).await?;
        self.collect_snapshots().await;
        Ok(report)
    }

    /// Layer cache collection down to `[cache] max_bytes`, keeping every blob a
    /// replica runs from and anything used within the registry's grace period, then
    /// the unpacked layers whose blobs are gone.
    pub async fn collect_cache_garbage(
        &self,
    ) -> Result<crate::images::remote::CacheGcReport, crate::images::remote::CacheError> {
        let pinned =
            self.pinned_blobs().await.map_err(|e| crate::images::remote::CacheError::Internal(e.to_string()))?;
        let report = crate::images::remote::cache::gc(
            &self.registry,
            &pinned,
            self.config.cache.max_bytes,
            self.registry.gc_grace,
        )
        .await?;
        if report.blobs_evicted > report.blobs_kept_linked {
            self.collect_snapshots().await;
        }
        Ok(report)
    }

    async fn collect_snapshots(&self) {
        if let Some(engine) = &self.engine {
            if let Err(e) = engine.gc_images().await {
                tracing::warn!(error = %e, "image snapshot collection failed");
            }
        }
    }
}
