//! Outbound HTTPS, shared by the image puller (`images`) and the ACME client
//! (`ingress::acme`), below both: names answered
//! by `[dns] overrides` before the system resolver, and TLS by rustls with ring
//! and the system's CA roots plus extra PEM roots (a private or test CA).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};

/// `[dns] overrides` first, then the system resolver.
#[derive(Clone)]
pub struct Resolver {
    overrides: Arc<BTreeMap<String, IpAddr>>,
    system: GaiResolver,
}

impl Resolver {
    pub fn new(overrides: Arc<BTreeMap<String, IpAddr>>) -> Resolver {
        Resolver { overrides, system: GaiResolver::new() }
    }

    /// The addresses `host` resolves to, as a connection would (domain verification
    /// resolves the same way).
    pub async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, std::io::Error> {
        use std::str::FromStr;
        let name = Name::from_str(host).map_err(std::io::Error::other)?;
        let mut me = self.clone();
        std::future::poll_fn(|cx| tower::Service::poll_ready(&mut me, cx)).await?;
        Ok(tower::Service::call(&mut me, name).await?.map(|a| a.ip()).collect())
    }
}

type Resolving = Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, std::io::Error>> + Send>>;

impl tower::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.system.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Resolving {
        if let Some(ip) = self.overrides.get(&name.as_str().to_ascii_lowercase()) {
            // The connector puts the port in.
            let addr = SocketAddr::new(*ip, 0);
            return Box::pin(std::future::ready(Ok(vec![addr].into_iter())));
        }
        let lookup = self.system.call(name);
        Box::pin(async move { Ok(lookup.await?.collect::<Vec<_>>().into_iter()) })
    }
}

/// A TCP connector resolving through [`Resolver`], for any scheme (the TLS layer
/// above decides which it allows).
pub fn tcp(overrides: Arc<BTreeMap<String, IpAddr>>, connect_timeout: Duration) -> HttpConnector<Resolver> {
    let mut tcp = HttpConnector::new_with_resolver(Resolver::new(overrides));
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(connect_timeout));
    tcp.set_nodelay(true);
    tcp.set_keepalive(Some(Duration::from_secs(60)));
    tcp
}

/// A client TLS configuration trusting the system's CA certificates
/// (`rustls-native-certs`, which honours `SSL_CERT_FILE` and `SSL_CERT_DIR`) and
/// `extra_roots` (PEM). Blocking: reads the system's store. Answers the
/// configuration, and why HTTPS cannot work when no root at all was found.
pub fn tls_config(extra_roots: &[u8]) -> Result<(rustls::ClientConfig, Option<String>), String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        tracing::warn!(errors = ?native.errors, "some system CA certificates could not be read");
    }
    roots.add_parsable_certificates(native.certs);
    let extra = parse_roots(extra_roots)?;
    for cert in extra {
        roots.add(cert).map_err(|e| format!("extra CA certificate: {e}"))?;
    }
    let tls_unavailable =
        roots.is_empty().then(|| "no CA certificates in the system store (install ca-certificates)".to_string());
    // ring, not aws-lc-rs: no cmake and minutes less to build (adr/019); ring has
    // no post-quantum key exchange yet, which rustls now flags.
    #[expect(deprecated, reason = "ring is chosen over aws-lc-rs on purpose (adr/019)")]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((config, tls_unavailable))
}

/// The certificates of a PEM bundle.
pub fn parse_roots(pem: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("extra CA certificates: {e}"))
}
