//! `HTTPRoute` matching (Gateway API, GAMMA profile) and the weighted choice of a backend.
//!
//! The routes attached to one Service port are compiled into a [`RouteTable`] when a view
//! arrives; every request then asks it for its [`RouteRule`] ([`RouteTable::select`]) and
//! that rule's [`Backends`] for the Service to send it to ([`Backends::pick`]). The caller
//! answers 404 when routes are attached but none matches, and 500 when the chosen rule has
//! no backend with a weight, as the Gateway API says.
//!
//! Precedence, across every rule of every route attached to the port (Gateway API,
//! `HTTPRouteRule.matches`): each *match* of a rule is ranked on its own, first by its path
//! (`Exact`, then `RegularExpression`, then `PathPrefix` with the most characters), then a
//! match naming a method, then the most header matches, then the most query parameter
//! matches; ties go to the oldest route (the control plane sends them oldest first, then by
//! `namespace/name`), then to the first rule and the first match in it. The spec leaves the
//! rank of regular expressions to the implementation: putting them above every prefix keeps
//! a catch-all `/` rule from hiding them. The table is sorted that way once, so `select` is a
//! scan that stops at the first match.
//!
//! Matching, as the spec says unless noted: `PathPrefix` matches whole path segments and
//! ignores a trailing `/` in the prefix (`/foo` and `/foo/` match `/foo`, `/foo/` and
//! `/foo/bar`, not `/foobar`); regular expressions must match the whole value. Paths are
//! matched as the request wrote them (not percent-decoded), without the query. Header
//! names are case-insensitive; a repeated header is matched as its values joined with `, `
//! (`; ` for `cookie`), as RFC 9110 §5.3 (and RFC 9113 §8.2.3 for cookies) combine them.
//! Query parameter names are case-sensitive; names and values are form-decoded (`%XX`, and
//! `+` for a space) before they are compared, and a repeated parameter is matched on its
//! first value, as the spec recommends. When a match lists the same header or parameter
//! twice, only the first entry counts (spec), also for precedence.
//!
//! Regular expressions are the `regex` crate's syntax over bytes, without Unicode: `\d`,
//! `\w`, `\s` and `(?i)` are ASCII-only and `.` is any byte but `\n`, which is what HTTP's
//! ASCII paths and header values need; Unicode classes (`\p{L}`) are not supported and
//! reject the route.
//!
//! `hostnames` are ignored: a GAMMA route is chosen by its parentRef (the Service and
//! port), not by the Host header.
//!
//! `select` does not allocate, except to join a repeated header or decode an escaped query
//! value for a regular expression to read.

use std::fmt;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, COOKIE};
use http::{Method, Uri};
use regex::bytes::{Regex, RegexBuilder};
use weft_api::proto::discovery::v1 as pb;

/// The routes attached to one Service port, compiled for matching.
#[derive(Debug, Default)]
pub struct RouteTable {
    rules: Vec<RouteRule>,
    /// Every match of every rule, highest precedence first.
    matches: Vec<Match>,
}

/// A rule of a route: where the requests it matches go, and their timeouts.
#[derive(Debug)]
pub struct RouteRule {
    pub route: RouteRef,
    /// The rule's `name`, when it has one.
    pub rule_name: Option<String>,
    pub backends: Backends,
    /// `timeouts.request`: `None` unset (the `TrafficPolicy`'s or the proxy's default
    /// applies), `Some(None)` no timeout (the Gateway API's `0s`).
    pub request_timeout: Option<Option<Duration>>,
    /// `timeouts.backendRequest`, per attempt, in the same form.
    pub backend_request_timeout: Option<Option<Duration>>,
}

/// The route a rule belongs to. Displayed as `namespace/name`: a bounded metric label.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteRef {
    pub namespace: String,
    pub name: String,
}

/// A rule's backends, chosen at random in proportion to their weights.
#[derive(Debug, Default)]
pub struct Backends {
    /// Every backendRef, in order, with or without a weight.
    all: Box<[Backend]>,
    /// For each backend with a weight: the sum of the weights up to and including it, and
    /// its index in `all`. Increasing, so a binary search finds a draw's backend.
    cumulative: Box<[(u64, usize)]>,
}

/// A Service to send a request to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    pub namespace: String,
    pub name: String,
    pub port: u16,
}

