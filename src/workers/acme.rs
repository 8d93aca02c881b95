//! The ACME renewal worker and the certificates' storage (adr/028).
//!
//! - **Which hosts**: when `acme.enabled`, every host in the routing table (default
//!   hostnames and whatever else is routed) and `ingress.control_domain`, if
//!   [`eligible`]. A host that leaves the table is no longer renewed; its
//!   certificate is served until it expires, then dropped.
//! - **The worker** ([`spawn`]) looks every `acme.renew_check_seconds` for hosts
//!   with no certificate, or with less than a third of its lifetime left, and
//!   issues for them one at a time ([`crate::ingress::acme::order`]). The new chain
//!   and key go into the [`CertStore`] (the next handshake gets them, open
//!   connections keep theirs) and into SQLite, the key sealed with the host's age
//!   key (adr/018). A failure is kept in the host's state with its error, and the
//!   host waits `backoff_min_seconds`, doubling per failure up to
//!   `backoff_max_seconds`. A forced renewal (`POST /v1/ingress/routes/{host}/renew`)
//!   wakes it and skips the wait.
//! - **The account** is registered at the first issuance; its credentials (which
//!   hold its private key) are kept sealed in SQLite, one per directory URL.
//! - **At start** every stored certificate is loaded into the [`CertStore`] before
//!   the listeners accept ([`load_stored`]), with ACME on or off.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{Account, AccountCredentials, NewAccount};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ingress::acme::{Acme, AcmeError, AcmeHttp, Known, backoff, eligible, order, parse_time, serial_of};
use crate::ingress::routes::normalize_host;
use crate::ingress::tls::CertStore;
use crate::secrets::{Sealer, Zeroizing};
use crate::state::AppState;
use crate::store::Store;

/// Longest one issuance may take, from the new order to the stored certificate.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error(transparent)]
    Acme(#[from] AcmeError),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the account credentials: {0}")]
    Credentials(#[from] serde_json::Error),
    #[error("no answer within {} s", ISSUE_TIMEOUT.as_secs())]
    Timeout,
}

impl From<instant_acme::Error> for RenewError {
    fn from(e: instant_acme::Error) -> Self {
        RenewError::Acme(e.into())
    }
}

/// Loads every stored certificate into `certs` and its status into `acme`; a row
/// whose key cannot be opened (another host key) or whose certificate does not
/// parse is skipped with a warning. Answers how many were installed.
pub async fn load_stored(store: &Store, sealer: &Sealer, certs: &CertStore, acme: &Acme) -> Result<usize, RenewError> {
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

/// The worker's side: the account and the HTTP client, made on first need.
struct Renewer {
    state: AppState,
    http: Option<AcmeHttp>,
    account: Option<Account>,
}

impl Renewer {
    async fn http(&mut self) -> Result<AcmeHttp, RenewError> {
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
    async fn account(&mut self) -> Result<Account, RenewError> {
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
    async fn issue(&mut self, host: &str) -> Result<Known, RenewError> {
        let account = self.account().await?;
        let kind = self.state.config.acme.challenge;
        let fresh = order(&account, kind, &self.state.challenges, &self.state.certs, host).await?;
        let info = self.state.certs.install(host, &fresh.chain_pem, &fresh.key_pem).map_err(AcmeError::from)?;
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
            Err(_) => Err(RenewError::Timeout),
        };
        match outcome {
            Ok(k) => {
                tracing::info!(host, serial = k.serial.as_deref().unwrap_or(""), "certificate issued");
                self.state.acme.set(host, k);
            }
            Err(e) => {
                // The CA said no, or could not be reached: the next attempt fetches its
                // directory and the account again rather than trusting what is cached.
                if matches!(e, RenewError::Acme(AcmeError::Acme(_))) {
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
                _ = state.acme.forced() => {}
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
