//! The pure mutation: [`inject_pod_spec`] adds the init container, the proxy, their volumes
//! and the annotations to a pod's metadata and spec.

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    ExecAction, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, ObjectFieldSelector,
    PodSpec, Probe, ProjectedVolumeSource, SeccompProfile, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weft_proxy::init::{
    CidrList, PortList, ADMIN_PORT, DEFAULT_INBOUND_PORT, DEFAULT_OUTBOUND_PORT, DEFAULT_PROXY_UID,
};

use crate::annotations as ann;
use crate::config::{InjectConfig, SidecarMode};

/// Name of the init container running `weft-proxy init`.
pub const INIT_CONTAINER: &str = "weft-init";
/// Name of the proxy container.
pub const PROXY_CONTAINER: &str = "weft-proxy";
/// The proxy binary, looked up on the image's `PATH`.
pub const PROXY_BINARY: &str = "weft-proxy";
/// Volume holding the projected service-account token.
pub const TOKEN_VOLUME: &str = "weft-identity-token";
/// Where it is mounted: the directory of the proxy's default `WEFT_IDENTITY_TOKEN_FILE`.
pub const TOKEN_DIR: &str = "/var/run/secrets/weft.dev/identity";
/// The token file inside [`TOKEN_DIR`].
pub const TOKEN_FILE_NAME: &str = "token";
/// Volume holding the trust anchors ConfigMap.
pub const TRUST_ANCHORS_VOLUME: &str = "weft-trust-anchors";
/// Where it is mounted.
pub const TRUST_ANCHORS_DIR: &str = "/var/run/weft.dev/trust-anchors";
/// Name of the admin container port.
pub const ADMIN_PORT_NAME: &str = "weft-admin";
/// `kubectl logs`/`exec` pick this annotation's container by default; set to the app's first
/// container in classic mode, where the proxy comes first.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// Why [`inject_pod_spec`] leaves a pod alone. `Display` says why in a sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    /// The pod says `weft.dev/inject: disabled`.
    #[error("the pod opts out (annotation weft.dev/inject: disabled)")]
    Disabled,
    /// `hostNetwork: true`: the init step would rewrite the node's own iptables.
    #[error("the pod uses the host's network (hostNetwork: true); Weft meshes only pods with their own network namespace")]
    HostNetwork,
    /// The pod carries `weft.dev/status`, or a `weft-proxy`/`weft-init` container.
    #[error("the pod is already injected")]
    AlreadyInjected,
    /// Neither its namespace is selected nor the pod annotated `weft.dev/inject: enabled`.
    #[error("the pod's namespace is not labelled weft.dev/inject=enabled and the pod has no weft.dev/inject: enabled annotation")]
    NotSelected,
    /// A `weft.dev/*` annotation has a value the injector cannot use: the user's mistake,
    /// reported rather than silently leaving the pod unmeshed (see [`Skip::is_error`]).
    #[error("annotation {annotation}: {reason}")]
    InvalidAnnotation {
        annotation: &'static str,
        value: String,
        reason: String,
    },
}

impl Skip {
    /// A short snake_case label (metrics, logs).
    pub fn reason(&self) -> &'static str {
        match self {
            Skip::Disabled => "disabled",
            Skip::HostNetwork => "host_network",
            Skip::AlreadyInjected => "already_injected",
            Skip::NotSelected => "not_selected",
            Skip::InvalidAnnotation { .. } => "invalid_annotation",
        }
    }

    /// True when the pod asked for something that cannot be done (an invalid annotation):
    /// the webhook rejects such a pod with this message and `weftctl inject` fails; every
    /// other skip is a normal outcome.
    pub fn is_error(&self) -> bool {
        matches!(self, Skip::InvalidAnnotation { .. })
    }
}