/// A route the proxy cannot use. The control plane validates routes, but the proxy does not
/// trust it to: such a route is rejected, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTPRoute {route} rule {rule}{}: {reason}", display_name(.rule_name))]
pub struct RouteError {
    pub route: RouteRef,
    /// The rule's index in the route.
    pub rule: usize,
    pub rule_name: Option<String>,
    /// The field and what is wrong with it.
    pub reason: String,
}

fn display_name(name: &Option<String>) -> String {
    name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
}

impl fmt::Display for RouteRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl RouteTable {
    /// The routes whose `ports` is empty or contains `port`, oldest first as the control
    /// plane sends them. Fails on the first unusable rule, naming its route and rule.
    pub fn compile(routes: &[pb::HttpRoute], port: u16) -> Result<RouteTable, RouteError> {
        let mut table = RouteTable::default();
        let attached = routes
            .iter()
            .filter(|r| r.ports.is_empty() || r.ports.contains(&u32::from(port)));
        for route in attached {
            let route_ref = RouteRef {
                namespace: route.namespace.clone(),
                name: route.name.clone(),
            };
            for (i, rule) in route.rules.iter().enumerate() {
                let error = |reason: String| RouteError {
                    route: route_ref.clone(),
                    rule: i,
                    rule_name: non_empty(&rule.name),
                    reason,
                };
                let index = table.rules.len();
                if rule.matches.is_empty() {
                    table.matches.push(Match::everything(index));
                }
                for (j, m) in rule.matches.iter().enumerate() {
                    let at = format!("matches[{j}]");
                    table
                        .matches
                        .push(Match::compile(m, index, &at).map_err(error)?);
                }
                table.rules.push(RouteRule {
                    route: route_ref.clone(),
                    rule_name: non_empty(&rule.name),
                    backends: Backends::compile(&rule.backends).map_err(error)?,
                    request_timeout: rule.request_timeout_ms.map(timeout),
                    backend_request_timeout: rule.backend_request_timeout_ms.map(timeout),
                });
            }
        }
        // Stable: equal precedence keeps the input order, route by route, rule by rule,
        // match by match, as the spec's tie-breakers want.
        table
            .matches
            .sort_by_key(|m| std::cmp::Reverse(m.precedence()));
        Ok(table)
    }

