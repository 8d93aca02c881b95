//! The container runtime's seams to the kernel and to runc.
//!
//! Only this module spawns processes (`clippy.toml` forbids `Command::new`
//! elsewhere). For now it holds host facts (`host`) and runc discovery (`runc`);
//! the shim, OCI spec, cgroups and networks arrive with the runtime work.

pub mod host;
pub mod network;
pub mod runc;
