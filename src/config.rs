//! Configuration: one serde struct, loaded from TOML, then `BERTH_*` environment
//! variables, then command-line flags (each layer wins over the one before).
//! `--dev` only changes defaults; anything set explicitly still wins.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the config file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/berth.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parse {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The whole daemon configuration.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory holding `state.db`, the registry, images, containers, volumes and secrets.
    pub data_dir: PathBuf,
    /// Directory for runtime files (runc root, shim and console sockets). In dev mode,
    /// unless set, `<data_dir>/run`, so each dev daemon has its own.
    pub run_dir: PathBuf,
    /// The management API and registry listener.
    pub api: ApiConfig,
    /// The HTTP/HTTPS ingress.
    pub ingress: IngressConfig,
    /// ACME certificate issuance.
    pub acme: AcmeConfig,
    /// Names berth resolves itself.
    pub dns: DnsConfig,
    /// Container networking.
    pub network: NetworkConfig,
    /// The hosted registry.
    pub registry: RegistryConfig,
    /// Running containers.
    pub runtime: RuntimeConfig,
    /// Rollouts of services.
    pub deploy: DeployConfig,
    /// The layer cache of images pulled from external registries.
    pub cache: CacheConfig,
    /// Builds of `Upload` and `Git` deployments, and their uploads.
    pub build: BuildConfig,
    /// Browser consoles into running replicas.
    pub console: ConsoleConfig,
    /// Dev mode: unprivileged ports, local state, self-signed TLS, no ACME. Set by `--dev`.
    #[serde(skip)]
    pub dev: bool,
    /// Keys the operator set that no code reads yet (none today; the list stays for
    /// the next planned key); the daemon says so at start instead of ignoring them.
    #[serde(skip)]
    pub not_yet_used: Vec<String>,
}

/// Keys accepted (they are part of the documented contract) but not read by any
/// code yet.
const NOT_YET_USED: &[(&str, &str)] = &[];