    /// No route attached: the caller sends every request to the Service itself.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rule for a request, by the Gateway API's precedence; `None` when routes are
    /// attached but none matches (the caller answers 404, as GAMMA says).
    pub fn select(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<&RouteRule> {
        let path = uri.path();
        let query = uri.query().unwrap_or("");
        self.matches
            .iter()
            .find(|m| m.is_match(method, path, query, headers))
            .map(|m| &self.rules[m.rule])
    }

    /// Every rule, in the order of the routes and their rules.
    pub fn rules(&self) -> &[RouteRule] {
        &self.rules
    }
}

/// Milliseconds from the wire: 0 is "no timeout".
fn timeout(ms: u64) -> Option<Duration> {
    (ms != 0).then(|| Duration::from_millis(ms))
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

// ---- matching ----

/// One match of a rule: all of its conditions must hold.
#[derive(Debug)]
struct Match {
    /// The rule's index in the table.
    rule: usize,
    path: PathMatch,
    method: Option<Method>,
    headers: Box<[HeaderMatch]>,
    query: Box<[QueryMatch]>,
}

#[derive(Debug)]
enum PathMatch {
    Exact(Box<str>),
    /// The prefix without its trailing `/`s: empty for `/`, which matches every path.
    Prefix(Box<str>),
    Regex(Regex),
}

#[derive(Debug)]
struct HeaderMatch {
    name: HeaderName,
    value: ValueMatch,
}

#[derive(Debug)]
struct QueryMatch {
    name: Box<[u8]>,
    value: ValueMatch,
}

#[derive(Debug)]
enum ValueMatch {
    Exact(Box<[u8]>),
    Regex(Regex),
}

/// Larger is chosen first: path kind (exact, regex, prefix), prefix length, a method, the
/// number of header matches, the number of query parameter matches.
type Precedence = (u8, usize, bool, usize, usize);

impl Match {
    /// A rule without matches: every request, as the prefix `/`.
    fn everything(rule: usize) -> Match {
        Match {
            rule,
            path: PathMatch::Prefix("".into()),
            method: None,
            headers: Box::new([]),
            query: Box::new([]),
        }
    }

    fn compile(m: &pb::RouteMatch, rule: usize, at: &str) -> Result<Match, String> {
        let path = match &m.path {
            None => PathMatch::Prefix("".into()),
            Some(p) => match pb::PathMatchKind::try_from(p.kind) {
                Ok(pb::PathMatchKind::Exact) => PathMatch::Exact(p.value.as_str().into()),
                Ok(pb::PathMatchKind::Prefix) => {
                    PathMatch::Prefix(p.value.trim_end_matches('/').into())
                }
                Ok(pb::PathMatchKind::Regex) => {
                    PathMatch::Regex(full_match(&p.value, &format!("{at}.path"))?)
                }
                Ok(pb::PathMatchKind::Unspecified) | Err(_) => {
                    return Err(format!("{at}.path: unsupported kind {}", p.kind));
                }
            },
        };
        let method = if m.method.is_empty() {
            None
        } else {
            let method = Method::from_bytes(m.method.as_bytes())
                .map_err(|_| format!("{at}.method: invalid method {:?}", m.method))?;
            Some(method)
        };
        let mut headers: Vec<HeaderMatch> = Vec::with_capacity(m.headers.len());
        for (k, h) in m.headers.iter().enumerate() {
            let at = format!("{at}.headers[{k}]");
            // Lower-cases the name, as the control plane already does.
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("{at}.name: invalid header name {:?}", h.name))?;
            let value = ValueMatch::compile(h, &at)?;
            // Spec: only the first entry for a name counts.
            if !headers.iter().any(|seen| seen.name == name) {
                headers.push(HeaderMatch { name, value });
            }
        }
        let mut query: Vec<QueryMatch> = Vec::with_capacity(m.query_params.len());
        for (k, q) in m.query_params.iter().enumerate() {
            let value = ValueMatch::compile(q, &format!("{at}.queryParams[{k}]"))?;
            let name: Box<[u8]> = q.name.as_bytes().into();
            if !query.iter().any(|seen| seen.name == name) {
                query.push(QueryMatch { name, value });
            }
        }
        Ok(Match {
            rule,
            path,
            method,
            headers: headers.into(),
            query: query.into(),
        })
    }

    fn precedence(&self) -> Precedence {
        let (kind, length) = match &self.path {
            PathMatch::Exact(_) => (2, 0),
            PathMatch::Regex(_) => (1, 0),
            PathMatch::Prefix(p) => (0, p.len()),
        };
        (
            kind,
            length,
            self.method.is_some(),
            self.headers.len(),
            self.query.len(),
        )
    }

    /// Cheapest test first.
    fn is_match(&self, method: &Method, path: &str, query: &str, headers: &HeaderMap) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && self.path.is_match(path)
            && self.headers.iter().all(|h| h.is_match(headers))
            && self.query.iter().all(|q| q.is_match(query))
    }
}

impl PathMatch {
    fn is_match(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(exact) => path == &**exact,
            // Whole segments only: what follows the prefix is nothing or a new segment.
            PathMatch::Prefix(prefix) => {
                prefix.is_empty()
                    || (path.strip_prefix(&**prefix))
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            PathMatch::Regex(re) => re.is_match(path.as_bytes()),
        }
    }
}

impl ValueMatch {
    fn compile(m: &pb::ValueMatch, at: &str) -> Result<ValueMatch, String> {
        Ok(if m.regex {
            ValueMatch::Regex(full_match(&m.value, &format!("{at}.value"))?)
        } else {
            ValueMatch::Exact(m.value.as_bytes().into())
        })
    }
}

impl HeaderMatch {
    fn is_match(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        let Some(first) = values.next() else {
            return false;
        };
        let separator: &[u8] = if self.name == COOKIE { b"; " } else { b", " };
        let Some(second) = values.next() else {
            return match &self.value {
                ValueMatch::Exact(v) => first.as_bytes() == &**v,
                ValueMatch::Regex(re) => re.is_match(first.as_bytes()),
            };
        };
        // A repeated header: its values joined.
        let all = [first, second]
            .into_iter()
            .chain(values)
            .map(|v| v.as_bytes());
        match &self.value {
            ValueMatch::Exact(v) => joined_eq(all, separator, v),
            ValueMatch::Regex(re) => re.is_match(&all.collect::<Vec<_>>().join(separator)),
        }
    }
}

