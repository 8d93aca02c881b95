//! Builds: `Upload` and `Git` deployments become images in the hosted registry.
//!
//! - [`uploads`]: build contexts streamed to disk by `POST /v1/services/{id}/uploads`,
//!   checked to be safe archives, unpacked for a build, expired when unused.
//! - [`builder`]: the pipeline (adr/030): a queue of at most `[build] concurrency`
//!   builds, the context in a temp dir, each `FROM` resolved to a local OCI layout
//!   ([`dockerfile`], [`layout`]), `buildah` ([`buildah`]) in a cgroup of the build's
//!   own under `[build]`'s limits and timeout, the result imported into the hosted
//!   registry as `<project>/<service>:<deployment id>`, build storage collected.
//! - [`git`]: shallow clones of a branch, tag or commit over https or ssh (with the
//!   project's deploy key), and the checks on repository URLs and refs.
//! - [`webhook`]: push webhooks' signatures (GitHub HMAC, GitLab token), events and
//!   replay keys; `api::webhooks` receives them and deploys.
//!
//! Every part that produces a build's context writes only under the directory it
//! is given, reports its progress as lines on a [`LogTx`], and stops when the
//! deployment is cancelled.

pub mod buildah;
pub mod builder;
pub mod dockerfile;
pub mod git;
pub mod layout;
pub mod uploads;
pub mod webhook;

/// Lines of a build's output, on their way into the deployment's log.
pub type LogTx = tokio::sync::mpsc::Sender<String>;

/// Why a step of a build stopped short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The deployment was cancelled; whatever the step started is stopped.
    Cancelled,
    /// The step failed; the message says why, for the deployment's `error`.
    Failed(String),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Cancelled => f.write_str("cancelled"),
            Stop::Failed(m) => f.write_str(m),
        }
    }
}
