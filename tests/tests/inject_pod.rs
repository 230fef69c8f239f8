//! The injector's output, run: two pods made from `weft_injector::inject_pod_spec`'s result
//! (the function the webhook and `weftctl inject` share), each a network namespace in which
//! the test plays the kubelet — it runs the injected init container's exact command, then
//! the proxy container's command with the injected environment (downward-API values resolved
//! from the pod, as the kubelet resolves them) and the injected volumes (the projected token
//! and the trust-anchors ConfigMap written where the mounts point), holds the app until the
//! proxy is ready the way each sidecar mode does, and probes and scrapes the proxy where the
//! injected probes and `prometheus.io/*` annotations say. A real control plane serves
//! certificates and views from a third namespace.
//!
//! ```text
//!   pod web (native sidecar)                pod orders (classic sidecar, skip-inbound-ports 9090)
//!   app ── GET orders.shop clusterIP:8080   app :8080 (via the inbound proxy), app :9090 (direct)
//!    └─> outbound proxy ══ mTLS ═════════>  inbound proxy
//!        eth0 10.231.0.1 ════ veth ════ 10.231.0.2 eth0
//!        cp0 10.231.1.1 ─┐            ┌─ 10.231.2.1 cp0
//!                        control plane 10.231.9.9:15012 (its own namespace)
//! ```
//!
//! Needs root; without it the test prints "skipping" and passes. Needs `weft-proxy` and
//! `weft-control-plane` built in the same profile:
//! `cargo build -p weft-proxy -p weft-control-plane && cargo test -p weft-tests --test inject_pod`.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod as K8sPod, PodStatus, Probe};
use weft_injector::{inject_pod_spec, InjectConfig, SidecarMode};
use weft_tests::http::echo_field;
use weft_tests::netns::{self, Netns};
use weft_tests::pod::{command, Bins, Pod, APP_UID, NS_PREFIX};
use weft_tests::process::output_with_timeout;
use weft_tests::{is_root, wait_for, TempDir};

const WEB_IP: &str = "10.231.0.1";
const ORDERS_IP: &str = "10.231.0.2";
const CP_IP: &str = "10.231.9.9";
const ORDERS_CLUSTER_IP: &str = "10.96.0.10";
const APP_PORT: u16 = 8080;
/// In orders' `weft.dev/skip-inbound-ports`: reaches the app without its proxy.
const SKIPPED_PORT: u16 = 9090;
const WEB_ID: &str = "spiffe://cluster.local/ns/shop/sa/web";
const STEP: Duration = Duration::from_secs(30);

/// A pod as the API server would hold it before scheduling: name (as if from generateName),
/// namespace, service account, the app's containers and the annotations.
fn app_pod(
    name: &str,
    account: &str,
    app: &str,
    ports: &[u16],
    annotations: &[(&str, &str)],
) -> K8sPod {
    let json = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "labels": {"app": app},
            "annotations": annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        },
        "spec": {
            "serviceAccountName": account,
            "containers": [{
                "name": app,
                "image": format!("registry.example/{app}:1"),
                "ports": ports.iter().map(|p| serde_json::json!({"containerPort": p})).collect::<Vec<_>>(),
            }],
        },
    });
    serde_json::from_value(json).unwrap()
}

/// Injects `pod` with `mode`, as the webhook does, and gives it the pod IP the kubelet would.
fn inject(pod: &K8sPod, mode: SidecarMode, ip: &str) -> K8sPod {
    let config = InjectConfig {
        sidecar: mode,
        // The control plane's Service address; here its namespace's address.
        control_plane_addr: format!("{CP_IP}:15012"),
        ..InjectConfig::default()
    };
    let (metadata, spec) =
        inject_pod_spec(&pod.metadata, pod.spec.as_ref().unwrap(), true, &config)
            .expect("the pod is injected");
    K8sPod {
        metadata,
        spec: Some(spec),
        status: Some(PodStatus {
            pod_ip: Some(ip.into()),
            phase: Some("Running".into()),
            ..Default::default()
        }),
    }
}

fn find<'a>(pod: &'a K8sPod, name: &str) -> &'a Container {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// What the kubelet does for one container of an injected pod, in this test's terms.
struct Kubelet<'a> {
    bins: &'a Bins,
    /// Where each volume's files are ("mounted").
    volumes: BTreeMap<String, PathBuf>,
}

