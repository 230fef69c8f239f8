//! Where a change spends its time inside the control plane, from its own log: it runs with
//! `--log-format json` and debug logging for the two steps of a change, so each change can
//! be split into
//!
//! * rename → `manifest directory loaded` (the file watcher's 100 ms debounce, then the
//!   re-read of the directory), and
//! * → `views computed` (the index recomputing every view; its `elapsed_ms` is the compute
//!   alone),
//!
//! and what remains until the last proxy has the update is the fan-out (waking every
//! subscription, encoding, TLS, the proxies' acks).

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The `--log` filter that turns on the lines this module reads.
pub fn filter(base: &str) -> String {
    format!("{base},weft_control_plane::index=debug,weft_control_plane::sources::manifests=debug")
}

pub const LOADED: &str = "manifest directory loaded";
pub const COMPUTED: &str = "views computed";

/// Reads the lines appended to the log since the last call.
pub struct Cursor {
    path: PathBuf,
    offset: u64,
}

#[derive(Debug)]
pub struct Line {
    pub at: SystemTime,
    pub message: String,
    /// The `elapsed_ms` field, when the line has one.
    pub elapsed_ms: Option<f64>,
}

impl Cursor {
    pub fn new(path: PathBuf) -> Self {
        Cursor { path, offset: 0 }
    }

    /// Every complete JSON line appended since the last call that names one of `messages`.
    pub fn read_new(&mut self, messages: &[&str]) -> Vec<Line> {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut text = String::new();
        if file.read_to_string(&mut text).is_err() {
            return Vec::new();
        }
        // Only whole lines; a partial last line is read next time.
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        self.offset += complete as u64;
        text[..complete]
            .lines()
            .filter(|l| messages.iter().any(|m| l.contains(m)))
            .filter_map(parse_line)
            .collect()
    }
}

fn parse_line(line: &str) -> Option<Line> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields")?;
    Some(Line {
        at: parse_rfc3339(value.get("timestamp")?.as_str()?)?,
        message: fields.get("message")?.as_str()?.to_owned(),
        elapsed_ms: fields.get("elapsed_ms").and_then(|v| v.as_f64()),
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (what tracing-subscriber writes) as a `SystemTime`.
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let nanos: u32 = format!("{frac:0<9}")[..9].parse().ok()?;
    // Days from civil (H. Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days).ok()? * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}