/// The `weft.dev/status` annotation's JSON: what was injected, by which version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InjectionStatus {
    /// Version of the injector (or `weftctl`) that injected the pod.
    pub version: String,
    /// `native` or `classic`.
    pub sidecar: SidecarMode,
    /// The proxy image.
    pub image: String,
    /// Init containers added, in order.
    pub init_containers: Vec<String>,
    /// Regular containers added.
    pub containers: Vec<String>,
    /// Volumes added.
    pub volumes: Vec<String>,
    /// Annotations added (besides this one).
    pub annotations: Vec<String>,
}

/// The port and CIDR exclusions read from the pod's annotations, normalised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Exclusions {
    inbound_ports: Option<String>,
    outbound_ports: Option<String>,
    outbound_cidrs: Option<String>,
}

/// Meshes one pod: the same function for a Pod (the webhook) and for a workload's pod
/// template (`weftctl inject`).
///
/// `namespace_selected` says whether the pod's namespace carries `weft.dev/inject=enabled`
/// (the webhook passes `true`: its `namespaceSelector` only sends it such pods and those
/// annotated `enabled`). The pod is injected when it is selected (by its namespace or its own
/// `weft.dev/inject: enabled`), does not opt out (`weft.dev/inject: disabled` wins over a
/// selected namespace), is not already injected and does not use the host's network.
///
/// On success, returns the new metadata and spec: `weft-init` first among the init containers,
/// the proxy (a native sidecar right after it, or the first regular container), two volumes,
/// and the `weft.dev/status` and `prometheus.io/*` annotations. Nothing else changes.
pub fn inject_pod_spec(
    meta: &ObjectMeta,
    spec: &PodSpec,
    namespace_selected: bool,
    config: &InjectConfig,
) -> Result<(ObjectMeta, PodSpec), Skip> {
    let annotations = meta.annotations.as_ref();
    let get = |key: &str| annotations.and_then(|a| a.get(key)).map(|v| v.trim());

    let opt_in = match get(ann::INJECT) {
        None => None,
        Some(ann::ENABLED) => Some(true),
        Some(ann::DISABLED) => Some(false),
        Some(other) => {
            return Err(Skip::InvalidAnnotation {
                annotation: ann::INJECT,
                value: other.to_owned(),
                reason: format!("expected `enabled` or `disabled`, got `{other}`"),
            })
        }
    };
    if is_injected(meta, spec) {
        return Err(Skip::AlreadyInjected);
    }
    match opt_in {
        Some(false) => return Err(Skip::Disabled),
        None if !namespace_selected => return Err(Skip::NotSelected),
        _ => {}
    }
    if spec.host_network == Some(true) {
        return Err(Skip::HostNetwork);
    }
    let exclusions = Exclusions {
        inbound_ports: ports(get(ann::SKIP_INBOUND_PORTS), ann::SKIP_INBOUND_PORTS)?,
        outbound_ports: ports(get(ann::SKIP_OUTBOUND_PORTS), ann::SKIP_OUTBOUND_PORTS)?,
        outbound_cidrs: cidrs(get(ann::SKIP_OUTBOUND_CIDRS))?,
    };

    let mut spec = spec.clone();
    let init = init_container(&exclusions, config);
    let proxy = proxy_container(config);
    let app_containers: Vec<String> = spec.containers.iter().map(|c| c.name.clone()).collect();
    let mut init_containers = vec![init];
    let mut added_containers = Vec::new();
    match config.sidecar {
        SidecarMode::Native => init_containers.push(proxy),
        SidecarMode::Classic => {
            spec.containers.insert(0, proxy);
            added_containers.push(PROXY_CONTAINER.to_owned());
        }
    }
    let added_init: Vec<String> = init_containers.iter().map(|c| c.name.clone()).collect();
    init_containers.extend(spec.init_containers.take().unwrap_or_default());
    spec.init_containers = Some(init_containers);

    let new_volumes = volumes(config);
    let added_volumes: Vec<String> = new_volumes.iter().map(|v| v.name.clone()).collect();
    let mut volumes = spec.volumes.take().unwrap_or_default();
    volumes.retain(|v| !added_volumes.contains(&v.name));
    volumes.extend(new_volumes);
    spec.volumes = Some(volumes);

    let mut meta = meta.clone();
    let annotations = meta.annotations.get_or_insert_with(Default::default);
    let mut added_annotations = Vec::new();
    // An app that already advertises its own metrics keeps its scrape settings.
    if !annotations.keys().any(|k| k.starts_with("prometheus.io/")) {
        for (key, value) in [
            (ann::PROMETHEUS_SCRAPE, "true".to_owned()),
            (ann::PROMETHEUS_PORT, ADMIN_PORT.to_string()),
            (ann::PROMETHEUS_PATH, "/metrics".to_owned()),
        ] {
            annotations.insert(key.to_owned(), value);
            added_annotations.push(key.to_owned());
        }
    }
    if config.sidecar == SidecarMode::Classic
        && !annotations.contains_key(DEFAULT_CONTAINER_ANNOTATION)
    {
        if let Some(app) = app_containers.first() {
            annotations.insert(DEFAULT_CONTAINER_ANNOTATION.to_owned(), app.clone());
            added_annotations.push(DEFAULT_CONTAINER_ANNOTATION.to_owned());
        }
    }
    let status = InjectionStatus {
        version: config.version.clone(),
        sidecar: config.sidecar,
        image: config.proxy_image.clone(),
        init_containers: added_init,
        containers: added_containers,
        volumes: added_volumes,
        annotations: added_annotations,
    };
    let status = serde_json::to_string(&status).expect("the status serializes");
    annotations.insert(ann::STATUS.to_owned(), status);
    Ok((meta, spec))
}

