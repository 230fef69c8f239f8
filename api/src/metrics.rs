//! Serving `/metrics` in the format the scraper asks for. Weft's components encode their
//! registries with prometheus-client, which writes OpenMetrics: what Prometheus asks for and
//! gets by default. Tools that read only the older Prometheus text format (0.0.4) —
//! `promtool check metrics`, some agents — say so with `Accept: text/plain`, and get the same
//! families converted by [`to_prometheus_text`].
//!
//! The formats differ in the metadata, not in the samples: an OpenMetrics counter family
//! `x` has samples `x_total` and an info family `x` samples `x_info`, where the text format
//! names the family after its samples; OpenMetrics ends with `# EOF` and may carry `# UNIT`
//! lines and exemplars, which the text format has not.

/// OpenMetrics 1.0, the default.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Prometheus text format 0.0.4.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a request's `Accept` header asks for the Prometheus text format rather than
/// OpenMetrics: it names `text/plain` and not `application/openmetrics-text`. No header, or
/// `*/*`, keeps OpenMetrics.
pub fn wants_prometheus_text(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        let accept = accept.to_ascii_lowercase();
        accept.contains("text/plain") && !accept.contains("application/openmetrics-text")
    })
}

/// The body and content type for a scrape whose `Accept` header is `accept`, given the
/// OpenMetrics exposition.
pub fn negotiate(openmetrics: String, accept: Option<&str>) -> (String, &'static str) {
    if wants_prometheus_text(accept) {
        (
            to_prometheus_text(&openmetrics),
            PROMETHEUS_TEXT_CONTENT_TYPE,
        )
    } else {
        (openmetrics, OPENMETRICS_CONTENT_TYPE)
    }
}

/// Converts an OpenMetrics exposition to the Prometheus text format 0.0.4.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // HELP comes before TYPE, and only TYPE says what the family's samples are called.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (family, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (name.to_owned(), kind),
                _ => (name.to_owned(), "untyped"),
            };
            if let Some((help_name, text)) = help.take() {
                if help_name == name {
                    out.push_str(&format!("# HELP {family} {}\n", help_text(text)));
                }
            }
            out.push_str(&format!("# TYPE {family} {kind}\n"));
        } else if line.starts_with('#') {
            // `# UNIT`, `# EOF`: no equivalent.
        } else if !line.trim().is_empty() {
            // An exemplar follows the value after ` # `; a label value may contain that
            // too, so it is looked for only after the label set.
            out.push_str(strip_exemplar(line));
            out.push('\n');
        }
    }
    out
}

/// HELP text in the text format escapes only `\` and newlines; OpenMetrics also escapes `"`.
fn help_text(text: &str) -> String {
    text.replace("\\\"", "\"")
}

fn strip_exemplar(line: &str) -> &str {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let after_labels = if line[name_end..].starts_with('{') {
        match closing_brace(&line[name_end..]) {
            Some(close) => name_end + close + 1,
            None => return line,
        }
    } else {
        name_end
    };
    match line[after_labels..].find(" # ") {
        Some(at) => &line[..after_labels + at],
        None => line,
    }
}

/// The index of the `}` closing a label set that starts at `s[0] == '{'`, skipping quoted
/// values (which may contain `}` and escaped quotes).
fn closing_brace(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS: &str = "# HELP weft_requests HTTP requests received.\n\
        # TYPE weft_requests counter\n\
        weft_requests_total{direction=\"inbound\",target=\"a } # b\"} 3\n\
        # HELP weft_proxy Build.\n\
        # TYPE weft_proxy info\n\
        weft_proxy_info{version=\"0.1.0\"} 1\n\
        # HELP weft_latency_seconds Latency.\n\
        # TYPE weft_latency_seconds histogram\n\
        # UNIT weft_latency_seconds seconds\n\
        weft_latency_seconds_sum 0.5\n\
        weft_latency_seconds_count 1\n\
        weft_latency_seconds_bucket{le=\"+Inf\"} 1\n\
        # HELP weft_up Whether it is \\\"up\\\".\n\
        # TYPE weft_up gauge\n\
        weft_up 1\n\
        weft_x_total 2 # {trace_id=\"abc\"} 1.0\n\
        # EOF\n";

    #[test]
    fn counters_and_infos_are_named_after_their_samples() {
        let text = to_prometheus_text(OPENMETRICS);
        assert_eq!(
            text,
            "# HELP weft_requests_total HTTP requests received.\n\
             # TYPE weft_requests_total counter\n\
             weft_requests_total{direction=\"inbound\",target=\"a } # b\"} 3\n\
             # HELP weft_proxy_info Build.\n\
             # TYPE weft_proxy_info gauge\n\
             weft_proxy_info{version=\"0.1.0\"} 1\n\
             # HELP weft_latency_seconds Latency.\n\
             # TYPE weft_latency_seconds histogram\n\
             weft_latency_seconds_sum 0.5\n\
             weft_latency_seconds_count 1\n\
             weft_latency_seconds_bucket{le=\"+Inf\"} 1\n\
             # HELP weft_up Whether it is \"up\".\n\
             # TYPE weft_up gauge\n\
             weft_up 1\n\
             weft_x_total 2\n"
        );
    }

    #[test]
    fn openmetrics_unless_text_plain_is_asked_for() {
        let prometheus = "text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let scraper = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
        assert!(wants_prometheus_text(Some(prometheus)));
        assert!(wants_prometheus_text(Some("TEXT/PLAIN")));
        assert!(!wants_prometheus_text(Some(scraper)));
        assert!(!wants_prometheus_text(Some("*/*")));
        assert!(!wants_prometheus_text(None));
        let (body, content_type) = negotiate(OPENMETRICS.into(), None);
        assert_eq!(
            (body.as_str(), content_type),
            (OPENMETRICS, OPENMETRICS_CONTENT_TYPE)
        );
        let (body, content_type) = negotiate(OPENMETRICS.into(), Some(prometheus));
        assert!(!body.contains("# EOF"));
        assert_eq!(content_type, PROMETHEUS_TEXT_CONTENT_TYPE);
    }
}
