//! Container networks: a bridge per project, a veth pair into each container's
//! network namespace, addresses from a pool kept in SQLite, outbound NAT and
//! isolation between projects in an nftables table of berth's own (ADR 008).
//!
//! Design:
//! - A project holds the `k`-th project-sized subnet of the pool (`/24` of
//!   `10.213.0.0/16` by default; [`ipam`] keeps who holds what). Its bridge is
//!   `<link_prefix><k>` with the gateway, `.1`, on it; containers get `.2` upwards.
//! - A container gets a named netns (`ip netns add <netns_prefix><container id>`,
//!   so `/run/netns/…`, which runc joins by path) and a veth pair: the host end
//!   `<link_prefix>v<hash of the id>` on the bridge, the other end `eth0` inside with
//!   the address, a default route via the gateway and `lo` up. Its MAC derives from
//!   its address, the bridge's from the gateway's, so ARP caches survive reuse.
//! - Services of a project find each other by name through a generated
//!   `/etc/hosts` ([`Networks::hosts_file`]): one line per replica, service name as
//!   the host name. No DNS server runs.
//! - The kernel work is done by `ip` and `nft` (iproute2 and nftables, packaged
//!   dependencies), batched (`ip -batch`, `nft -f -`), so every step can be replayed
//!   by hand. State is read back from sysfs and `/run/netns` without spawning.
//! - Every operation is idempotent and doubles as a repair: `attach` of an attached
//!   container fixes what is missing and changes nothing else (a daemon restart while
//!   containers run); a failed `attach` or `ensure_project` undoes what it created
//!   (the address lease included), so nothing half-made is left behind.
//!
//! Current limits: IPv4 only. One host-file name per replica, so a service with
//! several replicas resolves to all of them in file order and most clients take the
//! first (no balancing; the ingress balances public traffic). No port publishing:
//! inbound traffic reaches containers through the ingress proxy. The host's own
//! firewall is not touched: a `FORWARD` policy of drop elsewhere (Docker sets one)
//! also drops containers' outbound traffic. Calls block on `ip`/`nft`: run them on
//! blocking threads.

mod addr;
mod firewall;
mod inside;
pub mod ipam;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

pub use addr::Ipv4Net;
pub use ipam::{Ipam, IpamError, Lease, MemIpam};

use crate::error::PathError;

/// Where `ip netns` keeps named network namespaces (fixed in iproute2).
pub const NETNS_DIR: &str = "/run/netns";
/// The interface name inside every container.
pub const CONTAINER_IFNAME: &str = "eth0";
/// The subnet size a project gets unless the pool is smaller.
pub const DEFAULT_PREFIX_PER_PROJECT: u8 = 24;

