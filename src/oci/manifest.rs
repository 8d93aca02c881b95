//! Image manifests and indexes (OCI and Docker schema 2): one parse, used by the
//! registry to check a push and by the engine to run an image.

use std::collections::BTreeMap;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest as OciManifest};
use serde_json::{Map, Value};

use super::{Digest, FormatError, ImageConfig};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Largest manifest or index accepted.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Most layers an image may have to be run (Docker's historical cap is 127).
pub const MAX_LAYERS: usize = 128;

fn invalid(reason: impl Into<String>) -> FormatError {
    FormatError { what: "manifest", reason: reason.into() }
}

/// A manifest or index, parsed and checked: every digest it holds is a sha256
/// [`Digest`], every descriptor has a mediaType, digest and size.
#[derive(Debug, Clone)]
pub struct Manifest {
    media_type: String,
    doc: Doc,
    blobs: Vec<Digest>,
    children: Vec<Digest>,
    subject: Option<Digest>,
}

#[derive(Debug, Clone)]
enum Doc {
    Image(Box<OciManifest>),
    Index(Box<ImageIndex>),
}

/// A blob an image manifest points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// A single-platform image as it is run: its config and its layers, bottom first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageManifest {
    pub config: Blob,
    pub layers: Vec<Blob>,
}

fn digest_of(d: &Descriptor, what: &str) -> Result<Digest, FormatError> {
    Digest::try_from(d.digest()).map_err(|e| invalid(format!("{what} digest {}: {e}", d.digest())))
}

fn blob(d: &Descriptor, what: &str) -> Result<Blob, FormatError> {
    Ok(Blob { digest: digest_of(d, what)?, media_type: d.media_type().to_string(), size: d.size() })
}

/// Whether a key is present with a value other than `null`.
fn has(obj: &Map<String, Value>, key: &str) -> bool {
    obj.get(key).is_some_and(|v| !v.is_null())
}

/// The typed parse, with the JSON path of the first field at fault in the error.
fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, FormatError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." { invalid(inner.to_string()) } else { invalid(format!("{path}: {inner}")) }
    })
}

