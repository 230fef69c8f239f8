//! Every AdmissionReview fixture through `review::review`, in both sidecar modes: each patch
//! is applied with `json-patch` to the object the API server sent, and the result is read
//! back as a k8s-openapi Pod and checked field by field.

mod support;

use clap::Parser;
use serde_json::Value;
use support::*;
use weft_injector::review::{review, BadReview, Outcome};
use weft_injector::SidecarMode;
use weft_proxy::bootstrap::{Cli, Command};

const MODES: [SidecarMode; 2] = [SidecarMode::Native, SidecarMode::Classic];

/// Reviews a fixture; returns the review, the response and the outcome.
fn run(name: &str, mode: SidecarMode) -> (Value, Value, Outcome) {
    let review_json = fixture(name);
    let answer = review(&fixture_bytes(name), &config(mode)).expect("a well-formed review");
    let response = response_of(&review_json, &answer.body);
    (review_json, response, answer.outcome)
}

/// Reviews the injected pod again, as the API server does under `reinvocationPolicy:
/// IfNeeded`: it must be left alone.
fn check_reinvocation(review_json: &Value, injected: &Value, mode: SidecarMode) {
    let mut again = review_json.clone();
    again["request"]["object"] = injected.clone();
    let answer = review(&serde_json::to_vec(&again).unwrap(), &config(mode)).unwrap();
    let response = response_of(&again, &answer.body);
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "never injected twice");
    assert_eq!(answer.outcome, Outcome::Skipped("already_injected"));
}

/// The init container's args, as `weft-proxy` parses them.
fn init_settings(args: &[String]) -> weft_proxy::init::Settings {
    let argv = std::iter::once("weft-proxy".to_string()).chain(args.iter().cloned());
    match Cli::try_parse_from(argv)
        .expect("weft-proxy accepts the init args")
        .command
    {
        Some(Command::Init(init)) => init.settings().expect("valid init settings"),
        other => panic!("not an init command: {other:?}"),
    }
}

#[test]
fn deployment_pod_with_generate_name_is_injected() {
    for mode in MODES {
        let (review_json, response, outcome) = run("deployment_pod.json", mode);
        assert_eq!(outcome, Outcome::Injected(mode));
        let injected = apply(&review_json, &response);
        let pod = pod(&injected);
        let original = original_pod(&review_json);
        assert_eq!(
            pod.metadata.name, None,
            "a generated name stays for the API server"
        );
        assert_eq!(
            pod.metadata.generate_name.as_deref(),
            Some("web-7d4b9c6f5d-")
        );
        let (_, args) = check_injected(&original, &pod, mode);
        let settings = init_settings(&args);
        assert_eq!(settings.proxy_uid, 2102);
        assert_eq!(settings.inbound_port, 15006);
        assert_eq!(settings.outbound_port, 15001);
        assert_eq!(settings.skip_inbound_ports, [15020], "only the admin port");
        assert!(settings.skip_outbound_ports.is_empty());
        assert!(settings.skip_outbound_cidrs.is_empty());
        let annotations = pod.metadata.annotations.unwrap();
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["prometheus.io/port"], "15020");
        assert_eq!(annotations["prometheus.io/path"], "/metrics");
        match mode {
            SidecarMode::Native => {
                assert!(!annotations.contains_key("kubectl.kubernetes.io/default-container"))
            }
            SidecarMode::Classic => assert_eq!(
                annotations["kubectl.kubernetes.io/default-container"],
                "web"
            ),
        }
        // Nothing outside metadata and spec moved (status, kind, apiVersion).
        let original_json = &review_json["request"]["object"];
        assert_eq!(injected["status"], original_json["status"]);
        assert_eq!(injected["metadata"]["creationTimestamp"], Value::Null);
        assert_eq!(
            injected["metadata"]["managedFields"],
            original_json["metadata"]["managedFields"]
        );
        check_reinvocation(&review_json, &injected, mode);
    }
}

