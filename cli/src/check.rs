//! `weftctl check`: one ✓ or ✗ line per fact an operator needs before trusting the mesh,
//! read from the control plane's admin server. Exit code 1 when any check failed.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;

use serde_json::Value;

struct Report {
    failed: bool,
    colour: bool,
}

impl Report {
    fn ok(&mut self, line: impl AsRef<str>) {
        let mark = if self.colour {
            "\x1b[32m✓\x1b[0m"
        } else {
            "✓"
        };
        println!("{mark} {}", line.as_ref());
    }

    fn fail(&mut self, line: impl AsRef<str>) {
        self.failed = true;
        let mark = if self.colour {
            "\x1b[31m✗\x1b[0m"
        } else {
            "✗"
        };
        println!("{mark} {}", line.as_ref());
    }

    fn detail(&self, line: impl AsRef<str>) {
        println!("    {}", line.as_ref());
    }
}

pub async fn run(admin: SocketAddr) -> ExitCode {
    let mut report = Report {
        failed: false,
        colour: std::io::stdout().is_terminal(),
    };
    match crate::get(admin, "/ready").await {
        Ok(_) => report.ok(format!(
            "control plane {admin} is up and has computed views"
        )),
        Err(error) => {
            report.fail(format!("control plane {admin}: {error:#}"));
            return ExitCode::FAILURE;
        }
    }
    match crate::get_json(admin, "/debug/problems").await {
        Ok(Value::Array(problems)) if problems.is_empty() => {
            report.ok("every policy object and manifest is valid")
        }
        Ok(Value::Array(problems)) => {
            report.fail(format!(
                "{} invalid object(s) or file(s) skipped:",
                problems.len()
            ));
            for problem in &problems {
                report.detail(describe_problem(problem));
            }
        }
        Ok(other) => report.fail(format!("/debug/problems: unexpected answer {other}")),
        Err(error) => report.fail(format!("/debug/problems: {error:#}")),
    }
    match crate::get_json(admin, "/debug/proxies").await {
        Ok(Value::Array(proxies)) => check_proxies(&mut report, &proxies),
        Ok(other) => report.fail(format!("/debug/proxies: unexpected answer {other}")),
        Err(error) => report.fail(format!("/debug/proxies: {error:#}")),
    }
    if report.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn describe_problem(problem: &Value) -> String {
    let text = |key: &str| problem.get(key).and_then(Value::as_str);
    let mut line = text("object")
        .map(|o| format!("{o} ({})", text("source").unwrap_or("?")))
        .unwrap_or_else(|| text("source").unwrap_or("?").to_owned());
    if let Some(field) = text("field") {
        line.push_str(&format!(" {field}"));
    }
    line.push_str(&format!(": {}", text("message").unwrap_or("?")));
    if problem.get("keptLastGood").and_then(Value::as_bool) == Some(true) {
        line.push_str(" (the last good version stays in force)");
    }
    line
}

fn check_proxies(report: &mut Report, proxies: &[Value]) {
    let text = |p: &Value, key: &str| p.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
    let behind: Vec<&Value> = proxies
        .iter()
        .filter(|p| text(p, "sentVersion") != text(p, "ackedVersion") || !p["rejected"].is_null())
        .collect();
    if behind.is_empty() {
        report.ok(format!(
            "{} proxies connected, all on their latest view",
            proxies.len()
        ));
        return;
    }
    report.fail(format!(
        "{} of {} proxies are not on their latest view:",
        behind.len(),
        proxies.len()
    ));
    for proxy in behind {
        let mut line = format!(
            "{}/{} ({}): sent {}, applied {}",
            text(proxy, "namespace"),
            text(proxy, "pod"),
            text(proxy, "identity"),
            text(proxy, "sentVersion"),
            Some(text(proxy, "ackedVersion"))
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "nothing yet".into()),
        );
        if let Some(reason) = proxy["rejected"].as_str() {
            line.push_str(&format!(" — rejected: {reason}"));
        }
        report.detail(line);
    }
}
