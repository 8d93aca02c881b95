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
    pub registry: crate::registry::Registry,
    /// `None` when this daemon does not run containers (no runc, not root, or off).
    pub engine: Option<Arc<crate::engine::Engine>>,
    /// Seals and opens secrets at rest with the host key.
    pub sealer: Arc<crate::secrets::Sealer>,
    /// The ingress's live routing table.
    pub routes: Arc<crate::ingress::routes::RoutingTable>,
    /// Each service's recent ingress requests (`GET /v1/services/{id}/requests`).
    pub access_log: Arc<crate::ingress::access_log::AccessLog>,
}

/// What the daemon builds before the shared state, handed over in one piece.
pub struct Parts {
    pub config: Arc<Config>,
    pub store: Store,
    pub gate: Arc<Gate>,
    pub host: crate::runtime::host::StaticFacts,
    pub engine: Option<Arc<crate::engine::Engine>>,
    pub sealer: Arc<crate::secrets::Sealer>,
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(parts: Parts) -> Self {
        let Parts { config, store, gate, host, engine, sealer } = parts;
        let registry = crate::registry::Registry::new(crate::registry::Settings::from_config(&config), store.clone());
        AppState(Arc::new(Shared {
            engine,
            registry,
            config,
            gate,
            store,
            started: Instant::now(),
            host,
            sealer,
            routes: Arc::new(crate::ingress::routes::RoutingTable::new()),
            access_log: Arc::new(crate::ingress::access_log::AccessLog::default()),
        }))
    }
}

impl AppState {
    /// Registry garbage collection, keeping every blob a replica runs from, then the
    /// unpacked layers whose blobs are gone.
    pub async fn collect_garbage(
        &self,
    ) -> Result<crate::store::registry::GcReport, crate::registry::error::RegistryError> {
        let pinned = match &self.engine {
            Some(engine) => engine
                .pinned_blobs()
                .await
                .map_err(|e| crate::registry::error::RegistryError::Internal(e.to_string()))?,
            None => Default::default(),
        };
        let report = crate::registry::gc::run(&self.registry, &pinned).await?;
        if let Some(engine) = &self.engine {
            if let Err(e) = engine.gc_images().await {
                tracing::warn!(error = %e, "image snapshot collection failed");
            }
        }
        Ok(report)
    }
}
