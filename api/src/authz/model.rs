//! Policies compiled from the discovery protos: patterns parsed, header names lower-cased into
//! `http::HeaderName`, ports narrowed to `u16`, and each rule's use of HTTP-only fields noted,
//! so that evaluation does no parsing and no allocation.

use http::HeaderName;

use super::pattern::Pattern;
use super::{Action, AuthzError, DefaultPolicy, PolicyRef};
use crate::proto::discovery::v1 as pb;
use crate::SpiffeId;

/// One authorization policy, ready to evaluate.
#[derive(Clone, Debug)]
pub struct Policy {
    pub id: PolicyRef,
    pub action: Action,
    /// Evaluated and recorded, never enforced.
    pub dry_run: bool,
    pub(super) rules: Vec<Rule>,
}

/// One workload's authorization: its default and every policy selecting it.
#[derive(Clone, Debug)]
pub struct WorkloadPolicy {
    /// What applies when no ALLOW policy selects the workload.
    pub default: DefaultPolicy,
    /// Evaluated in this order ("the first ALLOW policy" is the first in this vector);
    /// [`WorkloadPolicy::from_proto`] sorts them by namespace, then name.
    pub policies: Vec<Policy>,
}

#[derive(Clone, Debug)]
pub(super) struct Rule {
    pub(super) from: Vec<Source>,
    pub(super) to: Vec<Operation>,
    pub(super) when: Vec<Condition>,
    /// Whether any HTTP-only field (methods, not_methods, paths, not_paths, when) is set: an
    /// ALLOW rule that uses them never matches opaque TCP.
    pub(super) uses_http: bool,
}

#[derive(Clone, Debug)]
pub(super) struct Source {
    pub(super) principals: Vec<Pattern>,
    pub(super) not_principals: Vec<Pattern>,
    pub(super) namespaces: Vec<Pattern>,
    pub(super) not_namespaces: Vec<Pattern>,
}

#[derive(Clone, Debug)]
pub(super) struct Operation {
    pub(super) ports: Vec<u16>,
    pub(super) not_ports: Vec<u16>,
    pub(super) methods: Vec<Pattern>,
    pub(super) not_methods: Vec<Pattern>,
    pub(super) paths: Vec<Pattern>,
    pub(super) not_paths: Vec<Pattern>,
}

#[derive(Clone, Debug)]
pub(super) struct Condition {
    pub(super) header: HeaderName,
    pub(super) values: Vec<Pattern>,
    pub(super) not_values: Vec<Pattern>,
}

impl Policy {
    pub fn from_proto(p: &pb::AuthorizationPolicy) -> Result<Policy, AuthzError> {
        let id = PolicyRef {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
        };
        let c = Compiler { policy: &id };
        if p.namespace.is_empty() {
            return Err(c.err("namespace".into(), "", "must not be empty"));
        }
        if p.name.is_empty() {
            return Err(c.err("name".into(), "", "must not be empty"));
        }
        let action = match pb::Action::try_from(p.action) {
            Ok(pb::Action::Allow) => Action::Allow,
            Ok(pb::Action::Deny) => Action::Deny,
            Ok(pb::Action::Audit) => Action::Audit,
            Ok(pb::Action::Unspecified) => {
                let reason = "the action must be ALLOW, DENY or AUDIT";
                return Err(c.err("action".into(), "ACTION_UNSPECIFIED", reason));
            }
            Err(_) => {
                let reason = "unknown action (a newer control plane?)";
                return Err(c.err("action".into(), &p.action.to_string(), reason));
            }
        };
        let rules = (p.rules.iter().enumerate())
            .map(|(i, r)| c.rule(r, &format!("rules[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            id,
            action,
            dry_run: p.dry_run,
            rules,
        })
    }
}

impl WorkloadPolicy {
    pub fn from_proto(inbound: &pb::Inbound) -> Result<WorkloadPolicy, AuthzError> {
        let default = match pb::DefaultPolicy::try_from(inbound.default_policy) {
            Ok(pb::DefaultPolicy::Unspecified | pb::DefaultPolicy::Allow) => DefaultPolicy::Allow,
            Ok(pb::DefaultPolicy::Authenticated) => DefaultPolicy::Authenticated,
            Ok(pb::DefaultPolicy::Deny) => DefaultPolicy::Deny,
            Err(_) => {
                return Err(AuthzError::Inbound {
                    workload: format!("{}/{}", inbound.namespace, inbound.pod),
                    field: "default_policy".into(),
                    value: inbound.default_policy.to_string(),
                    reason: "unknown default policy (a newer control plane?)".into(),
                })
            }
        };
        let mut policies = (inbound.policies.iter())
            .map(Policy::from_proto)
            .collect::<Result<Vec<_>, _>>()?;
        // The proto promises this order; sorting keeps "the first ALLOW policy" stable anyway.
        policies.sort_by(|a, b| {
            (a.id.namespace.as_str(), a.id.name.as_str())
                .cmp(&(b.id.namespace.as_str(), b.id.name.as_str()))
        });
        Ok(WorkloadPolicy { default, policies })
    }

