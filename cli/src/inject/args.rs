//! `weftctl inject`'s flags: the injector's [`InjectConfig`], each defaulting to the
//! injector's own default, so offline and webhook injection agree unless told otherwise.

use anyhow::bail;
use clap::{Args, ValueEnum};
use weft_injector::config as defaults;
use weft_injector::{InjectConfig, SidecarMode};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Sidecar {
    /// An init container with `restartPolicy: Always` (Kubernetes 1.29 and newer).
    Native,
    /// The first regular container, holding the app until ready (older clusters).
    Classic,
}

/// Spelt as in Kubernetes.
#[derive(Clone, Copy, Debug, ValueEnum)]
#[value(rename_all = "PascalCase")]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

#[derive(Args, Debug, Clone)]
pub struct InjectArgs {
    /// Image of the proxy and its init container.
    #[arg(long, value_name = "IMAGE", default_value = defaults::DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,
    /// `imagePullPolicy` of the added containers (default: Kubernetes' own).
    #[arg(long, value_enum, value_name = "POLICY")]
    pub image_pull_policy: Option<PullPolicy>,
    /// How to add the proxy. The webhook picks from the API server's version; offline there
    /// is none, so say `classic` for clusters older than 1.29.
    #[arg(long, value_enum, default_value = "native")]
    pub sidecar: Sidecar,
    /// The control plane's gRPC address, as the proxy dials it.
    #[arg(long, value_name = "HOST:PORT", default_value = defaults::DEFAULT_CONTROL_PLANE_ADDR)]
    pub control_plane_addr: String,
    /// The SPIFFE ID the control plane must present (default: the proxy's,
    /// spiffe://<trust-domain>/ns/weft-system/sa/weft-control-plane).
    #[arg(long, value_name = "SPIFFE_ID")]
    pub control_plane_identity: Option<String>,
    /// The mesh's SPIFFE trust domain.
    #[arg(long, value_name = "DOMAIN", default_value = defaults::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Audience of the projected service-account token the proxy proves itself with.
    #[arg(long, value_name = "AUDIENCE", default_value = defaults::DEFAULT_TOKEN_AUDIENCE)]
    pub token_audience: String,
    /// Lifetime of that token, in seconds (at least 600).
    #[arg(long, value_name = "SECONDS", default_value_t = defaults::DEFAULT_TOKEN_EXPIRATION_SECONDS)]
    pub token_expiration_seconds: i64,
    /// ConfigMap (in the pod's namespace) holding the mesh's trust anchors.
    #[arg(long, value_name = "NAME", default_value = defaults::DEFAULT_TRUST_ANCHORS_CONFIG_MAP)]
    pub trust_anchors_config_map: String,
    /// Key of the trust anchors in that ConfigMap.
    #[arg(long, value_name = "KEY", default_value = defaults::DEFAULT_TRUST_ANCHORS_KEY)]
    pub trust_anchors_key: String,
    /// The proxy's log filter (WEFT_LOG; default: the proxy's own, `info`).
    #[arg(long, value_name = "FILTER")]
    pub proxy_log: Option<String>,
    /// The proxy's CPU request.
    #[arg(long, value_name = "QUANTITY", default_value = defaults::DEFAULT_PROXY_CPU_REQUEST)]
    pub proxy_cpu_request: String,
    /// The proxy's memory request.
    #[arg(long, value_name = "QUANTITY", default_value = defaults::DEFAULT_PROXY_MEMORY_REQUEST)]
    pub proxy_memory_request: String,
    /// The proxy's CPU limit (default: none — throttling a proxy turns into tail latency).
    #[arg(long, value_name = "QUANTITY")]
    pub proxy_cpu_limit: Option<String>,
    /// The proxy's memory limit.
    #[arg(long, value_name = "QUANTITY", default_value = defaults::DEFAULT_PROXY_MEMORY_LIMIT)]
    pub proxy_memory_limit: String,
}

impl InjectArgs {
    pub fn config(&self) -> anyhow::Result<InjectConfig> {
        if self.token_expiration_seconds < 600 {
            bail!(
                "--token-expiration-seconds must be at least 600 (Kubernetes' minimum), got {}",
                self.token_expiration_seconds
            );
        }
        for (flag, value) in [
            ("--proxy-image", &self.proxy_image),
            ("--control-plane-addr", &self.control_plane_addr),
            ("--trust-domain", &self.trust_domain),
            ("--token-audience", &self.token_audience),
            ("--trust-anchors-config-map", &self.trust_anchors_config_map),
            ("--trust-anchors-key", &self.trust_anchors_key),
        ] {
            if value.trim().is_empty() {
                bail!("{flag} must not be empty");
            }
        }
        let mut requests = vec![
            ("cpu", self.proxy_cpu_request.as_str()),
            ("memory", self.proxy_memory_request.as_str()),
        ];
        requests.retain(|(_, v)| !v.is_empty());
        let mut limits = vec![("memory", self.proxy_memory_limit.as_str())];
        if let Some(cpu) = &self.proxy_cpu_limit {
            limits.push(("cpu", cpu.as_str()));
        }
        limits.retain(|(_, v)| !v.is_empty());
        for (flag, quantity) in [
            ("--proxy-cpu-request", Some(&self.proxy_cpu_request)),
            ("--proxy-memory-request", Some(&self.proxy_memory_request)),
            ("--proxy-cpu-limit", self.proxy_cpu_limit.as_ref()),
            ("--proxy-memory-limit", Some(&self.proxy_memory_limit)),
        ] {
            // The injector's own check, so a flag the webhook would refuse fails here too.
            match quantity {
                Some(q) if !q.is_empty() => {
                    defaults::check_quantity(q).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?
                }
                _ => {}
            }
        }
        Ok(InjectConfig {
            proxy_image: self.proxy_image.clone(),
            image_pull_policy: self.image_pull_policy.map(|p| {
                match p {
                    PullPolicy::Always => "Always",
                    PullPolicy::IfNotPresent => "IfNotPresent",
                    PullPolicy::Never => "Never",
                }
                .to_owned()
            }),
            proxy_resources: defaults::resources(&requests, &limits),
            sidecar: match self.sidecar {
                Sidecar::Native => SidecarMode::Native,
                Sidecar::Classic => SidecarMode::Classic,
            },
            control_plane_addr: self.control_plane_addr.clone(),
            control_plane_identity: self.control_plane_identity.clone(),
            trust_domain: self.trust_domain.clone(),
            token_audience: self.token_audience.clone(),
            token_expiration_seconds: self.token_expiration_seconds,
            trust_anchors: weft_injector::TrustAnchors {
                config_map: self.trust_anchors_config_map.clone(),
                key: self.trust_anchors_key.clone(),
            },
            proxy_log: self.proxy_log.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..InjectConfig::default()
        })
    }
}
