//! Authorization: who may call a workload, evaluated by its proxy on every inbound request.
//!
//! The control plane sends each proxy an `Inbound` view with the workload's default and every
//! `AuthorizationPolicy` that selects it; [`WorkloadPolicy::from_proto`] compiles that once
//! and [`WorkloadPolicy::evaluate`] decides each request. The semantics are Istio's.
//!
//! # Deciding
//!
//! Only *enforced* policies (not dry-run) decide; AUDIT policies never decide.
//!
//! 1. If any DENY policy matches, the request is denied, decided by the first such policy.
//! 2. Else, if any ALLOW policy selects the workload, the request must match one: it is
//!    allowed by the first that matches. If none matches it is denied, and `decided_by` names
//!    the *first* ALLOW policy: the ALLOW policies required a match; the first of them is named.
//! 3. Else the workload's default decides (`decided_by` is [`DecidedBy::Default`]):
//!    `Allow` allows, `Authenticated` allows a caller with a mesh identity and denies
//!    plaintext, `Deny` denies. An unspecified default in the proto means `Allow`.
//!
//! "First" is in the order of [`WorkloadPolicy::policies`], which `from_proto` sorts by
//! namespace, then name.
//!
//! # Matching
//!
//! - A policy matches when any of its rules matches; a policy with no rules matches nothing
//!   (an ALLOW policy without rules allows nothing; `rules: [{}]` matches everything).
//! - A rule matches when each of its non-empty lists matches: `from` and `to` when any entry
//!   matches, `when` when every condition matches. Empty lists are ignored.
//! - In a `Source` or `Operation` every non-empty field must match. A positive list
//!   (`principals`, `ports`, ...) matches when any entry matches; a `not_` list matches when
//!   none does.
//! - Patterns ([`Pattern`]): exact `x`, prefix `x*`, suffix `*x`, or `*` for anything present.
//!   Matching is case-sensitive and byte-wise.
//! - `principals` match the caller's full SPIFFE ID; `namespaces` the namespace in it
//!   (`spiffe://<td>/ns/<ns>/sa/<sa>`). A plaintext caller (and, for `namespaces`, an ID
//!   without a namespace) matches no positive pattern, not even `*`, and satisfies every
//!   `not_` list.
//! - `ports` are the workload port the request arrived on.
//! - `methods` match the method exactly as sent. `paths` match the path without the query
//!   (everything from the first `?` is dropped). The path is matched as given: a proxy that
//!   wants `/a/../admin` or `/%61dmin` caught by a rule on `/admin` must normalize (or reject)
//!   such paths before calling [`WorkloadPolicy::evaluate`].
//! - A `when` condition names a header: some value of it (any one, when the header is
//!   repeated) must match `values` if `values` is non-empty, and no value may match
//!   `not_values`. A missing header fails `values` and passes `not_values`. Each header line
//!   is one value (`a, b` is not split).
//!
//! # Opaque TCP
//!
//! A TCP connection (no [`HttpRequest`]) has no method, path or headers. An ALLOW rule that
//! uses any HTTP-only field (`methods`, `not_methods`, `paths`, `not_paths`, `when`) never
//! matches it. DENY and AUDIT rules ignore their HTTP-only fields instead, so they apply to
//! more connections, never fewer (failing closed): a DENY of `methods: [POST]` denies every
//! TCP connection it otherwise matches.
//!
//! # Recording
//!
//! [`Decision::recorded`] is empty, and unallocated, in the common case.
//!
//! - Every matching AUDIT policy (dry-run or not) adds [`RecordKind::Audit`], in policy order.
//! - Dry-run policies never change the decision. When some dry-run ALLOW or DENY policy
//!   exists and the request is allowed, the decision is recomputed as if dry-run policies
//!   were enforced; if that shadow decision denies, a [`RecordKind::DryRunDeny`] naming the
//!   shadow's deciding policy is added last. (A dry-run policy that would have *allowed* a
//!   denied request is not recorded.)

mod error;
mod eval;
mod model;
mod pattern;
#[cfg(test)]
mod tests;

use std::fmt;

pub use error::AuthzError;
pub use model::{Policy, WorkloadPolicy};
pub use pattern::{Pattern, PatternError};

use crate::SpiffeId;

/// What a policy does with the requests it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    Allow,
    Deny,
    /// Records matches; never changes the decision.
    Audit,
}

/// What applies when no ALLOW policy selects the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPolicy {
    Allow,
    /// Callers with a mesh identity; plaintext callers are denied.
    Authenticated,
    Deny,
}

/// Names a policy. Displayed as `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One inbound request (or TCP connection) to decide.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The caller's identity from its mesh certificate; `None` for plaintext.
    pub caller: Option<&'a SpiffeId>,
    /// The workload port the request arrived on.
    pub port: u16,
    /// `None` for opaque TCP.
    pub http: Option<HttpRequest<'a>>,
}

#[derive(Clone, Copy, Debug)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// The request's path; a query, if included, is ignored.
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    pub decided_by: DecidedBy,
    /// Audit matches and dry-run denials; empty (and unallocated) in the common case.
    pub recorded: Vec<Recorded>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DecidedBy {
    Policy(PolicyRef),
    Default(DefaultPolicy),
}

impl DecidedBy {
    /// `namespace/name` of the deciding policy, or `default`: for the response header, the
    /// log line and the metric label.
    pub fn label(&self) -> String {
        match self {
            DecidedBy::Policy(policy) => policy.to_string(),
            DecidedBy::Default(_) => "default".to_owned(),
        }
    }
}

/// Something a request did that is logged but not enforced.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub policy: PolicyRef,
    pub kind: RecordKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RecordKind {
    /// An AUDIT policy matched.
    Audit,
    /// Had dry-run policies been enforced, this policy would have denied the request.
    DryRunDeny,
}
