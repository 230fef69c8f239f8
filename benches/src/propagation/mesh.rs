//! The simulated cluster as a manifest directory: namespace `bench`, `pods` pods spread over
//! [`APPS`] apps (pod *i* is `app-<i % 100>` and runs as `sa-<i % 100>`), one Service with
//! one EndpointSlice per app (so every proxy's outbound view holds every pod once, as in a
//! real mesh), and the two AuthorizationPolicies the benchmark edits:
//!
//! * `app-7-callers` selects `app: app-7` only — a selective change reaches 1 % of the pods;
//! * `mesh-callers` has no selector — a mesh-wide change reaches every pod of the namespace.
//!
//! The opt-in endpoint change rewrites `services.yaml` with pod-0's endpoint flipped between
//! ready and not ready: the outbound view changes, for every proxy.
//!
//! Policies are replaced the way a GitOps checkout or `kubectl cp` does it: written to a
//! file outside the watched directory, then renamed over the old one (one inotify event).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub const NAMESPACE: &str = "bench";
pub const TRUST_DOMAIN: &str = "cluster.local";
/// Apps, Services and service accounts.
pub const APPS: usize = 100;
/// The app the selective policy selects.
pub const SELECTED_APP: usize = 7;
/// The largest mesh the address scheme (10.1.x.y) covers.
pub const MAX_PODS: usize = 60_000;

pub const SELECTIVE_POLICY: &str = "app-7-callers";
pub const MESH_POLICY: &str = "mesh-callers";

/// Which policy a change edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// `app-7-callers`: affects the pods of app-7 only.
    Selective,
    /// `mesh-callers`: affects every pod.
    MeshWide,
    /// pod-0's endpoint in svc-0 flips between ready and not ready: the outbound view, which
    /// every proxy holds, changes for every proxy.
    Endpoints,
}

impl Change {
    pub fn name(self) -> &'static str {
        match self {
            Change::Selective => "selective (app-7, 1 %)",
            Change::MeshWide => "mesh-wide (100 %)",
            Change::Endpoints => "endpoint ready flip (100 %)",
        }
    }

    /// Whether the change is a policy edit (inbound views only).
    pub fn is_policy(self) -> bool {
        !matches!(self, Change::Endpoints)
    }

    fn file(self) -> &'static str {
        match self {
            Change::Selective => "policy-app-7.yaml",
            Change::MeshWide => "policy-mesh.yaml",
            Change::Endpoints => "services.yaml",
        }
    }

    /// Whether the change reaches pod `i`.
    pub fn affects(self, pod: usize) -> bool {
        match self {
            Change::Selective => app_of(pod) == SELECTED_APP,
            Change::MeshWide | Change::Endpoints => true,
        }
    }
}

/// Whether pod-0's endpoint is ready in `round` of [`Change::Endpoints`] (ready at start).
pub fn endpoint_ready(round: u32) -> bool {
    round.is_multiple_of(2)
}

/// The Service and the workload whose endpoint [`Change::Endpoints`] flips.
pub const FLIPPED_SERVICE: &str = "svc-0";
pub const FLIPPED_WORKLOAD: &str = "bench/pod-0";

pub fn app_of(pod: usize) -> usize {
    pod % APPS
}

pub fn pod_name(pod: usize) -> String {
    format!("pod-{pod}")
}

pub fn service_account(pod: usize) -> String {
    format!("sa-{}", app_of(pod))
}

fn pod_ip(pod: usize) -> String {
    format!("10.1.{}.{}", pod / 250, pod % 250 + 1)
}

/// The principal a policy allows in `round`; the simulated proxies read the round back out
/// of their inbound view to check they got the new content, not just *an* update.
pub fn principal(change: Change, round: u32) -> String {
    let which = match change {
        Change::Selective => "sel",
        Change::MeshWide | Change::Endpoints => "mesh",
    };
    format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/caller-{which}-{round}")
}

/// The round encoded in a principal written by [`principal`].
pub fn round_of(principal: &str) -> Option<u32> {
    principal.rsplit_once('-')?.1.parse().ok()
}

