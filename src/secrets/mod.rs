//! Secrets at rest: sealed with age (X25519) under a host key.
//!
//! - The host key is an age X25519 identity in `<data_dir>/secrets/host.key`
//!   (directory 0700, file 0600), created at first start and never shown. Losing it
//!   loses every sealed value; backing up the state dir backs it up too.
//! - A sealed value is `age:` followed by the base64 of the binary age file, so it
//!   fits a TEXT column and is recognisable in a dump.
//! - Plaintext is opened only to hand it to whoever needs it (a container's
//!   environment, a registry's login) and is held in [`Zeroizing`] buffers, wiped on
//!   drop. [`Redacted`] prints as `***` so a secret cannot reach a log by `{:?}`.
//! - Every sealed value is stored beside the [`Sealer::key_id`] of the key that sealed
//!   it, so a value sealed under a lost or replaced key is reported as such (naming
//!   the credential) without trying to open it.
//!
//! Built on it: [`credentials`] (registry logins and Git deploy keys, and the
//! functions the image puller calls to get them back), [`env`] (service env values
//! marked secret: sealed, opened for a container, redacted everywhere else) and
//! [`ssh`] (the shape check and fingerprint of a deploy key). See adr/018.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
pub use zeroize::Zeroizing;

pub mod credentials;
pub mod env;
pub mod ssh;

const PREFIX: &str = "age:";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("host key {path}: {source}")]
    Key { path: PathBuf, source: std::io::Error },
    #[error("host key {0} is not an age X25519 identity")]
    BadKey(PathBuf),
    #[error("host key {0} is readable by others than its owner (mode must be 0600)")]
    Permissions(PathBuf),
    #[error("sealing failed: {0}")]
    Seal(String),
    /// The value is not sealed, or not by this host's key, or damaged.
    #[error("a sealed value could not be opened")]
    Open,
}

/// Seals and opens values with the host key.
pub struct Sealer {
    identity: age::x25519::Identity,
    recipient: age::x25519::Recipient,
    key_id: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl Sealer {
    /// Loads `<dir>/host.key`, creating the directory and a new key on first use.
    pub fn load_or_create(dir: &Path) -> Result<Sealer, SecretsError> {
        let key_err = |source| SecretsError::Key { path: dir.to_path_buf(), source };
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(key_err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(key_err)?;
        let path = dir.join("host.key");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mode =
                    std::fs::metadata(&path).map_err(|source| SecretsError::Key { path: path.clone(), source })?;
                if mode.permissions().mode() & 0o077 != 0 {
                    return Err(SecretsError::Permissions(path));
                }
                let identity: age::x25519::Identity =
                    text.trim().parse().map_err(|_| SecretsError::BadKey(path.clone()))?;
                Ok(Sealer::from_identity(identity))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = age::x25519::Identity::generate();
                write_key(&path, identity.to_string().expose_secret())?;
                tracing::info!(path = %path.display(), "host key for secrets created");
                Ok(Sealer::from_identity(identity))
            }
            Err(source) => Err(SecretsError::Key { path, source }),
        }
    }

    fn from_identity(identity: age::x25519::Identity) -> Sealer {
        let recipient = identity.to_public();
        let key_id = key_id_of(&recipient);
        Sealer { identity, recipient, key_id }
    }

    /// A short public name for this host key: the first 16 hex digits of the SHA-256
    /// of its age recipient (public key). Stored beside each sealed value; it reveals
    /// nothing about the private key.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// A sealer with a throw-away key (tests).
    pub fn ephemeral() -> Sealer {
        Sealer::from_identity(age::x25519::Identity::generate())
    }

    /// Seals `plaintext`; the result is safe to store anywhere.
    pub fn seal(&self, plaintext: &[u8]) -> Result<String, SecretsError> {
        let sealed = age::encrypt(&self.recipient, plaintext).map_err(|e| SecretsError::Seal(e.to_string()))?;
        Ok(format!("{PREFIX}{}", STANDARD.encode(sealed)))
    }

    /// Opens a value sealed by [`Sealer::seal`] with this host's key.
    pub fn open(&self, sealed: &str) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
        let body = sealed.strip_prefix(PREFIX).ok_or(SecretsError::Open)?;
        let bytes = STANDARD.decode(body).map_err(|_| SecretsError::Open)?;
        age::decrypt(&self.identity, &bytes).map(Zeroizing::new).map_err(|_| SecretsError::Open)
    }

    /// Opens a sealed UTF-8 string.
    pub fn open_string(&self, sealed: &str) -> Result<Zeroizing<String>, SecretsError> {
        let bytes = self.open(sealed)?;
        std::str::from_utf8(&bytes).map(|s| Zeroizing::new(s.to_string())).map_err(|_| SecretsError::Open)
    }

    /// Whether `value` looks sealed (by any key).
    pub fn is_sealed(value: &str) -> bool {
        value.starts_with(PREFIX)
    }
}

fn key_id_of(recipient: &age::x25519::Recipient) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(recipient.to_string().as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn write_key(path: &Path, text: &str) -> Result<(), SecretsError> {
    let err = |source| SecretsError::Key { path: path.to_path_buf(), source };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(err)?;
    f.write_all(text.as_bytes()).and_then(|_| f.write_all(b"\n")).and_then(|_| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    }
    Ok(())
}

/// A value that must never be printed: `Debug` and `Display` show `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Redacted<T>(pub T);

impl<T> std::fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl<T> std::fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_host_key() {
        let dir = std::env::temp_dir().join(crate::ids::new_id("sealtest"));
        let keys = dir.join("secrets");
        let a = Sealer::load_or_create(&keys).unwrap();
        let mode = std::fs::metadata(keys.join("host.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777, 0o700);
        let sealed = a.seal(b"hunter2-password").unwrap();
        assert!(Sealer::is_sealed(&sealed) && !sealed.contains("hunter2"));
        assert_eq!(&a.open(&sealed).unwrap()[..], b"hunter2-password");
        // The same key comes back after a restart.
        let again = Sealer::load_or_create(&keys).unwrap();
        assert_eq!(again.open_string(&sealed).unwrap().as_str(), "hunter2-password");
        assert_eq!(again.key_id(), a.key_id());
        assert_eq!(a.key_id().len(), 16);
        assert_ne!(Sealer::ephemeral().key_id(), a.key_id());
        assert!(!format!("{a:?}").contains("AGE-SECRET-KEY"), "{a:?}");
        // Another key, a damaged value, plaintext: refused.
        assert!(matches!(Sealer::ephemeral().open(&sealed), Err(SecretsError::Open)));
        let mut damaged = sealed.clone();
        damaged.truncate(sealed.len() - 8);
        assert!(a.open(&damaged).is_err());
        assert!(a.open("hunter2-password").is_err());
        // A key readable by others is refused.
        std::fs::set_permissions(keys.join("host.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(Sealer::load_or_create(&keys), Err(SecretsError::Permissions(_))));
        assert_eq!(format!("{:?} {}", Redacted("x"), Redacted(1)), "*** ***");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
