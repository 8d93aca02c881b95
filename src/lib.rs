//! berth: a self-hosted single-node PaaS appliance.
//!
//! One daemon runs containers with runc under cgroup limits, embeds an OCI registry,
//! an ingress with ACME, keeps its state in SQLite and serves the `/v1` REST API.
//! See `README.md` for the architecture map and `adr/` for the decisions.

pub mod api;
pub mod auth;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod http;
pub mod ids;
pub mod images;
pub mod oci;
pub mod pool;
pub mod registry;
pub mod runtime;
pub mod state;
pub mod store;
pub mod validate;
pub mod workers;

pub use config::Config;

/// Runs `berth serve` with a loaded config until a shutdown signal.
pub async fn run(config: Config) -> Result<(), daemon::DaemonError> {
    daemon::serve(config).await
}