#[test]
fn existing_init_containers_probes_and_several_containers_are_kept_in_order() {
    for mode in MODES {
        let (review_json, response, outcome) = run("init_containers_probes.json", mode);
        assert_eq!(outcome, Outcome::Injected(mode));
        let injected = apply(&review_json, &response);
        let pod = pod(&injected);
        check_injected(&original_pod(&review_json), &pod, mode);
        let spec = pod.spec.as_ref().unwrap();
        let inits: Vec<_> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        let containers: Vec<_> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        match mode {
            SidecarMode::Native => {
                assert_eq!(inits, ["weft-init", "weft-proxy", "migrate", "warm-cache"]);
                assert_eq!(containers, ["orders", "log-shipper", "metrics-exporter"]);
            }
            SidecarMode::Classic => {
                assert_eq!(inits, ["weft-init", "migrate", "warm-cache"]);
                assert_eq!(
                    containers,
                    ["weft-proxy", "orders", "log-shipper", "metrics-exporter"]
                );
            }
        }
        let annotations = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations["team"], "payments");
        assert_eq!(
            annotations["kubectl.kubernetes.io/default-container"], "orders",
            "an existing default container is kept"
        );
        // The app's probes are untouched, whatever their kind.
        let orders = spec.containers.iter().find(|c| c.name == "orders").unwrap();
        assert!(orders.liveness_probe.as_ref().unwrap().http_get.is_some());
        assert!(orders.readiness_probe.as_ref().unwrap().grpc.is_some());
        assert!(orders.startup_probe.as_ref().unwrap().tcp_socket.is_some());
        check_reinvocation(&review_json, &injected, mode);
    }
}

#[test]
fn every_annotation_on_a_job_pod() {
    for mode in MODES {
        let (review_json, response, outcome) = run("annotations_job.json", mode);
        assert_eq!(outcome, Outcome::Injected(mode));
        let injected = apply(&review_json, &response);
        let pod = pod(&injected);
        let (_, args) = check_injected(&original_pod(&review_json), &pod, mode);
        assert_eq!(
            args[4..],
            [
                "--skip-inbound-ports=9090,22",
                "--skip-outbound-ports=5432,6379",
                "--skip-outbound-cidrs=10.96.0.0/12,169.254.169.254/32",
            ],
            "normalised annotation values"
        );
        let settings = init_settings(&args);
        assert_eq!(settings.skip_inbound_ports, [15020, 9090, 22]);
        assert_eq!(settings.skip_outbound_ports, [5432, 6379]);
        let cidrs: Vec<String> = settings
            .skip_outbound_cidrs
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(cidrs, ["10.96.0.0/12", "169.254.169.254/32"]);
        // The app's own scrape settings win: no prometheus.io annotation is replaced.
        let annotations = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations["prometheus.io/port"], "9102");
        assert!(!annotations.contains_key("prometheus.io/path"));
        let status: weft_injector::InjectionStatus =
            serde_json::from_str(&annotations["weft.dev/status"]).unwrap();
        assert!(status
            .annotations
            .iter()
            .all(|a| !a.starts_with("prometheus.io/")));
        if mode == SidecarMode::Native {
            // A Job finishes: the proxy is a native sidecar, not a container that never exits.
            assert_eq!(pod.spec.as_ref().unwrap().containers.len(), 1);
        }
        check_reinvocation(&review_json, &injected, mode);
    }
}

#[test]
fn skipped_pods_are_allowed_without_a_patch() {
    for (name, reason) in [
        ("host_network.json", "host_network"),
        ("opt_out.json", "disabled"),
        ("already_injected.json", "already_injected"),
        ("deployment_object.json", "not_pod_create"),
        ("pod_update.json", "not_pod_create"),
    ] {
        for mode in MODES {
            let (_, response, outcome) = run(name, mode);
            assert_eq!(outcome, Outcome::Skipped(reason), "{name}");
            assert_eq!(response["allowed"], true, "{name}");
            assert!(response.get("patch").is_none(), "{name}");
            assert!(response.get("patchType").is_none(), "{name}");
            assert!(response.get("warnings").is_none(), "{name}");
        }
    }
}

#[test]
fn subresources_are_not_ours() {
    let mut review_json = fixture("deployment_pod.json");
    review_json["request"]["subResource"] = "ephemeralcontainers".into();
    let answer = review(
        &serde_json::to_vec(&review_json).unwrap(),
        &config(SidecarMode::Native),
    )
    .unwrap();
    assert_eq!(answer.outcome, Outcome::Skipped("not_pod_create"));
    assert!(response_of(&review_json, &answer.body)
        .get("patch")
        .is_none());
}

#[test]
fn an_invalid_annotation_refuses_the_pod_and_names_it() {
    let (_, response, outcome) = run("invalid_annotation.json", SidecarMode::Native);
    assert!(matches!(outcome, Outcome::Denied(_)));
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 400);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(message.contains("weft.dev/skip-inbound-ports"), "{message}");
    assert!(message.contains("`http`"), "{message}");
    assert!(response.get("patch").is_none());
}

