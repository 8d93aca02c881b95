//! What the registry keeps of a pushed manifest: the media type it is served with,
//! what it references (which must already be in the repository), and its subject,
//! artifactType and annotations for the referrers API. The parse is
//! [`crate::oci::Manifest`]'s, the same one the engine runs images from; this file
//! only reads the push's Content-Type and maps refusals to `MANIFEST_INVALID`.

pub use crate::oci::{MAX_MANIFEST_BYTES, OCI_INDEX, OCI_MANIFEST};

use super::error::RegistryError;
use super::names::Digest;

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

/// Parses and checks a manifest body; `content_type` is the request's Content-Type.
/// A generic one (`application/json`, `application/octet-stream`) declares nothing.
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Parsed, RegistryError> {
    let declared = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "application/json" && c != "application/octet-stream");
    let m = crate::oci::Manifest::parse(body, declared.as_deref())
        .map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;
    Ok(Parsed {
        media_type: m.media_type().to_string(),
        artifact_type: m.artifact_type(),
        subject: m.subject().cloned(),
        annotations: m.annotations_json(),
        blobs: m.blobs().to_vec(),
        children: m.children().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        Digest::of(&[n]).to_string()
    }

    #[test]
    fn content_type_declares_the_media_type() {
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1}}]}}"#,
            d(1)
        );
        assert_eq!(parse(idx.as_bytes(), None).unwrap().media_type, OCI_INDEX);
        for generic in ["application/json", "application/octet-stream; charset=binary", ""] {
            assert_eq!(parse(idx.as_bytes(), Some(generic)).unwrap().media_type, OCI_INDEX, "{generic:?}");
        }
        let p = parse(idx.as_bytes(), Some("Application/VND.oci.image.index.v1+json; charset=utf-8")).unwrap();
        assert_eq!((p.media_type.as_str(), p.children.len()), (OCI_INDEX, 1));
        assert!(matches!(parse(idx.as_bytes(), Some(OCI_MANIFEST)), Err(RegistryError::ManifestInvalid(_))));
    }

    #[test]
    fn refusals_are_manifest_invalid() {
        let no_media_type = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"digest":"{}","size":3}}]}}"#,
            d(1),
            d(2)
        );
        let bads: [&[u8]; 3] = [b"{", br#"{"schemaVersion":1}"#, no_media_type.as_bytes()];
        for bad in bads {
            assert!(
                matches!(parse(bad, None), Err(RegistryError::ManifestInvalid(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
