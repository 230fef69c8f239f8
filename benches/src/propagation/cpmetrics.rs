//! The control plane's own view, from its admin server's `/metrics`: how many proxies it
//! counts as subscribed, how many view parts it pushed and how many acks it recorded. The
//! benchmark compares these counters with what its simulated proxies saw.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The counters the benchmark cross-checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Counters {
    pub subscribers: f64,
    pub pushes_inbound: f64,
    pub pushes_outbound: f64,
    pub acks_applied: f64,
    pub acks_rejected: f64,
}

impl Counters {
    /// `self - before`, for the counters (the gauge is kept as is).
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            subscribers: self.subscribers,
            pushes_inbound: self.pushes_inbound - before.pushes_inbound,
            pushes_outbound: self.pushes_outbound - before.pushes_outbound,
            acks_applied: self.acks_applied - before.acks_applied,
            acks_rejected: self.acks_rejected - before.acks_rejected,
        }
    }
}

/// Scrapes `/metrics` once.
pub async fn scrape(admin: SocketAddr) -> anyhow::Result<Counters> {
    let body = http_get(admin, "/metrics").await?;
    let series = parse(&body);
    let get = |key: &str| series.get(key).copied().unwrap_or(0.0);
    Ok(Counters {
        subscribers: get("weft_cp_subscribers"),
        pushes_inbound: get(r#"weft_cp_pushes_total{part="inbound"}"#),
        pushes_outbound: get(r#"weft_cp_pushes_total{part="outbound"}"#),
        acks_applied: get(r#"weft_cp_acks_total{result="applied"}"#),
        acks_rejected: get(r#"weft_cp_acks_total{result="rejected"}"#),
    })
}

/// Whether `/metrics` names the series as documented (`weft_cp_subscribers`, not
/// `_weft_cp_subscribers`).
pub async fn names_as_documented(admin: SocketAddr) -> anyhow::Result<bool> {
    let body = http_get(admin, "/metrics").await?;
    Ok(body.lines().any(|l| l.starts_with("weft_cp_subscribers ")))
}

/// Prometheus / OpenMetrics text: `series value` per line, comments skipped. A leading `_`
/// is dropped: control planes built with `Registry::with_prefix("")` export `_weft_cp_*`
/// instead of the documented `weft_cp_*` (reported; accepted either way here).
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let series = series.strip_prefix('_').unwrap_or(series);
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// `GET path` on a fresh connection (HTTP/1.1, `connection: close`), the body on 200.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(String::from_utf8_lossy(&raw).into_owned())
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| anyhow::anyhow!("GET {path}: no answer within 5 s"))??;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("GET {path}: malformed response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}
