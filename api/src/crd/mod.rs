//! The Kubernetes resources Weft reads (behind the `crds` feature, so the proxy does not
//! compile kube): our `AuthorizationPolicy` and `TrafficPolicy` (group `policy.weft.dev`,
//! version `v1alpha1`), and the subset of the Gateway API's `HTTPRoute` that the GAMMA mesh
//! profile uses.
//!
//! `HTTPRoute` is our own type rather than the `gateway-api` crate's because that crate is
//! built on an older kube and k8s-openapi; its CRD is installed from upstream, never
//! generated from this type, and unknown fields are accepted (the upstream schema has many
//! we do not act on).

pub mod authorization_policy;
pub mod http_route;
pub mod traffic_policy;

pub use authorization_policy::{
    AuthorizationPolicy, AuthorizationPolicySpec, Condition, Operation, PolicyAction, Rule, Source,
    WorkloadSelector,
};
pub use http_route::{HTTPRoute, HTTPRouteSpec};
pub use traffic_policy::{TrafficPolicy, TrafficPolicySpec};

/// The API group of Weft's own resources.
pub const GROUP: &str = "policy.weft.dev";
/// Annotation on a Namespace (or, mesh-wide, the control plane's flag) choosing what applies
/// when no ALLOW policy selects a workload: `allow`, `authenticated` or `deny`.
pub const DEFAULT_POLICY_ANNOTATION: &str = "weft.dev/default-policy";
/// Annotation on an AuthorizationPolicy: evaluate and record it, never enforce it.
pub const DRY_RUN_ANNOTATION: &str = "weft.dev/dry-run";
/// Annotation on a Namespace or Pod: `strict` or `permissive` inbound mTLS.
pub const MTLS_MODE_ANNOTATION: &str = "weft.dev/mtls-mode";
