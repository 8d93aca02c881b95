//! ACME (RFC 8555, `instant-acme`) for the ingress: one issuance, the
//! HTTP client it runs over, which hosts may get a certificate, and the state the
//! API and the renewal worker share.
//!
//! - **Which hosts** ([`eligible`]): names a public CA issues for: not `localhost`,
//!   names under it, single labels or IP addresses.
//! - **Issuance** ([`order`]): a new order for the one name, the key authorization
//!   put in [`Challenges`] for HTTP-01 (the ingress's HTTP listener answers it for
//!   that Host only) or its digest in a validation certificate in [`CertStore`] for
//!   TLS-ALPN-01 (`acme.challenge`, adr/037; the HTTPS listener answers `acme-tls/1`
//!   handshakes with it), taken away however the attempt ends; the challenge
//!   set ready, the order polled with backoff, finalized with a CSR for a fresh
//!   ECDSA P-256 key made here (rcgen), and the chain fetched.
//! - **The client** ([`AcmeHttp`]): hyper-util over rustls (ring), HTTPS only,
//!   trusting the system's roots plus `acme.ca_bundle`, resolving through
//!   `[dns] overrides` (`crate::outbound`), with a deadline on every answer.
//! - **Shared state** ([`Acme`]): each host's certificate status (what
//!   `GET /v1/ingress/routes` shows) and the forced renewals waiting for the worker,
//!   in memory, so nothing on the request path waits for SQLite or the CA.
//!
//! Storing (keys sealed), loading at start, and the renewal loop with its timing
//! and backoff are `crate::workers::acme`'s. Limits: one name per certificate (no wildcards: they need
//! DNS-01), no OCSP stapling, no ACME Renewal Information (ARI); see adr/028.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType, HttpClient, Identifier, NewOrder,
    OrderStatus, RetryPolicy,
};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::Notify;
use utoipa::ToSchema;

use super::challenge::Challenges;
use super::routes::normalize_host;
use super::tls::CertStore;
use crate::config::AcmeChallenge;
use crate::outbound::Resolver;
use crate::secrets::Zeroizing;

/// Time to open a TCP connection to the CA.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time from sending a request to the CA to its response head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the order is polled for its validation, then for its certificate.
const POLL_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("acme: {0}")]
    Acme(String),
    #[error("the CA refused {host}: {reason}")]
    Refused { host: String, reason: String },
    #[error("the http client for the acme directory: {0}")]
    Client(String),
    #[error("making the certificate request: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("the issued certificate: {0}")]
    Certificate(#[from] super::tls::TlsError),
}

impl From<instant_acme::Error> for AcmeError {
    fn from(e: instant_acme::Error) -> Self {
        AcmeError::Acme(with_sources(&e))
    }
}

/// An error and its causes on one line (hyper's own message is only "client error (Connect)").
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        source = s.source();
    }
    out
}

/// A host's certificate as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct CertificateStatus {
    /// `issued` (the last attempt succeeded), `error` (it failed; a certificate
    /// issued before, if any, is still served), or `pending` (none yet).
    pub state: String,
    /// The certificate served, when there is one.
    pub serial: Option<String>,
    pub not_before: Option<String>,
    pub not_after: Option<String>,
    pub issuer: Option<String>,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// Failed attempts in a row.
    pub failures: u32,
    /// When the worker tries again after a failure (backoff).
    pub next_attempt_at: Option<String>,
}

/// What the worker knows of a host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    pub serial: Option<String>,
    pub not_before: Option<OffsetDateTime>,
    pub not_after: Option<OffsetDateTime>,
    pub issuer: Option<String>,
    pub error: Option<String>,
    pub failures: u32,
    pub next_attempt: Option<OffsetDateTime>,
}

impl Known {
    pub fn status(&self) -> CertificateStatus {
        let fmt = |t: &Option<OffsetDateTime>| t.map(crate::ids::format_time);
        let state = match (&self.error, &self.not_after) {
            (Some(_), _) => "error",
            (None, Some(_)) => "issued",
            (None, None) => "pending",
        };
        CertificateStatus {
            state: state.into(),
            serial: self.serial.clone(),
            not_before: fmt(&self.not_before),
            not_after: fmt(&self.not_after),
            issuer: self.issuer.clone(),
            error: self.error.clone(),
            failures: self.failures,
            next_attempt_at: fmt(&self.next_attempt),
        }
    }

    /// Whether the worker should issue now: never during a backoff; else when there
    /// is no certificate, or less than a third of its lifetime is left.
    pub fn due(&self, now: OffsetDateTime) -> bool {
        if self.next_attempt.is_some_and(|t| t > now) {
            return false;
        }
        match (self.not_before, self.not_after) {
            (Some(from), Some(until)) => (until - now) * 3 < (until - from),
            _ => true,
        }
    }
}

/// The wait after `failures` failed attempts in a row: `min`, doubling, at most `max`.
pub fn backoff(failures: u32, min: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(32);
    min.saturating_mul(1u32 << doublings.min(31)).min(max)
}

