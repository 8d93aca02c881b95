//! A service's settings as the API takes them and the store keeps them (one JSON
//! document), and the deployment sources. Validation of what a client sends lives
//! in `api::services`; these types say what the settings mean.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::RestartPolicy;

/// One environment variable. A `secret` value is sealed with the host key at rest
/// and shown as `"***"`; it is opened only inside a replica's start (adr/021).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    pub key: String,
    pub value: String,
    #[serde(default)]
    pub secret: bool,
}

/// Limits of each replica; unset ones take the project's limit.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub memory_mb: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
}

/// How berth tells that a replica serves: an HTTP GET of `path` on the replica's
/// port (a 2xx or 3xx passes), or `command` run inside it (exit 0 passes). Without
/// one, a replica passes once its port accepts a TCP connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub path: Option<String>,
    pub command: Option<Vec<String>>,
    /// Seconds between probes (1-300, default 5).
    #[serde(default = "default_interval")]
    pub interval_s: u32,
    /// Seconds a probe may take (1-60, default 2).
    #[serde(default = "default_timeout")]
    pub timeout_s: u32,
    /// Consecutive failed probes that make a replica unhealthy (1-20, default 3).
    #[serde(default = "default_threshold")]
    pub failure_threshold: u32,
}

fn default_interval() -> u32 {
    5
}
fn default_timeout() -> u32 {
    2
}
fn default_threshold() -> u32 {
    3
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: None,
            command: None,
            interval_s: default_interval(),
            timeout_s: default_timeout(),
            failure_threshold: default_threshold(),
        }
    }
}

/// A named directory that outlives the service's replicas (redeploys, restarts),
/// mounted at `path` in every replica; removed with the service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    pub path: String,
}

/// A hosted repository tag whose pushes deploy the service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Follow {
    pub repository: String,
    pub tag: String,
}

/// Everything about a service but its name, project and image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceSpec {
    pub port: u16,
    pub replicas: u32,
    /// Replaces the image's Entrypoint (and, unless `args` is given, its Cmd).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Replaces the image's Cmd.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Secret values sealed.
    #[serde(default)]
    pub env: Vec<EnvVar>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    #[serde(default = "default_restart")]
    pub restart_policy: RestartPolicy,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    #[serde(default)]
    pub follow: Option<Follow>,
}

/// Services restart whatever ended them (a server that exits has stopped serving).
pub fn default_restart() -> RestartPolicy {
    RestartPolicy::Always
}

impl ServiceSpec {
    /// The stored JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<ServiceSpec, super::EngineError> {
        serde_json::from_str(text).map_err(|e| super::EngineError::Task(format!("stored service settings: {e}")))
    }

    /// The health check in force (the default TCP check when none is set).
    pub fn check(&self) -> HealthCheck {
        self.health_check.clone().unwrap_or_default()
    }
}

/// Where a deployment's image comes from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum Source {
    /// A repository of the service's project in the hosted registry, by tag or digest.
    Image { repository: String, reference: String },
    /// An image in another registry, pulled through the layer cache.
    ExternalImage { image: String, registry_id: Option<String> },
    /// A build of an uploaded context (`POST /v1/services/{id}/uploads`).
    Upload {
        upload_id: String,
        /// The Dockerfile's path in the context (default `Dockerfile`).
        dockerfile: Option<String>,
        /// `ARG` values for the build.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        build_args: Option<BTreeMap<String, String>>,
    },
    /// A build of a Git repository at a branch, tag or commit.
    Git {
        repo_url: String,
        #[serde(rename = "ref")]
        git_ref: String,
        /// The Dockerfile's path in the repository (default `Dockerfile`).
        dockerfile: Option<String>,
        /// `ARG` values for the build.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        build_args: Option<BTreeMap<String, String>>,
    },
}

impl Source {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// `repository@reference` or the external image, for logs.
    pub fn describe(&self) -> String {
        match self {
            Source::Image { repository, reference } if reference.starts_with("sha256:") => {
                format!("{repository}@{reference}")
            }
            Source::Image { repository, reference } => format!("{repository}:{reference}"),
            Source::ExternalImage { image, .. } => image.clone(),
            Source::Upload { upload_id, .. } => format!("upload {upload_id}"),
            Source::Git { repo_url, git_ref, .. } => format!("{repo_url}#{git_ref}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_tagged_by_kind_and_strict() {
        let s: Source = serde_json::from_str(r#"{"kind":"Image","repository":"alpha/web","reference":"v1"}"#).unwrap();
        assert_eq!(s, Source::Image { repository: "alpha/web".into(), reference: "v1".into() });
        let g: Source = serde_json::from_str(r#"{"kind":"Git","repo_url":"https://x/y.git","ref":"main"}"#).unwrap();
        assert!(matches!(g, Source::Git { ref git_ref, .. } if git_ref == "main"));
        assert!(
            serde_json::from_str::<Source>(r#"{"kind":"Image","repository":"a/b","reference":"v1","x":1}"#).is_err()
        );
        assert!(serde_json::from_str::<Source>(r#"{"kind":"Nope"}"#).is_err());
        let back: Source = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn a_stored_spec_fills_defaults() {
        let spec = ServiceSpec::from_json(r#"{"port":8080,"replicas":2}"#).unwrap();
        assert_eq!(spec.restart_policy, RestartPolicy::Always);
        assert_eq!(spec.check().interval_s, 5);
        assert!(spec.env.is_empty() && spec.volumes.is_empty());
    }
}
