//! Image manifests and image configs: the parts berth needs to run an image,
//! as typed structs. Docker's schema2 and OCI's shapes are the same JSON here.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::digest_hex;
use super::error::ImageError;
use super::unpack::Compression;

/// Largest image config or manifest berth parses.
pub const MAX_JSON_BYTES: usize = 4 << 20;
/// Most layers one image may have (Docker's historical cap is 127).
pub const MAX_LAYERS: usize = 128;

const MANIFEST_TYPES: &[&str] =
    &["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];
const INDEX_TYPES: &[&str] =
    &["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
const CONFIG_TYPES: &[&str] =
    &["application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"];

/// A content descriptor: what a manifest says about one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    /// `sha256:<hex>` of the blob as stored (compressed, for layers).
    pub digest: String,
    pub size: u64,
}

/// A layer of a manifest, with the compression its media type declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDescriptor {
    pub descriptor: Descriptor,
    pub compression: Compression,
}

/// A single-platform image manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageManifest {
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<LayerDescriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: Option<String>,
    size: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<serde_json::Value>,
}

fn invalid(what: &'static str, reason: impl Into<String>) -> ImageError {
    ImageError::InvalidImage { what, reason: reason.into() }
}

fn descriptor(raw: RawDescriptor, what: &'static str) -> Result<Descriptor, ImageError> {
    let media_type = raw.media_type.ok_or_else(|| invalid("image manifest", format!("{what} has no mediaType")))?;
    let digest = raw.digest.ok_or_else(|| invalid("image manifest", format!("{what} has no digest")))?;
    digest_hex(what, &digest)?;
    let size = match raw.size {
        Some(s) if s >= 0 => s as u64,
        Some(s) => return Err(invalid("image manifest", format!("{what} {digest} has size {s}"))),
        None => return Err(invalid("image manifest", format!("{what} {digest} has no size"))),
    };
    Ok(Descriptor { media_type, digest, size })
}

impl ImageManifest {
    /// Parses a single-platform manifest; an index or manifest list is refused
    /// (pick a platform's manifest first), as is one without a config.
    pub fn parse(bytes: &[u8]) -> Result<ImageManifest, ImageError> {
        if bytes.len() > MAX_JSON_BYTES {
            return Err(invalid("image manifest", format!("it is over {MAX_JSON_BYTES} bytes")));
        }
        let raw: RawManifest = serde_json::from_slice(bytes).map_err(|e| invalid("image manifest", e.to_string()))?;
        if raw.schema_version != Some(2) {
            return Err(invalid("image manifest", "schemaVersion is not 2"));
        }
        if raw.manifests.is_some() || raw.media_type.as_deref().is_some_and(|t| INDEX_TYPES.contains(&t)) {
            return Err(invalid("image manifest", "it is an index of manifests, not an image manifest"));
        }
        if let Some(t) = raw.media_type.as_deref().filter(|t| !MANIFEST_TYPES.contains(t)) {
            return Err(invalid("image manifest", format!("unsupported mediaType {t:?}")));
        }
        let config = descriptor(raw.config.ok_or_else(|| invalid("image manifest", "it has no config"))?, "config")?;
        if !CONFIG_TYPES.contains(&config.media_type.as_str()) {
            return Err(invalid(
                "image manifest",
                format!("config has mediaType {:?}, not an image config", config.media_type),
            ));
        }
        let raw_layers = raw.layers.unwrap_or_default();
        if raw_layers.len() > MAX_LAYERS {
            return Err(invalid(
                "image manifest",
                format!("it has {} layers, over the cap of {MAX_LAYERS}", raw_layers.len()),
            ));
        }
        let mut layers = Vec::with_capacity(raw_layers.len());
        for raw in raw_layers {
            let descriptor = descriptor(raw, "layer")?;
            let compression = Compression::from_media_type(&descriptor.media_type).ok_or_else(|| {
                ImageError::UnsupportedMediaType {
                    digest: descriptor.digest.clone(),
                    media_type: descriptor.media_type.clone(),
                }
            })?;
            layers.push(LayerDescriptor { descriptor, compression });
        }
        Ok(ImageManifest { media_type: raw.media_type, config, layers })
    }

    /// Each layer with the diff_id the config gives it, bottom layer first.
    pub fn layers_with_diff_ids<'a>(
        &'a self,
        config: &'a ImageConfig,
    ) -> Result<Vec<(&'a LayerDescriptor, &'a str)>, ImageError> {
        if self.layers.len() != config.diff_ids.len() {
            return Err(invalid(
                "image",
                format!(
                    "the manifest lists {} layers but the config {} diff_ids",
                    self.layers.len(),
                    config.diff_ids.len()
                ),
            ));
        }
        Ok(self.layers.iter().zip(config.diff_ids.iter().map(String::as_str)).collect())
    }
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
    pub architecture: Option<String>,
    pub os: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` strings, in order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`, as the image gives it.
    pub user: Option<String>,
    pub exposed_ports: Vec<ExposedPort>,
    /// `sha256:<hex>` of each uncompressed layer, bottom layer first.
    pub diff_ids: Vec<String>,
}

