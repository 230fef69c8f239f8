//! Shared by the injector's tests: fixtures, applying a review's patch, and the checks every
//! injected pod must pass.

#![allow(dead_code)]

pub mod https;

use std::path::PathBuf;

use base64::Engine;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde::Deserialize;
use serde_json::Value;
use weft_injector::mutate::{INIT_CONTAINER, PROXY_CONTAINER};
use weft_injector::{InjectConfig, InjectionStatus, SidecarMode};

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

pub fn fixture(name: &str) -> Value {
    serde_json::from_slice(&fixture_bytes(name)).unwrap()
}

pub fn config(sidecar: SidecarMode) -> InjectConfig {
    InjectConfig {
        sidecar,
        ..InjectConfig::default()
    }
}

/// The `response` of an AdmissionReview answer, after checking the envelope.
pub fn response_of(review: &Value, answer: &[u8]) -> Value {
    let answer: Value = serde_json::from_slice(answer).expect("the answer is JSON");
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = answer["response"].clone();
    assert_eq!(
        response["uid"], review["request"]["uid"],
        "the uid is echoed"
    );
    response
}

/// Applies the response's patch to the review's object, as the API server would.
pub fn apply(review: &Value, response: &Value) -> Value {
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("a patch"))
        .expect("the patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("an RFC 6902 patch");
    let mut object = review["request"]["object"].clone();
    json_patch::patch(&mut object, &patch).expect("the patch applies to the original");
    object
}

pub fn pod(object: &Value) -> Pod {
    Pod::deserialize(object).expect("the result is a Pod")
}

pub fn original_pod(review: &Value) -> Pod {
    pod(&review["request"]["object"])
}

pub fn env<'a>(
    container: &'a Container,
    name: &str,
) -> Option<&'a k8s_openapi::api::core::v1::EnvVar> {
    container.env.iter().flatten().find(|e| e.name == name)
}

pub fn field_ref(container: &Container, name: &str) -> String {
    env(container, name)
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.clone())
        .unwrap_or_else(|| panic!("{name} is not from the downward API"))
}

pub fn value(container: &Container, name: &str) -> String {
    env(container, name)
        .and_then(|e| e.value.clone())
        .unwrap_or_else(|| panic!("{name} has no value"))
}