/// Whether `parts` joined with `separator` are `expected`, without joining them.
fn joined_eq<'a>(
    parts: impl Iterator<Item = &'a [u8]>,
    separator: &[u8],
    mut expected: &[u8],
) -> bool {
    for (i, part) in parts.enumerate() {
        if i > 0 {
            match expected.strip_prefix(separator) {
                Some(rest) => expected = rest,
                None => return false,
            }
        }
        match expected.strip_prefix(part) {
            Some(rest) => expected = rest,
            None => return false,
        }
    }
    expected.is_empty()
}

impl QueryMatch {
    fn is_match(&self, query: &str) -> bool {
        // The first parameter of that name, as the spec recommends.
        let Some(value) = query
            .split('&')
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .find(|(name, _)| Decoded::new(name).eq(self.name.iter().copied()))
            .map(|(_, value)| value)
        else {
            return false;
        };
        match &self.value {
            ValueMatch::Exact(v) => Decoded::new(value).eq(v.iter().copied()),
            ValueMatch::Regex(re) if !value.contains(['%', '+']) => re.is_match(value.as_bytes()),
            ValueMatch::Regex(re) => re.is_match(&Decoded::new(value).collect::<Vec<_>>()),
        }
    }
}

/// The bytes of a form-encoded query component: `%XX` decoded, `+` a space; a `%` not
/// followed by two hex digits is kept as it is.
struct Decoded<'a> {
    rest: &'a [u8],
}

impl<'a> Decoded<'a> {
    fn new(s: &'a str) -> Self {
        Decoded { rest: s.as_bytes() }
    }
}

impl Iterator for Decoded<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        self.rest = rest;
        match b {
            b'+' => Some(b' '),
            b'%' => match rest {
                [hi, lo, tail @ ..] if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                    self.rest = tail;
                    Some(hex(*hi) << 4 | hex(*lo))
                }
                _ => Some(b'%'),
            },
            _ => Some(b),
        }
    }
}

fn hex(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

/// `pattern` compiled to match a whole value (anchored at both ends, not just somewhere
/// in it). The error says which field and why, in the parser's last line.
fn full_match(pattern: &str, at: &str) -> Result<Regex, String> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .unicode(false)
        .build()
        .map_err(|e| {
            let text = e.to_string();
            let reason = text.lines().last().unwrap_or("");
            let reason = reason.strip_prefix("error: ").unwrap_or(reason);
            format!("{at}: invalid regular expression {pattern:?}: {reason}")
        })
}

// ---- backends ----

impl Backends {
    fn compile(refs: &[pb::BackendRef]) -> Result<Backends, String> {
        let mut backends = Vec::with_capacity(refs.len());
        for (k, b) in refs.iter().enumerate() {
            let port = u16::try_from(b.port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("backends[{k}].port: {} is not a port", b.port))?;
            let backend = Backend {
                namespace: b.namespace.clone(),
                name: b.name.clone(),
                port,
            };
            backends.push((backend, b.weight));
        }
        Ok(backends.into_iter().collect())
    }

    /// A backend at random, in proportion to the weights; never one of weight 0. `None`
    /// when no backend has a weight (the caller answers 500, as the Gateway API says).
    /// O(log n) in the backends with a weight.
    pub fn pick(&self, rng: &mut fastrand::Rng) -> Option<&Backend> {
        let index = match &*self.cumulative {
            [] => return None,
            [(_, only)] => *only,
            many => {
                let total = many[many.len() - 1].0;
                let draw = rng.u64(0..total);
                many[many.partition_point(|(sum, _)| *sum <= draw)].1
            }
        };
        Some(&self.all[index])
    }

    /// Every backend, in order, including those of weight 0.
    pub fn all(&self) -> &[Backend] {
        &self.all
    }
}

/// Backends with their weights, in order.
impl FromIterator<(Backend, u32)> for Backends {
    fn from_iter<I: IntoIterator<Item = (Backend, u32)>>(iter: I) -> Self {
        let mut all = Vec::new();
        let mut cumulative = Vec::new();
        let mut sum = 0u64;
        for (index, (backend, weight)) in iter.into_iter().enumerate() {
            if weight > 0 {
                sum += u64::from(weight);
                cumulative.push((sum, index));
            }
            all.push(backend);
        }
        Backends {
            all: all.into(),
            cumulative: cumulative.into(),
        }
    }
}

#[cfg(test)]
mod tests;