const SYS_CLASS_NET: &str = "/sys/class/net";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// `statfs` type of an nsfs file, i.e. a live namespace bind mount.
const NSFS_MAGIC: u64 = 0x6e73_6673;
/// Interface names are at most 15 bytes; a veth host end is the prefix, `v` and 8.
const MAX_LINK_PREFIX: usize = 6;
const VETH_HASH_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network.pool {pool:?}: {reason}")]
    InvalidPool { pool: String, reason: String },
    #[error("network option {option}: {reason}")]
    InvalidOption { option: &'static str, reason: String },
    #[error("{what} {value:?} {reason}")]
    InvalidName { what: &'static str, value: String, reason: &'static str },
    #[error("address pool exhausted: {0}")]
    PoolExhausted(String),
    #[error("container {container} is attached to project {attached}, not {requested}")]
    OtherProject { container: String, attached: String, requested: String },
    #[error("interface {0} exists and is not one of berth's bridges")]
    LinkInUse(String),
    #[error("`{command}` failed ({status}): {stderr}")]
    Command { command: String, status: String, stderr: String },
    #[error("run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("configure {CONTAINER_IFNAME} inside netns {netns}: {source}")]
    Inside {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ipam: {0}")]
    Ipam(#[source] IpamError),
    #[error(transparent)]
    Path(#[from] PathError),
}

type Result<T> = std::result::Result<T, NetError>;

/// How a [`Networks`] names and numbers things. Tests give each instance prefixes,
/// a table and a pool of its own, so instances run side by side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetOptions {
    /// Addresses handed to containers.
    pub pool: Ipv4Net,
    /// Length of each project's subnet; `/24` holds 253 containers.
    pub prefix_per_project: u8,
    /// Start of every interface berth creates (bridges `<prefix><subnet index>`, veth
    /// host ends `<prefix>v<hash>`); lowercase letters, digits and `-`, at most 6.
    pub link_prefix: String,
    /// Start of every named netns berth creates (`<prefix><container id>`).
    pub netns_prefix: String,
    /// berth's nftables table, family `inet`.
    pub nft_table: String,
}

impl NetOptions {
    /// berth's names with this pool; projects get `/24`s, or the whole pool if smaller.
    pub fn new(pool: Ipv4Net) -> Self {
        Self {
            pool,
            prefix_per_project: DEFAULT_PREFIX_PER_PROJECT.max(pool.prefix_len()),
            link_prefix: "berth-".into(),
            netns_prefix: "berth-".into(),
            nft_table: "berth".into(),
        }
    }

    /// From the `[network]` config section.
    pub fn from_config(config: &crate::config::NetworkConfig) -> Result<Self> {
        let pool: Ipv4Net =
            config.pool.parse().map_err(|reason| NetError::InvalidPool { pool: config.pool.clone(), reason })?;
        let opts = Self {
            link_prefix: config.link_prefix.clone(),
            netns_prefix: config.netns_prefix.clone(),
            nft_table: config.nft_table.clone(),
            ..Self::new(pool)
        };
        opts.validate()?;
        Ok(opts)
    }

    pub fn validate(&self) -> Result<()> {
        let invalid = |option, reason: String| Err(NetError::InvalidOption { option, reason });
        if self.pool.prefix_len() > 30 {
            return Err(NetError::InvalidPool {
                pool: self.pool.to_string(),
                reason: "too small: a project needs at least a /30".into(),
            });
        }
        if self.prefix_per_project < self.pool.prefix_len() || self.prefix_per_project > 30 {
            return invalid(
                "prefix_per_project",
                format!("/{} does not fit in the pool {} or is smaller than /30", self.prefix_per_project, self.pool),
            );
        }
        let name_ok =
            |s: &str, extra: u8| s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == extra);
        if self.link_prefix.is_empty() || self.link_prefix.len() > MAX_LINK_PREFIX || !name_ok(&self.link_prefix, b'-')
        {
            return invalid("link_prefix", format!("{:?} is not 1 to 6 of [a-z0-9-]", self.link_prefix));
        }
        if self.netns_prefix.is_empty() || self.netns_prefix.len() > 64 || !name_ok(&self.netns_prefix, b'-') {
            return invalid("netns_prefix", format!("{:?} is not 1 to 64 of [a-z0-9-]", self.netns_prefix));
        }
        if self.nft_table.is_empty() || self.nft_table.len() > 64 || !name_ok(&self.nft_table, b'_') {
            return invalid("nft_table", format!("{:?} is not 1 to 64 of [a-z0-9_]", self.nft_table));
        }
        Ok(())
    }
}

/// A project's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectNet {
    pub project_id: String,
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// A container's place on its project's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub project_id: String,
    pub service: String,
    /// The named netns; runc joins it by path (`linux.namespaces[network].path`).
    pub netns_path: PathBuf,
    /// The host end of the veth pair (the container's end is [`CONTAINER_IFNAME`]).
    pub host_ifname: String,
    pub bridge: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mac: String,
}

/// What [`Networks::recover`] found on start.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Leased containers whose netns is there: their containers may still run.
    pub live: Vec<Attachment>,
    /// Leased containers without a netns (after a reboot, say): attach again to
    /// restore them with the same address, or detach to free it.
    pub missing: Vec<Lease>,
    /// Container ids whose netns had no lease and was deleted.
    pub removed_netns: Vec<String>,
    /// Bridges of projects that hold no subnet any more, deleted.
    pub removed_bridges: Vec<String>,
}

