//! `weftctl check`: one ✓ or ✗ line per fact an operator needs before trusting the mesh,
//! read from the control plane's admin server. Exit code 1 when any check failed.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// A CA certificate closer to expiry than this fails the check by default: a month leaves
/// time to rotate it (docs/control-plane.md, "The CA") without an outage.
pub const DEFAULT_MIN_CA_VALIDITY: &str = "30d";

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The control plane's admin address (`kubectl -n weft-system port-forward
    /// deploy/weft-control-plane 15014` in a cluster).
    #[arg(
        long,
        default_value = "127.0.0.1:15014",
        env = "WEFT_CONTROL_PLANE_ADMIN"
    )]
    control_plane_admin: SocketAddr,
    /// Fail when the CA's issuer or a trust anchor expires sooner than this.
    #[arg(long, default_value = DEFAULT_MIN_CA_VALIDITY, value_parser = humantime::parse_duration)]
    min_ca_validity: Duration,
}

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

pub async fn run(args: &CheckArgs) -> ExitCode {
    let admin = args.control_plane_admin;
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
    match crate::get_json(admin, "/debug/ca").await {
        Ok(ca) => check_ca(&mut report, &ca, args.min_ca_validity),
        Err(error) => report.fail(format!("/debug/ca: {error:#}")),
    }
    match crate::get_json(admin, "/debug/proxies").await {
        Ok(Value::Array(proxies)) => {
            check_proxies(&mut report, &proxies);
            match crate::get_json(admin, "/debug/version").await {
                Ok(version) => match version.get("version").and_then(Value::as_str) {
                    Some(version) => check_versions(&mut report, &proxies, version),
                    None => report.fail(format!("/debug/version: unexpected answer {version}")),
                },
                Err(error) => report.fail(format!("/debug/version: {error:#}")),
            }
        }
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

/// "in 364 days", "in 5 hours", "3 minutes ago".
fn relative(seconds: i64) -> String {
    let (n, unit) = match seconds.unsigned_abs() {
        s if s >= 2 * 86400 => (s / 86400, "days"),
        s if s >= 2 * 3600 => (s / 3600, "hours"),
        s if s >= 120 => (s / 60, "minutes"),
        s => (s, "seconds"),
    };
    if seconds >= 0 {
        format!("in {n} {unit}")
    } else {
        format!("{n} {unit} ago")
    }
}

fn check_ca(report: &mut Report, ca: &Value, min_validity: Duration) {
    let now = ca["nowUnix"].as_u64().unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    let mut check = |what: &str, cert: &Value| {
        let subject = cert["subject"].as_str().unwrap_or("?");
        let Some(not_after) = cert["notAfterUnix"].as_u64() else {
            return report.fail(format!("{what} {subject}: no expiry in /debug/ca"));
        };
        let left = i64::try_from(not_after).unwrap_or(i64::MAX) - i64::try_from(now).unwrap_or(0);
        let until = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(not_after));
        if left <= 0 {
            report.fail(format!(
                "{what} {subject} expired {} ({until})",
                relative(left)
            ));
        } else if (left as u64) < min_validity.as_secs() {
            let within = match min_validity.as_secs() {
                s if s % 86400 == 0 => format!("{} days", s / 86400),
                _ => humantime::format_duration(min_validity).to_string(),
            };
            report.fail(format!(
                "{what} {subject} expires {} ({until}), within {within}: rotate it",
                relative(left),
            ));
        } else {
            report.ok(format!(
                "{what} {subject} is valid, expires {} ({until})",
                relative(left)
            ));
        }
    };
    let issuer = if ca["issuerIsRoot"].as_bool() == Some(true) {
        "CA issuer (a root)"
    } else {
        "CA issuer"
    };
    check(issuer, &ca["issuer"]);
    match ca["trustAnchors"].as_array() {
        Some(anchors) if !anchors.is_empty() => {
            for anchor in anchors {
                check("trust anchor", anchor);
            }
        }
        _ => report.fail("the CA has no trust anchors"),
    }
}

/// Every proxy runs the control plane's version.
fn check_versions(report: &mut Report, proxies: &[Value], version: &str) {
    let text = |p: &Value, key: &str| p.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
    let other: Vec<&Value> = proxies
        .iter()
        .filter(|p| text(p, "proxyVersion") != version)
        .collect();
    if other.is_empty() {
        report.ok(format!(
            "{} proxies run the control plane's version {version}",
            proxies.len()
        ));
        return;
    }
    report.fail(format!(
        "{} of {} proxies run another version than the control plane's {version} (restart them to upgrade):",
        other.len(),
        proxies.len()
    ));
    for proxy in other {
        let found = Some(text(proxy, "proxyVersion"))
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "unknown".into());
        report.detail(format!(
            "{}/{}: {found}",
            text(proxy, "namespace"),
            text(proxy, "pod")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        assert_eq!(relative(400 * 86400), "in 400 days");
        assert_eq!(relative(5 * 3600 + 5), "in 5 hours");
        assert_eq!(relative(-180), "3 minutes ago");
        assert_eq!(relative(30), "in 30 seconds");
    }
}