/// The checks every injected pod passes; returns the proxy container and the init
/// container's args.
pub fn check_injected(
    original: &Pod,
    injected: &Pod,
    mode: SidecarMode,
) -> (Container, Vec<String>) {
    let config = config(mode);
    let spec = injected.spec.as_ref().unwrap();
    let before = original.spec.as_ref().unwrap();
    let inits = spec.init_containers.clone().unwrap_or_default();
    let app_inits = before.init_containers.clone().unwrap_or_default();

    // Order: weft-init, (native) weft-proxy, then the app's init containers unchanged.
    assert_eq!(inits[0].name, INIT_CONTAINER);
    let (proxy, rest_inits, rest_containers) = match mode {
        SidecarMode::Native => {
            assert_eq!(inits[1].name, PROXY_CONTAINER);
            (inits[1].clone(), &inits[2..], &spec.containers[..])
        }
        SidecarMode::Classic => {
            assert_eq!(spec.containers[0].name, PROXY_CONTAINER);
            (
                spec.containers[0].clone(),
                &inits[1..],
                &spec.containers[1..],
            )
        }
    };
    assert_eq!(
        rest_inits,
        &app_inits[..],
        "the app's init containers are untouched"
    );
    assert_eq!(
        rest_containers,
        &before.containers[..],
        "the app's containers are untouched"
    );

    // Everything else in the spec is as it was.
    let mut rest = spec.clone();
    let mut rest_before = before.clone();
    for s in [&mut rest, &mut rest_before] {
        s.init_containers = None;
        s.containers.clear();
        s.volumes = None;
    }
    assert_eq!(rest, rest_before, "only containers and volumes change");

    // The init container.
    let init = &inits[0];
    assert_eq!(init.image.as_deref(), Some(config.proxy_image.as_str()));
    assert_eq!(
        init.command.as_deref(),
        Some(&["weft-proxy".to_string()][..])
    );
    let args = init.args.clone().unwrap();
    assert_eq!(args[0], "init");
    let sc = init.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(0));
    assert_eq!(sc.run_as_non_root, Some(false));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
    );
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(init.restart_policy, None, "init runs once");

    // The proxy container.
    assert_eq!(proxy.image.as_deref(), Some(config.proxy_image.as_str()));
    assert_eq!(
        proxy.command.as_deref(),
        Some(&["weft-proxy".to_string()][..])
    );
    assert_eq!(proxy.args.as_deref(), Some(&["run".to_string()][..]));
    assert_eq!(proxy.resources.as_ref(), Some(&config.proxy_resources));
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(2102));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(field_ref(&proxy, "WEFT_POD_NAME"), "metadata.name");
    assert_eq!(field_ref(&proxy, "WEFT_NAMESPACE"), "metadata.namespace");
    assert_eq!(
        field_ref(&proxy, "WEFT_SERVICE_ACCOUNT"),
        "spec.serviceAccountName"
    );
    assert_eq!(field_ref(&proxy, "WEFT_POD_IP"), "status.podIP");
    assert_eq!(
        value(&proxy, "WEFT_CONTROL_PLANE_ADDR"),
        config.control_plane_addr
    );
    assert_eq!(value(&proxy, "WEFT_TRUST_DOMAIN"), "cluster.local");
    assert_eq!(
        value(&proxy, "WEFT_IDENTITY_TOKEN_FILE"),
        weft_proxy::bootstrap::DEFAULT_IDENTITY_TOKEN_FILE
    );
    assert_eq!(
        value(&proxy, "WEFT_TRUST_ANCHORS"),
        "/var/run/weft.dev/trust-anchors/ca.crt"
    );
    for (probe, path) in [
        (&proxy.readiness_probe, "/ready"),
        (&proxy.liveness_probe, "/live"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(15020)
        );
    }
    let mounts = proxy.volume_mounts.clone().unwrap();
    let mount = |name: &str| {
        mounts
            .iter()
            .find(|m| m.name == name)
            .unwrap()
            .mount_path
            .clone()
    };
    assert_eq!(
        mount("weft-identity-token"),
        "/var/run/secrets/weft.dev/identity"
    );
    assert_eq!(
        mount("weft-trust-anchors"),
        "/var/run/weft.dev/trust-anchors"
    );
    assert!(mounts.iter().all(|m| m.read_only == Some(true)));
    match mode {
        SidecarMode::Native => {
            assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
            let startup = proxy
                .startup_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap();
            assert_eq!(startup.path.as_deref(), Some("/ready"));
            assert!(proxy.lifecycle.is_none());
        }
        SidecarMode::Classic => {
            assert_eq!(proxy.restart_policy, None);
            let hook = proxy
                .lifecycle
                .as_ref()
                .unwrap()
                .post_start
                .as_ref()
                .unwrap();
            let command = hook.exec.as_ref().unwrap().command.clone().unwrap();
            assert_eq!(
                command[..2],
                ["weft-proxy".to_string(), "wait-ready".to_string()]
            );
        }
    }

    // Volumes: the app's, then ours.
    let volumes = spec.volumes.clone().unwrap();
    let app_volumes = before.volumes.clone().unwrap_or_default();
    assert_eq!(&volumes[..app_volumes.len()], &app_volumes[..]);
    let token = volumes
        .iter()
        .find(|v| v.name == "weft-identity-token")
        .unwrap();
    let projection = token.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .clone()
        .unwrap();
    assert_eq!(projection.audience.as_deref(), Some("weft.dev/identity"));
    assert_eq!(projection.path, "token");
    assert_eq!(projection.expiration_seconds, Some(3600));
    let anchors = volumes
        .iter()
        .find(|v| v.name == "weft-trust-anchors")
        .unwrap();
    assert_eq!(
        anchors.config_map.as_ref().unwrap().name,
        "weft-trust-anchors"
    );

    // Metadata: only annotations are added; the status names what was added.
    let mut meta = injected.metadata.clone();
    let mut meta_before = original.metadata.clone();
    let annotations = meta.annotations.take().unwrap();
    let before_annotations = meta_before.annotations.take().unwrap_or_default();
    assert_eq!(meta, meta_before, "only annotations change in the metadata");
    for (k, v) in &before_annotations {
        assert_eq!(annotations.get(k), Some(v), "annotation {k} is kept");
    }
    let status: InjectionStatus =
        serde_json::from_str(&annotations["weft.dev/status"]).expect("the status is JSON");
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(status.sidecar, mode);
    assert_eq!(status.image, config.proxy_image);
    assert_eq!(
        status.volumes,
        ["weft-identity-token", "weft-trust-anchors"]
    );
    match mode {
        SidecarMode::Native => {
            assert_eq!(status.init_containers, ["weft-init", "weft-proxy"]);
            assert!(status.containers.is_empty());
        }
        SidecarMode::Classic => {
            assert_eq!(status.init_containers, ["weft-init"]);
            assert_eq!(status.containers, ["weft-proxy"]);
        }
    }
    for added in &status.annotations {
        assert!(
            !before_annotations.contains_key(added),
            "{added} was not there before"
        );
        assert!(annotations.contains_key(added));
    }
    (proxy, args)
}