impl<'a> Kubelet<'a> {
    /// Writes the pod's volumes: the projected token holds `token` (the kubelet would ask
    /// the API server for one with the projected audience), the trust anchors ConfigMap
    /// holds the control plane's bundle.
    fn volumes(
        bins: &'a Bins,
        pod: &K8sPod,
        dir: &Path,
        token: &str,
        bundle: &Path,
    ) -> Kubelet<'a> {
        let mut volumes = BTreeMap::new();
        for volume in pod.spec.as_ref().unwrap().volumes.iter().flatten() {
            let path = dir.join(&volume.name);
            std::fs::create_dir_all(&path).unwrap();
            if let Some(projected) = &volume.projected {
                for source in projected.sources.iter().flatten() {
                    let token_source = source
                        .service_account_token
                        .as_ref()
                        .expect("only a token is projected");
                    assert_eq!(token_source.audience.as_deref(), Some("weft.dev/identity"));
                    std::fs::write(path.join(&token_source.path), token).unwrap();
                }
            } else if let Some(config_map) = &volume.config_map {
                assert_eq!(config_map.name, "weft-trust-anchors");
                for item in config_map.items.iter().flatten() {
                    std::fs::copy(bundle, path.join(&item.path)).unwrap();
                }
            } else {
                panic!("unexpected volume {volume:?}");
            }
            // The proxy runs as 2102 and reads them.
            chmod_readable(&path);
            volumes.insert(volume.name.clone(), path);
        }
        Kubelet { bins, volumes }
    }

    /// `command` + `args`, with `weft-proxy` found in the "image" (the staged binary).
    fn argv(&self, argv: &[String]) -> Command {
        let program = match argv[0].as_str() {
            "weft-proxy" => self.bins.proxy.clone(),
            other => panic!("the image has no {other}"),
        };
        let mut cmd = command(&program);
        cmd.args(&argv[1..]);
        cmd
    }

    fn container_command(&self, container: &Container) -> Command {
        let mut argv = container.command.clone().unwrap_or_default();
        argv.extend(container.args.clone().unwrap_or_default());
        self.argv(&argv)
    }

    /// The container's environment, resolved as the kubelet does: literal values, and
    /// downward-API fields from the pod. Paths inside a volume mount point to where this
    /// test keeps that volume.
    fn env(&self, pod: &K8sPod, container: &Container) -> Vec<(String, String)> {
        let mounts: Vec<(String, PathBuf)> = container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.mount_path.clone(), self.volumes[&m.name].clone()))
            .collect();
        container
            .env
            .iter()
            .flatten()
            .map(|var| {
                let value = match (&var.value, &var.value_from) {
                    (Some(value), None) => value.clone(),
                    (None, Some(from)) => {
                        let field = from.field_ref.as_ref().expect("only fieldRef is used");
                        downward(pod, &field.field_path)
                    }
                    other => panic!("{}: {other:?}", var.name),
                };
                let value = mounts
                    .iter()
                    .find_map(|(at, dir)| {
                        value
                            .strip_prefix(at.as_str())
                            .map(|rest| format!("{}{rest}", dir.display()))
                    })
                    .unwrap_or(value);
                (var.name.clone(), value)
            })
            .collect()
    }
}

fn downward(pod: &K8sPod, path: &str) -> String {
    let value = match path {
        "metadata.name" => pod.metadata.name.clone(),
        "metadata.namespace" => pod.metadata.namespace.clone(),
        "spec.serviceAccountName" => pod.spec.as_ref().unwrap().service_account_name.clone(),
        "status.podIP" => pod.status.as_ref().unwrap().pod_ip.clone(),
        other => panic!("unexpected downward API field {other}"),
    };
    value.unwrap_or_else(|| panic!("{path} is not set"))
}

