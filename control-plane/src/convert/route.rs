//! `HTTPRoute` (Gateway API, GAMMA profile) → one `pb::HttpRoute` per Service it attaches to.
//!
//! Defaults are the Gateway API's: a match without a path matches the prefix `/`, path
//! matches are `PathPrefix` and header/query matches `Exact` unless typed, backends are
//! Services in the route's namespace with weight 1. Header names are lower-cased (they are
//! case-insensitive); query parameter names are not (they are case-sensitive).

use weft_api::crd::http_route::{BackendRef, ParentRef, RouteMatch, RouteRule, ValueMatch};
use weft_api::crd::HTTPRoute;
use weft_api::proto::discovery::v1 as pb;

use super::{namespace_and_name, service_ref, Errors, FieldError};

/// The Gateway API's maximum backend weight.
const MAX_WEIGHT: u32 = 1_000_000;

/// The methods the Gateway API's `HTTPMethod` allows.
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The Services (namespace, name) a route attaches to (GAMMA: parentRefs of kind Service,
/// group "" or "core"; namespace defaults to the route's), each with the route converted for
/// it (`ports` = the parentRef's port if given). Parent refs to Gateways are ignored (not an
/// error). A route with no Service parent yields an empty Vec.
///
/// Several parentRefs naming the same Service give one entry, at the first one's position,
/// whose `ports` are all their ports (empty — every port — if any of them has none). A
/// parentRef of kind `Service` whose group is not core is an error, also when the group is
/// absent: the Gateway API (and the API server's defaulting) then means
/// `gateway.networking.k8s.io`, which has no Service, and ignoring it would silently drop
/// the route.
#[allow(clippy::type_complexity)] // The signature the index is written against.
pub fn http_route(
    r: &HTTPRoute,
) -> Result<Vec<((String, String), pb::HttpRoute)>, Vec<FieldError>> {
    let mut errors = Errors::default();
    let (namespace, name) = namespace_and_name(&r.metadata, &mut errors);
    let parents = service_parents(&r.spec.parent_refs, &namespace, &mut errors);
    let rules = (r.spec.rules.iter().enumerate())
        .map(|(i, rule)| route_rule(rule, &format!("spec.rules[{i}]"), &namespace, &mut errors))
        .collect();
    let route = pb::HttpRoute {
        namespace,
        name,
        ports: Vec::new(),
        hostnames: r.spec.hostnames.clone(),
        rules,
    };
    let for_parent = |(service, ports): (_, Option<_>)| {
        let ports = ports.unwrap_or_default();
        (
            service,
            pb::HttpRoute {
                ports,
                ..route.clone()
            },
        )
    };
    errors.finish(parents.into_iter().map(for_parent).collect())
}

/// Each Service parent (namespace, name) once, in order, with its ports (`None`: every port).
type Parents = Vec<((String, String), Option<Vec<u32>>)>;

fn service_parents(refs: &[ParentRef], namespace: &str, errors: &mut Errors) -> Parents {
    let mut parents = Parents::new();
    for (i, parent) in refs.iter().enumerate() {
        let at = format!("spec.parentRefs[{i}]");
        // The Gateway API's default kind is Gateway: not ours.
        if parent.kind.as_deref() != Some("Service") {
            continue;
        }
        let mut valid = true;
        match parent.group.as_deref() {
            Some("" | "core") => {}
            None => {
                errors.add(
                    format!("{at}.group"),
                    "a Service parent needs group \"\" (core): without one the Gateway API \
                     means gateway.networking.k8s.io",
                );
                valid = false;
            }
            Some(group) => {
                errors.add(
                    format!("{at}.group"),
                    format!("unsupported group {group:?} for kind Service: use \"\" (core)"),
                );
                valid = false;
            }
        }
        if parent.name.is_empty() {
            errors.add(format!("{at}.name"), "required");
            valid = false;
        }
        if parent.port == Some(0) {
            errors.add(format!("{at}.port"), "must be between 1 and 65535");
            valid = false;
        }
        if !valid {
            continue;
        }
        let key = (
            non_empty(parent.namespace.as_deref())
                .unwrap_or(namespace)
                .to_owned(),
            parent.name.clone(),
        );
        let port = parent.port.map(u32::from);
        match parents.iter_mut().find(|(k, _)| *k == key) {
            None => parents.push((key, port.map(|p| vec![p]))),
            Some((_, ports)) => match (ports.as_mut(), port) {
                (Some(ports), Some(port)) if !ports.contains(&port) => ports.push(port),
                (Some(_), None) => *ports = None,
                _ => {}
            },
        }
    }
    parents
}

fn route_rule(rule: &RouteRule, at: &str, namespace: &str, errors: &mut Errors) -> pb::RouteRule {
    let matches = rule
        .matches
        .iter()
        .enumerate()
        .map(|(j, m)| route_match(m, &format!("{at}.matches[{j}]"), errors))
        .collect();
    let backends = rule
        .backend_refs
        .iter()
        .enumerate()
        .filter_map(|(k, b)| backend(b, &format!("{at}.backendRefs[{k}]"), namespace, errors))
        .collect();
    let timeouts = rule.timeouts.clone().unwrap_or_default();
    let request = errors.duration_ms(
        &format!("{at}.timeouts.request"),
        timeouts.request.as_deref(),
    );
    let backend_request = errors.duration_ms(
        &format!("{at}.timeouts.backendRequest"),
        timeouts.backend_request.as_deref(),
    );
    // Gateway API: backendRequest must not exceed request, unless request is "0s" (no limit).
    if let (Some(request), Some(backend)) = (request, backend_request) {
        if request != 0 && backend > request {
            errors.add(
                format!("{at}.timeouts.backendRequest"),
                format!("must not exceed timeouts.request ({backend}ms > {request}ms)"),
            );
        }
    }
    pb::RouteRule {
        matches,
        backends,
        request_timeout_ms: request,
        backend_request_timeout_ms: backend_request,
        name: rule.name.clone().unwrap_or_default(),
    }
}

fn route_match(m: &RouteMatch, at: &str, errors: &mut Errors) -> pb::RouteMatch {
    let path = m.path.clone().unwrap_or_default();
    let value = path.value.unwrap_or_else(|| "/".to_owned());
    let kind = match path.kind.as_deref().unwrap_or("PathPrefix") {
        "Exact" => pb::PathMatchKind::Exact,
        "PathPrefix" => pb::PathMatchKind::Prefix,
        "RegularExpression" => pb::PathMatchKind::Regex,
        other => {
            errors.add(
                format!("{at}.path.type"),
                format!(
                    "unsupported path match type {other:?}: expected Exact, PathPrefix or \
                     RegularExpression"
                ),
            );
            pb::PathMatchKind::Unspecified
        }
    };
    match kind {
        pb::PathMatchKind::Exact | pb::PathMatchKind::Prefix if !value.starts_with('/') => {
            errors.add(format!("{at}.path.value"), "must start with \"/\"");
        }
        pb::PathMatchKind::Regex => errors.regex(&format!("{at}.path.value"), &value),
        _ => {}
    }
    let headers = value_matches(&m.headers, &format!("{at}.headers"), true, errors);
    let query_params = value_matches(&m.query_params, &format!("{at}.queryParams"), false, errors);
    let method = m.method.clone().unwrap_or_default();
    if m.method.is_some() && !METHODS.contains(&method.as_str()) {
        errors.add(
            format!("{at}.method"),
            format!(
                "unsupported method {method:?}: expected one of {}",
                METHODS.join(", ")
            ),
        );
    }
    pb::RouteMatch {
        path: Some(pb::PathMatch {
            kind: kind as i32,
            value,
        }),
        headers,
        query_params,
        method,
    }
}

fn value_matches(
    matches: &[ValueMatch],
    at: &str,
    lowercase_names: bool,
    errors: &mut Errors,
) -> Vec<pb::ValueMatch> {
    let mut out = Vec::with_capacity(matches.len());
    for (i, m) in matches.iter().enumerate() {
        let at = format!("{at}[{i}]");
        if m.name.is_empty() {
            errors.add(format!("{at}.name"), "required");
        } else if !m.name.bytes().all(is_token_char) {
            errors.add(
                format!("{at}.name"),
                format!(
                    "{:?} is not a valid name (letters, digits and !#$%&'*+-.^_`|~)",
                    m.name
                ),
            );
        }
        let regex = match m.kind.as_deref().unwrap_or("Exact") {
            "Exact" => false,
            "RegularExpression" => {
                errors.regex(&format!("{at}.value"), &m.value);
                true
            }
            other => {
                errors.add(
                    format!("{at}.type"),
                    format!(
                        "unsupported match type {other:?}: expected Exact or RegularExpression"
                    ),
                );
                false
            }
        };
        let name = if lowercase_names {
            m.name.to_ascii_lowercase()
        } else {
            m.name.clone()
        };
        out.push(pb::ValueMatch {
            name,
            value: m.value.clone(),
            regex,
        });
    }
    out
}

/// An HTTP token character (RFC 9110), the Gateway API's pattern for header and query
/// parameter names.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn backend(
    b: &BackendRef,
    at: &str,
    namespace: &str,
    errors: &mut Errors,
) -> Option<pb::BackendRef> {
    let before = errors.count();
    service_ref(errors, at, b.group.as_deref(), b.kind.as_deref());
    if b.name.is_empty() {
        errors.add(format!("{at}.name"), "required");
    }
    match b.port {
        None => errors.add(format!("{at}.port"), "required for a Service backend"),
        Some(0) => errors.add(format!("{at}.port"), "must be between 1 and 65535"),
        Some(_) => {}
    }
    let weight = b.weight.unwrap_or(1);
    if weight > MAX_WEIGHT {
        errors.add(
            format!("{at}.weight"),
            format!("{weight} is more than the maximum of {MAX_WEIGHT}"),
        );
    }
    (errors.count() == before).then(|| pb::BackendRef {
        namespace: non_empty(b.namespace.as_deref())
            .unwrap_or(namespace)
            .to_owned(),
        name: b.name.clone(),
        port: b.port.map(u32::from).unwrap_or(0),
        weight,
    })
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

#[cfg(test)]
#[path = "tests/route.rs"]
mod tests;
