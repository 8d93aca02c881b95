//! Image configs (OCI and Docker's, the same JSON): what running an image needs.

use oci_spec::image::ImageConfiguration;
use serde_json::Value;

use super::{Digest, FormatError};

/// Largest image config parsed.
pub const MAX_CONFIG_BYTES: usize = 4 << 20;

fn invalid(reason: impl Into<String>) -> FormatError {
    FormatError { what: "image config", reason: reason.into() }
}

/// A port an image declares (`EXPOSE 80/tcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExposedPort {
    pub port: u16,
    pub protocol: PortProtocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PortProtocol {
    Tcp,
    Udp,
    Sctp,
}

/// What an image config says about running the image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageConfig {
    /// GOARCH name (`amd64`, `arm64`).
    pub architecture: String,
    /// GOOS name (`linux`).
    pub os: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` strings, in order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`, as the image gives it.
    pub user: Option<String>,
    pub exposed_ports: Vec<ExposedPort>,
    /// Digest of each uncompressed layer, bottom layer first.
    pub diff_ids: Vec<Digest>,
}

fn parse_port(key: &str) -> Result<ExposedPort, FormatError> {
    let bad = || invalid(format!("ExposedPorts key {key:?} is not port[/tcp|/udp|/sctp]"));
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let protocol = match proto.to_ascii_lowercase().as_str() {
        "tcp" => PortProtocol::Tcp,
        "udp" => PortProtocol::Udp,
        "sctp" => PortProtocol::Sctp,
        _ => return Err(bad()),
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok(ExposedPort { port, protocol })
}

impl ImageConfig {
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig, FormatError> {
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(invalid(format!("it is over {MAX_CONFIG_BYTES} bytes")));
        }
        let mut value: Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("it is not valid JSON: {e}")))?;
        let obj = value.as_object_mut().ok_or_else(|| invalid("it is not a JSON object"))?;
        // The spec makes `history` optional; oci-spec 0.7 requires it.
        if obj.get("history").is_none_or(Value::is_null) {
            obj.insert("history".into(), Value::Array(Vec::new()));
        }
        let raw: ImageConfiguration = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            invalid(format!("{path}: {}", e.into_inner()))
        })?;
        if raw.rootfs().typ() != "layers" {
            return Err(invalid(format!("rootfs.type is {:?}, not \"layers\"", raw.rootfs().typ())));
        }
        let diff_ids = raw
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| Digest::parse(d).map_err(|e| invalid(format!("diff_id {d:?}: {e}"))))
            .collect::<Result<_, _>>()?;
        let run = raw.config().clone().unwrap_or_default();
        let mut exposed_ports =
            run.exposed_ports().iter().flatten().map(|k| parse_port(k)).collect::<Result<Vec<_>, _>>()?;
        exposed_ports.sort();
        exposed_ports.dedup();
        Ok(ImageConfig {
            architecture: raw.architecture().to_string(),
            os: raw.os().to_string(),
            entrypoint: run.entrypoint().clone().unwrap_or_default(),
            cmd: run.cmd().clone().unwrap_or_default(),
            env: run.env().clone().unwrap_or_default(),
            working_dir: run.working_dir().clone().filter(|w| !w.is_empty()),
            user: run.user().clone().filter(|u| !u.is_empty()),
            exposed_ports,
            diff_ids,
        })
    }

    /// The argv to run: the image's Entrypoint followed by `command_override`
    /// when given, else by the image's Cmd (Docker's rule: a command given at
    /// deploy time replaces Cmd, never Entrypoint). `None` when that is empty.
    pub fn command(&self, command_override: Option<&[String]>) -> Option<Vec<String>> {
        let args = command_override.unwrap_or(&self.cmd);
        let argv: Vec<String> = self.entrypoint.iter().chain(args).cloned().collect();
        (!argv.is_empty()).then_some(argv)
    }
}
