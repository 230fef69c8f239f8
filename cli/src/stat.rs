//! `weftctl stat`: a live table of each workload's traffic — requests per second, success
//! rate, latency percentiles, the share of mTLS — computed from two scrapes of its proxy's
//! `/metrics` an interval apart, as Prometheus' `rate()` and `histogram_quantile()` would.
//!
//! Which proxies: `--proxy [NAME=]ADDR` (repeatable), or else every proxy subscribed to the
//! control plane, at the address it connected from and `--admin-port` (the pod IP and 15020
//! in a cluster). A row's name is NAME, else the pod the proxy says it serves
//! (`weft_proxy_info`), else its address; rows with the same name are added up (replicas).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::time::Instant;

use crate::scrape::Scrape;

#[derive(clap::Args, Debug)]
pub struct StatArgs {
    /// A proxy's admin address, optionally named (`web=127.0.0.1:15020`); repeatable.
    /// Without it: every proxy subscribed to the control plane.
    #[arg(long = "proxy", value_name = "[NAME=]ADDR")]
    proxies: Vec<ProxyAddr>,
    /// The control plane's admin address, to list the proxies when no --proxy is given.
    #[arg(
        long,
        default_value = "127.0.0.1:15014",
        env = "WEFT_CONTROL_PLANE_ADMIN"
    )]
    control_plane_admin: SocketAddr,
    /// The proxies' admin port, for proxies listed by the control plane.
    #[arg(long, default_value_t = 15020)]
    admin_port: u16,
    /// Which side of each workload: `inbound` (what it serves, one row per workload) or
    /// `outbound` (what it calls, one row per workload and target).
    #[arg(long, value_enum, default_value = "inbound")]
    direction: Direction,
    /// Time between refreshes, and the window rates and percentiles are computed over.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Print one table (after one interval) and exit: 1 if a proxy could not be read.
    #[arg(long)]
    once: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// `ADDR` or `NAME=ADDR`.
#[derive(Clone, Debug)]
pub struct ProxyAddr {
    name: Option<String>,
    addr: SocketAddr,
}

impl FromStr for ProxyAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, addr) = match s.split_once('=') {
            Some((name, addr)) if !name.is_empty() => (Some(name.to_owned()), addr),
            Some(_) => return Err("the name before `=` is empty".into()),
            None => (None, s),
        };
        let addr = addr
            .parse()
            .map_err(|e| format!("{addr:?} is not an IP:port address: {e}"))?;
        Ok(ProxyAddr { name, addr })
    }
}

/// One proxy's scrape: what it said, when.
struct Reading {
    /// Where it was read: what pairs it with the same proxy's earlier reading.
    addr: SocketAddr,
    /// The row it adds to.
    name: String,
    at: Instant,
    scrape: Scrape,
}

/// Counter totals for one row as of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
struct Totals {
    requests: f64,
    mtls_requests: f64,
    responses: f64,
    /// 5xx responses and gRPC responses whose status is not OK.
    failures: f64,
    /// The latency histogram: cumulative counts by upper bound, in increasing order.
    buckets: Vec<(f64, f64)>,
}

impl Totals {
    /// `self` minus an earlier `before`; a counter that went down was reset (the proxy
    /// restarted), and then counts from zero.
    fn since(&self, before: &Totals) -> Totals {
        let delta = |now: f64, then: f64| if now >= then { now - then } else { now };
        let buckets = if self.buckets.len() == before.buckets.len()
            && self.buckets.last().map(|b| b.1) >= before.buckets.last().map(|b| b.1)
        {
            (self.buckets.iter().zip(&before.buckets))
                .map(|(&(le, now), &(_, then))| (le, delta(now, then)))
                .collect()
        } else {
            self.buckets.clone()
        };
        Totals {
            requests: delta(self.requests, before.requests),
            mtls_requests: delta(self.mtls_requests, before.mtls_requests),
            responses: delta(self.responses, before.responses),
            failures: delta(self.failures, before.failures),
            buckets,
        }
    }

    fn add(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.mtls_requests += other.mtls_requests;
        self.responses += other.responses;
        self.failures += other.failures;
        add_buckets(&mut self.buckets, &other.buckets);
    }
}