/// Whether the pod already went through an injector: the status annotation, or one of our
/// containers (someone may have copied an injected spec without its annotations).
pub fn is_injected(meta: &ObjectMeta, spec: &PodSpec) -> bool {
    let has_status = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ann::STATUS));
    let ours = |c: &Container| c.name == PROXY_CONTAINER || c.name == INIT_CONTAINER;
    has_status
        || spec.containers.iter().any(ours)
        || spec.init_containers.iter().flatten().any(ours)
}

fn ports(value: Option<&str>, annotation: &'static str) -> Result<Option<String>, Skip> {
    let Some(value) = value else { return Ok(None) };
    let list: PortList =
        value
            .parse()
            .map_err(|e: weft_proxy::init::ListError| Skip::InvalidAnnotation {
                annotation,
                value: value.to_owned(),
                reason: e.to_string(),
            })?;
    Ok(join(list.0.iter()))
}

fn cidrs(value: Option<&str>) -> Result<Option<String>, Skip> {
    let Some(value) = value else { return Ok(None) };
    let list: CidrList =
        value
            .parse()
            .map_err(|e: weft_proxy::init::ListError| Skip::InvalidAnnotation {
                annotation: ann::SKIP_OUTBOUND_CIDRS,
                value: value.to_owned(),
                reason: e.to_string(),
            })?;
    Ok(join(list.0.iter()))
}

/// `a,b,c`, or `None` for an empty list.
fn join<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> Option<String> {
    let joined = items.map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    (!joined.is_empty()).then_some(joined)
}

