//! Certificates from an ACME CA (RFC 8555, `instant-acme`), for every host the
//! ingress routes, renewed in the background.
//!
//! - **Which hosts**: when `acme.enabled`, every host in the routing table (default
//!   hostnames and whatever else is routed) and `ingress.control_domain`, except
//!   `localhost`, names under it and IP addresses. A host that leaves the table is
//!   no longer renewed; its certificate is served until it expires, then dropped.
//! - **Issuance** (HTTP-01): a new order for the one name, the key authorization put
//!   in [`Challenges`] (the ingress's HTTP listener answers it for that Host only,
//!   and it is taken away after), the challenge set ready, the order polled with
//!   backoff, finalized with a CSR for a fresh ECDSA P-256 key made here (rcgen),
//!   and the chain fetched. The chain and key go into the [`CertStore`] (the next
//!   handshake gets them, open connections keep theirs) and into SQLite, the key
//!   sealed with the host's age key (adr/018).
//! - **The account** is created at the first issuance and its credentials (which
//!   hold its private key) are kept sealed in SQLite, one per directory URL.
//! - **The worker** ([`spawn`]) looks every `acme.renew_check_seconds` for hosts
//!   with no certificate, or with less than a third of its lifetime left, and
//!   issues for them one at a time. A failure is kept in the host's state with its
//!   error, and the host waits `backoff_min_seconds`, doubling per failure up to
//!   `backoff_max_seconds`. A forced renewal (`POST /v1/ingress/routes/{host}/renew`)
//!   wakes it and skips the wait. Nothing on the request path waits for it.
//! - **At start** every stored certificate is loaded into the [`CertStore`] before
//!   the listeners accept ([`load_stored`]), with ACME on or off.
//!
//! The HTTP client is hyper-util's over rustls (ring), trusting the system's roots
//! plus `acme.ca_bundle`, resolving through `[dns] overrides` (`crate::http::outbound`).
//!
//! Limits: HTTP-01 only (no TLS-ALPN-01, so port 80 must reach berth), one name
//! per certificate (no wildcards: they need DNS-01), no OCSP stapling, no ACME
//! Renewal Information (ARI); see adr/028.

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
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType, HttpClient,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use utoipa::ToSchema;

use super::challenge::Challenges;
use super::routes::normalize_host;
use super::tls::CertStore;
use crate::http::outbound::Resolver;
use crate::secrets::{Sealer, Zeroizing};
use crate::state::AppState;
use crate::store::Store;