fn add_buckets(into: &mut Vec<(f64, f64)>, from: &[(f64, f64)]) {
    for &(le, count) in from {
        match into.iter_mut().find(|(l, _)| *l == le) {
            Some(bucket) => bucket.1 += count,
            None => into.push((le, count)),
        }
    }
    into.sort_by(|a, b| a.0.total_cmp(&b.0));
}

/// One proxy's totals by row: by target for outbound rows, one row for inbound.
fn totals_by_target(scrape: &Scrape, direction: Direction) -> BTreeMap<String, Totals> {
    let mut rows: BTreeMap<String, Totals> = BTreeMap::new();
    for sample in &scrape.samples {
        if sample.label("direction") != Some(direction.as_str()) {
            continue;
        }
        let key = match direction {
            Direction::Inbound => String::new(),
            Direction::Outbound => sample.label("target").unwrap_or("").to_owned(),
        };
        let totals = rows.entry(key).or_default();
        match sample.name.as_str() {
            "weft_requests_total" => {
                totals.requests += sample.value;
                if sample.label("tls") == Some("true") {
                    totals.mtls_requests += sample.value;
                }
            }
            "weft_responses_total" => {
                totals.responses += sample.value;
                if sample.label("status_class") == Some("5xx") {
                    totals.failures += sample.value;
                }
            }
            "weft_grpc_responses_total" if sample.label("grpc_status") != Some("0") => {
                totals.failures += sample.value;
            }
            "weft_response_latency_seconds_bucket" => {
                let le = match sample.label("le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => match le.parse() {
                        Ok(le) => le,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                add_buckets(&mut totals.buckets, &[(le, sample.value)]);
            }
            _ => {}
        }
    }
    rows
}

/// The workload a proxy serves, from `weft_proxy_info`: `namespace/pod`.
fn workload_of(scrape: &Scrape) -> Option<String> {
    let info = scrape.named("weft_proxy_info").next()?;
    match (info.label("workload_namespace"), info.label("workload_pod")) {
        (Some(ns), Some(pod)) if !ns.is_empty() && !pod.is_empty() => Some(format!("{ns}/{pod}")),
        (_, Some(pod)) if !pod.is_empty() => Some(pod.to_owned()),
        _ => None,
    }
}

/// The `q` quantile of a cumulative histogram, interpolating linearly within the bucket it
/// falls in (the first bucket from 0), as Prometheus' `histogram_quantile` does. `None`
/// without observations.
fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                // Beyond the largest finite bound: that bound is all that is known.
                return Some(lower);
            }
            if count <= below {
                return Some(le);
            }
            return Some(lower + (le - lower) * (rank - below) / (count - below));
        }
        (lower, below) = (le, count);
    }
    Some(lower)
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    workload: String,
    target: String,
    /// Over the window; `None` when there was no earlier scrape to compare with.
    window: Option<(Totals, Duration)>,
    total_requests: f64,
}

/// The rows from two rounds of scrapes.
fn rows(previous: &[Reading], current: &[Reading], direction: Direction) -> Vec<Row> {
    let mut merged: BTreeMap<(String, String), Row> = BTreeMap::new();
    for now in current {
        let before = previous.iter().find(|r| r.addr == now.addr);
        let earlier = before.map(|b| totals_by_target(&b.scrape, direction));
        for (target, totals) in totals_by_target(&now.scrape, direction) {
            let window = match (&earlier, before) {
                (Some(earlier), Some(before)) => {
                    let then = earlier.get(&target).cloned().unwrap_or_default();
                    Some((totals.since(&then), now.at.duration_since(before.at)))
                }
                _ => None,
            };
            let key = (now.name.clone(), target.clone());
            let row = merged.entry(key).or_insert_with(|| Row {
                workload: now.name.clone(),
                target,
                window: Some((Totals::default(), Duration::ZERO)),
                total_requests: 0.0,
            });
            row.total_requests += totals.requests;
            row.window = match (row.window.take(), window) {
                (Some((mut sum, longest)), Some((delta, elapsed))) => {
                    sum.add(&delta);
                    Some((sum, longest.max(elapsed)))
                }
                _ => None,
            };
        }
    }
    merged.into_values().collect()
}

/// Formats seconds as a latency: `0.45ms`, `4.3ms`, `120ms`, `1.25s`.
fn latency(seconds: f64) -> String {
    let ms = seconds * 1000.0;
    if ms < 1.0 {
        format!("{ms:.2}ms")
    } else if ms < 10.0 {
        format!("{ms:.1}ms")
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{seconds:.2}s")
    }
}