fn not_yet_used(table: &toml::Table) -> Vec<String> {
    let mut out = Vec::new();
    for (section, key) in NOT_YET_USED {
        let Some(toml::Value::Table(t)) = table.get(*section) else { continue };
        for k in t.keys() {
            if *key == "*" || k == key {
                out.push(format!("{section}.{k}"));
            }
        }
    }
    out
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address of the `/healthz`, `/v1` and `/v2` listener.
    pub listen: SocketAddr,
    /// Largest accepted JSON request body, in bytes.
    pub body_limit_bytes: usize,
    /// Requests per minute allowed to one token.
    pub rate_limit_per_minute: u32,
    /// Requests per minute allowed to one source address without a valid token.
    pub anonymous_rate_limit_per_minute: u32,
    /// Failed logins from one address within `login_window_seconds` before logins
    /// from it are refused.
    pub login_failures_per_minute: u32,
    /// The sliding window failed logins are counted over, in seconds.
    pub login_window_seconds: u64,
    /// Lifetime of a session token, in hours.
    pub session_ttl_hours: u64,
    /// Lifetime of a registry token handed out by `/v2/token` for a password, in seconds.
    pub registry_token_ttl_seconds: u64,
    /// Sessions one user may hold; opening one more ends their least recently used.
    pub max_sessions_per_user: u32,
    /// API tokens one user may hold.
    pub max_tokens_per_user: u32,
    /// How long shutdown waits for in-flight requests, in seconds.
    pub shutdown_grace_seconds: u64,
    /// Open connections in all.
    pub max_connections: usize,
    /// Open connections from one address (IPv6: one /64).
    pub max_connections_per_address: usize,
    /// Time a client has to send a request head, and the longest a kept-alive
    /// connection may sit idle, in seconds.
    pub head_timeout_seconds: u64,
    /// Time every request body gets before the minimum rate applies, in seconds.
    pub body_grace_seconds: u64,
    /// Slowest average rate a request body may arrive at after the grace, in bytes/s.
    pub body_min_bytes_per_second: u64,
    /// Longest pause between two pieces of a request body, in seconds.
    pub body_idle_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct IngressConfig {
    /// Plain HTTP listener: the reverse proxy to services, the challenge paths, and
    /// redirects to HTTPS for hosts with a certificate.
    pub http_listen: SocketAddr,
    /// HTTPS listener (TLS by SNI, HTTP/2 and HTTP/1.1 by ALPN).
    pub https_listen: SocketAddr,
    /// Services are reachable at `<service>.<project>.<apps_domain>`.
    pub apps_domain: String,
    /// Optional hostname routed to the API listener over TLS.
    pub control_domain: Option<String>,
    /// Open client connections to the ingress, in all.
    pub max_connections: usize,
    /// Open client connections from one address (IPv6: one /64).
    pub max_connections_per_address: usize,
    /// Time a client has to send a request head, and the longest a kept-alive
    /// connection may sit idle, in seconds.
    pub head_timeout_seconds: u64,
    /// Time every request body gets before the minimum rate applies, in seconds.
    pub body_grace_seconds: u64,
    /// Slowest average rate a request body may arrive at after the grace, in bytes/s
    /// (time the upstream spends not reading is not counted).
    pub body_min_bytes_per_second: u64,
    /// Longest pause between two pieces of a request body, in seconds.
    pub body_idle_seconds: u64,
    /// The port domain verification fetches `http://<domain>/.well-known/berth-challenge/…`
    /// from: 80, where the world reaches this host's HTTP ingress (8080 in dev mode).
    pub challenge_port: u16,
    /// Time a replica has from being sent a request to answering its head, in
    /// seconds; past it the client gets 504. A body streaming after the head is not cut.
    pub upstream_timeout_seconds: u64,
    /// Whether plain HTTP requests for a host with a certificate of its own are
    /// redirected (308) to HTTPS (the challenge paths never are).
    pub https_redirect: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct AcmeConfig {
    /// Whether certificates are requested from the ACME directory.
    pub enabled: bool,
    /// Contact URL given to the CA (`mailto:…`).
    pub contact: String,
    /// The ACME directory.
    pub directory_url: String,
    /// Extra PEM roots trusted for the directory (private or test CAs): a file path.
    pub ca_bundle: String,
    /// How often the renewal worker looks for hosts whose certificate is missing or
    /// has less than a third of its lifetime left, in seconds.
    pub renew_check_seconds: u64,
    /// Wait after a host's first failed issuance, in seconds; it doubles with every
    /// further failure, up to `backoff_max_seconds`.
    pub backoff_min_seconds: u64,
    /// Longest wait between two failed issuances for one host, in seconds.
    pub backoff_max_seconds: u64,
    /// How the CA checks that a host points here: `http-01` (port 80) or
    /// `tls-alpn-01` (port 443, for hosts whose port 80 is closed).
    pub challenge: AcmeChallenge,
}

/// The ACME challenge berth answers (RFC 8555 §8.3, RFC 8737).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub enum AcmeChallenge {
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Hostname → address answers berth uses instead of the system resolver (pulls
    /// from external registries, domain verification; TLS still checks the
    /// certificate for the name).
    pub overrides: BTreeMap<String, IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Bytes the layer cache may hold before cache GC evicts the least recently used
    /// images (never one a service runs, nor one used within `registry.gc_grace_seconds`).
    pub max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { max_bytes: 10 << 30 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// IPv4 pool container addresses are taken from.
    pub pool: String,
    /// Start of the names of the bridges and veths berth makes (at most 6 characters).
    pub link_prefix: String,
    /// Start of the names of the network namespaces berth makes.
    pub netns_prefix: String,
    /// Name of berth's own nftables table (family `inet`).
    pub nft_table: String,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Unreferenced blobs and untagged manifests younger than this survive GC (pushes in flight).
    pub gc_grace_seconds: u64,
    /// Upload sessions idle this long are purged.
    pub upload_ttl_seconds: u64,
    /// How often GC runs by itself; 0 turns the periodic run off.
    pub gc_interval_seconds: u64,
    /// Upload sessions one project may have open at once.
    pub max_open_uploads_per_project: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Whether the daemon runs containers at all (needs root and runc).
    pub enabled: bool,
    /// Name of berth's cgroup subtree beneath the daemon's own cgroup (or beneath
    /// `cgroup_parent`).
    pub cgroup_prefix: String,
    /// A cgroup path (`/` or `/a/b`) to put berth's subtree under instead of the
    /// daemon's own cgroup; empty: beneath the daemon's. The package sets `/`, so
    /// containers never sit below the systemd service and it can restart while they run.
    pub cgroup_parent: String,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct DeployConfig {
    /// How long the previous deployment's replicas keep running after the routing
    /// table has switched to the new ones, for the requests they are serving, in seconds.
    pub drain_seconds: u64,
    /// Time a replica gets between SIGTERM and SIGKILL when it is stopped, in seconds.
    pub stop_grace_seconds: u64,
    /// Longest a new replica may take to pass its health check before the rollout
    /// (or scale-up) fails, in seconds.
    pub health_deadline_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct BuildConfig {
    /// The builder: `buildah`, looked up on `PATH`, or an absolute path.
    pub buildah: String,
    /// Largest build context accepted, compressed as uploaded and unpacked alike, in bytes.
    pub max_upload_bytes: u64,
    /// How long an upload no deployment has used is kept, in seconds.
    pub upload_ttl_seconds: u64,
    /// Builds that run at once; the rest wait in line.
    pub concurrency: u32,
    /// Longest a build may run before it is stopped and its deployment fails, in seconds.
    pub timeout_seconds: u64,
    /// Memory limit of a build's process tree, in MiB.
    pub memory_mb: u64,
    /// CPU limit of a build, in cores.
    pub cpus: f64,
    /// Process limit of a build.
    pub pids: u64,
    /// Build storage (base images and layers buildah keeps) past this size is
    /// collected after a build, in bytes.
    pub storage_max_bytes: u64,
    /// Extra PEM roots trusted, besides the system's, for `https://` clones of Git
    /// sources (a private Git server's CA); empty for the system's roots only.
    pub git_ca_bundle: String,
    /// Longest a clone of a Git source may take, in seconds.
    pub git_timeout_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// A console session with no input and no output for this long is closed, in seconds.
    pub idle_timeout_seconds: u64,
    /// Console sessions one user may have open at once.
    pub max_sessions_per_user: u32,
    /// Largest WebSocket message a client may send, in bytes.
    pub max_frame_bytes: usize,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self { idle_timeout_seconds: 900, max_sessions_per_user: 4, max_frame_bytes: 64 * 1024 }
    }
}

impl Default for BuildConfig {
    fn default() -> Self {
        Self {
            buildah: "buildah".into(),
            max_upload_bytes: 1 << 30,
            upload_ttl_seconds: 86_400,
            concurrency: 1,
            timeout_seconds: 1800,
            memory_mb: 2048,
            cpus: 2.0,
            pids: 4096,
            storage_max_bytes: 10 << 30,
            git_ca_bundle: String::new(),
            git_timeout_seconds: 600,
        }
    }
}

impl Default for DeployConfig {
    fn default() -> Self {
        Self { drain_seconds: 10, stop_grace_seconds: 10, health_deadline_seconds: 120 }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self { enabled: true, cgroup_prefix: "berth".into(), cgroup_parent: String::new() }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            gc_grace_seconds: 3600,
            upload_ttl_seconds: 86_400,
            gc_interval_seconds: 86_400,
            max_open_uploads_per_project: 256,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/berth"),
            run_dir: PathBuf::from("/run/berth"),
            api: ApiConfig::default(),
            ingress: IngressConfig::default(),
            acme: AcmeConfig::default(),
            dns: DnsConfig::default(),
            network: NetworkConfig::default(),
            registry: RegistryConfig::default(),
            runtime: RuntimeConfig::default(),
            deploy: DeployConfig::default(),
            cache: CacheConfig::default(),
            build: BuildConfig::default(),
            console: ConsoleConfig::default(),
            dev: false,
            not_yet_used: Vec::new(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7420)),
            body_limit_bytes: 1024 * 1024,
            rate_limit_per_minute: 6000,
            anonymous_rate_limit_per_minute: 600,
            login_failures_per_minute: 10,
            login_window_seconds: 60,
            session_ttl_hours: 24,
            registry_token_ttl_seconds: 3600,
            max_sessions_per_user: 50,
            max_tokens_per_user: 100,
            shutdown_grace_seconds: 10,
            max_connections: 4096,
            max_connections_per_address: 256,
            head_timeout_seconds: 30,
            body_grace_seconds: 10,
            body_min_bytes_per_second: 16 * 1024,
            body_idle_seconds: 30,
        }
    }
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            http_listen: SocketAddr::from(([0, 0, 0, 0], 80)),
            https_listen: SocketAddr::from(([0, 0, 0, 0], 443)),
            apps_domain: "localhost".into(),
            control_domain: None,
            max_connections: 8192,
            max_connections_per_address: 256,
            head_timeout_seconds: 30,
            body_grace_seconds: 10,
            body_min_bytes_per_second: 4096,
            body_idle_seconds: 30,
            challenge_port: 80,
            upstream_timeout_seconds: 60,
            https_redirect: true,
        }
    }
}