/// Docker accepts a bare string where a list is expected (`"Cmd": "sh"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrList {
    One(String),
    Many(Vec<String>),
}

impl StrOrList {
    fn into_vec(self) -> Vec<String> {
        match self {
            StrOrList::One(s) => vec![s],
            StrOrList::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    entrypoint: Option<StrOrList>,
    cmd: Option<StrOrList>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(rename = "type")]
    kind: Option<String>,
    diff_ids: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RawConfig {
    architecture: Option<String>,
    os: Option<String>,
    config: Option<RawRunConfig>,
    rootfs: Option<RawRootfs>,
}

fn parse_port(key: &str) -> Result<ExposedPort, ImageError> {
    let bad = || invalid("image config", format!("ExposedPorts key {key:?} is not port[/tcp|/udp|/sctp]"));
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
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig, ImageError> {
        if bytes.len() > MAX_JSON_BYTES {
            return Err(invalid("image config", format!("it is over {MAX_JSON_BYTES} bytes")));
        }
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| invalid("image config", e.to_string()))?;
        let rootfs = raw.rootfs.ok_or_else(|| invalid("image config", "it has no rootfs"))?;
        if rootfs.kind.as_deref() != Some("layers") {
            return Err(invalid("image config", "rootfs.type is not \"layers\""));
        }
        let diff_ids = rootfs.diff_ids.unwrap_or_default();
        for d in &diff_ids {
            digest_hex("diff_id", d)?;
        }
        let run = raw.config.unwrap_or_default();
        let mut exposed_ports = Vec::new();
        for key in run.exposed_ports.unwrap_or_default().keys() {
            exposed_ports.push(parse_port(key)?);
        }
        exposed_ports.sort();
        exposed_ports.dedup();
        Ok(ImageConfig {
            architecture: raw.architecture,
            os: raw.os,
            entrypoint: run.entrypoint.map(StrOrList::into_vec).unwrap_or_default(),
            cmd: run.cmd.map(StrOrList::into_vec).unwrap_or_default(),
            env: run.env.unwrap_or_default(),
            working_dir: run.working_dir.filter(|w| !w.is_empty()),
            user: run.user.filter(|u| !u.is_empty()),
            exposed_ports,
            diff_ids,
        })
    }

    /// The argv to run: the image's Entrypoint followed by `command_override`
    /// when given, else by the image's Cmd (Docker's rule: a command given at
    /// deploy time replaces Cmd, never Entrypoint). Empty is refused.
    pub fn command(&self, command_override: Option<&[String]>) -> Result<Vec<String>, ImageError> {
        let args = command_override.unwrap_or(&self.cmd);
        let argv: Vec<String> = self.entrypoint.iter().chain(args).cloned().collect();
        if argv.is_empty() {
            return Err(ImageError::NoCommand);
        }
        Ok(argv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST_A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const DIGEST_B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn config_json(run: &str) -> String {
        format!(
            r#"{{"architecture":"amd64","os":"linux","config":{run},"rootfs":{{"type":"layers","diff_ids":["{DIGEST_A}"]}}}}"#
        )
    }

    #[test]
    fn parses_a_docker_config() {
        let json = config_json(
            r#"{"Entrypoint":["/docker-entrypoint.sh"],"Cmd":["nginx","-g","daemon off;"],
                "Env":["PATH=/usr/bin","A=b=c"],"WorkingDir":"/srv","User":"101:101",
                "ExposedPorts":{"80/tcp":{},"53/udp":{},"8080":{}}}"#,
        );
        let c = ImageConfig::parse(json.as_bytes()).unwrap();
        assert_eq!(c.entrypoint, ["/docker-entrypoint.sh"]);
        assert_eq!(c.cmd, ["nginx", "-g", "daemon off;"]);
        assert_eq!(c.env, ["PATH=/usr/bin", "A=b=c"]);
        assert_eq!(c.working_dir.as_deref(), Some("/srv"));
        assert_eq!(c.user.as_deref(), Some("101:101"));
        assert_eq!(c.diff_ids, [DIGEST_A]);
        assert_eq!(
            c.exposed_ports,
            [
                ExposedPort { port: 53, protocol: PortProtocol::Udp },
                ExposedPort { port: 80, protocol: PortProtocol::Tcp },
                ExposedPort { port: 8080, protocol: PortProtocol::Tcp },
            ]
        );
        assert_eq!(c.command(None).unwrap(), ["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]);
        let over = vec!["sh".to_string()];
        assert_eq!(c.command(Some(&over)).unwrap(), ["/docker-entrypoint.sh", "sh"]);
    }

    #[test]
    fn nulls_strings_and_missing_fields() {
        let c =
            ImageConfig::parse(config_json(r#"{"Entrypoint":null,"Cmd":"/bin/sh","Env":null}"#).as_bytes()).unwrap();
        assert_eq!(c.command(None).unwrap(), ["/bin/sh"]);
        assert!(c.env.is_empty());
        let c = ImageConfig::parse(config_json("null").as_bytes()).unwrap();
        assert!(matches!(c.command(None), Err(ImageError::NoCommand)));
        let over = vec!["/app".to_string()];
        assert_eq!(c.command(Some(&over)).unwrap(), ["/app"]);
        assert!(matches!(c.command(Some(&[])), Err(ImageError::NoCommand)));
        let c = ImageConfig::parse(config_json(r#"{"Entrypoint":[],"Cmd":[]}"#).as_bytes()).unwrap();
        assert!(matches!(c.command(None), Err(ImageError::NoCommand)));
    }

    #[test]
    fn refuses_bad_configs() {
        for bad in [
            "{}".to_string(),
            "not json".to_string(),
            r#"{"rootfs":{"type":"layers","diff_ids":["sha256:xyz"]}}"#.to_string(),
            r#"{"rootfs":{"type":"other","diff_ids":[]}}"#.to_string(),
            config_json(r#"{"ExposedPorts":{"http":{}}}"#),
            config_json(r#"{"ExposedPorts":{"80/quic":{}}}"#),
            config_json(r#"{"ExposedPorts":{"70000/tcp":{}}}"#),
        ] {
            let e = ImageConfig::parse(bad.as_bytes()).unwrap_err();
            assert!(matches!(e, ImageError::InvalidImage { .. } | ImageError::InvalidDigest { .. }), "{bad}: {e}");
        }
    }

    fn manifest(config: &str, layers: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{config},"layers":[{layers}]}}"#
        )
    }

    #[test]
    fn parses_manifests() {
        let cfg =
            format!(r#"{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{DIGEST_A}","size":7}}"#);
        let layers = format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{DIGEST_B}","size":10}},
               {{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{DIGEST_A}","size":0}},
               {{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar","digest":"{DIGEST_A}","size":1}}"#
        );
        let m = ImageManifest::parse(manifest(&cfg, &layers).as_bytes()).unwrap();
        assert_eq!(m.config.digest, DIGEST_A);
        assert_eq!(m.config.size, 7);
        let kinds: Vec<Compression> = m.layers.iter().map(|l| l.compression).collect();
        assert_eq!(kinds, [Compression::Zstd, Compression::Gzip, Compression::None]);
        assert_eq!(m.layers[0].descriptor.digest, DIGEST_B);
        assert_eq!(m.layers[0].descriptor.size, 10);

        let config = ImageConfig::parse(config_json("{}").as_bytes()).unwrap();
        assert!(m.layers_with_diff_ids(&config).is_err());
        let one = ImageManifest::parse(
            manifest(
                &cfg,
                &format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{DIGEST_B}","size":1}}"#),
            )
            .as_bytes(),
        )
        .unwrap();
        let pairs = one.layers_with_diff_ids(&config).unwrap();
        assert_eq!(pairs[0].1, DIGEST_A);
    }

    #[test]
    fn refuses_bad_manifests() {
        let cfg =
            format!(r#"{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{DIGEST_A}","size":7}}"#);
        let no_config = r#"{"schemaVersion":2,"layers":[]}"#.to_string();
        let index =
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#.to_string();
        let wrong_config_type =
            manifest(&format!(r#"{{"mediaType":"application/octet-stream","digest":"{DIGEST_A}","size":7}}"#), "");
        let bad_layer_type = manifest(&cfg, &format!(r#"{{"mediaType":"text/plain","digest":"{DIGEST_B}","size":1}}"#));
        let bad_digest = manifest(
            &cfg,
            r#"{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:../../etc","size":1}"#,
        );
        let negative = manifest(
            &cfg,
            &format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{DIGEST_B}","size":-1}}"#),
        );
        for bad in [no_config, index, wrong_config_type, bad_layer_type, bad_digest, negative] {
            assert!(ImageManifest::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let e = ImageManifest::parse(
            manifest(&cfg, &format!(r#"{{"mediaType":"text/plain","digest":"{DIGEST_B}","size":1}}"#)).as_bytes(),
        )
        .unwrap_err();
        assert!(matches!(e, ImageError::UnsupportedMediaType { .. }), "{e}");
    }
}