/// Container networking for one daemon. Cheap to share behind an `Arc`.
pub struct Networks {
    opts: NetOptions,
    ipam: Arc<dyn Ipam>,
    /// Projects whose bridge this process has set up or checked and put in the
    /// firewall; its lock serialises every bridge and firewall change.
    ready: Mutex<HashSet<String>>,
    /// A step at which the next operation fails, to test the undo paths.
    #[cfg(test)]
    fail_before: Mutex<Option<&'static str>>,
}

/// What a failing `attach` made and must undo.
#[derive(Default)]
struct Made {
    lease: bool,
    netns: bool,
    veth: bool,
}

impl Networks {
    pub fn new(opts: NetOptions, ipam: Arc<dyn Ipam>) -> Result<Self> {
        opts.validate()?;
        Ok(Self {
            opts,
            ipam,
            ready: Mutex::new(HashSet::new()),
            #[cfg(test)]
            fail_before: Mutex::new(None),
        })
    }

    pub fn options(&self) -> &NetOptions {
        &self.opts
    }

    /// The project's network, creating it (subnet, bridge, firewall entry) if needed.
    /// The first call for a project in this process also repairs an existing bridge.
    pub fn ensure_project(&self, project_id: &str) -> Result<ProjectNet> {
        check_id("project id", project_id)?;
        let mut ready = self.ready();
        let held = self.ipam.subnet(project_id).map_err(NetError::Ipam)?;
        let index = match held {
            Some(index) => index,
            None => self.ipam.allocate_subnet(project_id, self.subnet_count()).map_err(NetError::Ipam)?.ok_or_else(
                || {
                    NetError::PoolExhausted(format!(
                        "all {} /{} subnets of {} are taken by other projects",
                        self.subnet_count(),
                        self.opts.prefix_per_project,
                        self.opts.pool
                    ))
                },
            )?,
        };
        let net = self.project_net(project_id, index)?;
        if ready.contains(project_id) && is_bridge(&net.bridge) {
            return Ok(net);
        }
        let existed = link_exists(&net.bridge);
        if existed && !is_bridge(&net.bridge) {
            return Err(NetError::LinkInUse(net.bridge));
        }
        if let Err(e) = self.set_up_bridge(&net, existed) {
            if !existed {
                warn_undo("delete bridge", del_link(&net.bridge));
                warn_undo("rewrite the firewall", self.sync_firewall());
            }
            if held.is_none() {
                warn_undo("release subnet", self.ipam.release_subnet(project_id).map_err(NetError::Ipam));
            }
            return Err(e);
        }
        if !existed {
            tracing::info!(project = project_id, bridge = %net.bridge, subnet = %net.subnet, "project network created");
        }
        ready.insert(project_id.to_string());
        Ok(net)
    }

    fn set_up_bridge(&self, net: &ProjectNet, existed: bool) -> Result<()> {
        enable_ip_forward()?;
        self.fault("bridge")?;
        let b = &net.bridge;
        let mut script = String::new();
        if !existed {
            script.push_str(&format!("link add {b} type bridge\n"));
        }
        script.push_str(&format!("link set {b} address {}\n", addr::mac_for(net.gateway)));
        script.push_str(&format!("addr replace {}/{} dev {b}\n", net.gateway, net.subnet.prefix_len()));
        script.push_str(&format!("link set {b} up\n"));
        ip_batch(&script)?;
        self.fault("firewall")?;
        self.sync_firewall()
    }

    /// The project's network if it holds a subnet; creates nothing.
    pub fn project(&self, project_id: &str) -> Result<Option<ProjectNet>> {
        match self.ipam.subnet(project_id).map_err(NetError::Ipam)? {
            Some(index) => self.project_net(project_id, index).map(Some),
            None => Ok(None),
        }
    }