    /// What a proxy enforces before it has a view: allow everything.
    pub fn allow_all() -> WorkloadPolicy {
        WorkloadPolicy {
            default: DefaultPolicy::Allow,
            policies: Vec::new(),
        }
    }
}

/// Compiles the parts of one policy; knows which policy errors belong to.
struct Compiler<'a> {
    policy: &'a PolicyRef,
}

impl Compiler<'_> {
    fn err(&self, field: String, value: &str, reason: impl Into<String>) -> AuthzError {
        AuthzError::Policy {
            policy: self.policy.to_string(),
            field,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }

    fn rule(&self, r: &pb::Rule, at: &str) -> Result<Rule, AuthzError> {
        let from = (r.from.iter().enumerate())
            .map(|(i, s)| self.source(s, &format!("{at}.from[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let to = (r.to.iter().enumerate())
            .map(|(i, o)| self.operation(o, &format!("{at}.to[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let when = (r.when.iter().enumerate())
            .map(|(i, c)| self.condition(c, &format!("{at}.when[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let uses_http = !when.is_empty()
            || to.iter().any(|o| {
                !(o.methods.is_empty()
                    && o.not_methods.is_empty()
                    && o.paths.is_empty()
                    && o.not_paths.is_empty())
            });
        Ok(Rule {
            from,
            to,
            when,
            uses_http,
        })
    }

    fn source(&self, s: &pb::Source, at: &str) -> Result<Source, AuthzError> {
        Ok(Source {
            principals: self.principals(&s.principals, at, "principals")?,
            not_principals: self.principals(&s.not_principals, at, "not_principals")?,
            namespaces: self.patterns(&s.namespaces, at, "namespaces")?,
            not_namespaces: self.patterns(&s.not_namespaces, at, "not_namespaces")?,
        })
    }

    fn operation(&self, o: &pb::Operation, at: &str) -> Result<Operation, AuthzError> {
        Ok(Operation {
            ports: self.ports(&o.ports, at, "ports")?,
            not_ports: self.ports(&o.not_ports, at, "not_ports")?,
            methods: self.patterns(&o.methods, at, "methods")?,
            not_methods: self.patterns(&o.not_methods, at, "not_methods")?,
            paths: self.patterns(&o.paths, at, "paths")?,
            not_paths: self.patterns(&o.not_paths, at, "not_paths")?,
        })
    }

    fn condition(&self, c: &pb::Condition, at: &str) -> Result<Condition, AuthzError> {
        let header = HeaderName::from_bytes(c.header.as_bytes()).map_err(|_| {
            let reason = "not a valid HTTP header name (pseudo-headers like :authority are not \
                          request headers)";
            self.err(format!("{at}.header"), &c.header, reason)
        })?;
        let values = self.patterns(&c.values, at, "values")?;
        let not_values = self.patterns(&c.not_values, at, "not_values")?;
        if values.is_empty() && not_values.is_empty() {
            let reason = "a condition needs values or not_values";
            return Err(self.err(at.to_owned(), &c.header, reason));
        }
        Ok(Condition {
            header,
            values,
            not_values,
        })
    }

    fn patterns(&self, list: &[String], at: &str, name: &str) -> Result<Vec<Pattern>, AuthzError> {
        (list.iter().enumerate())
            .map(|(i, text)| {
                (text.parse::<Pattern>())
                    .map_err(|e| self.err(format!("{at}.{name}[{i}]"), text, e.to_string()))
            })
            .collect()
    }

    /// Patterns whose exact entries must be SPIFFE IDs (a typo there would never match).
    fn principals(
        &self,
        list: &[String],
        at: &str,
        name: &str,
    ) -> Result<Vec<Pattern>, AuthzError> {
        let patterns = self.patterns(list, at, name)?;
        for (i, pattern) in patterns.iter().enumerate() {
            if let Pattern::Exact(text) = pattern {
                if let Err(e) = text.parse::<SpiffeId>() {
                    return Err(self.err(format!("{at}.{name}[{i}]"), text, e.to_string()));
                }
            }
        }
        Ok(patterns)
    }

    fn ports(&self, list: &[u32], at: &str, name: &str) -> Result<Vec<u16>, AuthzError> {
        (list.iter().enumerate())
            .map(|(i, &port)| match u16::try_from(port) {
                Ok(p) if p != 0 => Ok(p),
                _ => Err(self.err(
                    format!("{at}.{name}[{i}]"),
                    &port.to_string(),
                    "a port must be 1 to 65535",
                )),
            })
            .collect()
    }
}
