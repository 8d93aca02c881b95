//! The container runtime: the only module that touches the kernel or spawns
//! processes (`clippy.toml` forbids `Command::new` elsewhere).
//!
//! - `spec`: the OCI runtime config for a container.
//! - `cgroups`: where berth's cgroups live (v2, or v1 on hybrid hosts), project
//!   limits, metrics.
//! - `confined`: process trees berth runs itself (builds) in a cgroup of their own.
//! - `runc`: the `runc` command line.
//! - `shim`: `berth shim`, the per-container supervisor that owns the container's
//!   stdio, logs and exit status, so containers outlive the daemon.
//! - `pidfd`: signalling a process by a pidfd, never by a pid that may be reused.
//! - `network`: bridges, veth pairs, IPAM, NAT and isolation.
//! - `host`: facts about the machine.
//! - `group`: a host tool (the system `git`) run in a process group of its own,
//!   with a clean environment, a deadline and a cancel that stops all it started.

pub mod cgroups;
pub mod confined;
pub mod container;
pub mod exec;
pub mod group;
pub mod host;
pub mod network;
mod pidfd;
pub mod rootfs;
pub mod runc;
pub mod shim;
pub mod spec;

use crate::error::PathError;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The container cannot be built as asked (bad limits, no command, bad paths).
    #[error("{0}")]
    InvalidSpec(String),
    #[error("cgroup: {0}")]
    Cgroup(String),
    #[error("{command}: {message}")]
    Command { command: String, message: String },
    #[error("container {0} not found")]
    NotFound(String),
    #[error("shim for {id}: {message}")]
    Shim { id: String, message: String },
    #[error(transparent)]
    Path(#[from] PathError),
}
