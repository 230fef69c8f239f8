//! The manifest directory the control plane serves for the load-balancing benchmark:
//!
//! - namespace `bench` and the client pod `web-0` (service account `web`, meshed), whose
//!   proxy is the one under test;
//! - Service `orders` (cluster IP [`CLUSTER_IP`], port 80 named `http`) and one
//!   EndpointSlice with its three endpoints `127.0.0.{1,2,3}` at the endpoints' port. The
//!   endpoints name no pod, so they are plain (no mTLS), like pods outside the mesh;
//! - TrafficPolicy `orders` with the `loadBalancer` a run compares, rewritten between runs
//!   (written next to the watched directory, then renamed into it).
//!
//! Plus the control plane's token file, which lets `web-0`'s proxy prove its service account
//! in local mode, and the proxy's copy of the token.

use std::path::{Path, PathBuf};

use serde::Serialize;

pub const NAMESPACE: &str = "bench";
pub const TRUST_DOMAIN: &str = "cluster.local";
pub const CLIENT_POD: &str = "web-0";
pub const CLIENT_ACCOUNT: &str = "web";
pub const CLUSTER_IP: &str = "10.96.0.10";
/// The Service's address as the proxy's static listener targets it.
pub const CLUSTER_IP_PORT: &str = "10.96.0.10:80";
const TOKEN: &str = "weft-balance-bench-token";

/// The balancer a run uses (`TrafficPolicy.spec.loadBalancer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Balancer {
    #[serde(rename = "p2c-ewma")]
    P2cEwma,
    #[serde(rename = "round-robin")]
    RoundRobin,
}

impl Balancer {
    /// The value in the manifest.
    fn manifest(self) -> &'static str {
        match self {
            Balancer::P2cEwma => "P2CEWMA",
            Balancer::RoundRobin => "RoundRobin",
        }
    }

    /// The wire value (`weft.discovery.v1.LoadBalancer`) the proxy shows on `/config`.
    pub fn proto_value(self) -> i64 {
        match self {
            Balancer::P2cEwma => 1,
            Balancer::RoundRobin => 2,
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Balancer::P2cEwma => "p2c-ewma",
            Balancer::RoundRobin => "round-robin",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Balancer::P2cEwma => "P2C-EWMA",
            Balancer::RoundRobin => "round robin",
        }
    }

    pub fn parse(text: &str) -> Result<Balancer, String> {
        match text.to_ascii_lowercase().as_str() {
            "p2c" | "p2c-ewma" | "p2cewma" => Ok(Balancer::P2cEwma),
            "rr" | "round-robin" | "roundrobin" => Ok(Balancer::RoundRobin),
            other => Err(format!("{other:?}: p2c-ewma or round-robin")),
        }
    }
}

/// Where things were written.
pub struct Layout {
    pub manifests: PathBuf,
    staging: PathBuf,
    pub tokens: PathBuf,
    pub proxy_token: PathBuf,
}

/// Writes everything under `root`, with `balancer` in the TrafficPolicy.
pub fn write(root: &Path, endpoint_port: u16, balancer: Balancer) -> std::io::Result<Layout> {
    let layout = Layout {
        manifests: root.join("manifests"),
        staging: root.join("staging"),
        tokens: root.join("tokens.yaml"),
        proxy_token: root.join("proxy-token"),
    };
    std::fs::create_dir_all(&layout.manifests)?;
    std::fs::create_dir_all(&layout.staging)?;
    std::fs::write(
        &layout.tokens,
        format!(
            "tokens:\n  - token: {TOKEN}\n    namespace: {NAMESPACE}\n    serviceAccount: {CLIENT_ACCOUNT}\n"
        ),
    )?;
    std::fs::write(&layout.proxy_token, TOKEN)?;
    std::fs::write(layout.manifests.join("mesh.yaml"), mesh_yaml(endpoint_port))?;
    std::fs::write(
        layout.manifests.join("traffic-policy.yaml"),
        policy_yaml(balancer),
    )?;
    Ok(layout)
}

/// Replaces the TrafficPolicy (one rename into the watched directory).
pub fn set_balancer(layout: &Layout, balancer: Balancer) -> std::io::Result<()> {
    let staged = layout.staging.join("traffic-policy.yaml");
    std::fs::write(&staged, policy_yaml(balancer))?;
    std::fs::rename(&staged, layout.manifests.join("traffic-policy.yaml"))
}

fn mesh_yaml(port: u16) -> String {
    let endpoints: String = (1..=3)
        .map(|last| format!("- addresses: [127.0.0.{last}]\n  conditions: {{ready: true}}\n"))
        .collect();
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: {CLIENT_POD}
  namespace: {NAMESPACE}
  labels: {{app: web}}
  annotations: {{weft.dev/status: '{{"version":"bench"}}'}}
spec:
  serviceAccountName: {CLIENT_ACCOUNT}
  containers: [{{name: app, image: app}}]
---
apiVersion: v1
kind: Service
metadata: {{name: orders, namespace: {NAMESPACE}}}
spec:
  clusterIP: {CLUSTER_IP}
  selector: {{app: orders}}
  ports: [{{name: http, port: 80, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: orders-slice
  namespace: {NAMESPACE}
  labels: {{kubernetes.io/service-name: orders}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints:
{endpoints}"#
    )
}

fn policy_yaml(balancer: Balancer) -> String {
    format!(
        r#"apiVersion: policy.weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: orders, namespace: {NAMESPACE}}}
spec:
  targetRef: {{group: "", kind: Service, name: orders}}
  loadBalancer: {}
"#,
        balancer.manifest()
    )
}