    /// Puts the container on its project's network (creating that if needed) and
    /// returns where; the runtime then starts the container in `netns_path`. Calling
    /// it again for an attached container repairs and returns the same attachment.
    pub fn attach(&self, project_id: &str, container_id: &str, service: &str) -> Result<Attachment> {
        check_id("container id", container_id)?;
        check_label("service name", service)?;
        let net = self.ensure_project(project_id)?;
        let mut made = Made::default();
        let lease = match self.ipam.lease(container_id).map_err(NetError::Ipam)? {
            Some(l) if l.project_id != project_id => {
                return Err(NetError::OtherProject {
                    container: container_id.into(),
                    attached: l.project_id,
                    requested: project_id.into(),
                });
            }
            Some(l) => l,
            None => {
                let (first, last) = host_range(&net.subnet);
                let lease = self
                    .ipam
                    .allocate_address(project_id, container_id, service, first, last)
                    .map_err(NetError::Ipam)?
                    .ok_or_else(|| {
                        NetError::PoolExhausted(format!(
                            "no free address left in {}, the subnet of project {project_id}",
                            net.subnet
                        ))
                    })?;
                made.lease = true;
                lease
            }
        };
        match self.plumb(&net, &lease, &mut made) {
            Ok(a) => {
                tracing::debug!(container = container_id, address = %a.address, netns = %a.netns_path.display(), "attached");
                Ok(a)
            }
            Err(e) => {
                if made.veth {
                    warn_undo("delete veth", del_link(&self.veth_name(container_id)));
                }
                if made.netns {
                    warn_undo("delete netns", del_netns(&self.netns_name(container_id)));
                }
                if made.lease {
                    warn_undo("release address", self.ipam.release_address(container_id).map_err(NetError::Ipam));
                }
                Err(e)
            }
        }
    }

    fn plumb(&self, net: &ProjectNet, lease: &Lease, made: &mut Made) -> Result<Attachment> {
        let a = self.attachment_of(net, lease)?;
        let ns = self.netns_name(&lease.container_id);
        let veth = &a.host_ifname;
        self.fault("netns")?;
        // One `ip -batch` makes the netns, the veth pair and the bridge port: each
        // process spawned here is paid on every container start.
        let mut host = String::new();
        if !netns_alive(&a.netns_path) {
            made.netns = true;
            // A file left without its mount by a crash would make `netns add` fail.
            del_netns(&ns)?;
            host.push_str(&format!("netns add {ns}\n"));
        }
        self.fault("veth")?;
        if made.netns {
            // The peer of a leftover host end lives in some other namespace.
            del_link(veth)?;
        }
        if !link_exists(veth) {
            made.veth = true;
            host.push_str(&format!(
                "link add {veth} type veth peer name {CONTAINER_IFNAME} address {} netns {ns}\n",
                a.mac
            ));
        }
        host.push_str(&format!("link set {veth} master {} up\n", a.bridge));
        ip_batch(&host)?;
        self.fault("address")?;
        inside::configure(&a.netns_path, CONTAINER_IFNAME, a.address, a.prefix_len, a.gateway)
            .map_err(|source| NetError::Inside { netns: ns.clone(), source })?;
        Ok(a)
    }

    /// The container's attachment as IPAM records it (whether or not its netns exists).
    pub fn attachment(&self, container_id: &str) -> Result<Option<Attachment>> {
        let Some(lease) = self.ipam.lease(container_id).map_err(NetError::Ipam)? else { return Ok(None) };
        let Some(net) = self.project(&lease.project_id)? else { return Ok(None) };
        self.attachment_of(&net, &lease).map(Some)
    }

    /// Takes the container off the network: deletes its veth pair and netns and frees
    /// its address. Anything already gone is fine.
    pub fn detach(&self, container_id: &str) -> Result<()> {
        check_id("container id", container_id)?;
        del_link(&self.veth_name(container_id))?;
        del_netns(&self.netns_name(container_id))?;
        self.ipam.release_address(container_id).map_err(NetError::Ipam)
    }

    /// Detaches the project's containers, deletes its bridge and frees its subnet.
    pub fn remove_project(&self, project_id: &str) -> Result<()> {
        check_id("project id", project_id)?;
        for lease in self.ipam.leases(project_id).map_err(NetError::Ipam)? {
            self.detach(&lease.container_id)?;
        }
        let mut ready = self.ready();
        if let Some(index) = self.ipam.subnet(project_id).map_err(NetError::Ipam)? {
            del_link(&self.bridge_name(index))?;
            self.sync_firewall()?;
            // Last, so a failure above leaves the subnet pointing at what remains.
            self.ipam.release_subnet(project_id).map_err(NetError::Ipam)?;
            tracing::info!(project = project_id, "project network removed");
        }
        ready.remove(project_id);
        Ok(())
    }

