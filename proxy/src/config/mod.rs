//! Dynamic configuration: one immutable [`Config`] snapshot, swapped whole with `arc-swap`.
//! A connection loads the snapshot once when it starts and uses it to the end, so it never
//! sees half an update; new connections see the new snapshot.

mod file;
pub mod reload;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use weft_api::SpiffeId;

use crate::duration::serde_secs;

pub use file::{load_file, parse, ConfigError};
pub use reload::spawn_reloader;

/// Long enough for any client that speaks first to have sent its first bytes over a busy
/// network; short enough that a server-speaks-first protocol on an unlisted port only stalls
/// once per connection for a second.
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Inside a cluster a healthy endpoint accepts in milliseconds; a second means it is gone.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A client that needs more than 10 s to send request headers is broken or hostile.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP connections with no bytes either way for this long are closed (Envoy uses 1 h for
/// TCP; HTTP keep-alive connections are cheap to re-open, so they go sooner).
pub const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Opaque connections (databases, queues) idle for long stretches legitimately.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Request headers larger than this get 431, as Envoy's 60 KiB default does.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// hyper cannot buffer less than this.
const MIN_HEADER_BYTES: usize = 8 * 1024;

/// The protocol a listener or port speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Detect from the first bytes.
    #[default]
    Auto,
    Http1,
    Http2,
    Opaque,
}

/// A listener from the config file that forwards to a fixed target (local mode, benchmarks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StaticListener {
    /// Appears as the `target` metric label.
    pub name: String,
    pub bind: SocketAddr,
    pub target: SocketAddr,
    #[serde(default)]
    pub protocol: Protocol,
    /// When set, the target is a meshed workload: traffic to it is mutual TLS, and the target
    /// must present this SPIFFE ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<SpiffeId>,
}

/// Whether an inbound port accepts plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Mesh mTLS and plaintext are both accepted (plaintext is labelled `tls="false"`): for
    /// migrating workloads into the mesh.
    #[default]
    Permissive,
    /// Only mesh mTLS: plaintext connections are refused.
    Strict,
}

/// The inbound mTLS mode, mesh-wide default and per destination port.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct InboundMtls {
    pub default: MtlsMode,
    pub ports: std::collections::BTreeMap<u16, MtlsMode>,
}

impl InboundMtls {
    pub fn mode(&self, port: u16) -> MtlsMode {
        self.ports.get(&port).copied().unwrap_or(self.default)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    #[serde(with = "serde_secs")]
    pub detect_timeout: Duration,
    /// Destination ports that are never detected and always forwarded as opaque TCP
    /// (server-speaks-first protocols: MySQL 3306, SMTP 25, ...).
    pub skip_detect_ports: BTreeSet<u16>,
    #[serde(with = "serde_secs")]
    pub connect_timeout: Duration,
    #[serde(with = "serde_secs")]
    pub header_read_timeout: Duration,
    #[serde(with = "serde_secs")]
    pub http_idle_timeout: Duration,
    #[serde(with = "serde_secs")]
    pub tcp_idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub inbound_mtls: InboundMtls,
    pub listeners: Vec<StaticListener>,
    /// One JSON line per request ([`crate::access_log`]); off when absent, unless
    /// `--access-log` names a destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log: Option<crate::access_log::AccessLogConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            detect_timeout: DEFAULT_DETECT_TIMEOUT,
            // The usual server-speaks-first ports, as Linkerd and Istio skip them.
            skip_detect_ports: [25, 587, 3306, 4222, 5432, 6379, 11211, 27017].into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            http_idle_timeout: DEFAULT_HTTP_IDLE_TIMEOUT,
            tcp_idle_timeout: DEFAULT_TCP_IDLE_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            inbound_mtls: InboundMtls::default(),
            listeners: Vec::new(),
            access_log: None,
        }
    }
}

impl Config {
    /// Checks what serde cannot: positive timeouts, sane sizes, unique listeners.
    pub fn validate(&self) -> Result<(), String> {
        for (name, d) in [
            ("detectTimeout", self.detect_timeout),
            ("connectTimeout", self.connect_timeout),
            ("headerReadTimeout", self.header_read_timeout),
            ("httpIdleTimeout", self.http_idle_timeout),
            ("tcpIdleTimeout", self.tcp_idle_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{name} must be greater than zero"));
            }
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return Err(format!(
                "maxHeaderBytes is {}, the minimum is {MIN_HEADER_BYTES}",
                self.max_header_bytes
            ));
        }
        let mut names = BTreeSet::new();
        let mut binds = BTreeSet::new();
        for l in &self.listeners {
            if l.name.is_empty() || l.name.len() > 63 {
                return Err(format!(
                    "listener {:?}: name must be 1 to 63 characters",
                    l.name
                ));
            }
            if !names.insert(&l.name) {
                return Err(format!("listener name {:?} is used twice", l.name));
            }
            if !binds.insert(l.bind) {
                return Err(format!(
                    "listener {:?}: bind address {} is used twice",
                    l.name, l.bind
                ));
            }
            if l.bind == l.target {
                return Err(format!(
                    "listener {:?} targets its own address {}",
                    l.name, l.bind
                ));
            }
        }
        Ok(())
    }

    pub fn listener(&self, bind: SocketAddr) -> Option<&StaticListener> {
        self.listeners.iter().find(|l| l.bind == bind)
    }
}

/// The current snapshot plus a notification for tasks that react to changes (the static
/// listener supervisor). Readers on the hot path only ever call [`ConfigStore::load`].
pub struct ConfigStore {
    current: ArcSwap<Config>,
    changed: watch::Sender<Arc<Config>>,
}

impl ConfigStore {
    pub fn new(initial: Config) -> Arc<Self> {
        let initial = Arc::new(initial);
        Arc::new(ConfigStore {
            current: ArcSwap::new(initial.clone()),
            changed: watch::Sender::new(initial),
        })
    }

    pub fn load(&self) -> Arc<Config> {
        self.current.load_full()
    }

    pub fn store(&self, config: Config) {
        let config = Arc::new(config);
        self.current.store(config.clone());
        self.changed.send_replace(config);
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        self.changed.subscribe()
    }
}
