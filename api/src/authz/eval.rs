//! Evaluating a request against a [`WorkloadPolicy`] (the rules are in the module doc of
//! [`super`]). Nothing here allocates unless something has to be recorded or a policy decided.

use http::HeaderMap;

use super::model::{Condition, Operation, Policy, Rule, Source};
use super::pattern::{any_matches, none_matches};
use super::{
    Action, DecidedBy, Decision, DefaultPolicy, RecordKind, Recorded, Request, WorkloadPolicy,
};

/// The request as the matchers see it, worked out once per evaluation.
struct Facts<'a> {
    principal: Option<&'a [u8]>,
    /// From the caller's `/ns/<ns>/sa/<sa>` SPIFFE ID; absent for other IDs and plaintext.
    namespace: Option<&'a [u8]>,
    port: u16,
    http: Option<HttpFacts<'a>>,
}

struct HttpFacts<'a> {
    method: &'a [u8],
    /// Without the query.
    path: &'a [u8],
    headers: &'a HeaderMap,
}

impl<'a> Facts<'a> {
    fn new(req: &Request<'a>) -> Facts<'a> {
        Facts {
            principal: req.caller.map(|id| id.as_str().as_bytes()),
            namespace: (req.caller)
                .and_then(|id| id.service_account())
                .map(|(ns, _)| ns.as_bytes()),
            port: req.port,
            http: req.http.as_ref().map(|h| HttpFacts {
                method: h.method.as_bytes(),
                path: match h.path.find('?') {
                    Some(query) => &h.path.as_bytes()[..query],
                    None => h.path.as_bytes(),
                },
                headers: h.headers,
            }),
        }
    }
}

/// A decision before it is turned into an owned [`Decision`]: `by` is the deciding policy,
/// or `None` for the default.
struct Verdict<'p> {
    allowed: bool,
    by: Option<&'p Policy>,
}

impl WorkloadPolicy {
    /// Decides one request. Allocates only to name a deciding policy or to record something.
    pub fn evaluate(&self, req: &Request<'_>) -> Decision {
        let facts = Facts::new(req);
        let real = self.decide(&facts, false);
        let mut recorded = Vec::new();
        for policy in &self.policies {
            if policy.action == Action::Audit && policy.matches(&facts) {
                recorded.push(Recorded {
                    policy: policy.id.clone(),
                    kind: RecordKind::Audit,
                });
            }
        }
        // Dry-run AUDIT policies record like any AUDIT policy; only dry-run ALLOW and DENY
        // policies can change the shadow decision.
        let shadowed = |p: &Policy| p.dry_run && p.action != Action::Audit;
        if real.allowed && self.policies.iter().any(shadowed) {
            if let Verdict {
                allowed: false,
                by: Some(policy),
            } = self.decide(&facts, true)
            {
                recorded.push(Recorded {
                    policy: policy.id.clone(),
                    kind: RecordKind::DryRunDeny,
                });
            }
        }
        Decision {
            allowed: real.allowed,
            decided_by: match real.by {
                Some(policy) => DecidedBy::Policy(policy.id.clone()),
                None => DecidedBy::Default(self.default),
            },
            recorded,
        }
    }

    /// The enforced decision, or with `with_dry_run` the shadow decision that treats dry-run
    /// policies as enforced.
    fn decide(&self, facts: &Facts<'_>, with_dry_run: bool) -> Verdict<'_> {
        let active =
            |action: Action| move |p: &&Policy| p.action == action && (with_dry_run || !p.dry_run);
        let mut denies = self.policies.iter().filter(active(Action::Deny));
        if let Some(policy) = denies.find(|p| p.matches(facts)) {
            return Verdict {
                allowed: false,
                by: Some(policy),
            };
        }
        let mut allows = self
            .policies
            .iter()
            .filter(active(Action::Allow))
            .peekable();
        if let Some(&first) = allows.peek() {
            let matched = allows.find(|p| p.matches(facts));
            return Verdict {
                allowed: matched.is_some(),
                by: Some(matched.unwrap_or(first)),
            };
        }
        let allowed = match self.default {
            DefaultPolicy::Allow => true,
            DefaultPolicy::Authenticated => facts.principal.is_some(),
            DefaultPolicy::Deny => false,
        };
        Verdict { allowed, by: None }
    }
}

impl Policy {
    fn matches(&self, facts: &Facts<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(facts, self.action))
    }
}

impl Rule {
    fn matches(&self, facts: &Facts<'_>, action: Action) -> bool {
        // Opaque TCP has no method, path or headers. An ALLOW rule that asks for them cannot
        // be satisfied; DENY and AUDIT rules drop those fields instead (failing closed).
        if facts.http.is_none() && self.uses_http && action == Action::Allow {
            return false;
        }
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(facts)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(facts)))
            && match &facts.http {
                Some(http) => self.when.iter().all(|c| c.matches(http.headers)),
                None => true,
            }
    }
}

impl Source {
    fn matches(&self, facts: &Facts<'_>) -> bool {
        any_matches(&self.principals, facts.principal)
            && none_matches(&self.not_principals, facts.principal)
            && any_matches(&self.namespaces, facts.namespace)
            && none_matches(&self.not_namespaces, facts.namespace)
    }
}

impl Operation {
    fn matches(&self, facts: &Facts<'_>) -> bool {
        (self.ports.is_empty() || self.ports.contains(&facts.port))
            && !self.not_ports.contains(&facts.port)
            && match &facts.http {
                Some(http) => {
                    any_matches(&self.methods, Some(http.method))
                        && none_matches(&self.not_methods, Some(http.method))
                        && any_matches(&self.paths, Some(http.path))
                        && none_matches(&self.not_paths, Some(http.path))
                }
                None => true,
            }
    }
}

impl Condition {
    /// Any value of a repeated header may match `values`; none may match `not_values`. A
    /// missing header fails `values` and passes `not_values`.
    fn matches(&self, headers: &HeaderMap) -> bool {
        let found = |patterns: &[super::Pattern]| {
            (headers.get_all(&self.header).iter())
                .any(|v| patterns.iter().any(|p| p.matches_bytes(v.as_bytes())))
        };
        (self.values.is_empty() || found(&self.values))
            && (self.not_values.is_empty() || !found(&self.not_values))
    }
}
