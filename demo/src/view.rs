//! The live view: every sidecar's `/metrics` (and the control plane's list of subscribed
//! proxies) read at each refresh and laid out so that the four things the demo shows are
//! plain: who called whom with which verified identity, the 90/10 split, retries absorbing
//! payments' failures, and the scanner's calls denied by a named policy.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::http;
use crate::mesh::{self, localhost, WORKLOADS};
use crate::Demo;

const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
pub const ROUTE: &str = "shop/orders-split";
pub const PAYMENTS_TARGET: &str = "shop/payments:80";

/// One sample of a Prometheus exposition.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses the text format (comments skipped; a line that doesn't parse is skipped too:
    /// the view shows what it can).
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(parse_sample)
            .collect();
        Metrics { samples }
    }

    pub fn select<'a>(
        &'a self,
        name: &'a str,
        matching: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |s| {
            s.name == name
                && matching
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    pub fn sum(&self, name: &str, matching: &[(&str, &str)]) -> f64 {
        // From +0.0: a sum of nothing would be -0.0.
        self.select(name, matching)
            .fold(0.0, |sum, s| sum + s.value)
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_labels(mut text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    while !text.is_empty() {
        let (key, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        text = rest[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

/// Everything read at one refresh.
#[derive(Clone, Default)]
pub struct Snapshot {
    /// By workload name; absent when its sidecar could not be read.
    pub proxies: BTreeMap<&'static str, Metrics>,
    /// Pod name → (identity, acked view version), from the control plane's /debug/proxies.
    pub subscribers: BTreeMap<String, (String, String)>,
    /// The split's weights by backend Service, from the frontend sidecar's view (/config).
    pub weights: BTreeMap<String, u32>,
}

impl Snapshot {
    pub fn take() -> Snapshot {
        let mut snapshot = Snapshot::default();
        for w in &WORKLOADS {
            if let Ok(rsp) = http::get(w.admin(), "/metrics", SCRAPE_TIMEOUT) {
                if rsp.status == 200 {
                    snapshot.proxies.insert(w.name, Metrics::parse(&rsp.body));
                }
            }
        }
        let proxies = http::get(
            localhost(mesh::CONTROL_PLANE_ADMIN),
            "/debug/proxies",
            SCRAPE_TIMEOUT,
        );
        if let Some(list) = proxies
            .ok()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
        {
            for p in list.as_array().into_iter().flatten() {
                let field = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
                snapshot
                    .subscribers
                    .insert(field("pod"), (field("identity"), field("ackedVersion")));
            }
        }
        snapshot.weights = route_weights(mesh::workload("frontend").admin()).unwrap_or_default();
        snapshot
    }

    fn of(&self, workload: &str) -> Metrics {
        self.proxies.get(workload).cloned().unwrap_or_default()
    }
}

/// The backends' weights in the first rule of the route, in the view a sidecar enforces.
fn route_weights(admin: std::net::SocketAddr) -> Option<BTreeMap<String, u32>> {
    let config = http::get(admin, "/config", SCRAPE_TIMEOUT).ok()?;
    let config: serde_json::Value = serde_json::from_str(&config.body).ok()?;
    let (namespace, name) = ROUTE.split_once('/')?;
    let route = config["view"]["outbound"]["services"]
        .as_array()?
        .iter()
        .flat_map(|service| service["routes"].as_array().into_iter().flatten())
        .find(|route| route["namespace"] == namespace && route["name"] == name)?;
    let backends = route["rules"][0]["backends"].as_array()?;
    Some(
        backends
            .iter()
            .filter_map(|b| Some((b["name"].as_str()?.to_owned(), b["weight"].as_u64()? as u32)))
            .collect(),
    )
}

/// How the view is drawn.
pub struct Style {
    pub colour: bool,
}

impl Style {
    fn heading(&self, out: &mut String, title: &str, note: &str) {
        if self.colour {
            let _ = writeln!(out, "\n\x1b[1m{title}\x1b[0m  \x1b[2m{note}\x1b[0m");
        } else {
            let _ = writeln!(out, "\n{title}  ({note})");
        }
    }

    fn good(&self, ok: bool, text: &str) -> String {
        match (self.colour, ok) {
            (false, true) => format!("✓ {text}"),
            (false, false) => format!("✗ {text}"),
            (true, true) => format!("\x1b[32m✓\x1b[0m {text}"),
            (true, false) => format!("\x1b[31m✗\x1b[0m {text}"),
        }
    }
}

/// The whole view. `previous` (the snapshot one refresh earlier, `interval` ago) gives rates.
pub fn render(
    demo: &Demo,
    now: &Snapshot,
    previous: Option<&Snapshot>,
    interval: Duration,
    style: &Style,
) -> String {
    let mut out = String::new();
    let elapsed = demo.started.elapsed().as_secs();
    let _ = writeln!(
        out,
        "Weft local mesh · {}:{:02} · control plane 127.0.0.1:{} · {} sidecars · {}",
        elapsed / 60,
        elapsed % 60,
        mesh::CONTROL_PLANE_GRPC,
        now.proxies.len(),
        if demo.interactive {
            "Ctrl-C stops everything"
        } else {
            "final figures"
        }
    );
    let _ = writeln!(
        out,
        "frontend calls orders {}/s and payments {}/s through its sidecar (HTTP_PROXY); scanner calls payments {}/s",
        demo.rates.0, demo.rates.1, demo.rates.2
    );
    if !demo.check.is_empty() {
        style.heading(&mut out, "MESH CHECK", "weftctl check, at start");
        for line in demo.check.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    identities(&mut out, now, style);
    calls(
        &mut out,
        now,
        previous,
        (interval, demo.started.elapsed()),
        style,
    );
    split(&mut out, demo, now, previous, style);
    retries(&mut out, demo, now, style);
    authorization(&mut out, demo, now, style);
    out
}

fn identities(out: &mut String, now: &Snapshot, style: &Style) {
    style.heading(
        out,
        "IDENTITIES",
        "each sidecar's certificate, issued by the control plane's CA for its service account",
    );
    for w in &WORKLOADS {
        let (identity, version) = now
            .subscribers
            .get(w.pod)
            .map(|(id, v)| (id.as_str(), v.as_str()))
            .unwrap_or(("(not subscribed)", ""));
        let _ = writeln!(
            out,
            "  {:<12} {:<44} view {}",
            w.pod,
            identity,
            if version.is_empty() { "-" } else { version }
        );
    }
}

/// Inbound requests at each callee, by the identity its sidecar verified.
fn calls(
    out: &mut String,
    now: &Snapshot,
    previous: Option<&Snapshot>,
    (interval, since_start): (Duration, Duration),
    style: &Style,
) {
    style.heading(
        out,
        "mTLS CALLS",
        "callee sidecars' weft_requests_total{direction=\"inbound\"}: client_id is the caller's verified certificate",
    );
    let _ = writeln!(
        out,
        "  {:<10} {:<44} {:<5} {:>8} {:>7}",
        "callee", "client_id", "tls", "requests", "req/s"
    );
    for w in WORKLOADS.iter().filter(|w| w.has_app) {
        let metrics = now.of(w.name);
        let mut by_caller: BTreeMap<(String, String), f64> = BTreeMap::new();
        for s in metrics.select("weft_requests_total", &[("direction", "inbound")]) {
            let key = (
                s.labels.get("client_id").cloned().unwrap_or_default(),
                s.labels.get("tls").cloned().unwrap_or_default(),
            );
            *by_caller.entry(key).or_default() += s.value;
        }
        for ((client_id, tls), count) in by_caller {
            // Over the last refresh; without one, over the whole run.
            let (before, window) = match previous {
                Some(p) => {
                    let labels = [
                        ("direction", "inbound"),
                        ("client_id", client_id.as_str()),
                        ("tls", tls.as_str()),
                    ];
                    (p.of(w.name).sum("weft_requests_total", &labels), interval)
                }
                None => (0.0, since_start),
            };
            let rate = (count - before).max(0.0) / window.as_secs_f64().max(0.001);
            let client_id = if client_id.is_empty() {
                "(plaintext)".to_owned()
            } else {
                client_id
            };
            let _ = writeln!(
                out,
                "  {:<10} {client_id:<44} {tls:<5} {count:>8} {rate:>7.1}",
                w.name
            );
        }
    }
}

fn split(
    out: &mut String,
    demo: &Demo,
    now: &Snapshot,
    previous: Option<&Snapshot>,
    style: &Style,
) {
    style.heading(
        out,
        "TRAFFIC SPLIT",
        "HTTPRoute shop/orders-split: weights from the frontend sidecar's view, requests from its weft_route_requests_total",
    );
    let routed = |snapshot: &Snapshot, version: &str| {
        let backend = format!("shop/{version}:80");
        snapshot.of("frontend").sum(
            "weft_route_requests_total",
            &[("route", ROUTE), ("backend", &backend)],
        )
    };
    let versions = ["orders-v1", "orders-v2"];
    let total: f64 = versions.iter().map(|v| routed(now, v)).sum();
    let recent: Vec<f64> = versions
        .iter()
        .map(|v| previous.map_or(0.0, |p| (routed(now, v) - routed(p, v)).max(0.0)))
        .collect();
    let recent_total: f64 = recent.iter().sum();
    let _ = writeln!(
        out,
        "  {:<10} {:>6} {:>8} {:>7} {:>12}",
        "backend", "weight", "requests", "share", "since last"
    );
    for (version, recent) in versions.iter().zip(&recent) {
        let n = routed(now, version);
        let share = if total > 0.0 { n / total } else { 0.0 };
        let weight = now
            .weights
            .get(*version)
            .map_or("-".to_owned(), u32::to_string);
        let recent = if recent_total > 0.0 {
            format!("{:.0}%", 100.0 * recent / recent_total)
        } else {
            "-".to_owned()
        };
        let bar = "█".repeat((share * 40.0).round() as usize);
        let _ = writeln!(
            out,
            "  {version:<10} {weight:>6} {n:>8} {:>6.1}% {recent:>12}  {bar}",
            share * 100.0
        );
    }
    let served = demo
        .frontend_orders
        .served_by
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let answered: Vec<String> = served.iter().map(|(app, n)| format!("{app} {n}")).collect();
    let _ = writeln!(
        out,
        "  the frontend app got answers from: {} (x-served-by)",
        if answered.is_empty() {
            "-".to_owned()
        } else {
            answered.join(", ")
        }
    );
}

fn retries(out: &mut String, demo: &Demo, now: &Snapshot, style: &Style) {
    style.heading(
        out,
        "RETRIES",
        &format!(
            "payments fails {:.0}% of requests with 503; TrafficPolicy shop/payments retries 503 up to 3 times",
            demo.payments_failure_rate * 100.0
        ),
    );
    let frontend_id = mesh::workload("frontend").identity();
    let payments = now.of("payments");
    let tries = payments.sum(
        "weft_requests_total",
        &[("direction", "inbound"), ("client_id", &frontend_id)],
    );
    let failed_tries = payments.sum(
        "weft_responses_total",
        &[
            ("direction", "inbound"),
            ("client_id", &frontend_id),
            ("status_class", "5xx"),
        ],
    );
    let frontend = now.of("frontend");
    let retried = frontend.sum("weft_retries_total", &[("target", PAYMENTS_TARGET)]);
    let exhausted = frontend.sum(
        "weft_retry_budget_exhausted_total",
        &[("target", PAYMENTS_TARGET)],
    );
    let calls = &demo.frontend_payments;
    let (ok, failed) = (calls.ok(), calls.failed());
    let rate = if ok + failed > 0 {
        100.0 * ok as f64 / (ok + failed) as f64
    } else {
        0.0
    };
    let _ = writeln!(
        out,
        "  payments answered 503 (its sidecar's inbound 5xx)     {failed_tries:>6} of {tries} tries"
    );
    let _ = writeln!(
        out,
        "  retried by the frontend's sidecar (weft_retries_total) {retried:>6}   budget exhausted {exhausted}"
    );
    // Retries absorbed the failures when the app sees under a quarter of them (a request
    // still fails when all its tries do).
    let absorbed = 100.0 - rate <= demo.payments_failure_rate * 100.0 / 4.0;
    let line = format!(
        "the frontend app saw {ok} ok, {failed} failed: {rate:.1}% success (payments alone: {:.0}%)",
        100.0 - demo.payments_failure_rate * 100.0
    );
    let _ = writeln!(out, "  {}", style.good(ok > 0 && absorbed, &line));
}

fn authorization(out: &mut String, demo: &Demo, now: &Snapshot, style: &Style) {
    style.heading(
        out,
        "AUTHORIZATION",
        "AuthorizationPolicy shop/payments-callers allows only the frontend: payments sidecar's weft_authz_decisions_total",
    );
    let payments = now.of("payments");
    let mut decisions: BTreeMap<(String, String), f64> = BTreeMap::new();
    for s in payments.select("weft_authz_decisions_total", &[]) {
        let label = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        *decisions
            .entry((label("policy"), label("decision")))
            .or_default() += s.value;
    }
    for ((policy, decision), n) in &decisions {
        let _ = writeln!(out, "  {policy:<24} {decision:<8} {n:>6}");
    }
    let calls = &demo.scanner_payments;
    let denied = calls.count(|s| s == 403);
    let policy = calls
        .denied_by
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_else(|| "-".into());
    let line = format!(
        "the scanner app ({}) got {denied} × 403 of {} calls, weft-authz-policy: {policy}",
        mesh::workload("scanner").identity(),
        calls.sent.load(Ordering::Relaxed)
    );
    let _ = writeln!(out, "  {}", style.good(denied > 0, &line));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_with_labels() {
        let m = Metrics::parse(
            "# TYPE x counter\nweft_requests_total{direction=\"inbound\",client_id=\"spiffe://a/b\",x=\"q\\\"\"} 12\nweft_up 1\n",
        );
        assert_eq!(
            m.sum("weft_requests_total", &[("client_id", "spiffe://a/b")]),
            12.0
        );
        assert_eq!(m.samples[0].labels["x"], "q\"");
        assert_eq!(m.sum("weft_up", &[]), 1.0);
    }
}
