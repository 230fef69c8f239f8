//! Why a policy (or an inbound view) could not be compiled.

/// A policy or inbound view that cannot be enforced. The message names the policy, the field
/// (as a path like `rules[0].from[1].principals[2]`), the bad value and why, e.g.
///
/// ```text
/// authorization policy shop/frontend: rules[0].to[0].paths[1] "/a*b": `*` may only be ...
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    /// A field of one policy.
    #[error("authorization policy {policy}: {field} {value:?}: {reason}")]
    Policy {
        /// `namespace/name`.
        policy: String,
        /// Relative to the policy, e.g. `action` or `rules[0].when[1].header`.
        field: String,
        value: String,
        reason: String,
    },
    /// A field of the inbound view itself (not of one of its policies).
    #[error("inbound view of {workload}: {field} {value:?}: {reason}")]
    Inbound {
        /// `namespace/pod`.
        workload: String,
        field: String,
        value: String,
        reason: String,
    },
}

impl AuthzError {
    /// The field, as a path relative to the policy (or to the inbound view).
    pub fn field(&self) -> &str {
        match self {
            AuthzError::Policy { field, .. } | AuthzError::Inbound { field, .. } => field,
        }
    }

    /// The policy as `namespace/name`; empty when the error is in the inbound view itself.
    pub fn policy(&self) -> &str {
        match self {
            AuthzError::Policy { policy, .. } => policy,
            AuthzError::Inbound { .. } => "",
        }
    }

    /// The offending value as text.
    pub fn value(&self) -> &str {
        match self {
            AuthzError::Policy { value, .. } | AuthzError::Inbound { value, .. } => value,
        }
    }
}
