//! What the injector adds, as settings: [`InjectConfig`] and its documented defaults.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The injector's version, recorded in the `weft.dev/status` annotation and used as the
/// default proxy image tag.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The proxy image (it also runs `weft-proxy init`): `weft-proxy` must be on its `PATH`.
pub const DEFAULT_PROXY_IMAGE: &str =
    concat!("ghcr.io/weft-dev/weft-proxy:", env!("CARGO_PKG_VERSION"));
/// The control plane's gRPC address as `weftctl install` deploys it (Service
/// `weft-control-plane` in `weft-system`, port 15012).
pub const DEFAULT_CONTROL_PLANE_ADDR: &str = "weft-control-plane.weft-system.svc:15012";
/// The mesh's SPIFFE trust domain (the control plane's default too).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Audience of the projected service-account token the proxy presents to the control plane;
/// the control plane's TokenReview asks for the same (`weft_control_plane::auth::DEFAULT_AUDIENCE`).
pub const DEFAULT_TOKEN_AUDIENCE: &str = "weft.dev/identity";
/// Lifetime the kubelet gives the projected token (it rotates it at 80%); 600 is the minimum.
pub const DEFAULT_TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// ConfigMap (in the pod's namespace) holding the PEM roots the control plane's certificate
/// chains to, and the key inside it.
pub const DEFAULT_TRUST_ANCHORS_CONFIG_MAP: &str = "weft-trust-anchors";
pub const DEFAULT_TRUST_ANCHORS_KEY: &str = "ca.crt";
/// Proxy container requests: a sidecar shares its pod's node, so it asks for a little and
/// has no CPU limit (CFS throttling turns into tail latency); memory is capped.
pub const DEFAULT_PROXY_CPU_REQUEST: &str = "100m";
pub const DEFAULT_PROXY_MEMORY_REQUEST: &str = "64Mi";
pub const DEFAULT_PROXY_MEMORY_LIMIT: &str = "256Mi";
/// The init container runs `iptables-restore` twice and exits.
pub const DEFAULT_INIT_CPU_REQUEST: &str = "10m";
pub const DEFAULT_INIT_MEMORY_REQUEST: &str = "16Mi";
pub const DEFAULT_INIT_CPU_LIMIT: &str = "100m";
pub const DEFAULT_INIT_MEMORY_LIMIT: &str = "64Mi";

/// How the proxy is added to the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SidecarMode {
    /// Kubernetes ≥ 1.29: an init container with `restartPolicy: Always`, placed after
    /// `weft-init` and before the app's init containers. It starts before (and, with its
    /// startup probe on `/ready`, is ready before) everything else in the pod, stops after
    /// the app's containers, and doesn't keep a Job's pod running.
    Native,
    /// Older clusters: the first regular container, with a `postStart` hook
    /// (`weft-proxy wait-ready`) that holds the app's containers until the proxy is ready.
    Classic,
}

impl SidecarMode {
    /// The mode for an API server of this version: native from 1.29 on (sidecar containers
    /// are on by default from then).
    pub fn for_server_version(major: u32, minor: u32) -> SidecarMode {
        if (major, minor) >= (1, 29) {
            SidecarMode::Native
        } else {
            SidecarMode::Classic
        }
    }
}

impl std::fmt::Display for SidecarMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SidecarMode::Native => "native",
            SidecarMode::Classic => "classic",
        })
    }
}

/// Where the proxy finds the roots the control plane's certificate must chain to: a key of a
/// ConfigMap in the pod's namespace, mounted read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustAnchors {
    pub config_map: String,
    pub key: String,
}

impl Default for TrustAnchors {
    fn default() -> Self {
        TrustAnchors {
            config_map: DEFAULT_TRUST_ANCHORS_CONFIG_MAP.into(),
            key: DEFAULT_TRUST_ANCHORS_KEY.into(),
        }
    }
}

