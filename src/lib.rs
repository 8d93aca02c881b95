//! berth: a self-hosted single-node PaaS appliance.
//!
//! One daemon runs containers with runc under cgroup limits, embeds an OCI registry,
//! an ingress with ACME, keeps its state in SQLite and serves the `/v1` REST API.
//! See `README.md` for the architecture map and `adr/` for the decisions.

pub mod admin;
pub mod api;
pub mod auth;
pub mod build;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod http;
pub mod ids;
pub mod images;
pub mod ingress;
pub mod lock;
pub mod metrics;
pub mod oci;
pub mod outbound;
pub mod pool;
pub mod registry;
pub mod runtime;
pub mod secrets;
pub mod state;
pub mod store;
pub mod validate;
pub mod workers;

pub use config::Config;

/// Runs `berth serve` with a loaded config until a shutdown signal.
pub async fn run(config: Config) -> Result<(), daemon::DaemonError> {
    daemon::serve(config).await
}

/// The walls between modules that no lint can express: a lower floor never
/// imports a higher one (`/v2` nothing of `/v1`; shared plumbing nothing of either).
#[cfg(test)]
mod walls {
    fn sources(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push((p.display().to_string(), std::fs::read_to_string(&p).unwrap()));
            }
        }
    }

    #[test]
    fn lower_floors_do_not_import_higher_ones() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&root, &mut files);
        // (module path prefix, what it must not name)
        let walls: &[(&str, &[&str])] = &[
            ("registry/", &["crate::api"]),
            ("http/", &["crate::api", "crate::registry", "crate::state"]),
            ("store/", &["crate::api", "crate::http", "crate::registry::http"]),
            ("config.rs", &["crate::api"]),
            ("workers/", &["crate::api"]),
            ("engine/", &["crate::api", "crate::http"]),
            ("runtime/", &["crate::api", "crate::http", "crate::engine"]),
            ("images/", &["crate::api", "crate::http", "crate::engine"]),
            ("oci/", &["crate::api", "crate::http", "crate::registry", "crate::engine"]),
            ("ingress/", &["crate::api", "crate::registry", "crate::engine", "crate::store"]),
            (
                "metrics.rs",
                &["crate::api", "crate::http", "crate::registry", "crate::engine", "crate::store", "crate::state"],
            ),
            ("secrets/", &["crate::api", "crate::http", "crate::engine"]),
            ("outbound.rs", &["crate::api", "crate::http", "crate::state", "crate::store", "crate::engine"]),
        ];
        let mut broken = Vec::new();
        for (path, text) in &files {
            let rel = path.strip_prefix(&format!("{}/", root.display())).unwrap_or(path);
            for (prefix, banned) in walls {
                if rel.starts_with(prefix) {
                    for b in *banned {
                        if text.contains(b) {
                            broken.push(format!("{rel} names {b}"));
                        }
                    }
                }
            }
        }
        assert!(broken.is_empty(), "walls broken: {broken:#?}");
    }
}