/// Whether a host can get a certificate from a public CA at all.
pub fn eligible(host: &str) -> bool {
    let host = normalize_host(host);
    host.parse::<IpAddr>().is_err()
        && host != "localhost"
        && !host.ends_with(".localhost")
        && host.contains('.')
        && crate::validate::is_hostname(&host)
}

/// The state the API and the worker share: each host's certificate status and the
/// forced renewals waiting for the worker.
#[derive(Debug, Default)]
pub struct Acme {
    known: Mutex<HashMap<String, Known>>,
    forced: Mutex<BTreeSet<String>>,
    wake: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Acme {
    /// The host's certificate status; `None` when berth never tried.
    pub fn status(&self, host: &str) -> Option<CertificateStatus> {
        lock(&self.known).get(&normalize_host(host)).map(Known::status)
    }

    /// Asks the worker to issue a new certificate for `host` now, whatever its
    /// current one and backoff say.
    pub fn force(&self, host: &str) {
        lock(&self.forced).insert(normalize_host(host));
        self.wake.notify_one();
    }

    /// Resolves at the next [`Acme::force`] (the worker waits on it).
    pub async fn forced(&self) {
        self.wake.notified().await
    }

    /// Whether a forced renewal of `host` is waiting.
    pub fn is_forced(&self, host: &str) -> bool {
        lock(&self.forced).contains(&normalize_host(host))
    }

    pub fn take_forced(&self) -> BTreeSet<String> {
        std::mem::take(&mut *lock(&self.forced))
    }

    pub fn known(&self, host: &str) -> Known {
        lock(&self.known).get(host).cloned().unwrap_or_default()
    }

    pub fn set(&self, host: &str, k: Known) {
        lock(&self.known).insert(host.to_string(), k);
    }

    pub fn forget(&self, host: &str) {
        lock(&self.known).remove(host);
    }

    pub fn hosts(&self) -> Vec<(String, Known)> {
        lock(&self.known).iter().map(|(h, k)| (h.clone(), k.clone())).collect()
    }
}

pub fn parse_time(t: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector<Resolver>>;

/// instant-acme's HTTP client: hyper-util over rustls, HTTPS only, with a deadline
/// on every response head.
#[derive(Clone)]
pub struct AcmeHttp {
    client: Client<Connector, BodyWrapper<Bytes>>,
}

impl AcmeHttp {
    /// Blocking: reads the system's CA certificates and `ca_bundle`.
    pub fn new(
        overrides: Arc<std::collections::BTreeMap<String, IpAddr>>,
        ca_bundle: &str,
    ) -> Result<AcmeHttp, AcmeError> {
        let extra = if ca_bundle.is_empty() {
            Vec::new()
        } else {
            std::fs::read(ca_bundle).map_err(|e| AcmeError::Client(format!("{ca_bundle}: {e}")))?
        };
        let (config, none) = crate::outbound::tls_config(&extra).map_err(AcmeError::Client)?;
        if let Some(why) = none {
            return Err(AcmeError::Client(why));
        }
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .wrap_connector(crate::outbound::tcp(overrides, CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(connector);
        Ok(AcmeHttp { client })
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: hyper::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        // ACME URLs carry no secrets: the error names the one that failed.
        let uri = req.uri().clone();
        let fut = self.client.request(req);
        Box::pin(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
                Err(_) => Err(instant_acme::Error::Other(
                    format!("{uri}: no answer within {} s", REQUEST_TIMEOUT.as_secs()).into(),
                )),
                Ok(Err(e)) => Err(instant_acme::Error::Other(format!("{uri}: {}", with_sources(&e)).into())),
                Ok(Ok(rsp)) => Ok(BytesResponse::from(rsp)),
            }
        })
    }
}

/// Removes the challenge answers it put, however the issuance ends.
struct Answering<'a> {
    challenges: &'a Challenges,
    tokens: Vec<String>,
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.challenges.remove_acme(t);
        }
    }
}

/// A new certificate and its private key (PEM).
pub struct Fresh {
    pub chain_pem: String,
    pub key_pem: Zeroizing<String>,
}

/// Removes a TLS-ALPN-01 validation certificate, however the issuance ends.
struct Validating<'a> {
    certs: &'a CertStore,
    host: Option<String>,
}

impl Drop for Validating<'_> {
    fn drop(&mut self) {
        if let Some(h) = &self.host {
            self.certs.stop_validation(h);
        }
    }
}