fn chmod_readable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for path in std::iter::once(dir.to_owned())
        .chain(std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()))
    {
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

fn uid_of(container: &Container) -> u32 {
    let uid = container
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .expect("runAsUser");
    u32::try_from(uid).unwrap()
}

/// `ip` in a namespace.
fn ip(ns: &Netns, args: &str) {
    ns.ip(&args.split_whitespace().collect::<Vec<_>>());
}

/// A veth between a pod (`cp0`) and the control plane's namespace (`peer`).
fn link_to_control_plane(pod: &Netns, pod_cidr: &str, cp: &Netns, peer: &str, peer_cidr: &str) {
    let mut cmd = Command::new("ip");
    cmd.args([
        "link",
        "add",
        "cp0",
        "netns",
        pod.name(),
        "type",
        "veth",
        "peer",
        "name",
        peer,
        "netns",
        cp.name(),
    ]);
    let out = output_with_timeout(&mut cmd, netns::COMMAND_TIMEOUT).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ip(pod, &format!("addr add {pod_cidr} dev cp0"));
    ip(pod, "link set cp0 up");
    ip(pod, &format!("route add {CP_IP}/32 dev cp0"));
    ip(cp, &format!("addr add {peer_cidr} dev {peer}"));
    ip(cp, &format!("link set {peer} up"));
}

/// An HTTP probe of the kubelet's, or a Prometheus scrape: GET from inside the pod.
fn http_get(pod: &Pod, port: u16, path: &str) -> Option<weft_tests::http::Response> {
    pod.local_get(port, path).ok()
}

fn probe_target(probe: &Probe) -> (u16, String) {
    let get = probe.http_get.as_ref().expect("an HTTP probe");
    let port = match &get.port {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => {
            u16::try_from(*p).unwrap()
        }
        other => panic!("named probe port {other:?}"),
    };
    (port, get.path.clone().unwrap())
}

fn manifests(web: &K8sPod, orders: &K8sPod) -> String {
    let mut docs = vec!["apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n".to_string()];
    // The injected pods as the API server stores them: JSON is YAML.
    for pod in [web, orders] {
        docs.push(serde_json::to_string_pretty(pod).unwrap() + "\n");
    }
    docs.push(format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: orders, namespace: shop}}\nspec:\n  \
         clusterIP: {ORDERS_CLUSTER_IP}\n  selector: {{app: orders}}\n  ports: [{{name: http, port: {APP_PORT}, targetPort: {APP_PORT}}}]\n"
    ));
    docs.push(format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: orders-1\n  namespace: shop\n  \
         labels: {{kubernetes.io/service-name: orders}}\naddressType: IPv4\nports: [{{name: http, port: {APP_PORT}}}]\n\
         endpoints:\n- addresses: [{ORDERS_IP}]\n  conditions: {{ready: true}}\n  targetRef: {{kind: Pod, name: orders-5f7d9-x2x4k, namespace: shop}}\n"
    ));
    docs.join("---\n")
}

