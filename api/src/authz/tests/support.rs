//! Builders for the tests: policies and requests from a few words.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::authz::*;
use crate::proto::discovery::v1 as pb;

pub(super) const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
pub(super) const ADMIN: &str = "spiffe://cluster.local/ns/ops/sa/admin";
/// A valid SPIFFE ID without Weft's `/ns/<ns>/sa/<sa>` shape: it has no namespace.
pub(super) const ODD: &str = "spiffe://cluster.local/legacy/worker";

pub(super) const ALLOW: DefaultPolicy = DefaultPolicy::Allow;
pub(super) const AUTHN: DefaultPolicy = DefaultPolicy::Authenticated;
pub(super) const DENY: DefaultPolicy = DefaultPolicy::Deny;

pub(super) fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Builds a `pb::Rule`; field setters fill the last `from`/`to` entry (creating it).
#[derive(Default)]
pub(super) struct Rb(pub(super) pb::Rule);

pub(super) fn rule() -> Rb {
    Rb::default()
}

impl Rb {
    fn src(&mut self, f: impl FnOnce(&mut pb::Source)) -> &mut Self {
        if self.0.from.is_empty() {
            self.0.from.push(Default::default());
        }
        f(self.0.from.last_mut().unwrap());
        self
    }
    fn op(&mut self, f: impl FnOnce(&mut pb::Operation)) -> &mut Self {
        if self.0.to.is_empty() {
            self.0.to.push(Default::default());
        }
        f(self.0.to.last_mut().unwrap());
        self
    }
    pub(super) fn principals(mut self, v: &[&str]) -> Self {
        self.src(|s| s.principals = strings(v));
        self
    }
    pub(super) fn not_principals(mut self, v: &[&str]) -> Self {
        self.src(|s| s.not_principals = strings(v));
        self
    }
    pub(super) fn namespaces(mut self, v: &[&str]) -> Self {
        self.src(|s| s.namespaces = strings(v));
        self
    }
    pub(super) fn not_namespaces(mut self, v: &[&str]) -> Self {
        self.src(|s| s.not_namespaces = strings(v));
        self
    }
    pub(super) fn ports(mut self, v: &[u32]) -> Self {
        self.op(|o| o.ports = v.to_vec());
        self
    }
    pub(super) fn not_ports(mut self, v: &[u32]) -> Self {
        self.op(|o| o.not_ports = v.to_vec());
        self
    }
    pub(super) fn methods(mut self, v: &[&str]) -> Self {
        self.op(|o| o.methods = strings(v));
        self
    }
    pub(super) fn not_methods(mut self, v: &[&str]) -> Self {
        self.op(|o| o.not_methods = strings(v));
        self
    }
    pub(super) fn paths(mut self, v: &[&str]) -> Self {
        self.op(|o| o.paths = strings(v));
        self
    }
    pub(super) fn not_paths(mut self, v: &[&str]) -> Self {
        self.op(|o| o.not_paths = strings(v));
        self
    }
    /// Starts another `from` entry (entries are alternatives).
    pub(super) fn or_from(mut self) -> Self {
        self.0.from.push(Default::default());
        self
    }
    /// Starts another `to` entry.
    pub(super) fn or_to(mut self) -> Self {
        self.0.to.push(Default::default());
        self
    }
    pub(super) fn when(mut self, header: &str, values: &[&str], not_values: &[&str]) -> Self {
        self.0.when.push(pb::Condition {
            header: header.into(),
            values: strings(values),
            not_values: strings(not_values),
        });
        self
    }
}