fn init_container(exclusions: &Exclusions, config: &InjectConfig) -> Container {
    let mut args = vec![
        "init".to_owned(),
        format!("--proxy-uid={DEFAULT_PROXY_UID}"),
        format!("--inbound-port={DEFAULT_INBOUND_PORT}"),
        format!("--outbound-port={DEFAULT_OUTBOUND_PORT}"),
    ];
    for (flag, value) in [
        ("skip-inbound-ports", &exclusions.inbound_ports),
        ("skip-outbound-ports", &exclusions.outbound_ports),
        ("skip-outbound-cidrs", &exclusions.outbound_cidrs),
    ] {
        if let Some(value) = value {
            args.push(format!("--{flag}={value}"));
        }
    }
    Container {
        name: INIT_CONTAINER.to_owned(),
        image: Some(config.proxy_image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        command: Some(vec![PROXY_BINARY.to_owned()]),
        args: Some(args),
        resources: Some(config.init_resources.clone()),
        security_context: Some(SecurityContext {
            // iptables needs root with NET_ADMIN (and NET_RAW for its raw sockets); nothing
            // else. iptables-restore writes its lock under /run, so the root stays writable.
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

fn proxy_container(config: &InjectConfig) -> Container {
    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: path.to_owned(),
            api_version: Some("v1".into()),
        }),
        ..Default::default()
    };
    let from = |name: &str, path: &str| EnvVar {
        name: name.to_owned(),
        value_from: Some(field(path)),
        ..Default::default()
    };
    let value = |name: &str, value: &str| EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..Default::default()
    };
    let mut env = vec![
        from("WEFT_POD_NAME", "metadata.name"),
        from("WEFT_NAMESPACE", "metadata.namespace"),
        from("WEFT_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        from("WEFT_POD_IP", "status.podIP"),
        value("WEFT_TRUST_DOMAIN", &config.trust_domain),
        value("WEFT_CONTROL_PLANE_ADDR", &config.control_plane_addr),
    ];
    if let Some(identity) = &config.control_plane_identity {
        env.push(value("WEFT_CONTROL_PLANE_IDENTITY", identity));
    }
    env.push(value(
        "WEFT_IDENTITY_TOKEN_FILE",
        &format!("{TOKEN_DIR}/{TOKEN_FILE_NAME}"),
    ));
    env.push(value(
        "WEFT_TRUST_ANCHORS",
        &format!("{TRUST_ANCHORS_DIR}/{}", config.trust_anchors.key),
    ));
    if let Some(log) = &config.proxy_log {
        env.push(value("WEFT_LOG", log));
    }

    let http_get = |path: &str| HTTPGetAction {
        path: Some(path.to_owned()),
        port: IntOrString::Int(i32::from(ADMIN_PORT)),
        scheme: Some("HTTP".into()),
        ..Default::default()
    };
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(http_get(path)),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Default::default()
    };
    let mut container = Container {
        name: PROXY_CONTAINER.to_owned(),
        image: Some(config.proxy_image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        command: Some(vec![PROXY_BINARY.to_owned()]),
        args: Some(vec!["run".to_owned()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(ADMIN_PORT_NAME.to_owned()),
            container_port: i32::from(ADMIN_PORT),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(probe("/ready", 2, 3)),
        liveness_probe: Some(probe("/live", 10, 3)),
        resources: Some(config.proxy_resources.clone()),
        security_context: Some(SecurityContext {
            run_as_user: Some(i64::from(DEFAULT_PROXY_UID)),
            run_as_group: Some(i64::from(DEFAULT_PROXY_UID)),
            run_as_non_root: Some(true),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: TOKEN_VOLUME.to_owned(),
                mount_path: TOKEN_DIR.to_owned(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: TRUST_ANCHORS_VOLUME.to_owned(),
                mount_path: TRUST_ANCHORS_DIR.to_owned(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    match config.sidecar {
        SidecarMode::Native => {
            container.restart_policy = Some("Always".into());
            // The kubelet starts the next init container (and so the app) only once a native
            // sidecar's startup probe has passed: up to 2 minutes for the first certificate
            // and view.
            container.startup_probe = Some(probe("/ready", 1, 120));
        }
        SidecarMode::Classic => {
            // The kubelet starts the next container only when this hook returns.
            container.lifecycle = Some(Lifecycle {
                post_start: Some(LifecycleHandler {
                    exec: Some(ExecAction {
                        command: Some(vec![
                            PROXY_BINARY.to_owned(),
                            "wait-ready".to_owned(),
                            format!("--admin-addr=127.0.0.1:{ADMIN_PORT}"),
                            "--timeout=120s".to_owned(),
                        ]),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    container
}

fn volumes(config: &InjectConfig) -> Vec<Volume> {
    vec![
        Volume {
            name: TOKEN_VOLUME.to_owned(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(config.token_audience.clone()),
                        expiration_seconds: Some(config.token_expiration_seconds),
                        path: TOKEN_FILE_NAME.to_owned(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: TRUST_ANCHORS_VOLUME.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: config.trust_anchors.config_map.clone(),
                items: Some(vec![KeyToPath {
                    key: config.trust_anchors.key.clone(),
                    path: config.trust_anchors.key.clone(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pod(annotations: &[(&str, &str)]) -> (ObjectMeta, PodSpec) {
        let annotations: BTreeMap<String, String> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let meta = ObjectMeta {
            generate_name: Some("web-".into()),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        };
        let spec = PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some("app".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        (meta, spec)
    }

    fn outcome(annotations: &[(&str, &str)], selected: bool) -> Result<(), Skip> {
        let (meta, spec) = pod(annotations);
        inject_pod_spec(&meta, &spec, selected, &InjectConfig::default()).map(|_| ())
    }

    #[test]
    fn selection() {
        assert_eq!(outcome(&[], true), Ok(()));
        assert_eq!(outcome(&[], false), Err(Skip::NotSelected));
        assert_eq!(outcome(&[(ann::INJECT, "enabled")], false), Ok(()));
        assert_eq!(outcome(&[(ann::INJECT, " enabled ")], false), Ok(()));
        assert_eq!(
            outcome(&[(ann::INJECT, "disabled")], true),
            Err(Skip::Disabled)
        );
        assert_eq!(
            outcome(&[(ann::INJECT, "disabled"), (ann::STATUS, "{}")], true),
            Err(Skip::AlreadyInjected)
        );
        let err = outcome(&[(ann::INJECT, "true")], true).unwrap_err();
        assert!(err.is_error());
        assert_eq!(err.reason(), "invalid_annotation");
        assert!(
            err.to_string().contains("expected `enabled` or `disabled`"),
            "{err}"
        );
    }

    #[test]
    fn host_network_and_our_containers_are_skipped() {
        let (meta, mut spec) = pod(&[]);
        spec.host_network = Some(true);
        let config = InjectConfig::default();
        assert_eq!(
            inject_pod_spec(&meta, &spec, true, &config),
            Err(Skip::HostNetwork)
        );
        let (meta, mut spec) = pod(&[]);
        spec.containers.push(Container {
            name: PROXY_CONTAINER.into(),
            ..Default::default()
        });
        assert_eq!(
            inject_pod_spec(&meta, &spec, true, &config),
            Err(Skip::AlreadyInjected)
        );
    }

    #[test]
    fn injecting_the_result_again_is_a_no_op() {
        let (meta, spec) = pod(&[]);
        let config = InjectConfig::default();
        let (meta, spec) = inject_pod_spec(&meta, &spec, true, &config).unwrap();
        assert_eq!(
            inject_pod_spec(&meta, &spec, true, &config),
            Err(Skip::AlreadyInjected)
        );
        // Without the annotation too (a spec copied without its metadata).
        let bare = ObjectMeta::default();
        assert_eq!(
            inject_pod_spec(&bare, &spec, true, &config),
            Err(Skip::AlreadyInjected)
        );
    }

    #[test]
    fn bad_exclusions_name_the_annotation_and_the_item() {
        for (annotation, value, needle) in [
            (ann::SKIP_INBOUND_PORTS, "80,http", "`http`"),
            (ann::SKIP_OUTBOUND_PORTS, "0", "`0`"),
            (ann::SKIP_OUTBOUND_CIDRS, "10.0.0.0/33", "prefix length 33"),
        ] {
            let err = outcome(&[(annotation, value)], true).unwrap_err();
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("annotation {annotation}: ")),
                "{text}"
            );
            assert!(text.contains(needle), "{text}");
        }
        // Empty values mean "none", as for the init flags.
        assert_eq!(outcome(&[(ann::SKIP_INBOUND_PORTS, " , ")], true), Ok(()));
    }

    #[test]
    fn constants_agree_with_the_proxy() {
        assert_eq!(
            format!("{TOKEN_DIR}/{TOKEN_FILE_NAME}"),
            weft_proxy::bootstrap::DEFAULT_IDENTITY_TOKEN_FILE
        );
        assert_eq!(DEFAULT_PROXY_UID, 2102);
    }
}
