//! Invalid input, reported rather than applied: every object a source or the index skipped,
//! with the file or object and the field, for the log, the `weft_cp_invalid_objects`
//! metric, the admin endpoint `/debug/problems` and `weftctl check`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus_client::metrics::gauge::Gauge;

/// One thing that was skipped and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// A file path, or `kubernetes`.
    pub source: String,
    /// `Kind namespace/name`, when the object could be named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
    /// Whether a last good version of the object is still in force.
    pub kept_last_good: bool,
}

/// The current problems, by who reported them (each reporter replaces its own set).
#[derive(Debug, Default)]
pub struct ProblemBoard {
    by_reporter: Mutex<BTreeMap<&'static str, Vec<Problem>>>,
    gauge: Gauge,
}

impl ProblemBoard {
    pub fn gauge(&self) -> Gauge {
        self.gauge.clone()
    }

    /// Replaces `reporter`'s problems, logging the ones that are new.
    pub fn set(&self, reporter: &'static str, problems: Vec<Problem>) {
        // A poisoned lock means a panic mid-update; the map is still a valid map.
        let mut all = self.by_reporter.lock().unwrap_or_else(|p| p.into_inner());
        let previous = all.get(reporter).map(Vec::as_slice).unwrap_or_default();
        for problem in problems.iter().filter(|p| !previous.contains(p)) {
            tracing::warn!(
                source = %problem.source,
                object = problem.object.as_deref().unwrap_or("-"),
                field = problem.field.as_deref().unwrap_or("-"),
                kept_last_good = problem.kept_last_good,
                "skipped invalid input: {}",
                problem.message
            );
        }
        all.insert(reporter, problems);
        let total: usize = all.values().map(Vec::len).sum();
        self.gauge.set(i64::try_from(total).unwrap_or(i64::MAX));
    }

    pub fn all(&self) -> Vec<Problem> {
        let all = self.by_reporter.lock().unwrap_or_else(|p| p.into_inner());
        all.values().flatten().cloned().collect()
    }
}