    /// The project's names: each leased container's address with its service name,
    /// by service then address.
    pub fn project_hosts(&self, project_id: &str) -> Result<Vec<(Ipv4Addr, String)>> {
        let Some(net) = self.project(project_id)? else { return Ok(Vec::new()) };
        let leases = self.ipam.leases(project_id).map_err(NetError::Ipam)?;
        leases.into_iter().map(|l| Ok((self.address_of(&net, &l)?, l.service))).collect()
    }

    /// `/etc/hosts` for the project's containers ([`render_hosts`] of
    /// [`Networks::project_hosts`]). The runtime bind-mounts one copy per container
    /// and rewrites it in place (truncate and write, never rename: a bind mount holds
    /// the inode) whenever the project's replicas change.
    pub fn hosts_file(&self, project_id: &str) -> Result<String> {
        Ok(render_hosts(&self.project_hosts(project_id)?))
    }

    /// Run once on daemon start, before anything else touches the network: turns
    /// forwarding on, rewrites the firewall, deletes netns without a lease and bridges
    /// without a subnet, and reports which leased containers still have a netns.
    pub fn recover(&self) -> Result<Recovered> {
        enable_ip_forward()?;
        let mut out = Recovered::default();
        let mut present: HashSet<String> = list_dir(Path::new(NETNS_DIR))
            .into_iter()
            .filter_map(|n| n.strip_prefix(&self.opts.netns_prefix).map(str::to_string))
            .collect();
        let subnets = self.ipam.subnets().map_err(NetError::Ipam)?;
        for (project_id, index) in &subnets {
            let net = self.project_net(project_id, *index)?;
            for lease in self.ipam.leases(project_id).map_err(NetError::Ipam)? {
                let attachment = self.attachment_of(&net, &lease)?;
                if present.remove(&lease.container_id) && netns_alive(&attachment.netns_path) {
                    out.live.push(attachment);
                } else {
                    out.missing.push(lease);
                }
            }
        }
        let mut orphans: Vec<String> = present.into_iter().collect();
        orphans.sort();
        for container_id in orphans {
            del_link(&self.veth_name(&container_id))?;
            del_netns(&self.netns_name(&container_id))?;
            out.removed_netns.push(container_id);
        }
        let known: HashSet<String> = subnets.iter().map(|(_, index)| self.bridge_name(*index)).collect();
        let _ready = self.ready();
        for bridge in self.our_bridges() {
            if !known.contains(&bridge) {
                del_link(&bridge)?;
                out.removed_bridges.push(bridge);
            }
        }
        self.sync_firewall()?;
        tracing::info!(
            live = out.live.len(),
            missing = out.missing.len(),
            removed_netns = out.removed_netns.len(),
            removed_bridges = out.removed_bridges.len(),
            "networks recovered"
        );
        Ok(out)
    }

