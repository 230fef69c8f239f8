//! The access log: one JSON line per proxied request, opt-in with the config file's
//! `accessLog` (or `--access-log` when the file has none).
//!
//! The request path only fills a [`Record`] and offers it to a bounded queue; one task
//! serializes and writes the lines, a batch at a time. When the queue is full (the disk or
//! the terminal cannot keep up) the record is dropped and counted in
//! `weft_access_log_dropped_total{reason="queue_full"}`, so a slow log never slows requests.
//! Files are opened for appending (so `copytruncate` rotation works) and reopened when the
//! config names another destination.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize, Serializer};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{Config, ConfigStore};

/// Records waiting to be written; beyond this they are dropped and counted.
pub const QUEUE_SIZE: usize = 4096;
/// Records serialized into one write.
const BATCH: usize = 256;

/// The config file's `accessLog`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogConfig {
    #[serde(default)]
    pub format: Format,
    pub path: Destination,
}

/// How lines are written. JSON only, for now: what log pipelines parse without a grammar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
}

/// Where lines go: `stdout` (the container log, apart from the proxy's own logs on stderr)
/// or a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    File(PathBuf),
}

impl FromStr for Destination {
    type Err = String;

    fn from_str(text: &str) -> Result<Destination, String> {
        match text {
            "" => Err("the access log path is empty (use stdout or a file path)".into()),
            "stdout" | "-" => Ok(Destination::Stdout),
            path => Ok(Destination::File(PathBuf::from(path))),
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Stdout => f.write_str("stdout"),
            Destination::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl Serialize for Destination {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Destination {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Destination, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One request. `None` fields are written as `null`, so every line has every key.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// When the request's head arrived.
    #[serde(serialize_with = "rfc3339_millis")]
    pub timestamp: SystemTime,
    pub direction: &'static str,
    pub method: String,
    pub authority: Option<String>,
    /// Without the query string, which may carry secrets.
    pub path: String,
    pub protocol: &'static str,
    pub status: u16,
    /// From the request's head to the end of the response body.
    #[serde(serialize_with = "millis")]
    pub duration_ms: Duration,
    /// The request's declared `Content-Length` (the body is streamed, not counted).
    pub bytes_in: Option<u64>,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// The address the request was last sent to.
    pub upstream: Option<String>,
    /// Inbound: the caller's SPIFFE ID (mesh mTLS).
    pub client_id: Option<String>,
    /// Outbound: the SPIFFE ID the upstream had to present.
    pub server_id: Option<String>,
    /// The meshed Service port (`namespace/name:port`).
    pub target: Option<String>,
    /// The HTTPRoute (`namespace/name`) whose rule matched.
    pub route: Option<String>,
    /// The authorization policy that denied the request.
    pub authz_policy: Option<String>,
    pub retries: u32,
    /// The `weft-proxy-error` code of a response the proxy made itself.
    pub proxy_error: Option<String>,
    pub trace_id: Option<String>,
}

fn rfc3339_millis<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    // Microsecond precision: a mesh hop is well under a millisecond.
    s.serialize_f64(d.as_micros() as f64 / 1000.0)
}

enum Msg {
    Record(Box<Record>),
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

/// The writer's handle, shared by every connection.
#[derive(Clone)]
pub struct AccessLog {
    /// `--access-log`: the destination when the config file has no `accessLog`.
    default: Option<Destination>,
    queue: mpsc::Sender<Msg>,
    dropped_full: Counter,
}

impl AccessLog {
    /// Starts the writer task. It follows the config: lines go where the current snapshot
    /// (or the flag) says, and nowhere while neither enables the log.
    pub fn start(
        default: Option<Destination>,
        config: &Arc<ConfigStore>,
        registry: &mut Registry,
    ) -> AccessLog {
        let written = Counter::default();
        let dropped: Family<DropLabels, Counter> = Family::default();
        let r = registry.sub_registry_with_prefix("weft_access_log");
        r.register("lines", "Access log lines written", written.clone());
        r.register(
            "dropped",
            "Access log records not written, by reason (queue_full, write_failed)",
            dropped.clone(),
        );
        let dropped_full = dropped
            .get_or_create(&DropLabels {
                reason: "queue_full",
            })
            .clone();
        let write_failed = dropped
            .get_or_create(&DropLabels {
                reason: "write_failed",
            })
            .clone();
        let (queue, rx) = mpsc::channel(QUEUE_SIZE);
        let writer = Writer {
            default: default.clone(),
            current: None,
            written,
            write_failed,
            failing: false,
        };
        tokio::spawn(writer.run(rx, config.subscribe()));
        AccessLog {
            default,
            queue,
            dropped_full,
        }
    }

    /// Whether connections served with this snapshot log their requests.
    pub fn enabled(&self, config: &Config) -> bool {
        config.access_log.is_some() || self.default.is_some()
    }

    /// Queues a record; never waits. A full queue drops it and counts the drop.
    pub fn submit(&self, record: Record) {
        if self.queue.try_send(Msg::Record(Box::new(record))).is_err() {
            self.dropped_full.inc();
        }
    }

    /// Writes out what is queued, waiting at most `limit` (at shutdown).
    pub async fn flush(&self, limit: Duration) {
        let (done, wait) = oneshot::channel();
        let flushed = async {
            if self.queue.send(Msg::Flush(done)).await.is_ok() {
                let _ = wait.await;
            }
        };
        let _ = tokio::time::timeout(limit, flushed).await;
    }
}

type Sink = Box<dyn AsyncWrite + Send + Unpin>;

struct Writer {
    default: Option<Destination>,
    /// The open destination, `None` while the log is off (or its file cannot be opened).
    current: Option<(Destination, Sink)>,
    written: Counter,
    write_failed: Counter,
    /// Logged once per failure, not once per line.
    failing: bool,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, mut config: watch::Receiver<Arc<Config>>) {
        let mut want = self.wanted(&config.borrow_and_update());
        let mut batch = Vec::with_capacity(BATCH);
        let mut buf = Vec::new();
        let mut config_open = true;
        loop {
            tokio::select! {
                changed = config.changed(), if config_open => {
                    match changed {
                        Ok(()) => want = self.wanted(&config.borrow_and_update()),
                        Err(_) => config_open = false,
                    }
                }
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    self.write(&want, &mut batch, &mut buf).await;
                }
            }
        }
    }

    fn wanted(&self, config: &Config) -> Option<Destination> {
        config
            .access_log
            .as_ref()
            .map(|c| c.path.clone())
            .or_else(|| self.default.clone())
    }

    async fn write(&mut self, want: &Option<Destination>, batch: &mut Vec<Msg>, buf: &mut Vec<u8>) {
        buf.clear();
        let mut lines = 0u64;
        let mut flushes = Vec::new();
        for msg in batch.drain(..) {
            match msg {
                Msg::Record(record) => {
                    // A Record always serializes: strings, numbers and nulls.
                    if serde_json::to_writer(&mut *buf, &record).is_ok() {
                        buf.push(b'\n');
                        lines += 1;
                    }
                }
                Msg::Flush(done) => flushes.push(done),
            }
        }
        if lines > 0 {
            match self.sink(want).await {
                Some(sink) => {
                    let result = match sink.write_all(buf).await {
                        Ok(()) => sink.flush().await,
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(()) => {
                            self.written.inc_by(lines);
                            self.failing = false;
                        }
                        Err(error) => {
                            self.fail(lines, &error);
                            // Reopened for the next batch.
                            self.current = None;
                        }
                    }
                }
                // Off since the record was made: a config change disabled the log.
                None if want.is_none() => {}
                None => {
                    self.write_failed.inc_by(lines);
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }

    /// The open sink for `want`, opening (or reopening) it when the destination changed.
    async fn sink(&mut self, want: &Option<Destination>) -> Option<&mut Sink> {
        let Some(want) = want else {
            self.current = None;
            return None;
        };
        if self.current.as_ref().map(|(d, _)| d) != Some(want) {
            self.current = None;
            let sink: Sink = match want {
                Destination::Stdout => match stdout() {
                    Ok(file) => Box::new(file),
                    Err(error) => {
                        self.fail(0, &error);
                        return None;
                    }
                },
                Destination::File(path) => {
                    let opened = tokio::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .await;
                    match opened {
                        Ok(file) => Box::new(file),
                        Err(error) => {
                            if !self.failing {
                                tracing::warn!(path = %path.display(), %error, "cannot open the access log");
                                self.failing = true;
                            }
                            return None;
                        }
                    }
                }
            };
            self.current = Some((want.clone(), sink));
        }
        self.current.as_mut().map(|(_, sink)| sink)
    }

    fn fail(&mut self, lines: u64, error: &std::io::Error) {
        self.write_failed.inc_by(lines);
        if !self.failing {
            tracing::warn!(%error, "cannot write the access log; dropping lines");
            self.failing = true;
        }
    }
}

/// Standard output as a file written on the blocking pool: a full pipe (a slow log
/// collector) then stalls this task, never the runtime's worker.
fn stdout() -> std::io::Result<tokio::fs::File> {
    use std::os::fd::AsFd;
    let fd = std::io::stdout().as_fd().try_clone_to_owned()?;
    Ok(tokio::fs::File::from_std(std::fs::File::from(fd)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_file_turns_it_on() {
        let parse = |text: &str| crate::config::parse(std::path::Path::new("t.yaml"), text);
        let on = parse("accessLog: {format: json, path: /var/log/weft/access.log}").unwrap();
        assert_eq!(
            on.access_log,
            Some(AccessLogConfig {
                format: Format::Json,
                path: Destination::File("/var/log/weft/access.log".into()),
            })
        );
        let stdout = parse("accessLog: {path: stdout}").unwrap();
        assert_eq!(stdout.access_log.unwrap().path, Destination::Stdout);
        assert_eq!(parse("").unwrap().access_log, None, "off by default");
        for bad in [
            "accessLog: {format: text, path: stdout}",
            "accessLog: {path: stdout, color: true}",
            "accessLog: {format: json}",
            "accessLog: {path: \"\"}",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let (queue, _rx) = mpsc::channel(1);
        let log = AccessLog {
            default: None,
            queue,
            dropped_full: Counter::default(),
        };
        let record = || Record {
            timestamp: SystemTime::now(),
            direction: "outbound",
            method: "GET".into(),
            authority: None,
            path: "/".into(),
            protocol: "HTTP/1.1",
            status: 200,
            duration_ms: Duration::ZERO,
            bytes_in: None,
            bytes_out: 0,
            upstream: None,
            client_id: None,
            server_id: None,
            target: None,
            route: None,
            authz_policy: None,
            retries: 0,
            proxy_error: None,
            trace_id: None,
        };
        log.submit(record());
        log.submit(record());
        assert_eq!(log.dropped_full.get(), 1);
    }

    #[test]
    fn destinations_parse_and_print() {
        assert_eq!("stdout".parse(), Ok(Destination::Stdout));
        assert_eq!(
            "/var/log/weft.log".parse(),
            Ok(Destination::File("/var/log/weft.log".into()))
        );
        assert!("".parse::<Destination>().is_err());
        assert_eq!(Destination::Stdout.to_string(), "stdout");
    }

    #[test]
    fn a_record_is_one_json_object_with_every_key() {
        let record = Record {
            timestamp: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            direction: "inbound",
            method: "GET".into(),
            authority: Some("orders:8080".into()),
            path: "/a\"b".into(),
            protocol: "HTTP/1.1",
            status: 200,
            duration_ms: Duration::from_micros(1500),
            bytes_in: None,
            bytes_out: 12,
            upstream: Some("127.0.0.1:8080".into()),
            client_id: None,
            server_id: None,
            target: None,
            route: None,
            authz_policy: None,
            retries: 0,
            proxy_error: None,
            trace_id: None,
        };
        let line = serde_json::to_string(&record).unwrap();
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(json["duration_ms"], 1.5);
        assert_eq!(json["path"], "/a\"b");
        assert!(json["client_id"].is_null());
        assert_eq!(json.as_object().unwrap().len(), 19, "{line}");
    }
}