/// The manifest directory and a staging directory next to it (same file system).
pub struct Mesh {
    pub manifests: PathBuf,
    staging: PathBuf,
    pub pods: usize,
}

impl Mesh {
    /// Writes the cluster (`pods` pods) and both policies at round 0 under `root`.
    pub fn create(root: &Path, pods: usize) -> std::io::Result<Self> {
        assert!(pods <= MAX_PODS, "at most {MAX_PODS} pods");
        let manifests = root.join("manifests");
        let staging = root.join("staging");
        std::fs::create_dir_all(&manifests)?;
        std::fs::create_dir_all(&staging)?;
        std::fs::write(manifests.join("pods.yaml"), pods_yaml(pods))?;
        std::fs::write(manifests.join("services.yaml"), services_yaml(pods, 0))?;
        let mesh = Mesh {
            manifests,
            staging,
            pods,
        };
        for change in [Change::Selective, Change::MeshWide] {
            std::fs::write(mesh.manifests.join(change.file()), policy_yaml(change, 0))?;
        }
        Ok(mesh)
    }

    /// Stages the policy of `change` for `round`; [`Staged::commit`] renames it into place.
    pub fn stage(&self, change: Change, round: u32) -> std::io::Result<Staged> {
        let from = self.staging.join(change.file());
        let text = match change {
            Change::Endpoints => services_yaml(self.pods, round),
            _ => policy_yaml(change, round),
        };
        std::fs::write(&from, text)?;
        Ok(Staged {
            from,
            to: self.manifests.join(change.file()),
        })
    }
}

/// A policy written next to the watched directory, ready to be renamed into it.
pub struct Staged {
    from: PathBuf,
    to: PathBuf,
}

impl Staged {
    pub fn commit(self) -> std::io::Result<()> {
        std::fs::rename(&self.from, &self.to)
    }
}

fn pods_yaml(pods: usize) -> String {
    let mut out = String::with_capacity(pods * 400);
    let _ = writeln!(
        out,
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}"
    );
    for i in 0..pods {
        let _ = write!(
            out,
            r#"---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {NAMESPACE}
  labels: {{app: app-{app}}}
  annotations: {{weft.dev/status: '{{"version":"bench"}}'}}
spec:
  serviceAccountName: {sa}
  containers: [{{name: app, image: app, ports: [{{containerPort: 8080, name: http}}]}}]
"#,
            name = pod_name(i),
            app = app_of(i),
            sa = service_account(i),
        );
    }
    out
}

fn services_yaml(pods: usize, round: u32) -> String {
    let mut out = String::new();
    for app in 0..APPS {
        let _ = write!(
            out,
            r#"---
apiVersion: v1
kind: Service
metadata: {{name: svc-{app}, namespace: {NAMESPACE}}}
spec:
  clusterIP: 10.96.0.{ip}
  selector: {{app: app-{app}}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-{app}-slice
  namespace: {NAMESPACE}
  labels: {{kubernetes.io/service-name: svc-{app}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
"#,
            ip = app + 1,
        );
        let members: Vec<usize> = (app..pods).step_by(APPS).collect();
        if members.is_empty() {
            out.push_str("  []\n");
        }
        for pod in members {
            let ready = pod != 0 || endpoint_ready(round);
            let _ = write!(
                out,
                "- addresses: [{ip}]\n  conditions: {{ready: {ready}}}\n  targetRef: {{kind: Pod, name: {name}, namespace: {NAMESPACE}}}\n",
                ip = pod_ip(pod),
                name = pod_name(pod),
            );
        }
    }
    out
}

fn policy_yaml(change: Change, round: u32) -> String {
    let (name, selector) = match change {
        Change::Selective => (
            SELECTIVE_POLICY,
            format!("  selector: {{matchLabels: {{app: app-{SELECTED_APP}}}}}\n"),
        ),
        Change::MeshWide | Change::Endpoints => (MESH_POLICY, String::new()),
    };
    format!(
        r#"apiVersion: policy.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
{selector}  action: ALLOW
  rules:
  - from: [{{principals: ["{principal}"]}}]
"#,
        principal = principal(change, round),
    )
}
