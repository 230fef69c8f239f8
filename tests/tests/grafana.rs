//! The Grafana dashboard (`deploy/grafana/weft.json`): valid JSON in the shape Grafana
//! imports, every metric it queries documented in docs/metrics.md (so a renamed metric can't
//! silently empty a panel), and — when `promtool` is installed — every query valid PromQL.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn dashboard() -> Value {
    let path = workspace().join("deploy/grafana/weft.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// Every PromQL expression: the panels' targets and the template variables' queries.
fn queries(dashboard: &Value) -> Vec<String> {
    let mut out: Vec<String> = panels(dashboard)
        .iter()
        .filter_map(|p| p["targets"].as_array())
        .flatten()
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("a target without expr")
                .to_owned()
        })
        .collect();
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(query) = var["query"]["query"].as_str() {
            out.push(query.to_owned());
        }
    }
    out
}

/// The `weft_…` names in a query.
fn metric_names(query: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = query.as_bytes();
    let mut i = 0;
    while let Some(at) = query[i..].find("weft_") {
        let start = i + at;
        let starts_word =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = query[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(query.len(), |n| start + n);
        if starts_word {
            names.insert(query[start..end].to_owned());
        }
        i = end;
    }
    names
}

#[test]
fn the_dashboard_is_well_formed() {
    let dashboard = dashboard();
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(dashboard["schemaVersion"].as_u64().is_some());
    let panels = panels(&dashboard);
    assert!(panels.len() > 10, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate id: {title}"
        );
        let grid = &panel["gridPos"];
        for key in ["h", "w", "x", "y"] {
            assert!(grid[key].as_u64().is_some(), "{title}: gridPos.{key}");
        }
        assert!(
            grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24,
            "{title}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title}: queries the chosen data source"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for target in targets {
            assert!(
                refs.insert(target["refId"].as_str().expect("refId")),
                "{title}"
            );
        }
    }
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["datasource", "namespace"]);
}

#[test]
fn every_metric_the_dashboard_queries_is_documented() {
    let dashboard = dashboard();
    let docs = std::fs::read_to_string(workspace().join("docs/metrics.md")).expect("docs");
    // Documented names appear in backquotes; a histogram's series are its name plus a suffix.
    let documented = |name: &str| {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        docs.contains(&format!("`{name}`")) || docs.contains(&format!("`{base}`"))
    };
    let mut queried = BTreeSet::new();
    for query in queries(&dashboard) {
        queried.extend(metric_names(&query));
    }
    assert!(queried.len() > 15, "{queried:?}");
    let missing: Vec<_> = queried.iter().filter(|n| !documented(n)).collect();
    assert!(
        missing.is_empty(),
        "queried but not in docs/metrics.md: {missing:?}"
    );
    // The panels the issue asks for.
    for needed in [
        "weft_requests_total",
        "weft_responses_total",
        "weft_response_latency_seconds_bucket",
        "weft_authz_decisions_total",
        "weft_retries_total",
        "weft_retry_budget_exhausted_total",
        "weft_circuit_breaker_overflows_total",
        "weft_identity_cert_expiration_timestamp_seconds",
        "weft_cp_subscribers",
        "weft_cp_acks_total",
    ] {
        assert!(queried.contains(needed), "no panel queries {needed}");
    }
}

#[test]
fn metric_names_are_found_in_queries() {
    let names = metric_names(
        "sum(rate(weft_a_total{x=\"weft_not_a_label_value\"}[1m])) / xweft_b + weft_c_bucket",
    );
    // Label values are matched too: harmless, they must be documented names anyway.
    assert!(names.contains("weft_a_total") && names.contains("weft_c_bucket"));
    assert!(!names.contains("weft_b"));
}

/// With promtool installed (Debian's `prometheus` package), every query must parse: each
/// becomes a recording rule, with Grafana's variables replaced by what they expand to.
#[test]
fn every_query_is_valid_promql() {
    if Command::new("promtool").arg("--version").output().is_err() {
        eprintln!("skipped: promtool not installed (apt-get install prometheus)");
        return;
    }
    let dashboard = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, query) in queries(&dashboard).iter().enumerate() {
        if query.starts_with("label_values(") {
            continue; // Grafana's function, not PromQL.
        }
        let expr = query
            .replace("$__rate_interval", "1m")
            .replace("$namespace", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = std::env::temp_dir().join(format!("weft-grafana-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rules.yaml");
    std::fs::write(&file, &rules).unwrap();
    let output = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()
        .expect("run promtool");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "promtool check rules:\n{}{}\n{rules}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
