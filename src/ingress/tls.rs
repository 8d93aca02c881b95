//! Certificates for the ingress's TLS listener, chosen per connection by SNI.
//!
//! [`CertStore`] holds one certificate per host name (exact names, and `*.parent`
//! wildcards for one label), swapped atomically: installing a renewed certificate
//! affects the next handshake and never an open connection, so renewals need no
//! restart and drop nothing. A handshake whose SNI matches nothing (or that sends
//! none: a bare IP) gets the fallback, a self-signed certificate made at start with
//! rcgen. Readers take a snapshot without locking; writers are serialized.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use super::routes::normalize_host;

/// ALPN protocols the listener offers, in preference order. `acme-tls/1` is the
/// CA's TLS-ALPN-01 check (RFC 8737): no client offers it otherwise.
pub const ALPN: [&[u8]; 3] = [b"h2", b"http/1.1", ACME_TLS_ALPN];

/// The ALPN protocol of a TLS-ALPN-01 validation: the handshake is all of it.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the certificate chain holds no certificate")]
    NoCertificate,
    #[error("the private key cannot be read: {0}")]
    Key(String),
    #[error("the certificate cannot be read: {0}")]
    Certificate(String),
    #[error("the private key does not belong to the certificate: {0}")]
    Mismatch(rustls::Error),
    #[error("making the fallback certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// What the API shows of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// The issuer's distinguished name, as text.
    pub issuer: String,
}

/// A certificate as installed: the key rustls signs with, and what it says.
#[derive(Debug)]
pub struct Installed {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
}

/// Host → certificate, read by every TLS handshake.
#[derive(Debug)]
pub struct CertStore {
    certs: ArcSwap<HashMap<String, Arc<Installed>>>,
    fallback: Arc<CertifiedKey>,
    write: Mutex<()>,
    /// TLS-ALPN-01 validation certificates, by host, while an order waits for the CA.
    validation: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

fn provider() -> Arc<CryptoProvider> {
    #[expect(deprecated, reason = "ring is chosen over aws-lc-rs on purpose (adr/019)")]
    Arc::new(rustls::crypto::ring::default_provider())
}

impl CertStore {
    /// A store holding nothing but a fresh self-signed fallback certificate for
    /// `fallback_names` (e.g. `localhost` and `*.<apps_domain>`).
    pub fn new(fallback_names: &[String]) -> Result<CertStore, TlsError> {
        let generated = rcgen::generate_simple_self_signed(fallback_names.to_vec())?;
        let chain = generated.cert.pem();
        let key = generated.signing_key.serialize_pem();
        let (fallback, _) = parse(&chain, &key)?;
        Ok(CertStore {
            certs: ArcSwap::default(),
            fallback: Arc::new(fallback),
            write: Mutex::new(()),
            validation: Mutex::new(HashMap::new()),
        })
    }

