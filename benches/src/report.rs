//! What one load run measured, as JSON (for the scenario runner and `results/*.json`) and as
//! a human table.

use std::fmt;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in nanoseconds: a loopback request is tens of microseconds, so
/// microsecond buckets would round away the differences being measured. Three significant
/// digits over 1 ns..60 s costs a few hundred KiB per histogram.
pub const HIST_MAX_NS: u64 = 60_000_000_000;

/// A fresh latency histogram with the harness's bounds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("static histogram bounds are valid")
}

/// Which loop produced the numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadMode {
    /// Each connection sends its next request when the previous response completes.
    Closed,
    /// Requests follow a fixed schedule; latency counts from the intended send time.
    Open,
}

impl fmt::Display for LoadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LoadMode::Closed => "closed",
            LoadMode::Open => "open",
        })
    }
}

/// Latency percentiles in microseconds (fractional, from nanosecond data).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Latency {
    /// Summarises a nanosecond histogram; all zero when it is empty.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        }
    }
}

/// Everything that did not end in a 2xx response.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Errors {
    /// Responses with a status outside 200..=299.
    pub non_2xx: u64,
    /// Failed TCP connects or HTTP/1 handshakes.
    pub connect: u64,
    /// Requests that failed mid-flight (reset, closed, malformed response).
    pub io: u64,
    /// Requests that got no response within the per-request timeout.
    pub timeout: u64,
    /// Open loop only: scheduled requests never sent because the run hit its hard stop.
    pub not_sent: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.non_2xx + self.connect + self.io + self.timeout + self.not_sent
    }

    pub fn add(&mut self, other: &Errors) {
        self.non_2xx += other.non_2xx;
        self.connect += other.connect;
        self.io += other.io;
        self.timeout += other.timeout;
        self.not_sent += other.not_sent;
    }
}

/// The result of one `weft-load` run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    pub mode: LoadMode,
    pub target: String,
    pub connections: usize,
    /// The configured duration of the measured window, seconds.
    pub duration_s: f64,
    /// Open loop only: the target rate, requests per second.
    pub rate: Option<f64>,
    /// From the common start instant to the last completed response, seconds.
    pub elapsed_s: f64,
    /// Completed requests with a 2xx response.
    pub requests: u64,
    /// `requests / elapsed_s`.
    pub rps: f64,
    pub latency: Latency,
    /// Open loop only: the generator's own lateness in sending (actual − intended send
    /// time). It is included in `latency`; if it is large the generator, not the target,
    /// was the bottleneck.
    #[serde(default)]
    pub schedule_lag: Option<Latency>,
    pub errors: Errors,
}

impl LoadReport {
    /// The table header matching [`LoadReport::row`].
    pub fn header() -> String {
        format!(
            "{:<6} {:>5} {:>8} {:>9} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "mode",
            "conns",
            "rate",
            "requests",
            "req/s",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "errors"
        )
    }

    /// One line of the human table.
    pub fn row(&self) -> String {
        let rate = self
            .rate
            .map(|r| format!("{r:.0}"))
            .unwrap_or_else(|| "max".into());
        let l = &self.latency;
        format!(
            "{:<6} {:>5} {:>8} {:>9} {:>11.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>7}",
            self.mode.to_string(),
            self.connections,
            rate,
            self.requests,
            self.rps,
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p999_us,
            l.max_us,
            self.errors.total()
        )
    }

    /// A multi-line human summary: the table plus an error breakdown when there are errors.
    pub fn human(&self) -> String {
        let mut out = format!(
            "target {}  elapsed {:.2}s\n{}\n{}\n",
            self.target,
            self.elapsed_s,
            Self::header(),
            self.row()
        );
        if let Some(lag) = &self.schedule_lag {
            out.push_str(&format!(
                "schedule lag (generator's own lateness, included above): p50 {:.1} µs  p99 {:.1} µs  max {:.1} µs\n",
                lag.p50_us, lag.p99_us, lag.max_us
            ));
        }
        let e = &self.errors;
        if e.total() > 0 {
            out.push_str(&format!(
                "errors: non-2xx {}  connect {}  io {}  timeout {}  not-sent {}\n",
                e.non_2xx, e.connect, e.io, e.timeout, e.not_sent
            ));
        }
        out
    }
}
