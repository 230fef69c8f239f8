//! The annotations (and the namespace label) the injector reads and writes.

/// Namespace label selecting every pod in the namespace (`weft.dev/inject=enabled`); matched by
/// the webhook's `namespaceSelector`, so a review reaching the webhook is for a selected
/// namespace. On a pod, the annotation of the same name: `enabled` injects the pod even where
/// its namespace is not selected, `disabled` opts it out.
pub const INJECT: &str = "weft.dev/inject";
/// Value of [`INJECT`] that asks for injection.
pub const ENABLED: &str = "enabled";
/// Value of [`INJECT`] that opts out.
pub const DISABLED: &str = "disabled";

/// Written by the injector: JSON recording what was injected and by which version
/// ([`crate::InjectionStatus`]). Its presence means "already injected".
pub const STATUS: &str = "weft.dev/status";

/// Inbound ports that reach the app directly (comma-separated), passed to `weft-proxy init
/// --skip-inbound-ports`.
pub const SKIP_INBOUND_PORTS: &str = "weft.dev/skip-inbound-ports";
/// Outbound destination ports that bypass the proxy (comma-separated), `--skip-outbound-ports`.
pub const SKIP_OUTBOUND_PORTS: &str = "weft.dev/skip-outbound-ports";
/// Outbound destination CIDRs that bypass the proxy (comma-separated), `--skip-outbound-cidrs`.
pub const SKIP_OUTBOUND_CIDRS: &str = "weft.dev/skip-outbound-cidrs";

/// Added for Prometheus' conventional pod discovery: scrape the proxy's admin port.
pub const PROMETHEUS_SCRAPE: &str = "prometheus.io/scrape";
pub const PROMETHEUS_PORT: &str = "prometheus.io/port";
pub const PROMETHEUS_PATH: &str = "prometheus.io/path";

/// Every annotation the injector reads from a pod.
pub const READ: [&str; 5] = [
    INJECT,
    STATUS,
    SKIP_INBOUND_PORTS,
    SKIP_OUTBOUND_PORTS,
    SKIP_OUTBOUND_CIDRS,
];
