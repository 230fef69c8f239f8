//! A parser for the Prometheus / OpenMetrics text exposition, so tests assert on series and
//! label values rather than on substrings of the page.

use std::collections::BTreeMap;

/// One sample line: `name{label="value",…} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// All samples of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses a whole exposition. Comments (`# HELP`, `# TYPE`, `# EOF`) are skipped.
    pub fn parse(text: &str) -> Result<Metrics, String> {
        let samples = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty() && !line.starts_with('#'))
            .map(|(i, line)| {
                parse_sample(line).map_err(|err| format!("line {}: {err}: {line}", i + 1))
            })
            .collect::<Result<_, _>>()?;
        Ok(Metrics { samples })
    }

    /// Samples named `name` whose labels include every `(label, value)` in `matching`.
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

    /// The sum over [`Metrics::select`]; 0 when no series matches (a counter not yet created).
    pub fn sum(&self, name: &str, matching: &[(&str, &str)]) -> f64 {
        // A fold from +0.0: `Sum` of nothing is -0.0, which reads oddly in messages.
        self.select(name, matching)
            .fold(0.0, |sum, s| sum + s.value)
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("bad metric name `{name}`"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next().ok_or("no value")?;
    let value = value.parse().map_err(|_| format!("bad value `{value}`"))?;
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `a="x",b="y\"z"}` and returns the labels and the text after `}`.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or("label without `=`")?;
        let key = s[..eq].trim().to_owned();
        s = s[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated escape".into()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        labels.insert(key, value);
        s = s[end + 1..].trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP weft_requests HTTP requests received.
# TYPE weft_requests counter
weft_requests_total{direction="outbound",target="10.0.0.2:8080"} 3
weft_requests_total{direction="outbound",target="10.0.0.2:9090"} 1
weft_requests_total{direction="inbound",target="weird \"quoted\", \\ value"} 2 1700000000
weft_tcp_connections_open{direction="inbound",target="x",} 0
weft_up 1
weft_latency_bucket{le="+Inf"} 4
# EOF
"#;

    #[test]
    fn parses_and_sums_by_label() {
        let m = Metrics::parse(PAGE).unwrap();
        assert_eq!(m.samples.len(), 6);
        assert_eq!(
            m.sum("weft_requests_total", &[("direction", "outbound")]),
            4.0
        );
        assert_eq!(
            m.sum("weft_requests_total", &[("direction", "inbound")]),
            2.0
        );
        assert_eq!(m.sum("weft_requests_total", &[]), 6.0);
        assert_eq!(m.sum("weft_requests", &[]), 0.0);
        assert_eq!(
            m.sum(
                "weft_tcp_connections_opened_total",
                &[("direction", "inbound")]
            ),
            0.0
        );
        let inbound: Vec<_> = m
            .select("weft_requests_total", &[("direction", "inbound")])
            .collect();
        assert_eq!(inbound[0].labels["target"], r#"weird "quoted", \ value"#);
        assert_eq!(m.sum("weft_up", &[]), 1.0);
        assert_eq!(
            m.select("weft_latency_bucket", &[("le", "+Inf")]).count(),
            1
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(Metrics::parse("weft_x{direction=\"a\" 1").is_err());
        assert!(Metrics::parse("weft_x abc").is_err());
        assert!(Metrics::parse("<html>").is_err());
    }
}
