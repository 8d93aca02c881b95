//! Manifest parsing: which media types are accepted and what a manifest references.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::error::RegistryError;
use super::names::{Digest, DigestError};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    digest: String,
    size: i64,
    urls: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct Raw {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    #[serde(rename = "artifactType")]
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

/// What a stored manifest is and points at.
#[derive(Debug)]
pub struct Parsed {
    pub media_type: String,
    /// For the referrers API: `artifactType`, else the config's media type.
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    /// JSON text of the annotations, if any.
    pub annotations: Option<String>,
    /// Blobs that must exist in the repository (config and layers).
    pub blobs: Vec<Digest>,
    /// Manifests that must exist in the repository (index entries).
    pub children: Vec<Digest>,
}

fn invalid(msg: impl Into<String>) -> RegistryError {
    RegistryError::ManifestInvalid(msg.into())
}

fn descriptor_digest(d: &Descriptor, what: &str) -> Result<Digest, RegistryError> {
    if d.size < 0 {
        return Err(invalid(format!("{what} has a negative size")));
    }
    Digest::parse(&d.digest).map_err(|e| match e {
        DigestError::Malformed => invalid(format!("{what} digest {:?} is not a valid digest", d.digest)),
        DigestError::UnsupportedAlgorithm(a) => invalid(format!("{what} digest uses unsupported algorithm {a}")),
    })
}

/// Parses and checks a manifest body; `content_type` is the request's Content-Type.
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Parsed, RegistryError> {
    let raw: Raw = serde_json::from_slice(body).map_err(|e| invalid(format!("manifest is not valid JSON: {e}")))?;
    if raw.schema_version != Some(2) {
        return Err(invalid("schemaVersion must be 2"));
    }
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "application/json" && c != "application/octet-stream");
    let media_type = match (&header, &raw.media_type) {
        (Some(h), Some(b)) if h != b => {
            return Err(invalid(format!("Content-Type {h} does not match the manifest's mediaType {b}")));
        }
        (Some(h), _) => h.clone(),
        (None, Some(b)) => b.clone(),
        (None, None) if raw.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) if raw.config.is_some() => OCI_MANIFEST.to_string(),
        (None, None) => return Err(invalid("cannot tell the manifest's media type")),
    };
    let mut blobs = Vec::new();
    let mut children = Vec::new();
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = raw.config.as_ref().ok_or_else(|| invalid("an image manifest needs a config"))?;
            blobs.push(descriptor_digest(config, "config")?);
            for (i, l) in raw.layers.as_deref().unwrap_or_default().iter().enumerate() {
                let d = descriptor_digest(l, &format!("layer {i}"))?;
                // Foreign layers live elsewhere; only their descriptor is ours.
                if l.urls.as_ref().is_none_or(Vec::is_empty) {
                    blobs.push(d);
                }
            }
            if raw.manifests.is_some() {
                return Err(invalid("an image manifest cannot list manifests"));
            }
        }
        OCI_INDEX | DOCKER_LIST => {
            let list = raw.manifests.as_ref().ok_or_else(|| invalid("an index needs a manifests list"))?;
            for (i, m) in list.iter().enumerate() {
                children.push(descriptor_digest(m, &format!("manifest {i}"))?);
            }
            if raw.config.is_some() || raw.layers.is_some() {
                return Err(invalid("an index cannot have a config or layers"));
            }
        }
        other => return Err(invalid(format!("unsupported manifest media type {other}"))),
    }
    let subject = raw.subject.as_ref().map(|s| descriptor_digest(s, "subject")).transpose()?;
    let artifact_type = raw.artifact_type.clone().or_else(|| {
        matches!(media_type.as_str(), OCI_MANIFEST)
            .then(|| raw.config.as_ref().and_then(|c| c.media_type.clone()))
            .flatten()
    });
    let annotations = raw.annotations.as_ref().filter(|a| !a.is_empty()).and_then(|a| serde_json::to_string(a).ok());
    Ok(Parsed { media_type, artifact_type, subject, annotations, blobs, children })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        Digest::of(&[n]).to_string()
    }

    #[test]
    fn image_manifest_references() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"x","digest":"{}","size":3}}],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":9}}}}"#,
            d(1),
            d(2),
            d(3)
        );
        let p = parse(body.as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(p.blobs.len(), 2);
        assert_eq!(p.subject.unwrap().to_string(), d(3));
        assert_eq!(p.artifact_type.as_deref(), Some("application/vnd.oci.image.config.v1+json"));
    }

    #[test]
    fn refuses_bad_manifests() {
        assert!(parse(b"{", None).is_err());
        assert!(parse(br#"{"schemaVersion":1}"#, None).is_err());
        assert!(parse(br#"{"schemaVersion":2,"mediaType":"application/x-weird"}"#, None).is_err());
        let idx = format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{}","size":1}}]}}"#, d(1));
        assert_eq!(parse(idx.as_bytes(), None).unwrap().media_type, OCI_INDEX);
        assert!(parse(idx.as_bytes(), Some(OCI_MANIFEST)).is_err(), "header and body disagree");
        let bad = r#"{"schemaVersion":2,"config":{"digest":"sha256:nope","size":1},"layers":[]}"#;
        assert!(parse(bad.as_bytes(), None).is_err());
    }
}