/// Everything [`crate::inject_pod_spec`] needs besides the pod. `Default` gives the
/// documented `DEFAULT_*` values and native sidecars.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectConfig {
    /// Image of the proxy and init containers.
    pub proxy_image: String,
    /// `imagePullPolicy` of both; `None` leaves Kubernetes' default.
    pub image_pull_policy: Option<String>,
    /// Resources of the proxy container.
    pub proxy_resources: ResourceRequirements,
    /// Resources of the init container.
    pub init_resources: ResourceRequirements,
    /// Native or classic sidecar (the webhook picks from the API server's version).
    pub sidecar: SidecarMode,
    /// `WEFT_CONTROL_PLANE_ADDR`: where the proxy gets its certificate and view.
    pub control_plane_addr: String,
    /// `WEFT_CONTROL_PLANE_IDENTITY`, when not the proxy's default
    /// (`spiffe://<trust-domain>/ns/weft-system/sa/weft-control-plane`).
    pub control_plane_identity: Option<String>,
    /// `WEFT_TRUST_DOMAIN`.
    pub trust_domain: String,
    /// Audience of the projected service-account token.
    pub token_audience: String,
    /// `expirationSeconds` of the projected token (at least 600).
    pub token_expiration_seconds: i64,
    /// The trust anchors ConfigMap.
    pub trust_anchors: TrustAnchors,
    /// `WEFT_LOG` for the proxy; `None` leaves the proxy's default (`info`).
    pub proxy_log: Option<String>,
    /// Recorded in `weft.dev/status` (the injector's or `weftctl`'s version).
    pub version: String,
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            proxy_image: DEFAULT_PROXY_IMAGE.into(),
            image_pull_policy: None,
            proxy_resources: resources(
                &[
                    ("cpu", DEFAULT_PROXY_CPU_REQUEST),
                    ("memory", DEFAULT_PROXY_MEMORY_REQUEST),
                ],
                &[("memory", DEFAULT_PROXY_MEMORY_LIMIT)],
            ),
            init_resources: resources(
                &[
                    ("cpu", DEFAULT_INIT_CPU_REQUEST),
                    ("memory", DEFAULT_INIT_MEMORY_REQUEST),
                ],
                &[
                    ("cpu", DEFAULT_INIT_CPU_LIMIT),
                    ("memory", DEFAULT_INIT_MEMORY_LIMIT),
                ],
            ),
            sidecar: SidecarMode::Native,
            control_plane_addr: DEFAULT_CONTROL_PLANE_ADDR.into(),
            control_plane_identity: None,
            trust_domain: DEFAULT_TRUST_DOMAIN.into(),
            token_audience: DEFAULT_TOKEN_AUDIENCE.into(),
            token_expiration_seconds: DEFAULT_TOKEN_EXPIRATION_SECONDS,
            trust_anchors: TrustAnchors::default(),
            proxy_log: None,
            version: VERSION.into(),
        }
    }
}

/// Builds `ResourceRequirements` from `(resource, quantity)` pairs, e.g.
/// `resources(&[("cpu", "100m")], &[("memory", "256Mi")])`. Empty slices leave the field unset.
pub fn resources(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> ResourceRequirements {
    let map = |pairs: &[(&str, &str)]| {
        (!pairs.is_empty()).then(|| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect::<BTreeMap<_, _>>()
        })
    };
    ResourceRequirements {
        requests: map(requests),
        limits: map(limits),
        ..Default::default()
    }
}

/// Checks a resource quantity (`100m`, `64Mi`, `1.5`, `2e3`) the way the API server will,
/// so a typo in a flag fails at start instead of failing every injected pod.
pub fn check_quantity(text: &str) -> Result<(), String> {
    let bad = || format!("invalid resource quantity {text:?} (e.g. 100m, 0.5, 64Mi, 1G)");
    let body = text.strip_prefix(['+', '-']).unwrap_or(text);
    let number_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(number_end);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    if digits == 0 || number.matches('.').count() > 1 {
        return Err(bad());
    }
    let exponent = suffix.strip_prefix(['e', 'E']).is_some_and(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    });
    let known = [
        "", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    if exponent || known.contains(&suffix) {
        Ok(())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in ["100m", "64Mi", "1", "0.5", "1.5Gi", "2e3", "1E-2", "+1k"] {
            assert!(check_quantity(ok).is_ok(), "{ok}");
        }
        for bad in ["", "m", "100mb", "1..2", "64MiB", "e3", "1e"] {
            assert!(check_quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_are_valid_quantities() {
        let config = InjectConfig::default();
        for r in [&config.proxy_resources, &config.init_resources] {
            for map in [&r.requests, &r.limits].into_iter().flatten() {
                for q in map.values() {
                    check_quantity(&q.0).unwrap();
                }
            }
        }
    }
}