    /// Deletes berth's nftables table and every netns, veth and bridge with this
    /// instance's prefixes (uninstall, test clean-up). IPAM is left as it is.
    /// Carries on past failures and reports the first.
    pub fn teardown_all(&self) -> Result<()> {
        let mut ready = self.ready();
        ready.clear();
        let mut first_err = None;
        let mut keep = |r: Result<()>| {
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        };
        keep(run("nft", &["-f", "-"], Some(&firewall::teardown(&self.opts.nft_table))));
        for name in list_dir(Path::new(NETNS_DIR)) {
            if name.starts_with(&self.opts.netns_prefix) {
                keep(del_netns(&name));
            }
        }
        for name in list_dir(Path::new(SYS_CLASS_NET)) {
            if self.is_our_veth(&name) {
                keep(del_link(&name));
            }
        }
        for name in self.our_bridges() {
            keep(del_link(&name));
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Where the container's netns is (or would be) mounted.
    pub fn netns_path(&self, container_id: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(self.netns_name(container_id))
    }

    fn ready(&self) -> MutexGuard<'_, HashSet<String>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn subnet_count(&self) -> u32 {
        self.opts.pool.subnet_count(self.opts.prefix_per_project)
    }

    fn project_net(&self, project_id: &str, index: u32) -> Result<ProjectNet> {
        let subnet = self.opts.pool.subnet(self.opts.prefix_per_project, index).ok_or_else(|| {
            NetError::Ipam(
                format!(
                    "project {project_id} holds subnet {index}, outside /{} subnets of {} (was network.pool changed?)",
                    self.opts.prefix_per_project, self.opts.pool
                )
                .into(),
            )
        })?;
        let gateway = subnet.host(1).unwrap_or(subnet.addr());
        Ok(ProjectNet { project_id: project_id.to_string(), bridge: self.bridge_name(index), subnet, gateway })
    }

    fn address_of(&self, net: &ProjectNet, lease: &Lease) -> Result<Ipv4Addr> {
        let (first, last) = host_range(&net.subnet);
        match net.subnet.host(lease.host) {
            Some(ip) if (first..=last).contains(&lease.host) => Ok(ip),
            _ => Err(NetError::Ipam(
                format!("container {} holds host {} outside {}", lease.container_id, lease.host, net.subnet).into(),
            )),
        }
    }

    fn attachment_of(&self, net: &ProjectNet, lease: &Lease) -> Result<Attachment> {
        let address = self.address_of(net, lease)?;
        Ok(Attachment {
            container_id: lease.container_id.clone(),
            project_id: lease.project_id.clone(),
            service: lease.service.clone(),
            netns_path: self.netns_path(&lease.container_id),
            host_ifname: self.veth_name(&lease.container_id),
            bridge: net.bridge.clone(),
            address,
            prefix_len: net.subnet.prefix_len(),
            gateway: net.gateway,
            mac: addr::mac_for(address),
        })
    }

    fn bridge_name(&self, index: u32) -> String {
        format!("{}{index}", self.opts.link_prefix)
    }

    /// `<link_prefix>v` and 40 bits of the id's SHA-256 in lowercase base32.
    fn veth_name(&self, container_id: &str) -> String {
        const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
        let digest = Sha256::digest(container_id.as_bytes());
        let bits = digest[..5].iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        let hash: String =
            (0..VETH_HASH_LEN).map(|i| char::from(ALPHABET[((bits >> (35 - 5 * i)) & 31) as usize])).collect();
        format!("{}v{hash}", self.opts.link_prefix)
    }

    fn netns_name(&self, container_id: &str) -> String {
        format!("{}{container_id}", self.opts.netns_prefix)
    }

    fn is_our_veth(&self, name: &str) -> bool {
        name.strip_prefix(&self.opts.link_prefix).and_then(|rest| rest.strip_prefix('v')).is_some_and(|h| {
            h.len() == VETH_HASH_LEN && h.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
    }

    /// Bridges named `<link_prefix><digits>`, sorted.
    fn our_bridges(&self) -> Vec<String> {
        list_dir(Path::new(SYS_CLASS_NET))
            .into_iter()
            .filter(|n| {
                n.strip_prefix(&self.opts.link_prefix)
                    .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
            })
            .filter(|n| is_bridge(n))
            .collect()
    }

    /// Rewrites the nftables table for the bridges that exist now. Callers hold `ready`.
    fn sync_firewall(&self) -> Result<()> {
        let script =
            firewall::render(&self.opts.nft_table, self.opts.pool, &self.opts.link_prefix, &self.our_bridges());
        run("nft", &["-f", "-"], Some(&script))
    }

    #[cfg(test)]
    fn fault(&self, step: &'static str) -> Result<()> {
        let mut f = self.fail_before.lock().unwrap_or_else(|e| e.into_inner());
        if *f == Some(step) {
            *f = None;
            return Err(NetError::Command {
                command: format!("(injected failure before {step})"),
                status: "test".into(),
                stderr: String::new(),
            });
        }
        Ok(())
    }

    #[cfg(not(test))]
    fn fault(&self, _step: &'static str) -> Result<()> {
        Ok(())
    }
}

/// `/etc/hosts` text: localhost, then one line per `(address, name)`.
pub fn render_hosts(entries: &[(Ipv4Addr, String)]) -> String {
    let mut s = String::from(
        "# Generated by berth: this project's services. Rewritten when replicas change.\n\
         127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    for (ip, name) in entries {
        s.push_str(&format!("{ip}\t{name}\n"));
    }
    s
}

/// Container addresses in a subnet: after the network address and the gateway,
/// before the broadcast address.
fn host_range(subnet: &Ipv4Net) -> (u32, u32) {
    (2, u32::try_from(subnet.size().saturating_sub(2)).unwrap_or(u32::MAX))
}

/// Ids become netns names and file names: a letter or digit, then letters, digits,
/// `_`, `.` and `-`, at most 128.
fn check_id(what: &'static str, value: &str) -> Result<()> {
    let ok = value.len() <= 128
        && value.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(NetError::InvalidName { what, value: value.into(), reason: "is not 1 to 128 of [A-Za-z0-9_.-]" })
    }
}

/// Service names become host names: DNS labels.
fn check_label(what: &'static str, value: &str) -> Result<()> {
    let ok = (1..=63).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok { Ok(()) } else { Err(NetError::InvalidName { what, value: value.into(), reason: "is not a DNS label" }) }
}

fn warn_undo(what: &str, r: Result<()>) {
    if let Err(e) = r {
        tracing::warn!(error = %e, "undo after a failed network change: {what}");
    }
}

fn link_exists(name: &str) -> bool {
    Path::new(SYS_CLASS_NET).join(name).exists()
}

fn is_bridge(name: &str) -> bool {
    Path::new(SYS_CLASS_NET).join(name).join("bridge").is_dir()
}

/// Names in a directory, sorted; a missing directory is empty.
fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// True when `path` is a mounted namespace, not just a file left behind.
fn netns_alive(path: &Path) -> bool {
    // The field's type differs by architecture.
    rustix::fs::statfs(path).is_ok_and(|st| st.f_type as u64 == NSFS_MAGIC)
}

fn del_link(name: &str) -> Result<()> {
    if !link_exists(name) {
        return Ok(());
    }
    match run("ip", &["link", "del", name], None) {
        Err(_) if !link_exists(name) => Ok(()),
        r => r,
    }
}

fn del_netns(name: &str) -> Result<()> {
    let path = Path::new(NETNS_DIR).join(name);
    if !path.exists() {
        return Ok(());
    }
    match run("ip", &["netns", "del", name], None) {
        Err(_) if !path.exists() => Ok(()),
        r => r,
    }
}

/// Forwarding must be on for containers to reach past the bridge; it is the one
/// host-wide setting berth changes.
fn enable_ip_forward() -> Result<()> {
    let now = std::fs::read_to_string(IP_FORWARD).map_err(|e| PathError::new("read", IP_FORWARD, e))?;
    if now.trim() != "1" {
        std::fs::write(IP_FORWARD, "1\n").map_err(|e| PathError::new("write", IP_FORWARD, e))?;
        tracing::info!("turned on net.ipv4.ip_forward");
    }
    Ok(())
}

/// `ip -batch -` with `script` on stdin.
fn ip_batch(script: &str) -> Result<()> {
    run("ip", &["-batch", "-"], Some(script))
}

fn command(program: &str) -> Command {
    super::runc::command(program)
}

/// Runs a command to completion; a failure carries the command line (with its
/// stdin script) and stderr.
fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<()> {
    let line = || {
        let mut l = format!("{program} {}", args.join(" "));
        if let Some(input) = input {
            l.push_str(&format!(" <<< '{}'", input.trim_end().replace('\n', "; ")));
        }
        l
    };
    let mut child = command(program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetError::Spawn { command: line(), source })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A write error means the command exited early; its status says why.
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| NetError::Spawn { command: line(), source })?;
    if out.status.success() {
        return Ok(());
    }
    Err(NetError::Command {
        command: line(),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}