struct Table<'a> {
    rows: &'a [Row],
    direction: Direction,
    colour: bool,
}

impl Table<'_> {
    fn render(&self) -> String {
        let outbound = self.direction == Direction::Outbound;
        let mut lines: Vec<Vec<(String, Option<&str>)>> = Vec::new();
        let mut header = vec!["WORKLOAD"];
        if outbound {
            header.push("TARGET");
        }
        header.extend(["RPS", "SUCCESS", "P50", "P95", "P99", "MTLS", "REQUESTS"]);
        lines.push(header.iter().map(|h| (h.to_string(), None)).collect());
        for row in self.rows {
            let mut cells = vec![(row.workload.clone(), None)];
            if outbound {
                cells.push((row.target.clone(), None));
            }
            let dash = || ("-".to_owned(), None);
            match &row.window {
                Some((w, elapsed)) if !elapsed.is_zero() => {
                    cells.push((format!("{:.1}", w.requests / elapsed.as_secs_f64()), None));
                    if w.responses > 0.0 {
                        let rate = 1.0 - (w.failures / w.responses).min(1.0);
                        let colour = if rate >= 0.99 {
                            "32"
                        } else if rate >= 0.95 {
                            "33"
                        } else {
                            "31"
                        };
                        cells.push((format!("{:.2}%", rate * 100.0), Some(colour)));
                    } else {
                        cells.push(dash());
                    }
                    for q in [0.5, 0.95, 0.99] {
                        cells.push(
                            quantile(q, &w.buckets).map_or_else(dash, |s| (latency(s), None)),
                        );
                    }
                    if w.requests > 0.0 {
                        let share = 100.0 * w.mtls_requests / w.requests;
                        cells.push((format!("{share:.0}%"), None));
                    } else {
                        cells.push(dash());
                    }
                }
                _ => cells.extend((0..6).map(|_| dash())),
            }
            cells.push((format!("{:.0}", row.total_requests), None));
            lines.push(cells);
        }
        let columns = lines[0].len();
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                lines
                    .iter()
                    .map(|l| l[c].0.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for (i, line) in lines.iter().enumerate() {
            let mut text = String::new();
            for (c, (cell, colour)) in line.iter().enumerate() {
                let pad = widths[c] - cell.chars().count();
                // Names left, figures right.
                let left = c == 0 || (outbound && c == 1);
                let cell = match colour {
                    Some(code) if self.colour => format!("\x1b[{code}m{cell}\x1b[0m"),
                    _ => cell.clone(),
                };
                let cell = if i == 0 && self.colour {
                    format!("\x1b[1m{cell}\x1b[0m")
                } else {
                    cell
                };
                if left {
                    let _ = write!(text, "{cell}{}", " ".repeat(pad));
                } else {
                    let _ = write!(text, "{}{cell}", " ".repeat(pad));
                }
                if c + 1 < columns {
                    text.push_str("  ");
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Where to scrape: the flags, or the control plane's list of subscribed proxies.
async fn sources(args: &StatArgs) -> anyhow::Result<Vec<ProxyAddr>> {
    if !args.proxies.is_empty() {
        return Ok(args.proxies.clone());
    }
    let admin = args.control_plane_admin;
    let proxies = crate::get_json(admin, "/debug/proxies")
        .await
        .with_context(|| {
            format!("listing proxies on the control plane {admin} (or name them with --proxy)")
        })?;
    let Value::Array(proxies) = proxies else {
        bail!("{admin}/debug/proxies: not a list");
    };
    let mut out = Vec::new();
    for proxy in &proxies {
        let text = |key: &str| proxy.get(key).and_then(Value::as_str).unwrap_or("");
        let name = format!("{}/{}", text("namespace"), text("pod"));
        let Ok(remote) = text("remote").parse::<SocketAddr>() else {
            eprintln!("weftctl: {name}: the control plane does not know its address; skipped");
            continue;
        };
        out.push(ProxyAddr {
            name: Some(name),
            addr: SocketAddr::new(remote.ip(), args.admin_port),
        });
    }
    Ok(out)
}

/// Scrapes every source at once; failures come back as lines to show.
async fn scrape_all(sources: &[ProxyAddr]) -> (Vec<Reading>, Vec<String>) {
    let mut set = tokio::task::JoinSet::new();
    for (i, source) in sources.iter().cloned().enumerate() {
        set.spawn(async move {
            let got = tokio::time::timeout(
                crate::DEFAULT_ADMIN_TIMEOUT,
                crate::get(source.addr, "/metrics"),
            )
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "no answer within {:?}",
                    crate::DEFAULT_ADMIN_TIMEOUT
                ))
            })
            .and_then(|body| Scrape::parse(&String::from_utf8_lossy(&body)));
            (i, source, Instant::now(), got)
        });
    }
    let mut done = set.join_all().await;
    done.sort_by_key(|(i, ..)| *i);
    let mut readings = Vec::new();
    let mut failures = Vec::new();
    for (_, source, at, got) in done {
        match got {
            Ok(scrape) => {
                let name = (source.name.clone())
                    .or_else(|| workload_of(&scrape))
                    .unwrap_or_else(|| source.addr.to_string());
                readings.push(Reading {
                    addr: source.addr,
                    name,
                    at,
                    scrape,
                });
            }
            Err(error) => {
                let who = match &source.name {
                    Some(name) => format!("{name} ({})", source.addr),
                    None => source.addr.to_string(),
                };
                failures.push(format!("{who}: {error:#}"));
            }
        }
    }
    (readings, failures)
}

pub async fn run(args: &StatArgs) -> anyhow::Result<ExitCode> {
    let terminal = std::io::stdout().is_terminal();
    let mut sources = sources(args).await?;
    if sources.is_empty() {
        bail!(
            "no proxies: the control plane {} lists none; name them with --proxy",
            args.control_plane_admin
        );
    }
    if terminal {
        eprintln!(
            "weftctl: reading {} prox{} twice, {:?} apart…",
            sources.len(),
            if sources.len() == 1 { "y" } else { "ies" },
            args.interval
        );
    }
    let (mut previous, _) = scrape_all(&sources).await;
    loop {
        tokio::time::sleep(args.interval).await;
        let (current, failures) = scrape_all(&sources).await;
        let rows = rows(&previous, &current, args.direction);
        let table = Table {
            rows: &rows,
            direction: args.direction,
            colour: terminal,
        };
        let mut out = String::new();
        if terminal && !args.once {
            // Redraw in place.
            out.push_str("\x1b[H\x1b[2J");
            let _ = writeln!(
                out,
                "{} traffic over {:?} at {} (Ctrl-C to stop)\n",
                args.direction.as_str(),
                args.interval,
                humantime::format_rfc3339_seconds(SystemTime::now())
            );
        }
        out.push_str(&table.render());
        for failure in &failures {
            let mark = if terminal {
                "\x1b[31m✗\x1b[0m"
            } else {
                "✗"
            };
            let _ = writeln!(out, "{mark} {failure}");
        }
        if args.once {
            print!("{out}");
            let failed = !failures.is_empty();
            return Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
        if !terminal {
            out.push('\n');
        }
        print!("{out}");
        previous = current;
        if args.proxies.is_empty() {
            // Proxies come and go: ask the control plane again for the next round.
            if let Ok(now) = self::sources(args).await {
                sources = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(text: &str) -> Scrape {
        Scrape::parse(text).unwrap()
    }

    const LABELS: &str = r#"direction="inbound",target="app",tls="true",client_id="spiffe://td/ns/shop/sa/web",server_id="""#;

    fn page(requests: u32, errors: u32, buckets: [u32; 3]) -> String {
        format!(
            "weft_requests_total{{{LABELS}}} {requests}\n\
             weft_requests_total{{direction=\"outbound\",target=\"x\",tls=\"false\",client_id=\"\",server_id=\"\"}} 5\n\
             weft_responses_total{{status_class=\"2xx\",{LABELS}}} {}\n\
             weft_responses_total{{status_class=\"5xx\",{LABELS}}} {errors}\n\
             weft_response_latency_seconds_bucket{{le=\"0.001\",{LABELS}}} {}\n\
             weft_response_latency_seconds_bucket{{le=\"0.002\",{LABELS}}} {}\n\
             weft_response_latency_seconds_bucket{{le=\"+Inf\",{LABELS}}} {}\n\
             weft_proxy_info{{version=\"0.1.0\",workload_namespace=\"shop\",workload_pod=\"orders-1\"}} 1\n",
            requests - errors,
            buckets[0],
            buckets[1],
            buckets[2],
        )
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let buckets = [(0.001, 50.0), (0.002, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(0.5, &buckets), Some(0.001));
        assert!((quantile(0.75, &buckets).unwrap() - 0.0015).abs() < 1e-12);
        assert_eq!(
            quantile(0.99, &[(0.001, 0.0), (f64::INFINITY, 10.0)]),
            Some(0.001)
        );
        assert_eq!(quantile(0.5, &[(0.001, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.5, &[]), None);
    }

    #[test]
    fn rows_are_rates_over_the_window() {
        let t0 = Instant::now();
        let reading = |at: Instant, text: String| Reading {
            addr: "127.0.0.1:15020".parse().unwrap(),
            name: workload_of(&scrape(&text)).unwrap(),
            at,
            scrape: scrape(&text),
        };
        let before = vec![reading(t0, page(100, 0, [100, 100, 100]))];
        let after = vec![reading(
            t0 + Duration::from_secs(2),
            page(300, 20, [200, 300, 300]),
        )];
        let rows = rows(&before, &after, Direction::Inbound);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.workload, "shop/orders-1");
        assert_eq!(row.total_requests, 300.0);
        let (window, elapsed) = row.window.clone().unwrap();
        assert_eq!(elapsed, Duration::from_secs(2));
        assert_eq!(
            (window.requests, window.responses, window.failures),
            (200.0, 200.0, 20.0)
        );
        assert_eq!(window.mtls_requests, 200.0);
        let table = Table {
            rows: &rows,
            direction: Direction::Inbound,
            colour: false,
        }
        .render();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["WORKLOAD", "RPS", "SUCCESS", "P50", "P95", "P99", "MTLS", "REQUESTS"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "shop/orders-1",
                "100.0",
                "90.00%",
                "1.0ms",
                "1.9ms",
                "2.0ms",
                "100%",
                "300"
            ],
            "{table}"
        );
    }

    #[test]
    fn outbound_rows_are_per_target_and_a_restart_counts_from_zero() {
        let t0 = Instant::now();
        let reading = |at: Instant, text: String| Reading {
            addr: "127.0.0.1:15020".parse().unwrap(),
            name: "web".into(),
            at,
            scrape: scrape(&text),
        };
        let before = vec![reading(
            t0,
            page(100, 0, [1, 1, 1]).replace("} 5\n", "} 50\n"),
        )];
        let after = vec![reading(
            t0 + Duration::from_secs(1),
            page(100, 0, [1, 1, 1]),
        )];
        let rows = rows(&before, &after, Direction::Outbound);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].workload.as_str(), rows[0].target.as_str()),
            ("web", "x")
        );
        let (window, _) = rows[0].window.clone().unwrap();
        assert_eq!(window.requests, 5.0, "50 then 5: restarted, 5 since");
        let table = Table {
            rows: &rows,
            direction: Direction::Outbound,
            colour: false,
        }
        .render();
        assert!(table.starts_with("WORKLOAD  TARGET  RPS"), "{table}");
    }

    #[test]
    fn replicas_with_one_name_are_added_up() {
        let t0 = Instant::now();
        let reading = |port: u16, at: Instant, requests: u32| Reading {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            name: "orders".into(),
            at,
            scrape: scrape(&page(requests, 0, [0, 0, requests])),
        };
        let later = t0 + Duration::from_secs(1);
        let before = vec![reading(1, t0, 10), reading(2, t0, 1000)];
        let after = vec![reading(1, later, 20), reading(2, later, 1005)];
        let rows = rows(&before, &after, Direction::Inbound);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].total_requests, 1025.0);
        let (window, elapsed) = rows[0].window.clone().unwrap();
        assert_eq!((window.requests, elapsed), (15.0, Duration::from_secs(1)));
    }

    #[test]
    fn proxy_addresses_may_be_named() {
        let named: ProxyAddr = "web=127.0.0.1:15020".parse().unwrap();
        assert_eq!(named.name.as_deref(), Some("web"));
        assert_eq!(named.addr, "127.0.0.1:15020".parse().unwrap());
        let plain: ProxyAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(plain.name, None);
        assert!("=127.0.0.1:1".parse::<ProxyAddr>().is_err());
        assert!("web=nowhere".parse::<ProxyAddr>().is_err());
    }
}