    /// Answers the CA's TLS-ALPN-01 handshakes for `host` with a certificate for it
    /// carrying `digest` (SHA-256 of the key authorization) in its critical
    /// `acmeIdentifier` extension, until [`CertStore::stop_validation`].
    pub fn start_validation(&self, host: &str, digest: &[u8]) -> Result<(), TlsError> {
        if digest.len() != 32 {
            return Err(TlsError::Certificate("an acmeIdentifier digest is 32 bytes".into()));
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(vec![host.to_string()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
        let cert = params.self_signed(&key)?;
        // Not `CertifiedKey::from_der`: its key check parses the certificate with
        // webpki, which refuses the critical extension the CA asks for.
        let der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| TlsError::Key(e.to_string()))?;
        let signer = provider().key_provider.load_private_key(der).map_err(|e| TlsError::Key(e.to_string()))?;
        let certified = CertifiedKey::new(vec![cert.der().clone()], signer);
        self.validation.lock().unwrap_or_else(|e| e.into_inner()).insert(normalize_host(host), Arc::new(certified));
        Ok(())
    }

    /// Stops answering TLS-ALPN-01 handshakes for `host`.
    pub fn stop_validation(&self, host: &str) {
        self.validation.lock().unwrap_or_else(|e| e.into_inner()).remove(&normalize_host(host));
    }

    /// Installs (or replaces) `host`'s certificate from a PEM chain (leaf first) and
    /// a PEM private key (PKCS#8, SEC1 or PKCS#1). Checks that they belong together
    /// before anything changes.
    pub fn install(&self, host: &str, chain_pem: &str, key_pem: &str) -> Result<CertInfo, TlsError> {
        let (key, info) = parse(chain_pem, key_pem)?;
        let host = normalize_host(host);
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = HashMap::clone(&self.certs.load());
        next.insert(host, Arc::new(Installed { key: Arc::new(key), info: info.clone() }));
        self.certs.store(Arc::new(next));
        Ok(info)
    }

    /// Forgets `host`'s certificate (the fallback answers for it again).
    pub fn remove(&self, host: &str) {
        let host = normalize_host(host);
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        if !self.certs.load().contains_key(&host) {
            return;
        }
        let mut next = HashMap::clone(&self.certs.load());
        next.remove(&host);
        self.certs.store(Arc::new(next));
    }

    /// The certificate installed for exactly `host`, if any.
    pub fn get(&self, host: &str) -> Option<Arc<Installed>> {
        self.certs.load().get(&normalize_host(host)).cloned()
    }

    /// The certificate a handshake for `host` would get, other than the fallback:
    /// `host` itself, else a wildcard for its parent.
    pub fn lookup(&self, host: &str) -> Option<Arc<Installed>> {
        let host = normalize_host(host);
        let certs = self.certs.load();
        if let Some(c) = certs.get(&host) {
            return Some(c.clone());
        }
        let (_, parent) = host.split_once('.')?;
        certs.get(&format!("*.{parent}")).cloned()
    }

    /// Whether a handshake for `host` gets a certificate of its own (then plain
    /// HTTP requests for it are redirected to HTTPS).
    pub fn covers(&self, host: &str) -> bool {
        self.lookup(host).is_some()
    }

    /// The fallback certificate's chain (for tests and for clients to pin).
    pub fn fallback_chain(&self) -> &[CertificateDer<'static>] {
        &self.fallback.cert
    }

    /// A rustls server configuration resolving through this store, offering h2 and
    /// http/1.1 by ALPN.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if hello.alpn().is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN)) {
            // A CA's validation: its certificate, or no handshake at all.
            let name = normalize_host(hello.server_name()?);
            return self.validation.lock().unwrap_or_else(|e| e.into_inner()).get(&name).cloned();
        }
        let found = hello.server_name().and_then(|name| self.lookup(name));
        Some(found.map(|c| c.key.clone()).unwrap_or_else(|| self.fallback.clone()))
    }
}

/// Reads a PEM chain and key into what rustls signs with, and what the leaf says.
fn parse(chain_pem: &str, key_pem: &str) -> Result<(CertifiedKey, CertInfo), TlsError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let leaf = chain.first().ok_or(TlsError::NoCertificate)?;
    let info = describe(leaf)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Key(e.to_string()))?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(TlsError::Mismatch)?;
    Ok((certified, info))
}

/// The validity window and issuer of a DER certificate.
pub fn describe(der: &[u8]) -> Result<CertInfo, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::Certificate(e.to_string()))?;
    let validity = cert.validity();
    let at = |t: x509_parser::time::ASN1Time| {
        OffsetDateTime::from_unix_timestamp(t.timestamp()).map_err(|e| TlsError::Certificate(e.to_string()))
    };
    Ok(CertInfo {
        not_before: at(validity.not_before)?,
        not_after: at(validity.not_after)?,
        issuer: cert.issuer().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        let g = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        (g.cert.pem(), g.signing_key.serialize_pem())
    }

    #[test]
    fn certificates_are_found_by_exact_name_then_wildcard_and_swapped_in_place() {
        let store = CertStore::new(&["localhost".into()]).unwrap();
        assert!(!store.covers("app.test"));
        let (chain, key) = self_signed(&["app.test"]);
        let info = store.install("App.Test.", &chain, &key).unwrap();
        assert!(info.not_after > info.not_before);
        assert!(store.covers("app.test:8443"), "port and case do not matter");
        let first = store.get("app.test").unwrap();
        let (chain2, key2) = self_signed(&["app.test"]);
        store.install("app.test", &chain2, &key2).unwrap();
        let second = store.get("app.test").unwrap();
        assert_ne!(first.key.cert, second.key.cert, "a renewal replaces the certificate");
        assert!(!store.covers("x.apps.test"));
        let (wc, wk) = self_signed(&["*.apps.test"]);
        store.install("*.apps.test", &wc, &wk).unwrap();
        assert!(store.covers("x.apps.test"));
        assert!(!store.covers("a.b.apps.test"), "a wildcard covers one label");
        store.remove("app.test");
        assert!(!store.covers("app.test"));
    }

    #[test]
    fn a_key_that_does_not_match_or_garbage_is_refused_and_nothing_changes() {
        let store = CertStore::new(&["localhost".into()]).unwrap();
        let (chain, _) = self_signed(&["app.test"]);
        let (_, other_key) = self_signed(&["app.test"]);
        assert!(matches!(store.install("app.test", &chain, &other_key), Err(TlsError::Mismatch(_))));
        assert!(matches!(store.install("app.test", "", &other_key), Err(TlsError::NoCertificate)));
        assert!(store.install("app.test", &chain, "not a key").is_err());
        assert!(!store.covers("app.test"));
        assert!(!store.fallback_chain().is_empty());
    }
}
