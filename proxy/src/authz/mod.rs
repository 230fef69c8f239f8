//! Inbound authorization: the view's policies applied to every request (HTTP) or connection
//! (opaque TCP) before it reaches the app. The rules themselves are
//! [`weft_api::authz`]'s; this module feeds them the caller's SPIFFE ID (from the mTLS
//! handshake; none for plaintext), the port, and the method, normalized path and headers,
//! then turns the decision into a response, a log line and a metric.
//!
//! The view is loaded per request, not per connection: a policy change applies to the next
//! request on a keep-alive or multiplexed mesh connection, which may otherwise live for
//! minutes. Without discovery there is no [`Authz`] at all and nothing is evaluated.

mod metrics;
pub mod path;
mod response;

use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use weft_api::authz::{Decision, HttpRequest, RecordKind};
use weft_api::SpiffeId;

use metrics::AllowCounters;
pub use metrics::AuthzMetrics;
pub use response::POLICY_HEADER;

use crate::discovery::ViewStore;
use crate::http::error::ProxyError;
use crate::http::Body;

/// How long an inbound connection that arrives before the first view (a pod just started;
/// `/ready` still says no) waits for it before being closed. The control plane answers
/// within a second of the proxy's certificate; this leaves room for a slow start while
/// closing well within a typical client timeout.
pub const FIRST_VIEW_WAIT: Duration = Duration::from_secs(5);

/// The process's authorization: the view store and the decision counter.
#[derive(Clone)]
pub struct Authz {
    pub views: Arc<ViewStore>,
    metrics: AuthzMetrics,
}

impl Authz {
    pub fn new(views: Arc<ViewStore>, metrics: AuthzMetrics) -> Authz {
        Authz { views, metrics }
    }

    /// What one inbound connection's requests are decided with.
    pub fn connection(&self, caller: Option<SpiffeId>, port: u16, target: &str) -> ConnAuthz {
        ConnAuthz {
            views: self.views.clone(),
            metrics: self.metrics.clone(),
            caller,
            port,
            target: target.to_owned(),
            allowed: AllowCounters::default(),
        }
    }
}

/// One inbound connection: who is calling, on which port.
pub struct ConnAuthz {
    views: Arc<ViewStore>,
    metrics: AuthzMetrics,
    caller: Option<SpiffeId>,
    port: u16,
    /// The `target` metric label.
    target: String,
    /// The counters of the allowed requests, by deciding policy, once used.
    allowed: AllowCounters,
}

impl ConnAuthz {
    /// Decides one HTTP request: `Some` is the response to send instead of forwarding it.
    /// An allowed request may leave with its path normalized ([`path`]).
    pub fn denial<B>(&self, req: &mut Request<B>) -> Option<Response<Body>> {
        if let std::borrow::Cow::Owned(normalized) = path::normalize(req.uri().path()) {
            if let Err(error) = set_path(req, &normalized) {
                return Some(error.into_response());
            }
        }
        let http = HttpRequest {
            method: req.method().as_str(),
            path: req.uri().path(),
            headers: req.headers(),
        };
        let decision = self.decide(Some(http));
        (!decision.allowed).then(|| response::denied(req.headers(), &decision.decided_by.label()))
    }

    /// Decides an opaque TCP connection: `false` means close it without connecting upstream.
    pub fn allows_tcp(&self) -> bool {
        self.decide(None).allowed
    }

    fn decide(&self, http: Option<HttpRequest<'_>>) -> Decision {
        let request = weft_api::authz::Request {
            caller: self.caller.as_ref(),
            port: self.port,
            http,
        };
        let decision = match self.views.load().as_ref() {
            Some(view) => view.authz.evaluate(&request),
            // Unreachable in practice: an inbound connection is served only once a view is
            // in, and views are never removed. Failing open here would be the bug to avoid.
            None => Decision {
                allowed: false,
                decided_by: weft_api::authz::DecidedBy::Default(
                    weft_api::authz::DefaultPolicy::Deny,
                ),
                recorded: Vec::new(),
            },
        };
        self.record(&decision, http);
        decision
    }

    /// Counts the decision and what it recorded; logs denials and records.
    fn record(&self, decision: &Decision, http: Option<HttpRequest<'_>>) {
        if decision.allowed && decision.recorded.is_empty() {
            // The common case: counted, not logged.
            return self
                .allowed
                .count(&self.metrics, &self.target, &decision.decided_by);
        }
        let outcome = if decision.allowed { "allow" } else { "deny" };
        let policy = decision.decided_by.label();
        let caller = self.caller.as_ref().map_or("plaintext", SpiffeId::as_str);
        let (method, path) = http.map(|h| (h.method, h.path)).unzip();
        let (target, port) = (self.target.as_str(), self.port);
        if !decision.allowed {
            tracing::info!(
                caller,
                target,
                port,
                method,
                path,
                policy,
                "denied by authorization policy"
            );
        }
        self.metrics.count(&self.target, policy, outcome);
        for recorded in &decision.recorded {
            let policy = recorded.policy.to_string();
            let (kind, message) = match recorded.kind {
                RecordKind::Audit => ("audit", "matched an AUDIT authorization policy"),
                RecordKind::DryRunDeny => (
                    "dry_run_deny",
                    "would be denied by a dry-run authorization policy",
                ),
            };
            tracing::info!(caller, target, port, method, path, policy, "{message}");
            self.metrics.count(&self.target, policy, kind);
        }
    }
}

/// Replaces the request's path, keeping its query (and, in HTTP/2, scheme and authority).
fn set_path<B>(req: &mut Request<B>, path: &str) -> Result<(), ProxyError> {
    let path_and_query = match req.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    // A normalized path only drops segments and decodes unreserved characters, so it stays
    // a valid URI path; should it not, the request is refused rather than forwarded as is.
    let invalid = |e: &dyn std::fmt::Display| ProxyError::BadRequest(format!("invalid path: {e}"));
    parts.path_and_query = Some(PathAndQuery::try_from(path_and_query).map_err(|e| invalid(&e))?);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|e| invalid(&e))?;
    Ok(())
}
