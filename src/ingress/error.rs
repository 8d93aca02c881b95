//! Why the ingress answered with its own page instead of an upstream's response.
//!
//! Every failure records where it came from ([`Origin`], after pingora's
//! `ErrorSource`): the client (a 4xx, nothing to retry), the upstream replica (a 502,
//! retried on another replica when nothing had been sent), or the ingress itself.
//! The status is decided here, in one exhaustive `match`; the page says nothing
//! internal, the cause goes to the log.

use std::net::SocketAddr;

use hyper::StatusCode;

/// Where a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client sent something unusable, or too slowly, or went away.
    Client,
    /// The replica could not be reached or did not answer properly.
    Upstream,
    /// The ingress itself: routing has nothing to send the request to.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the request names no host")]
    NoHost,
    #[error("no service is routed for this host")]
    UnknownHost,
    #[error("the service has no healthy replica")]
    NoBackend,
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("connect to {addr}: timed out")]
    ConnectTimeout { addr: SocketAddr },
    #[error("upstream {addr}: {source}")]
    Upstream { addr: SocketAddr, source: hyper::Error },
    #[error("upstream {addr}: {source}")]
    UpstreamIo { addr: SocketAddr, source: std::io::Error },
    #[error("upstream {addr} sent {what}")]
    UpstreamSyntax { addr: SocketAddr, what: &'static str },
    #[error("upstream {addr} did not answer in time")]
    UpstreamTimeout { addr: SocketAddr },
    #[error("upstream {addr} switched protocols unasked")]
    UnaskedUpgrade { addr: SocketAddr },
    #[error("the request body arrived too slowly")]
    ClientTimeout,
    #[error("the request body broke off: {0}")]
    ClientBody(hyper::Error),
}

impl ProxyError {
    /// Where the failure came from.
    pub fn origin(&self) -> Origin {
        match self {
            ProxyError::NoHost | ProxyError::UnknownHost | ProxyError::ClientTimeout | ProxyError::ClientBody(_) => {
                Origin::Client
            }
            ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::UpstreamIo { .. }
            | ProxyError::UpstreamSyntax { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::UnaskedUpgrade { .. } => Origin::Upstream,
            ProxyError::NoBackend => Origin::Internal,
        }
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoHost | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::UnknownHost => StatusCode::NOT_FOUND,
            ProxyError::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::NoBackend => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::UpstreamIo { .. }
            | ProxyError::UpstreamSyntax { .. }
            | ProxyError::UnaskedUpgrade { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The page's one sentence.
    fn explanation(&self) -> &'static str {
        match self {
            ProxyError::NoHost => "The request does not name a host.",
            ProxyError::UnknownHost => "No service is routed for this host name.",
            ProxyError::NoBackend => "The service has no replica ready to answer. Try again shortly.",
            ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::UpstreamIo { .. }
            | ProxyError::UpstreamSyntax { .. }
            | ProxyError::UnaskedUpgrade { .. } => "The service did not answer properly.",
            ProxyError::UpstreamTimeout { .. } => "The service did not answer in time.",
            ProxyError::ClientTimeout => "The request body arrived too slowly.",
            ProxyError::ClientBody(_) => "The request body could not be read.",
        }
    }

    /// A short HTML page for the client.
    pub fn page(&self) -> String {
        let status = self.status();
        let title = format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""));
        format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
             <body><h1>{title}</h1><p>{}</p></body></html>\n",
            self.explanation()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_origin_and_pages_say_nothing_internal() {
        let addr: SocketAddr = "10.213.0.7:8080".parse().unwrap();
        let refused = ProxyError::Connect { addr, source: std::io::ErrorKind::ConnectionRefused.into() };
        assert_eq!((refused.origin(), refused.status()), (Origin::Upstream, StatusCode::BAD_GATEWAY));
        assert!(refused.to_string().contains("10.213.0.7:8080"), "the log line names the replica");
        let page = refused.page();
        assert!(page.contains("502 Bad Gateway"), "{page}");
        assert!(!page.contains("10.213") && !page.contains("refused"), "{page}");
        assert_eq!(ProxyError::UnknownHost.status(), StatusCode::NOT_FOUND);
        assert_eq!(ProxyError::NoBackend.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ProxyError::NoBackend.origin(), Origin::Internal);
        let hung = ProxyError::UpstreamTimeout { addr };
        assert_eq!((hung.origin(), hung.status()), (Origin::Upstream, StatusCode::GATEWAY_TIMEOUT));
        assert!(hung.page().contains("504 Gateway Timeout") && !hung.page().contains("10.213"));
        assert_eq!(
            (ProxyError::ClientTimeout.origin(), ProxyError::ClientTimeout.status()),
            (Origin::Client, StatusCode::REQUEST_TIMEOUT)
        );
    }
}
