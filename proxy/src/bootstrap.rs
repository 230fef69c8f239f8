//! Bootstrap settings: what the process needs before it can serve, read once from flags and
//! `WEFT_*` environment variables. Everything that may change while running lives in the
//! dynamic [`crate::config::Config`] snapshot instead.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::duration::parse_duration;
use crate::init::InitArgs;

/// The outbound listener. Loopback because iptables' OUTPUT `REDIRECT` delivers to 127.0.0.1
/// (and ::1), and nothing outside the pod should be able to use it as an open proxy.
pub const DEFAULT_OUTBOUND_ADDR: &str = "127.0.0.1:15001";
/// The inbound listener. Every address, because PREROUTING `REDIRECT` delivers to the primary
/// address of the interface the packet arrived on.
pub const DEFAULT_INBOUND_ADDR: &str = "0.0.0.0:15006";
/// Admin: probes from the kubelet and scrapes from Prometheus arrive from outside the pod.
pub const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:15020";
/// Kubernetes gives a pod 30 s (`terminationGracePeriodSeconds`) before SIGKILL; draining for
/// 25 s leaves the proxy time to flush and exit on its own.
pub const DEFAULT_SHUTDOWN_GRACE: &str = "25s";

#[derive(Debug, Parser)]
#[command(name = "weft-proxy", version, about = "Weft's sidecar proxy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve traffic (the default when no subcommand is given).
    Run,
    /// Write the iptables rules that redirect a pod's traffic through the proxy.
    Init(InitArgs),
}

/// How the proxy learns where a connection was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Connections are redirected by iptables; `SO_ORIGINAL_DST` gives the real target.
    Transparent,
    /// No iptables: the outbound listener is an HTTP forward proxy (`HTTP_PROXY`), the inbound
    /// listener forwards to `--inbound-app`, and the config file may add static listeners.
    Local,
}

#[derive(Debug, Clone, Args, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunArgs {
    /// How connections find their destination.
    #[arg(long, env = "WEFT_MODE", value_enum, default_value = "transparent")]
    pub mode: Mode,

    /// Outbound listener address(es), comma-separated (e.g. `127.0.0.1:15001,[::1]:15001`).
    #[arg(long, env = "WEFT_OUTBOUND_ADDR", value_delimiter = ',', default_value = DEFAULT_OUTBOUND_ADDR)]
    pub outbound_addr: Vec<SocketAddr>,

    /// Inbound listener address(es), comma-separated.
    #[arg(long, env = "WEFT_INBOUND_ADDR", value_delimiter = ',', default_value = DEFAULT_INBOUND_ADDR)]
    pub inbound_addr: Vec<SocketAddr>,

    /// Admin server address: /live, /ready, /metrics, /config, /shutdown, /log-level.
    #[arg(long, env = "WEFT_ADMIN_ADDR", default_value = DEFAULT_ADMIN_ADDR)]
    pub admin_addr: SocketAddr,

    /// Where inbound traffic goes in local mode (the app's address). In transparent mode it
    /// goes to 127.0.0.1 at the connection's original port.
    #[arg(long, env = "WEFT_INBOUND_APP")]
    pub inbound_app: Option<SocketAddr>,

    /// Dynamic configuration file (YAML), reloaded when it changes.
    #[arg(long, env = "WEFT_CONFIG")]
    pub config: Option<PathBuf>,

    /// How long in-flight work may take to finish after SIGTERM or POST /shutdown.
    #[arg(long, env = "WEFT_SHUTDOWN_GRACE", value_parser = parse_duration, default_value = DEFAULT_SHUTDOWN_GRACE)]
    #[serde(with = "crate::duration::serde_secs")]
    pub shutdown_grace: Duration,

    /// Worker threads. A sidecar shares its pod's CPU, so one is the default; 1 runs a
    /// single-threaded runtime, which is also the fastest per request.
    #[arg(long, env = "WEFT_WORKERS", default_value_t = 1)]
    pub workers: usize,

    /// Log filter, in `tracing` env-filter syntax (`info`, `weft_proxy=debug`).
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}