impl Default for AcmeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            contact: String::new(),
            directory_url: "https://acme-v02.api.letsencrypt.org/directory".into(),
            ca_bundle: String::new(),
            renew_check_seconds: 60,
            backoff_min_seconds: 60,
            backoff_max_seconds: 86_400,
            challenge: AcmeChallenge::Http01,
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            pool: "10.213.0.0/16".into(),
            link_prefix: "berth-".into(),
            netns_prefix: "berth-".into(),
            nft_table: "berth".into(),
        }
    }
}

/// Empty, `/`, or `/name/name…` with no `.` or `..` component.
fn is_cgroup_parent(p: &str) -> bool {
    if p.is_empty() || p == "/" {
        return true;
    }
    let Some(rest) = p.strip_prefix('/') else { return false };
    p.len() <= 512
        && rest.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

/// Sections a `BERTH_<SECTION>_<KEY>` variable may name.
const SECTIONS: &[&str] =
    &["api", "ingress", "acme", "dns", "network", "registry", "runtime", "deploy", "cache", "build", "console"];
/// Top-level keys a `BERTH_<KEY>` variable may name.
const TOP_LEVEL: &[&str] = &["data_dir", "run_dir"];
/// `BERTH_*` variables that are not config keys.
const NOT_CONFIG: &[&str] = &["log"];

/// Flags that override the file and the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub dev: bool,
    pub data_dir: Option<PathBuf>,
    pub api_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub https_listen: Option<SocketAddr>,
}