#[test]
fn fields_unknown_to_the_types_survive_and_stay_on_their_container() {
    for mode in MODES {
        let (review_json, response, _) = run("unknown_fields.json", mode);
        let injected = apply(&review_json, &response);
        assert_eq!(injected["spec"]["futurePodField"]["enabled"], true);
        let containers = injected["spec"]["containers"].as_array().unwrap();
        let web = containers.iter().find(|c| c["name"] == "web").unwrap();
        assert_eq!(web["futureContainerField"], serde_json::json!(["a", "b"]));
        for other in containers.iter().filter(|c| c["name"] != "web") {
            assert!(other.get("futureContainerField").is_none());
        }
        check_injected(&original_pod(&review_json), &pod(&injected), mode);
    }
}

#[test]
fn an_unreadable_pod_is_admitted_with_a_warning() {
    let (_, response, outcome) = run("unreadable_pod.json", SidecarMode::Native);
    assert!(
        matches!(
            outcome,
            Outcome::Failed {
                kind: "unreadable_pod",
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
    let warning = response["warnings"][0].as_str().unwrap();
    assert!(
        warning.starts_with("weft-injector: cannot read the pod"),
        "{warning}"
    );
    assert!(warning.contains("without the Weft sidecar"), "{warning}");
}

#[test]
fn malformed_reviews_are_errors_that_say_what_is_wrong() {
    let config = config(SidecarMode::Native);
    let cases: [(&[u8], &str); 6] = [
        (b"", "EOF"),
        (b"{not json", "key must be a string"),
        (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#, "apiVersion"),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}"#, "kind"),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, "no `request`"),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":{"version":"v1","kind":"Pod"}}}"#, "no `request.uid`"),
    ];
    for (body, needle) in cases {
        let BadReview(message) = review(body, &config).unwrap_err();
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
    }
}

#[test]
fn classic_post_start_and_native_commands_parse_as_the_proxy_expects() {
    let review_json = fixture("deployment_pod.json");
    let (_, response, _) = run("deployment_pod.json", SidecarMode::Classic);
    let pod = pod(&apply(&review_json, &response));
    let proxy = &pod.spec.unwrap().containers[0];
    let hook = proxy
        .lifecycle
        .as_ref()
        .unwrap()
        .post_start
        .as_ref()
        .unwrap();
    let command = hook.exec.as_ref().unwrap().command.clone().unwrap();
    match Cli::try_parse_from(&command)
        .expect("weft-proxy accepts the hook")
        .command
    {
        Some(Command::WaitReady(args)) => {
            assert_eq!(args.admin_addr.port(), 15020);
            assert!(args.admin_addr.ip().is_loopback());
        }
        other => panic!("not wait-ready: {other:?}"),
    }
    let mut argv = proxy.command.clone().unwrap();
    argv.extend(proxy.args.clone().unwrap());
    assert!(matches!(
        Cli::try_parse_from(&argv).unwrap().command,
        Some(Command::Run)
    ));
}

#[test]
fn an_injection_patch_only_adds() {
    for name in [
        "deployment_pod.json",
        "init_containers_probes.json",
        "annotations_job.json",
    ] {
        for mode in MODES {
            let (_, response, _) = run(name, mode);
            let patch = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                response["patch"].as_str().unwrap(),
            )
            .unwrap();
            let patch: Vec<Value> = serde_json::from_slice(&patch).unwrap();
            assert!(patch.len() <= 9, "{name}: {} operations", patch.len());
            for op in &patch {
                assert_eq!(op["op"], "add", "{name}: {op}");
            }
        }
    }
}

#[test]
fn the_token_audience_is_the_control_planes() {
    assert_eq!(
        weft_injector::config::DEFAULT_TOKEN_AUDIENCE,
        weft_control_plane::auth::DEFAULT_AUDIENCE
    );
}

#[test]
fn the_patch_is_deterministic() {
    let a = review(
        &fixture_bytes("init_containers_probes.json"),
        &config(SidecarMode::Native),
    )
    .unwrap();
    let b = review(
        &fixture_bytes("init_containers_probes.json"),
        &config(SidecarMode::Native),
    )
    .unwrap();
    assert_eq!(a.body, b.body);
}