/// One issuance for `host`, answering the CA's `kind` of challenge: HTTP-01 on the
/// ingress's port 80 (`challenges`), or TLS-ALPN-01 on its HTTPS port (`certs`).
pub async fn order(
    account: &Account,
    kind: AcmeChallenge,
    challenges: &Challenges,
    certs: &CertStore,
    host: &str,
) -> Result<Fresh, AcmeError> {
    let refused = |reason: String| AcmeError::Refused { host: host.to_string(), reason };
    let identifiers = [Identifier::Dns(host.to_string())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut answering = Answering { challenges, tokens: Vec::new() };
    let mut validating = Validating { certs, host: None };
    {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(refused(format!("its authorization is {other:?}"))),
            }
            let (wanted, name) = match kind {
                AcmeChallenge::Http01 => (ChallengeType::Http01, "http-01"),
                AcmeChallenge::TlsAlpn01 => (ChallengeType::TlsAlpn01, "tls-alpn-01"),
            };
            let mut challenge =
                authz.challenge(wanted).ok_or_else(|| refused(format!("it offers no {name} challenge")))?;
            let key_authorization = challenge.key_authorization();
            match kind {
                AcmeChallenge::Http01 => {
                    challenges.put_acme(host, &challenge.token, key_authorization.as_str());
                    answering.tokens.push(challenge.token.clone());
                }
                AcmeChallenge::TlsAlpn01 => {
                    certs.start_validation(host, key_authorization.digest().as_ref())?;
                    validating.host = Some(host.to_string());
                }
            }
            challenge.set_ready().await?;
        }
    }
    let policy = RetryPolicy::new().timeout(POLL_TIMEOUT);
    let status = order.poll_ready(&policy).await?;
    if status != OrderStatus::Ready {
        return Err(refused(why_invalid(&mut order).await));
    }
    // The CA has checked the answer; it is not needed any more.
    drop(answering);
    drop(validating);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    order.finalize_csr(csr.der()).await?;
    let chain_pem = order.poll_certificate(&policy).await?;
    Ok(Fresh { chain_pem, key_pem: Zeroizing::new(key.serialize_pem()) })
}

/// What the CA said about a failed validation: the challenge's error, if it gave one.
async fn why_invalid(order: &mut instant_acme::Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let Ok(mut authz) = authz else { continue };
        let _ = authz.refresh().await;
        for c in &authz.challenges {
            if let Some(e) = &c.error {
                reasons.push(e.to_string());
            }
        }
    }
    if reasons.is_empty() { "the order became invalid".to_string() } else { reasons.join("; ") }
}

/// The hex serial number of a PEM chain's leaf.
pub fn serial_of(chain_pem: &str) -> Result<String, AcmeError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |e: String| AcmeError::Certificate(super::tls::TlsError::Certificate(e));
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or(AcmeError::Certificate(super::tls::TlsError::NoCertificate))?
        .map_err(|e| bad(e.to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).map_err(|e| bad(e.to_string()))?;
    Ok(serial_hex(cert.tbs_certificate.raw_serial()))
}

/// A serial number in hex as `openssl x509 -serial` prints it: without the zero
/// byte DER puts before a number whose first bit is set.
fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len().saturating_sub(1));
    raw[start..].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> OffsetDateTime {
        parse_time(s).unwrap()
    }

    #[test]
    fn a_certificate_is_due_in_its_last_third_and_never_during_a_backoff() {
        let now = at("2025-03-01T00:00:00Z");
        assert!(Known::default().due(now), "no certificate yet");
        let mut k = Known {
            not_before: Some(at("2025-01-01T00:00:00Z")),
            not_after: Some(at("2025-04-01T00:00:00Z")),
            ..Known::default()
        };
        // 90 days; 31 left on 2025-03-01 (more than 30).
        assert!(!k.due(now));
        assert!(k.due(at("2025-03-03T00:00:00Z")), "29 days left");
        assert!(k.due(at("2025-05-01T00:00:00Z")), "expired");
        k.next_attempt = Some(at("2025-03-04T00:00:00Z"));
        assert!(!k.due(at("2025-03-03T00:00:00Z")), "backing off");
        assert!(k.due(at("2025-03-04T00:00:00Z")));
        assert_eq!(k.status().state, "issued");
        k.error = Some("refused".into());
        assert_eq!(k.status().state, "error");
        assert_eq!(Known::default().status().state, "pending");
    }

    #[test]
    fn serials_read_as_openssl_prints_them() {
        assert_eq!(serial_hex(&[0x00, 0xa5, 0x74, 0x0b]), "a5740b", "the DER sign byte goes");
        assert_eq!(serial_hex(&[0x12, 0x00]), "1200");
        assert_eq!(serial_hex(&[0x00]), "00");
    }

    #[test]
    fn backoff_doubles_from_the_minimum_up_to_the_maximum() {
        let (min, max) = (Duration::from_secs(60), Duration::from_secs(3600));
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n, min, max).as_secs()).collect();
        assert_eq!(waits, vec![60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff(u32::MAX, min, max), max);
    }

    #[test]
    fn local_names_and_addresses_get_no_certificate() {
        for ok in ["web.alpha.apps.test", "App.Example.com.", "example.com:443"] {
            assert!(eligible(ok), "{ok}");
        }
        for no in ["localhost", "web.alpha.localhost", "127.0.0.1", "::1", "[::1]", "intranet", "a..b", ""] {
            assert!(!eligible(no), "{no}");
        }
    }

    #[test]
    fn forced_renewals_wait_for_the_worker_once() {
        let a = Acme::default();
        a.force("Web.Example.com");
        assert!(a.is_forced("web.example.com"));
        assert_eq!(a.take_forced().into_iter().collect::<Vec<_>>(), vec!["web.example.com".to_string()]);
        assert!(a.take_forced().is_empty());
        assert!(a.status("web.example.com").is_none());
    }
}