#[test]
fn an_injected_pod_runs_and_its_traffic_crosses_the_proxy() {
    if !is_root() {
        eprintln!("skipping an_injected_pod_runs_and_its_traffic_crosses_the_proxy: needs root");
        return;
    }
    let test_app = PathBuf::from(env!("CARGO_BIN_EXE_weft-test-app"));
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bins = Bins::stage(&test_app, manifest_dir);
    let control_plane_bin =
        weft_tests::bins::weft_control_plane(&test_app, manifest_dir.parent().unwrap());
    netns::remove_stale(NS_PREFIX);
    let dir = TempDir::for_logs("weft-inject-pod");
    let logs = dir.path();

    // What the webhook makes of two Deployment pods.
    let web = inject(
        &app_pod("web-6d8f7-abcde", "web", "web", &[], &[]),
        SidecarMode::Native,
        WEB_IP,
    );
    let orders = inject(
        &app_pod(
            "orders-5f7d9-x2x4k",
            "orders",
            "orders",
            &[APP_PORT, SKIPPED_PORT],
            &[("weft.dev/skip-inbound-ports", &SKIPPED_PORT.to_string())],
        ),
        SidecarMode::Classic,
        ORDERS_IP,
    );

    // The network: web and orders joined directly, each linked to the control plane.
    let id = std::process::id();
    let mut cp = Pod::new(&format!("{NS_PREFIX}{id}-icp"));
    let mut web_pod = Pod::new(&format!("{NS_PREFIX}{id}-iweb"));
    let mut orders_pod = Pod::new(&format!("{NS_PREFIX}{id}-iord"));
    netns::connect(
        web_pod.ns(),
        &[&format!("{WEB_IP}/30")],
        orders_pod.ns(),
        &[&format!("{ORDERS_IP}/30")],
    );
    link_to_control_plane(
        web_pod.ns(),
        "10.231.1.1/30",
        cp.ns(),
        "web0",
        "10.231.1.2/30",
    );
    link_to_control_plane(
        orders_pod.ns(),
        "10.231.2.1/30",
        cp.ns(),
        "ord0",
        "10.231.2.2/30",
    );
    ip(cp.ns(), &format!("addr add {CP_IP}/32 dev lo"));
    // Like a pod's, the default route: the Service's cluster IP must be routable to be
    // redirected.
    ip(
        web_pod.ns(),
        &format!("route add default via {ORDERS_IP} dev eth0"),
    );
    ip(
        orders_pod.ns(),
        &format!("route add default via {WEB_IP} dev eth0"),
    );

    // The control plane, local mode: the injected pods, the orders Service, and a token per
    // service account (what TokenReview does in a cluster).
    let cp_dir = dir.path().join("control-plane");
    std::fs::create_dir_all(cp_dir.join("manifests")).unwrap();
    std::fs::write(cp_dir.join("manifests/shop.yaml"), manifests(&web, &orders)).unwrap();
    std::fs::write(
        cp_dir.join("tokens.yaml"),
        "tokens:\n  - {token: web-token, namespace: shop, serviceAccount: web}\n  \
         - {token: orders-token, namespace: shop, serviceAccount: orders}\n",
    )
    .unwrap();
    let mut cmd = command(&control_plane_bin);
    cmd.arg("--state-dir")
        .arg(cp_dir.join("state"))
        .arg("--token-file")
        .arg(cp_dir.join("tokens.yaml"))
        .arg("--manifests")
        .arg(cp_dir.join("manifests"))
        .args([
            "--grpc-addr",
            "0.0.0.0:15012",
            "--admin-addr",
            "127.0.0.1:15014",
        ]);
    cp.start("control-plane", cmd, 0, logs);
    let cp_ready = wait_for(STEP, || {
        cp.assert_running();
        http_get(&cp, 15014, "/ready").filter(|r| r.status == 200)
    });
    assert!(cp_ready.is_some(), "the control plane is not ready");
    let bundle = cp_dir.join("state/bundle.crt");

    for (pod, k8s, token, mode) in [
        (
            &mut orders_pod,
            &orders,
            "orders-token",
            SidecarMode::Classic,
        ),
        (&mut web_pod, &web, "web-token", SidecarMode::Native),
    ] {
        let name = k8s.metadata.name.clone().unwrap();
        let volumes_dir = dir.path().join(format!("volumes-{name}"));
        let kubelet = Kubelet::volumes(&bins, k8s, &volumes_dir, token, &bundle);

        // 1. weft-init, exactly as injected, as its runAsUser (root with NET_ADMIN).
        let init = find(k8s, "weft-init");
        assert_eq!(uid_of(init), 0);
        let mut cmd = kubelet.container_command(init);
        let printed = pod.ns().run_ok(&mut cmd, netns::COMMAND_TIMEOUT);
        assert!(printed.contains("-j WEFT_INBOUND"), "{printed}");

        // 2. The proxy with the injected environment, as 2102.
        let proxy = find(k8s, "weft-proxy");
        let mut cmd = kubelet.container_command(proxy);
        let env = kubelet.env(k8s, proxy);
        for (key, value) in &env {
            cmd.env(key, value);
        }
        pod.start(&format!("weft-proxy-{name}"), cmd, uid_of(proxy), logs);

        // 3. The app waits for the proxy: the startup probe (native) or the postStart hook
        //    (classic), whose command must return only once the proxy is ready.
        match mode {
            SidecarMode::Native => {
                let (port, path) = probe_target(proxy.startup_probe.as_ref().unwrap());
                let started = wait_for(STEP, || {
                    pod.assert_running();
                    http_get(pod, port, &path).filter(|r| r.status == 200)
                });
                assert!(started.is_some(), "{name}: the startup probe never passed");
            }
            SidecarMode::Classic => {
                let hook = proxy
                    .lifecycle
                    .as_ref()
                    .unwrap()
                    .post_start
                    .as_ref()
                    .unwrap();
                let mut cmd = kubelet.argv(hook.exec.as_ref().unwrap().command.as_ref().unwrap());
                for (key, value) in &env {
                    cmd.env(key, value);
                }
                let uid = uid_of(proxy);
                cmd.uid(uid).gid(uid);
                let started = Instant::now();
                let out = pod
                    .ns()
                    .run_in(|| output_with_timeout(&mut cmd, STEP + Duration::from_secs(5)))
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{name}: postStart failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                eprintln!("{name}: postStart returned after {:?}", started.elapsed());
                let ready = http_get(pod, 15020, "/ready").unwrap();
                assert_eq!(
                    ready.status, 200,
                    "{name}: the hook returned before the proxy was ready"
                );
            }
        }

        // 4. The app's container(s).
        if name.starts_with("orders") {
            for port in [APP_PORT, SKIPPED_PORT] {
                let port = port.to_string();
                pod.start_app(
                    &bins,
                    &format!("app-{port}"),
                    &[
                        "serve",
                        "--port",
                        &port,
                        "--name",
                        &format!("orders-{port}"),
                    ],
                    logs,
                );
            }
            pod.wait_ready(&[APP_PORT, SKIPPED_PORT]);
        } else {
            pod.wait_ready(&[]);
        }

        // The kubelet's probes and Prometheus' scrape, where the pod says.
        for probe in [&proxy.readiness_probe, &proxy.liveness_probe] {
            let (port, path) = probe_target(probe.as_ref().unwrap());
            assert_eq!(
                http_get(pod, port, &path).map(|r| r.status),
                Some(200),
                "{name} {path}"
            );
        }
        let annotations = k8s.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        let port: u16 = annotations["prometheus.io/port"].parse().unwrap();
        let scrape = http_get(pod, port, &annotations["prometheus.io/path"]).unwrap();
        assert_eq!(scrape.status, 200);
        assert!(
            scrape.text().contains("weft_identity_renewals_total"),
            "{name}: {}",
            scrape.text()
        );
    }

    // web's app calls the orders Service: web's proxy balances to orders' pod over mTLS,
    // orders' proxy hands the request to its app on 127.0.0.1.
    let url = format!("http://{ORDERS_CLUSTER_IP}:{APP_PORT}/orders/1");
    let response = wait_for(STEP, || {
        let r = web_pod.app_get(&bins, APP_UID, &url);
        (r.status == 200).then_some(r)
    })
    .unwrap_or_else(|| {
        panic!(
            "GET {url} never succeeded: {:?}",
            web_pod.app_get(&bins, APP_UID, &url)
        )
    });
    assert_eq!(
        echo_field(&response.body, "app"),
        Some("orders-8080"),
        "{response:?}"
    );
    let peer = echo_field(&response.body, "peer").unwrap_or_default();
    assert!(
        peer.starts_with("127.0.0.1:"),
        "orders' app saw {peer}: not through its proxy"
    );
    let inbound = orders_pod.wait_for_count(
        "weft_requests_total",
        &[
            ("direction", "inbound"),
            ("tls", "true"),
            ("client_id", WEB_ID),
        ],
        1.0,
    );
    assert!(
        inbound.sum(
            "weft_requests_total",
            &[("direction", "inbound"), ("tls", "true")]
        ) >= 1.0
    );
    web_pod.wait_for_count("weft_requests_total", &[("direction", "outbound")], 1.0);

    // The annotated port skips orders' proxy: the app sees web's address.
    let url = format!("http://{ORDERS_IP}:{SKIPPED_PORT}/direct");
    let response = web_pod.app_get(&bins, APP_UID, &url);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(echo_field(&response.body, "app"), Some("orders-9090"));
    let peer = echo_field(&response.body, "peer").unwrap_or_default();
    assert!(
        peer.starts_with(&format!("{WEB_IP}:")),
        "the skipped port went through the proxy: {peer}"
    );

    web_pod.assert_running();
    orders_pod.assert_running();
    cp.assert_running();
}