/// Time to open a TCP connection to the CA.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time from sending a request to the CA to its response head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one issuance may take, from the new order to the stored certificate.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(300);
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
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the account credentials: {0}")]
    Credentials(#[from] serde_json::Error),
    #[error("no answer within {} s", ISSUE_TIMEOUT.as_secs())]
    Timeout,
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
struct Known {
    serial: Option<String>,
    not_before: Option<OffsetDateTime>,
    not_after: Option<OffsetDateTime>,
    issuer: Option<String>,
    error: Option<String>,
    failures: u32,
    next_attempt: Option<OffsetDateTime>,
}

impl Known {
    fn status(&self) -> CertificateStatus {
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
    fn due(&self, now: OffsetDateTime) -> bool {
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
fn backoff(failures: u32, min: Duration, max: Duration) -> Duration {
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

    /// Whether a forced renewal of `host` is waiting.
    pub fn is_forced(&self, host: &str) -> bool {
        lock(&self.forced).contains(&normalize_host(host))
    }

    fn take_forced(&self) -> BTreeSet<String> {
        std::mem::take(&mut *lock(&self.forced))
    }

    fn known(&self, host: &str) -> Known {
        lock(&self.known).get(host).cloned().unwrap_or_default()
    }

    fn set(&self, host: &str, k: Known) {
        lock(&self.known).insert(host.to_string(), k);
    }

    fn forget(&self, host: &str) {
        lock(&self.known).remove(host);
    }

    fn hosts(&self) -> Vec<(String, Known)> {
        lock(&self.known).iter().map(|(h, k)| (h.clone(), k.clone())).collect()
    }
}

fn parse_time(t: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
}

/// Loads every stored certificate into `certs` and its status into `acme`; a row
/// whose key cannot be opened (another host key) or whose certificate does not
/// parse is skipped with a warning. Answers how many were installed.
pub async fn load_stored(store: &Store, sealer: &Sealer, certs: &CertStore, acme: &Acme) -> Result<usize, AcmeError> {
    let rows = store.read(crate::store::acme::all).await?;
    let mut installed = 0;
    for row in rows {
        let mut k = Known {
            error: row.error.clone(),
            failures: row.failures,
            next_attempt: row.next_attempt_at.as_deref().and_then(parse_time),
            ..Known::default()
        };
        if let Some(i) = &row.issued {
            let key = match sealer.open_string(&i.key_sealed) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(host = row.host, error = %e, "a stored certificate's key cannot be opened; it will be issued again");
                    acme.set(&row.host, k);
                    continue;
                }
            };
            match certs.install(&row.host, &i.chain_pem, &key) {
                Ok(info) => {
                    installed += 1;
                    k.serial = Some(i.serial.clone());
                    k.not_before = Some(info.not_before);
                    k.not_after = Some(info.not_after);
                    k.issuer = Some(info.issuer);
                }
                Err(e) => tracing::warn!(host = row.host, error = %e, "a stored certificate cannot be used"),
            }
        }
        acme.set(&row.host, k);
    }
    Ok(installed)
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector<Resolver>>;

/// instant-acme's HTTP client: hyper-util over rustls, HTTPS only, with a deadline
/// on every response head.
#[derive(Clone)]
struct AcmeHttp {
    client: Client<Connector, BodyWrapper<Bytes>>,
}

impl AcmeHttp {
    /// Blocking: reads the system's CA certificates and `ca_bundle`.
    fn new(overrides: Arc<std::collections::BTreeMap<String, IpAddr>>, ca_bundle: &str) -> Result<AcmeHttp, AcmeError> {
        let extra = if ca_bundle.is_empty() {
            Vec::new()
        } else {
            std::fs::read(ca_bundle).map_err(|e| AcmeError::Client(format!("{ca_bundle}: {e}")))?
        };
        let (config, none) = crate::http::outbound::tls_config(&extra).map_err(AcmeError::Client)?;
        if let Some(why) = none {
            return Err(AcmeError::Client(why));
        }
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .wrap_connector(crate::http::outbound::tcp(overrides, CONNECT_TIMEOUT));
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
        let fut = self.client.request(req);
        Box::pin(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
                Err(_) => Err(instant_acme::Error::Other(
                    format!("the acme server sent no answer within {} s", REQUEST_TIMEOUT.as_secs()).into(),
                )),
                Ok(Err(e)) => Err(instant_acme::Error::Other(with_sources(&e).into())),
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
struct Fresh {
    chain_pem: String,
    key_pem: Zeroizing<String>,
}

/// One HTTP-01 issuance for `host`.
async fn order(account: &Account, challenges: &Challenges, host: &str) -> Result<Fresh, AcmeError> {
    let refused = |reason: String| AcmeError::Refused { host: host.to_string(), reason };
    let identifiers = [Identifier::Dns(host.to_string())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut answering = Answering { challenges, tokens: Vec::new() };
    {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(refused(format!("its authorization is {other:?}"))),
            }
            let mut challenge = authz
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| refused("it offers no http-01 challenge".into()))?;
            let key_authorization = challenge.key_authorization();
            challenges.put_acme(host, &challenge.token, key_authorization.as_str());
            answering.tokens.push(challenge.token.clone());
            challenge.set_ready().await?;
        }
    }
    let policy = RetryPolicy::new().timeout(POLL_TIMEOUT);
    let status = order.poll_ready(&policy).await?;
    if status != OrderStatus::Ready {
        return Err(refused(why_invalid(&mut order).await));
    }
    // The CA has fetched the answer; it is not needed any more.
    drop(answering);
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

/// The worker's side: the account and the HTTP client, made on first need.
struct Renewer {
    state: AppState,
    http: Option<AcmeHttp>,
    account: Option<Account>,
}

impl Renewer {
    async fn http(&mut self) -> Result<AcmeHttp, AcmeError> {
        if let Some(h) = &self.http {
            return Ok(h.clone());
        }
        let overrides = Arc::new(self.state.config.dns.overrides.clone());
        let bundle = self.state.config.acme.ca_bundle.clone();
        let http = tokio::task::spawn_blocking(move || AcmeHttp::new(overrides, &bundle))
            .await
            .map_err(|e| AcmeError::Client(e.to_string()))??;
        self.http = Some(http.clone());
        Ok(http)
    }

    /// The account: the stored one, else a new one registered and stored sealed.
    async fn account(&mut self) -> Result<Account, AcmeError> {
        if let Some(a) = &self.account {
            return Ok(a.clone());
        }
        let http = self.http().await?;
        let directory = self.state.config.acme.directory_url.clone();
        let lookup = directory.clone();
        let stored = self.state.store.read(move |c| crate::store::acme::account(c, &lookup)).await?;
        let sealer = self.state.sealer.clone();
        let reusable = stored.filter(|a| a.key_id == sealer.key_id());
        let account = match reusable.map(|a| sealer.open_string(&a.credentials)) {
            Some(Ok(json)) => {
                let credentials: AccountCredentials = serde_json::from_str(&json)?;
                let account = Account::builder_with_http(Box::new(http)).from_credentials(credentials).await?;
                tracing::debug!(directory, "acme account loaded");
                account
            }
            opened => {
                if let Some(Err(e)) = opened {
                    tracing::warn!(error = %e, "the stored acme account cannot be opened; registering a new one");
                }
                let contact = self.state.config.acme.contact.clone();
                let contacts: Vec<&str> = if contact.is_empty() { vec![] } else { vec![contact.as_str()] };
                let new = NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
                let (account, credentials) =
                    Account::builder_with_http(Box::new(http)).create(&new, directory.clone(), None).await?;
                let json = Zeroizing::new(serde_json::to_string(&credentials)?);
                let row = crate::store::acme::Account {
                    directory_url: directory.clone(),
                    credentials: sealer.seal(json.as_bytes())?,
                    key_id: sealer.key_id().to_string(),
                    created_at: crate::ids::now_rfc3339(),
                };
                self.state.store.write(move |c| crate::store::acme::put_account(c, &row)).await?;
                tracing::info!(directory, account = account.id(), "acme account registered");
                account
            }
        };
        self.account = Some(account.clone());
        Ok(account)
    }

    /// Issues, installs and stores a certificate for `host`.
    async fn issue(&mut self, host: &str) -> Result<Known, AcmeError> {
        let account = self.account().await?;
        let fresh = order(&account, &self.state.challenges, host).await?;
        let info = self.state.certs.install(host, &fresh.chain_pem, &fresh.key_pem)?;
        let serial = serial_of(&fresh.chain_pem)?;
        let issued = crate::store::acme::Issued {
            chain_pem: fresh.chain_pem.clone(),
            key_sealed: self.state.sealer.seal(fresh.key_pem.as_bytes())?,
            key_id: self.state.sealer.key_id().to_string(),
            serial: serial.clone(),
            not_before: crate::ids::format_time(info.not_before),
            not_after: crate::ids::format_time(info.not_after),
            issuer: info.issuer.clone(),
            issued_at: crate::ids::now_rfc3339(),
        };
        let h = host.to_string();
        self.state
            .store
            .write(move |c| crate::store::acme::put_issued(c, &h, &issued, &crate::ids::now_rfc3339()))
            .await?;
        Ok(Known {
            serial: Some(serial),
            not_before: Some(info.not_before),
            not_after: Some(info.not_after),
            issuer: Some(info.issuer),
            ..Known::default()
        })
    }

    /// One attempt for `host`, its outcome recorded.
    async fn renew(&mut self, host: &str) {
        let before = self.state.acme.known(host);
        let outcome = match tokio::time::timeout(ISSUE_TIMEOUT, self.issue(host)).await {
            Ok(r) => r,
            Err(_) => Err(AcmeError::Timeout),
        };
        match outcome {
            Ok(k) => {
                tracing::info!(host, serial = k.serial.as_deref().unwrap_or(""), "certificate issued");
                self.state.acme.set(host, k);
            }
            Err(e) => {
                // A refused account (deactivated, or from another CA) is made again next time.
                if matches!(e, AcmeError::Acme(_)) {
                    self.account = None;
                }
                let acme = &self.state.config.acme;
                let failures = before.failures.saturating_add(1);
                let wait = backoff(
                    failures,
                    Duration::from_secs(acme.backoff_min_seconds),
                    Duration::from_secs(acme.backoff_max_seconds),
                );
                let next = OffsetDateTime::now_utc() + wait;
                let error = e.to_string();
                tracing::warn!(host, error, failures, retry_in_seconds = wait.as_secs(), "certificate issuance failed");
                let k = Known { error: Some(error.clone()), failures, next_attempt: Some(next), ..before };
                self.state.acme.set(host, k);
                let h = host.to_string();
                let next = crate::ids::format_time(next);
                let stored = self
                    .state
                    .store
                    .write(move |c| {
                        crate::store::acme::put_error(c, &h, &error, failures, &next, &crate::ids::now_rfc3339())
                    })
                    .await;
                if let Err(e) = stored {
                    tracing::warn!(host, error = %e, "recording a failed issuance failed");
                }
            }
        }
    }

    /// One pass: forced renewals first, then every routed host that is due; then the
    /// expired certificates of hosts no longer routed are dropped.
    async fn round(&mut self) {
        let wanted = wanted_hosts(&self.state);
        let forced = self.state.acme.take_forced();
        let now = OffsetDateTime::now_utc();
        let due: Vec<String> =
            wanted.iter().filter(|h| !forced.contains(*h) && self.state.acme.known(h).due(now)).cloned().collect();
        for host in forced.iter().filter(|h| wanted.contains(*h)).chain(due.iter()) {
            self.renew(host).await;
        }
        for (host, k) in self.state.acme.hosts() {
            if wanted.contains(&host) || k.not_after.is_none_or(|t| t > now) {
                continue;
            }
            self.state.certs.remove(&host);
            self.state.acme.forget(&host);
            let h = host.clone();
            match self.state.store.write(move |c| crate::store::acme::delete(c, &h)).await {
                Ok(_) => tracing::info!(host, "an expired certificate of a host no longer routed was dropped"),
                Err(e) => tracing::warn!(host, error = %e, "dropping an expired certificate failed"),
            }
        }
    }
}

/// The hosts that should hold a certificate: every eligible routed host, and the
/// control domain.
fn wanted_hosts(state: &AppState) -> BTreeSet<String> {
    let mut hosts: BTreeSet<String> = state.routes.hosts().into_iter().filter(|h| eligible(h)).collect();
    if let Some(d) = state.config.ingress.control_domain.as_deref().filter(|d| eligible(d)) {
        hosts.insert(normalize_host(d));
    }
    hosts
}

/// Whether `host` is one the worker issues for (routed or the control domain, and
/// eligible), with ACME on.
pub fn wanted(state: &AppState, host: &str) -> bool {
    state.config.acme.enabled && wanted_hosts(state).contains(&normalize_host(host))
}

/// The hex serial number of a PEM chain's leaf.
fn serial_of(chain_pem: &str) -> Result<String, AcmeError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |e: String| AcmeError::Certificate(super::tls::TlsError::Certificate(e));
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or(AcmeError::Certificate(super::tls::TlsError::NoCertificate))?
        .map_err(|e| bad(e.to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).map_err(|e| bad(e.to_string()))?;
    Ok(cert.tbs_certificate.raw_serial_as_string().replace(':', ""))
}

/// The renewal worker: issues and renews until shutdown (only started with ACME on).
pub fn spawn(state: AppState, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let every = Duration::from_secs(state.config.acme.renew_check_seconds);
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewer = Renewer { state: state.clone(), http: None, account: None };
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = state.acme.wake.notified() => {}
                _ = shutdown.changed() => break,
            }
            tokio::select! {
                _ = renewer.round() => {}
                _ = shutdown.changed() => break,
            }
        }
        tracing::debug!(worker = "acme-renewal", "worker stopped");
    })
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

    #[tokio::test]
    async fn stored_certificates_load_with_their_keys_opened() {
        let dir = std::env::temp_dir().join(crate::ids::new_id("acmeload"));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir.join("state.db")).unwrap();
        let sealer = Sealer::ephemeral();
        let g = rcgen::generate_simple_self_signed(vec!["app.test".to_string()]).unwrap();
        let (chain, key) = (g.cert.pem(), g.signing_key.serialize_pem());
        let issued = crate::store::acme::Issued {
            chain_pem: chain.clone(),
            key_sealed: sealer.seal(key.as_bytes()).unwrap(),
            key_id: sealer.key_id().into(),
            serial: serial_of(&chain).unwrap(),
            not_before: "2025-01-01T00:00:00Z".into(),
            not_after: "2099-01-01T00:00:00Z".into(),
            issuer: "CN=rcgen".into(),
            issued_at: "2025-01-01T00:00:00Z".into(),
        };
        store.write(move |c| crate::store::acme::put_issued(c, "app.test", &issued, "now")).await.unwrap();
        // A row sealed by another key is skipped, not fatal.
        let other = Sealer::ephemeral();
        let mut foreign = crate::store::acme::Issued {
            key_sealed: other.seal(key.as_bytes()).unwrap(),
            ..store.read(|c| crate::store::acme::get(c, "app.test")).await.unwrap().unwrap().issued.unwrap()
        };
        foreign.key_id = other.key_id().into();
        store.write(move |c| crate::store::acme::put_issued(c, "b.test", &foreign, "now")).await.unwrap();
        let certs = CertStore::new(&["localhost".into()]).unwrap();
        let acme = Acme::default();
        assert_eq!(load_stored(&store, &sealer, &certs, &acme).await.unwrap(), 1);
        assert!(certs.covers("app.test"));
        assert!(!certs.covers("b.test"));
        let s = acme.status("app.test").unwrap();
        assert_eq!(s.state, "issued");
        assert_eq!(s.serial, Some(serial_of(&chain).unwrap()));
        assert!(s.serial.unwrap().chars().all(|c| c.is_ascii_hexdigit()));
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