pub(super) fn policy<const N: usize>(
    action: pb::Action,
    id: &str,
    rules: [Rb; N],
) -> pb::AuthorizationPolicy {
    let (namespace, name) = id.split_once('/').unwrap();
    pb::AuthorizationPolicy {
        namespace: namespace.into(),
        name: name.into(),
        action: action.into(),
        dry_run: false,
        rules: rules.into_iter().map(|r| r.0).collect(),
    }
}
pub(super) fn allow<const N: usize>(id: &str, rules: [Rb; N]) -> pb::AuthorizationPolicy {
    policy(pb::Action::Allow, id, rules)
}
pub(super) fn deny<const N: usize>(id: &str, rules: [Rb; N]) -> pb::AuthorizationPolicy {
    policy(pb::Action::Deny, id, rules)
}
pub(super) fn audit<const N: usize>(id: &str, rules: [Rb; N]) -> pb::AuthorizationPolicy {
    policy(pb::Action::Audit, id, rules)
}
pub(super) fn dry(p: pb::AuthorizationPolicy) -> pb::AuthorizationPolicy {
    pb::AuthorizationPolicy { dry_run: true, ..p }
}

/// A request: by default an HTTP `GET` from FRONTEND on port 8080.
#[derive(Clone, Debug)]
pub(super) struct Req {
    caller: Option<&'static str>,
    port: u16,
    /// `None` for TCP.
    http: Option<Http>,
}

#[derive(Clone, Debug)]
struct Http {
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static [u8])>,
}

pub(super) fn get(path: &'static str) -> Req {
    Req {
        caller: Some(FRONTEND),
        port: 8080,
        http: Some(Http {
            method: "GET",
            path,
            headers: Vec::new(),
        }),
    }
}
pub(super) fn tcp() -> Req {
    Req {
        http: None,
        ..get("/")
    }
}

impl Req {
    pub(super) fn by(self, caller: &'static str) -> Req {
        Req {
            caller: Some(caller),
            ..self
        }
    }
    pub(super) fn plaintext(self) -> Req {
        Req {
            caller: None,
            ..self
        }
    }
    pub(super) fn port(self, port: u16) -> Req {
        Req { port, ..self }
    }
    pub(super) fn method(mut self, method: &'static str) -> Req {
        self.http.as_mut().unwrap().method = method;
        self
    }
    pub(super) fn header(self, name: &'static str, value: &'static str) -> Req {
        self.header_bytes(name, value.as_bytes())
    }
    pub(super) fn header_bytes(mut self, name: &'static str, value: &'static [u8]) -> Req {
        self.http.as_mut().unwrap().headers.push((name, value));
        self
    }

    pub(super) fn caller_id(&self) -> Option<crate::SpiffeId> {
        self.caller.map(|c| c.parse().unwrap())
    }

    pub(super) fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in self.http.iter().flat_map(|h| &h.headers) {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        headers
    }

    /// The borrowed request the proxy builds.
    pub(super) fn request<'a>(
        &'a self,
        caller: Option<&'a crate::SpiffeId>,
        headers: &'a HeaderMap,
    ) -> Request<'a> {
        Request {
            caller,
            port: self.port,
            http: self.http.as_ref().map(|h| HttpRequest {
                method: h.method,
                path: h.path,
                headers,
            }),
        }
    }

    pub(super) fn eval(&self, policy: &WorkloadPolicy) -> Decision {
        let (caller, headers) = (self.caller_id(), self.headers());
        policy.evaluate(&self.request(caller.as_ref(), &headers))
    }
}

pub(super) fn workload(
    default: DefaultPolicy,
    policies: Vec<pb::AuthorizationPolicy>,
) -> WorkloadPolicy {
    let default_policy = match default {
        DefaultPolicy::Allow => pb::DefaultPolicy::Allow,
        DefaultPolicy::Authenticated => pb::DefaultPolicy::Authenticated,
        DefaultPolicy::Deny => pb::DefaultPolicy::Deny,
    };
    WorkloadPolicy::from_proto(&pb::Inbound {
        namespace: "shop".into(),
        pod: "orders-0".into(),
        default_policy: default_policy.into(),
        policies,
        ..Default::default()
    })
    .unwrap()
}