impl Config {
    /// Loads the config: defaults (dev or production), then the file, then `env`, then flags.
    /// A missing file is fine only when it was not asked for explicitly.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut table = toml::Table::new();
        let (path, explicit) = match file {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    origin: path.display().to_string(),
                    message: e.message().to_string(),
                })?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {}
            Err(source) => return Err(ConfigError::Read { path, source }),
        }
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix("BERTH_") else { continue };
            let rest = rest.to_ascii_lowercase();
            if NOT_CONFIG.contains(&rest.as_str()) {
                continue;
            }
            let value = env_value(&raw);
            if TOP_LEVEL.contains(&rest.as_str()) {
                table.insert(rest, value);
                continue;
            }
            let Some((section, key)) = rest.split_once('_') else {
                return Err(unknown_env(&name));
            };
            if !SECTIONS.contains(&section) {
                return Err(unknown_env(&name));
            }
            let entry = table.entry(section.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => {
                    t.insert(key.to_string(), value);
                }
                _ => return Err(unknown_env(&name)),
            }
        }
        let unused = not_yet_used(&table);
        let run_dir_set = table.contains_key("run_dir");
        let table = if flags.dev { dev_base(&table) } else { table };
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            ConfigError::Parse { origin: format!("key `{}`", e.path()), message: e.inner().message().to_string() }
        })?;
        config.dev = flags.dev;
        config.not_yet_used = unused;
        if let Some(d) = &flags.data_dir {
            config.data_dir = d.clone();
        }
        if flags.dev && !run_dir_set {
            config.run_dir = config.data_dir.join("run");
        }
        if let Some(a) = flags.api_listen {
            config.api.listen = a;
        }
        if let Some(a) = flags.http_listen {
            config.ingress.http_listen = a;
        }
        if let Some(a) = flags.https_listen {
            config.ingress.https_listen = a;
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks values serde cannot, naming the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| Err(ConfigError::Invalid { key, message: message.into() });
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must not be empty");
        }
        if self.api.body_limit_bytes < 1024 {
            return invalid("api.body_limit_bytes", "must be at least 1024");
        }
        if self.api.rate_limit_per_minute == 0 || self.api.anonymous_rate_limit_per_minute == 0 {
            return invalid("api.rate_limit_per_minute", "must be at least 1");
        }
        if self.api.login_failures_per_minute == 0 {
            return invalid("api.login_failures_per_minute", "must be at least 1");
        }
        if self.api.session_ttl_hours == 0 || self.api.session_ttl_hours > 24 * 365 {
            return invalid("api.session_ttl_hours", "must be between 1 and 8760");
        }
        if self.api.login_window_seconds == 0 || self.api.login_window_seconds > 86_400 {
            return invalid("api.login_window_seconds", "must be between 1 and 86400");
        }
        if self.api.registry_token_ttl_seconds < 60 || self.api.registry_token_ttl_seconds > 86_400 {
            return invalid("api.registry_token_ttl_seconds", "must be between 60 and 86400");
        }
        if self.api.max_sessions_per_user == 0 {
            return invalid("api.max_sessions_per_user", "must be at least 1");
        }
        if self.api.max_tokens_per_user == 0 {
            return invalid("api.max_tokens_per_user", "must be at least 1");
        }
        if self.api.max_connections == 0 || self.api.max_connections_per_address == 0 {
            return invalid("api.max_connections", "must be at least 1, and so must max_connections_per_address");
        }
        if self.api.head_timeout_seconds == 0 || self.api.body_idle_seconds == 0 {
            return invalid("api.head_timeout_seconds", "must be at least 1, and so must body_idle_seconds");
        }
        if self.ingress.max_connections == 0 || self.ingress.max_connections_per_address == 0 {
            return invalid("ingress.max_connections", "must be at least 1, and so must max_connections_per_address");
        }
        if self.ingress.head_timeout_seconds == 0 || self.ingress.body_idle_seconds == 0 {
            return invalid("ingress.head_timeout_seconds", "must be at least 1, and so must body_idle_seconds");
        }
        if self.ingress.challenge_port == 0 {
            return invalid("ingress.challenge_port", "must be a port from 1 to 65535");
        }
        if self.ingress.http_listen == self.api.listen && self.api.listen.port() != 0 {
            return invalid("ingress.http_listen", "must differ from api.listen");
        }
        let https = self.ingress.https_listen;
        if https.port() != 0 && (https == self.api.listen || https == self.ingress.http_listen) {
            return invalid("ingress.https_listen", "must differ from api.listen and ingress.http_listen");
        }
        if self.ingress.upstream_timeout_seconds == 0 {
            return invalid("ingress.upstream_timeout_seconds", "must be at least 1");
        }
        if self.registry.max_open_uploads_per_project == 0 {
            return invalid("registry.max_open_uploads_per_project", "must be at least 1");
        }
        if !crate::validate::is_hostname(&self.ingress.apps_domain) {
            return invalid("ingress.apps_domain", "must be a hostname");
        }
        if let Some(d) = &self.ingress.control_domain {
            if !crate::validate::is_hostname(d) {
                return invalid("ingress.control_domain", "must be a hostname");
            }
        }
        if let Err(e) = crate::runtime::network::NetOptions::from_config(&self.network) {
            return invalid("network", &e.to_string());
        }
        if self.cache.max_bytes > i64::MAX as u64 {
            return invalid("cache.max_bytes", "must be at most 9223372036854775807");
        }
        if let Some(name) = self.dns.overrides.keys().find(|n| !crate::validate::is_hostname(&n.to_ascii_lowercase())) {
            return invalid("dns.overrides", &format!("{name:?} is not a hostname"));
        }
        if !crate::validate::is_dns_label(&self.runtime.cgroup_prefix) {
            return invalid("runtime.cgroup_prefix", "must be a DNS label");
        }
        if !is_cgroup_parent(&self.runtime.cgroup_parent) {
            return invalid(
                "runtime.cgroup_parent",
                "must be empty or an absolute cgroup path of names of letters, digits, '.', '_' and '-' (e.g. \"/\")",
            );
        }
        if self.deploy.drain_seconds > 3600 || self.deploy.stop_grace_seconds > 3600 {
            return invalid("deploy.drain_seconds", "must be at most 3600, and so must stop_grace_seconds");
        }
        let b = &self.build;
        if b.buildah.trim().is_empty() {
            return invalid("build.buildah", "must name the buildah binary");
        }
        if b.max_upload_bytes < 1024 {
            return invalid("build.max_upload_bytes", "must be at least 1024");
        }
        if b.concurrency == 0 || b.concurrency > 64 {
            return invalid("build.concurrency", "must be between 1 and 64");
        }
        if b.timeout_seconds == 0 || b.timeout_seconds > 86_400 {
            return invalid("build.timeout_seconds", "must be between 1 and 86400");
        }
        if b.memory_mb < 64 {
            return invalid("build.memory_mb", "must be at least 64");
        }
        if !(b.cpus.is_finite() && b.cpus >= 0.01) {
            return invalid("build.cpus", "must be at least 0.01");
        }
        if b.pids < 16 {
            return invalid("build.pids", "must be at least 16");
        }
        if b.git_timeout_seconds == 0 || b.git_timeout_seconds > 86_400 {
            return invalid("build.git_timeout_seconds", "must be between 1 and 86400");
        }
        if !b.git_ca_bundle.is_empty() {
            let pem = std::fs::read_to_string(&b.git_ca_bundle).map_err(|e| ConfigError::Invalid {
                key: "build.git_ca_bundle",
                message: format!("{}: {e}", b.git_ca_bundle),
            })?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return invalid("build.git_ca_bundle", "holds no PEM certificate");
            }
        }
        let k = &self.console;
        if k.idle_timeout_seconds == 0 || k.idle_timeout_seconds > 86_400 {
            return invalid("console.idle_timeout_seconds", "must be between 1 and 86400");
        }
        if k.max_sessions_per_user == 0 || k.max_sessions_per_user > 1000 {
            return invalid("console.max_sessions_per_user", "must be between 1 and 1000");
        }
        if !(1024..=16 << 20).contains(&k.max_frame_bytes) {
            return invalid("console.max_frame_bytes", "must be between 1024 and 16777216");
        }
        if self.deploy.health_deadline_seconds == 0 || self.deploy.health_deadline_seconds > 3600 {
            return invalid("deploy.health_deadline_seconds", "must be between 1 and 3600");
        }
        if self.acme.enabled && !self.acme.directory_url.starts_with("https://") {
            return invalid("acme.directory_url", "must be an https:// url");
        }
        if self.acme.enabled && self.acme.directory_url.parse::<hyper::Uri>().is_err() {
            return invalid("acme.directory_url", "is not a url");
        }
        if self.acme.renew_check_seconds == 0 || self.acme.renew_check_seconds > 86_400 {
            return invalid("acme.renew_check_seconds", "must be between 1 and 86400");
        }
        if self.acme.backoff_min_seconds == 0 || self.acme.backoff_min_seconds > self.acme.backoff_max_seconds {
            return invalid("acme.backoff_min_seconds", "must be at least 1 and at most acme.backoff_max_seconds");
        }
        if self.acme.backoff_max_seconds > 30 * 86_400 {
            return invalid("acme.backoff_max_seconds", "must be at most 2592000 (30 days)");
        }
        if !self.acme.ca_bundle.is_empty() {
            let pem = std::fs::read(&self.acme.ca_bundle).map_err(|e| ConfigError::Invalid {
                key: "acme.ca_bundle",
                message: format!("{}: {e}", self.acme.ca_bundle),
            })?;
            match crate::outbound::parse_roots(&pem) {
                Ok(roots) if !roots.is_empty() => {}
                Ok(_) => return invalid("acme.ca_bundle", "holds no PEM certificate"),
                Err(e) => return invalid("acme.ca_bundle", &e),
            }
        }
        Ok(())
    }
}