impl Manifest {
    /// Parses and checks a manifest or index. `declared` is the media type the
    /// sender gave (the Content-Type of a push), if any; it must agree with the
    /// document's own `mediaType` when both are present, and without either the
    /// shape decides (`manifests` makes an OCI index, `config` an OCI manifest).
    pub fn parse(body: &[u8], declared: Option<&str>) -> Result<Manifest, FormatError> {
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(invalid(format!("it is over {MAX_MANIFEST_BYTES} bytes")));
        }
        let mut value: Value =
            serde_json::from_slice(body).map_err(|e| invalid(format!("it is not valid JSON: {e}")))?;
        let obj = value.as_object_mut().ok_or_else(|| invalid("it is not a JSON object"))?;
        if obj.get("schemaVersion").and_then(Value::as_u64) != Some(2) {
            return Err(invalid("schemaVersion must be 2"));
        }
        let body_type = match obj.get("mediaType") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => return Err(invalid(format!("mediaType {other} is not a string"))),
        };
        let media_type = match (declared, body_type) {
            (Some(h), Some(b)) if h != b => {
                return Err(invalid(format!("the declared media type {h} does not match the mediaType {b}")));
            }
            (Some(h), _) => h.to_string(),
            (None, Some(b)) => b,
            (None, None) if has(obj, "manifests") => OCI_INDEX.to_string(),
            (None, None) if has(obj, "config") => OCI_MANIFEST.to_string(),
            (None, None) => return Err(invalid("cannot tell the media type")),
        };
        // A document that reads as an image to one client and as an index to
        // another is refused (CVE-2021-41190).
        let (doc, blobs, children) = match media_type.as_str() {
            OCI_MANIFEST | DOCKER_MANIFEST => {
                if has(obj, "manifests") {
                    return Err(invalid("an image manifest cannot list manifests"));
                }
                if !has(obj, "config") {
                    return Err(invalid("an image manifest needs a config"));
                }
                // Go encodes an empty layer list as null, and distribution accepts
                // it missing; both mean no layers.
                if !has(obj, "layers") {
                    obj.insert("layers".into(), Value::Array(Vec::new()));
                }
                let m: OciManifest = typed(value)?;
                let mut blobs = vec![digest_of(m.config(), "config")?];
                for (i, l) in m.layers().iter().enumerate() {
                    let d = digest_of(l, &format!("layers[{i}]"))?;
                    // A foreign layer lives elsewhere; only its descriptor is ours.
                    if l.urls().as_ref().is_none_or(Vec::is_empty) {
                        blobs.push(d);
                    }
                }
                (Doc::Image(Box::new(m)), blobs, Vec::new())
            }
            OCI_INDEX | DOCKER_LIST => {
                if has(obj, "config") || has(obj, "layers") {
                    return Err(invalid("an index cannot have a config or layers"));
                }
                if !has(obj, "manifests") {
                    return Err(invalid("an index needs a manifests list"));
                }
                let m: ImageIndex = typed(value)?;
                let children = m
                    .manifests()
                    .iter()
                    .enumerate()
                    .map(|(i, d)| digest_of(d, &format!("manifests[{i}]")))
                    .collect::<Result<_, _>>()?;
                (Doc::Index(Box::new(m)), Vec::new(), children)
            }
            other => return Err(invalid(format!("unsupported media type {other}"))),
        };
        let subject = match &doc {
            Doc::Image(m) => m.subject().as_ref(),
            Doc::Index(m) => m.subject().as_ref(),
        }
        .map(|s| digest_of(s, "subject"))
        .transpose()?;
        Ok(Manifest { media_type, doc, blobs, children, subject })
    }

    /// The media type it is stored and served with.
    pub fn media_type(&self) -> &str {
        &self.media_type
    }

    pub fn is_index(&self) -> bool {
        matches!(self.doc, Doc::Index(_))
    }

    /// Blobs that must exist beside it: an image's config and layers (foreign
    /// layers, which carry `urls`, excepted).
    pub fn blobs(&self) -> &[Digest] {
        &self.blobs
    }

    /// Manifests that must exist beside it: an index's entries.
    pub fn children(&self) -> &[Digest] {
        &self.children
    }

    /// The manifest it refers to (the referrers API).
    pub fn subject(&self) -> Option<&Digest> {
        self.subject.as_ref()
    }

    /// For the referrers API: `artifactType`, else an OCI image manifest's config
    /// media type.
    pub fn artifact_type(&self) -> Option<String> {
        match &self.doc {
            Doc::Image(m) => m
                .artifact_type()
                .as_ref()
                .map(ToString::to_string)
                .or_else(|| (self.media_type == OCI_MANIFEST).then(|| m.config().media_type().to_string())),
            Doc::Index(m) => m.artifact_type().as_ref().map(ToString::to_string),
        }
    }

    /// The annotations as JSON text with sorted keys, if there are any.
    pub fn annotations_json(&self) -> Option<String> {
        let a = match &self.doc {
            Doc::Image(m) => m.annotations().as_ref(),
            Doc::Index(m) => m.annotations().as_ref(),
        }?;
        let sorted: BTreeMap<&String, &String> = a.iter().collect();
        (!sorted.is_empty()).then(|| serde_json::to_string(&sorted).ok()).flatten()
    }

    /// For an index: the entry for `os`/`architecture` (GOOS/GOARCH names), else
    /// the first entry without a platform. `None` for an image manifest or when no
    /// entry fits.
    pub fn platform_entry(&self, os: &str, architecture: &str) -> Option<&Digest> {
        let Doc::Index(idx) = &self.doc else { return None };
        let entries = || idx.manifests().iter().zip(&self.children);
        entries()
            .find(|(d, _)| {
                d.platform()
                    .as_ref()
                    .is_some_and(|p| p.os().to_string() == os && p.architecture().to_string() == architecture)
            })
            .or_else(|| entries().find(|(d, _)| d.platform().is_none()))
            .map(|(_, digest)| digest)
    }

    /// What running it takes: a config that is an image config and at most
    /// [`MAX_LAYERS`] layers. An index is refused (pick a platform's entry first).
    pub fn image(&self) -> Result<ImageManifest, FormatError> {
        let Doc::Image(m) = &self.doc else {
            return Err(invalid("it is an index of manifests, not an image manifest"));
        };
        let config = blob(m.config(), "config")?;
        if config.media_type != OCI_CONFIG && config.media_type != DOCKER_CONFIG {
            return Err(invalid(format!("config has mediaType {:?}, not an image config", config.media_type)));
        }
        if m.layers().len() > MAX_LAYERS {
            return Err(invalid(format!("it has {} layers, over the cap of {MAX_LAYERS}", m.layers().len())));
        }
        let layers =
            m.layers().iter().enumerate().map(|(i, l)| blob(l, &format!("layers[{i}]"))).collect::<Result<_, _>>()?;
        Ok(ImageManifest { config, layers })
    }
}

impl ImageManifest {
    /// Parses a single-platform image manifest (see [`Manifest::image`]).
    pub fn parse(body: &[u8]) -> Result<ImageManifest, FormatError> {
        Manifest::parse(body, None)?.image()
    }

    /// Each layer with the diff_id the config gives it, bottom layer first.
    pub fn layers_with_diff_ids<'a>(
        &'a self,
        config: &'a ImageConfig,
    ) -> Result<Vec<(&'a Blob, &'a Digest)>, FormatError> {
        if self.layers.len() != config.diff_ids.len() {
            return Err(FormatError {
                what: "image",
                reason: format!(
                    "the manifest lists {} layers but the config {} diff_ids",
                    self.layers.len(),
                    config.diff_ids.len()
                ),
            });
        }
        Ok(self.layers.iter().zip(&config.diff_ids).collect())
    }
}
