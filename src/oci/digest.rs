//! The one digest type and validator: the OCI grammar as `oci_spec::image::Digest`
//! reads it, narrowed to sha256, the only algorithm berth stores.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::DigestAlgorithm;

/// A sha256 digest: 64 lowercase hex characters, so it is also safe as a file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

/// Why a digest string was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum DigestError {
    /// Not `algorithm:encoded` as the OCI grammar has it, or a known algorithm with
    /// an encoding of the wrong length or alphabet.
    Malformed,
    /// Well formed, but an algorithm berth does not store (anything but sha256).
    UnsupportedAlgorithm(String),
}

impl fmt::Display for DigestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DigestError::Malformed => f.write_str("not a valid digest"),
            DigestError::UnsupportedAlgorithm(a) => write!(f, "digest algorithm {a} is not supported; use sha256"),
        }
    }
}

impl std::error::Error for DigestError {}

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let d = oci_spec::image::Digest::from_str(s).map_err(|_| DigestError::Malformed)?;
        Digest::try_from(&d)
    }

    pub fn from_sha256(bytes: &[u8]) -> Digest {
        Digest { hex: crate::auth::hex(bytes) }
    }

    pub fn of(data: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest::from_sha256(&sha2::Sha256::digest(data))
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl TryFrom<&oci_spec::image::Digest> for Digest {
    type Error = DigestError;

    /// oci-spec has already checked the grammar, and for sha256 the length and the
    /// lowercase hex alphabet.
    fn try_from(d: &oci_spec::image::Digest) -> Result<Digest, DigestError> {
        match d.algorithm() {
            DigestAlgorithm::Sha256 => Ok(Digest { hex: d.digest().to_string() }),
            other => Err(DigestError::UnsupportedAlgorithm(other.to_string())),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        let d = Digest::of(b"hello");
        assert_eq!(d.to_string(), "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(d.hex(), "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
    }

    #[test]
    fn wrong_shapes_are_malformed() {
        for bad in [
            "",
            "nocolon",
            ":",
            "sha256:",
            ":2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "sha256:abc",
            "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824a",
            "sha256:../../etc/passwd",
            "SHA256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "sha256+:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            // A known algorithm with the wrong length is malformed, not unsupported.
            "sha512:abcd",
        ] {
            assert_eq!(Digest::parse(bad), Err(DigestError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn other_algorithms_are_unsupported() {
        assert_eq!(
            Digest::parse(&format!("sha512:{}", "a".repeat(128))),
            Err(DigestError::UnsupportedAlgorithm("sha512".into()))
        );
        assert_eq!(
            Digest::parse("multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8"),
            Err(DigestError::UnsupportedAlgorithm("multihash+base58".into()))
        );
    }
}