/// Dev mode changes defaults only: values present in `table` still win.
fn dev_base(table: &toml::Table) -> toml::Table {
    let mut base: toml::Table = toml::from_str(
        r#"
        data_dir = ".berth-dev"
        [api]
        listen = "127.0.0.1:7420"
        [ingress]
        http_listen = "127.0.0.1:8080"
        https_listen = "127.0.0.1:8443"
        apps_domain = "localhost"
        challenge_port = 8080
        [acme]
        enabled = false
        "#,
    )
    .unwrap_or_default();
    merge(&mut base, table);
    base
}

fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// An environment value is TOML when it parses as TOML (`8080`, `true`, `{ a = "b" }`),
/// otherwise a plain string.
fn env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn unknown_env(name: &str) -> ConfigError {
    ConfigError::Parse { origin: format!("environment variable {name}"), message: "names no config key".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("berth.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(crate::ids::new_id("cfgtest"));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn cgroup_parents_are_absolute_paths_of_plain_names() {
        for ok in ["", "/", "/berth", "/a.b/c_d-1"] {
            assert!(super::is_cgroup_parent(ok), "{ok:?}");
        }
        for bad in ["berth", "/a/../b", "/a//b", "/./a", "/a b", "/a/"] {
            assert!(!super::is_cgroup_parent(bad), "{bad:?}");
        }
    }

    #[test]
    fn layers_apply_in_order() {
        let d = tmp();
        let p = write(&d, "data_dir = \"/srv/b\"\n[api]\nlisten = \"127.0.0.1:1000\"\nrate_limit_per_minute = 5\n");
        let env = vec![("BERTH_API_LISTEN".to_string(), "127.0.0.1:2000".to_string())];
        let flags = Overrides { api_listen: None, ..Default::default() };
        let c = Config::load(Some(&p), env.clone(), &flags).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/b"));
        assert_eq!(c.api.listen.port(), 2000);
        assert_eq!(c.api.rate_limit_per_minute, 5);
        let flags = Overrides { api_listen: Some("127.0.0.1:3000".parse().unwrap()), ..Default::default() };
        assert_eq!(Config::load(Some(&p), env, &flags).unwrap().api.listen.port(), 3000);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn dev_changes_defaults_only() {
        let d = tmp();
        let p = write(&d, "[ingress]\nhttp_listen = \"127.0.0.1:9999\"\n");
        let c = Config::load(Some(&p), vec![], &Overrides { dev: true, ..Default::default() }).unwrap();
        assert_eq!(c.ingress.http_listen.port(), 9999);
        assert_eq!(c.ingress.https_listen.port(), 8443);
        assert_eq!(c.ingress.challenge_port, 8080, "verification reaches the dev ingress");
        assert!(!c.acme.enabled);
        assert_eq!(c.data_dir, PathBuf::from(".berth-dev"));
        assert!(c.not_yet_used.is_empty(), "the HTTP ingress reads http_listen: {:?}", c.not_yet_used);
        assert_eq!(c.run_dir, PathBuf::from(".berth-dev/run"));
        // The run dir follows the data dir, wherever it is set, unless set itself.
        let flags = Overrides { dev: true, data_dir: Some("/srv/x".into()), ..Default::default() };
        assert_eq!(Config::load(Some(&p), vec![], &flags).unwrap().run_dir, PathBuf::from("/srv/x/run"));
        let env = vec![("BERTH_DATA_DIR".to_string(), "/srv/y".to_string())];
        let c = Config::load(Some(&p), env, &Overrides { dev: true, ..Default::default() }).unwrap();
        assert_eq!(c.run_dir, PathBuf::from("/srv/y/run"));
        let p = write(&d, "run_dir = \"/run/mine\"\n");
        assert_eq!(Config::load(Some(&p), vec![], &flags).unwrap().run_dir, PathBuf::from("/run/mine"));
        assert_eq!(Config::load(Some(&p), vec![], &Overrides::default()).unwrap().run_dir, PathBuf::from("/run/mine"));
        let p = write(&d, "");
        assert_eq!(Config::load(Some(&p), vec![], &Overrides::default()).unwrap().run_dir, PathBuf::from("/run/berth"));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn settings_nothing_reads_yet_are_named() {
        let d = tmp();
        let p = write(
            &d,
            "[ingress]\ncontrol_domain = \"b.example.com\"\nhttps_listen = \"0.0.0.0:443\"\n[acme]\nenabled = false\n",
        );
        let env = vec![("BERTH_DNS_OVERRIDES".to_string(), "{ \"a.test\" = \"127.0.0.1\" }".to_string())];
        let c = Config::load(Some(&p), env, &Overrides::default()).unwrap();
        assert!(
            c.not_yet_used.is_empty(),
            "dns.overrides is read by external pulls, https_listen by the TLS listener, [acme] by the certificate worker: {:?}",
            c.not_yet_used
        );
        assert_eq!(c.dns.overrides.get("a.test"), Some(&"127.0.0.1".parse().unwrap()));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn bad_input_names_the_key() {
        let d = tmp();
        let p = write(&d, "[api]\nlisten = 12\n");
        let e = Config::load(Some(&p), vec![], &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("listen"), "{e}");
        let p = write(&d, "bogus = 1\n");
        let e = Config::load(Some(&p), vec![], &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let env = vec![("BERTH_NOPE_X".to_string(), "1".to_string())];
        let e = Config::load(None, env, &Overrides { dev: true, ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains("BERTH_NOPE_X"), "{e}");
        let p = write(&d, "[ingress]\napps_domain = \"not a host\"\n");
        let e = Config::load(Some(&p), vec![], &Overrides { dev: true, ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains("ingress.apps_domain"), "{e}");
        for bad in ["pool = \"10.0.0.0/31\"", "link_prefix = \"toolongname\"", "nft_table = \"a;b\""] {
            let p = write(&d, &format!("[network]\n{bad}\n"));
            let e = Config::load(Some(&p), vec![], &Overrides { dev: true, ..Default::default() }).unwrap_err();
            assert!(e.to_string().contains("network"), "{bad}: {e}");
        }
        assert!(Config::load(Some(&d.join("missing.toml")), vec![], &Overrides::default()).is_err());
        let p = write(&d, "[cache]\nmax_bytes = -1\n");
        let e = Config::load(Some(&p), vec![], &Overrides { dev: true, ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains("max_bytes"), "{e}");
        let env = vec![("BERTH_CACHE_MAX_BYTES".to_string(), "1048576".to_string())];
        let c = Config::load(None, env, &Overrides { dev: true, ..Default::default() }).unwrap();
        assert_eq!(c.cache.max_bytes, 1 << 20);
        let p = write(&d, "[dns]\noverrides = { \"not a name\" = \"127.0.0.1\" }\n");
        let e = Config::load(Some(&p), vec![], &Overrides { dev: true, ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains("dns.overrides"), "{e}");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn acme_settings_are_checked() {
        let d = tmp();
        let load = |text: &str| {
            let p = write(&d, text);
            Config::load(Some(&p), vec![], &Overrides { dev: true, ..Default::default() })
        };
        let pem = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()]).unwrap().cert.pem();
        std::fs::write(d.join("ca.pem"), pem).unwrap();
        std::fs::write(d.join("junk.pem"), "not a certificate").unwrap();
        let ok = format!("[acme]\nenabled = true\nca_bundle = \"{}\"\n", d.join("ca.pem").display());
        let c = load(&ok).unwrap();
        assert!(c.acme.enabled, "explicit settings win over dev mode's acme off");
        assert_eq!(
            (c.acme.renew_check_seconds, c.acme.backoff_min_seconds, c.acme.backoff_max_seconds),
            (60, 60, 86_400)
        );
        for (bad, key) in [
            ("directory_url = \"http://ca.test/dir\"".to_string(), "acme.directory_url"),
            (format!("ca_bundle = \"{}\"", d.join("missing.pem").display()), "acme.ca_bundle"),
            (format!("ca_bundle = \"{}\"", d.join("junk.pem").display()), "acme.ca_bundle"),
            ("renew_check_seconds = 0".to_string(), "acme.renew_check_seconds"),
            ("backoff_min_seconds = 100\nbackoff_max_seconds = 10".to_string(), "acme.backoff_min_seconds"),
        ] {
            let e = load(&format!("[acme]\nenabled = true\n{bad}\n")).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn git_settings_are_checked() {
        let d = tmp();
        let load = |text: &str| {
            let p = write(&d, text);
            Config::load(Some(&p), vec![], &Overrides { dev: true, ..Default::default() })
        };
        let pem = rcgen::generate_simple_self_signed(vec!["git.test".to_string()]).unwrap().cert.pem();
        std::fs::write(d.join("ca.pem"), pem).unwrap();
        std::fs::write(d.join("junk.pem"), "not a certificate").unwrap();
        let c = load(&format!("[build]\ngit_ca_bundle = \"{}\"\n", d.join("ca.pem").display())).unwrap();
        assert_eq!(c.build.git_timeout_seconds, 600);
        for bad in [
            format!("git_ca_bundle = \"{}\"", d.join("missing.pem").display()),
            format!("git_ca_bundle = \"{}\"", d.join("junk.pem").display()),
            "git_timeout_seconds = 0".to_string(),
        ] {
            let e = load(&format!("[build]\n{bad}\n")).unwrap_err().to_string();
            assert!(e.contains("build.git_"), "{bad}: {e}");
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    /// The conffile the .deb installs as /etc/berth/berth.toml (packaging/berth.toml).
    const PACKAGED: &str = include_str!("../packaging/berth.toml");

    /// The packaged file with every `#key = value` line uncommented.
    fn packaged_uncommented() -> String {
        let key_line = |l: &str| {
            l.strip_prefix('#').is_some_and(|r| {
                let name: String = r.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                !name.is_empty() && r[name.len()..].starts_with(" = ")
            })
        };
        PACKAGED.lines().map(|l| if key_line(l) { &l[1..] } else { l }).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn packaged_config_is_the_defaults_and_names_every_key() {
        let d = tmp();
        let json = |c: &Config| serde_json::to_value(c).unwrap();
        // As installed, everything is commented out: the production defaults, no warnings.
        let p = write(&d, PACKAGED);
        let c = Config::load(Some(&p), vec![], &Overrides::default()).unwrap();
        assert_eq!(json(&c), json(&Config::default()));
        assert!(c.not_yet_used.is_empty(), "{:?}", c.not_yet_used);

        // Uncommented, every line is a real key with its real default, except the two
        // examples that have no default (control_domain, dns.overrides).
        let text = packaged_uncommented();
        let p = write(&d, &text);
        let c = Config::load(Some(&p), vec![], &Overrides::default()).unwrap();
        let mut want = Config::default();
        want.ingress.control_domain = Some("berth.example.com".into());
        want.dns.overrides.insert("registry.internal".into(), "10.0.0.5".parse().unwrap());
        assert_eq!(json(&c), json(&want));

        // And no key of the config is missing from the file.
        let table: toml::Table = toml::from_str(&text).unwrap();
        let serde_json::Value::Object(top) = json(&Config::default()) else { panic!("config is not an object") };
        for (key, value) in top {
            let got = table.get(&key).unwrap_or_else(|| panic!("packaging/berth.toml lacks `{key}`"));
            if let (serde_json::Value::Object(fields), toml::Value::Table(section)) = (value, got) {
                for field in fields.keys() {
                    assert!(section.contains_key(field), "packaging/berth.toml lacks `{key}.{field}`");
                }
            }
        }
        std::fs::remove_dir_all(d).unwrap();
    }
}
