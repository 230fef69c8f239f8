//! The push API end to end: a control plane serving a watched manifest directory, proxies
//! simulated by real gRPC clients over mTLS with workload certificates from its CA.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use tonic::Streaming;
use weft_api::proto::discovery::v1::{
    subscribe_request, Ack, Hello, SubscribeRequest, Sync, ViewUpdate,
};
use weft_api::SpiffeId;
use weft_control_plane::client::{connect_discovery, WorkloadCert};
use weft_control_plane::{Config, Running};

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata:
  name: orders-1
  namespace: shop
  labels: {app: orders}
  annotations: {weft.dev/status: '{"version":"test"}'}
spec:
  serviceAccountName: orders
  containers: [{name: app, image: orders, ports: [{containerPort: 8080, name: http}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  serviceAccountName: web
  containers: [{name: app, image: web}]
---
apiVersion: v1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: orders}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: orders-abc
  namespace: shop
  labels: {kubernetes.io/service-name: orders}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.0.0.5]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: orders-1, namespace: shop}
"#;

fn policy(principal: &str) -> String {
    format!(
        r#"
apiVersion: policy.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: orders-callers, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  action: ALLOW
  rules:
  - from: [{{principals: ["{principal}"]}}]
"#
    )
}

struct Mesh {
    env: common::Env,
    manifests: tempfile::TempDir,
}

impl Mesh {
    fn new() -> Self {
        let manifests = tempfile::tempdir().expect("tempdir");
        std::fs::write(manifests.path().join("cluster.yaml"), CLUSTER).expect("write");
        let mesh = Mesh {
            env: common::Env::new(),
            manifests,
        };
        mesh.write_policy(&policy("spiffe://cluster.local/ns/shop/sa/web"));
        mesh
    }

    fn write_policy(&self, text: &str) {
        write_atomically(&self.manifests.path().join("policy.yaml"), text);
    }

    async fn start(&self) -> Running {
        let config: Config = self.env.config().with_manifests(self.manifests.path());
        weft_control_plane::start(config)
            .await
            .expect("control plane starts")
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// A simulated proxy's subscription.
#[derive(Debug)]
struct Proxy {
    acks: tokio::sync::mpsc::Sender<SubscribeRequest>,
    updates: Streaming<ViewUpdate>,
}

impl Proxy {
    async fn subscribe(
        cp: &Running,
        sa: &str,
        namespace: &str,
        pod: &str,
    ) -> Result<Proxy, tonic::Status> {
        let hello = Hello {
            namespace: namespace.into(),
            pod: pod.into(),
            proxy_version: "test".into(),
            ..Default::default()
        };
        Proxy::subscribe_with(cp, sa, hello).await
    }

    async fn subscribe_with(cp: &Running, sa: &str, hello: Hello) -> Result<Proxy, tonic::Status> {
        let identity: SpiffeId = format!("spiffe://cluster.local/ns/shop/sa/{sa}")
            .parse()
            .expect("id");
        let cert = WorkloadCert::issue(cp.ca(), &identity).expect("issue");
        let mut client = connect_discovery(
            cp.addr,
            &cp.trust_bundle(),
            cp.server_identity.clone(),
            cert,
        )
        .await
        .expect("connect");
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tx.send(SubscribeRequest {
            kind: Some(subscribe_request::Kind::Hello(hello)),
        })
        .await
        .expect("queue hello");
        let updates = client
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Proxy { acks: tx, updates })
    }

    /// Subscribes and waits for the first view, which every subscriber gets.
    async fn with_first_view(
        cp: &Running,
        sa: &str,
        namespace: &str,
        pod: &str,
    ) -> (Proxy, ViewUpdate) {
        let mut proxy = Proxy::subscribe(cp, sa, namespace, pod)
            .await
            .expect("subscribe");
        let first = proxy.next(WAIT).await.expect("initial view");
        (proxy, first)
    }

    async fn next(&mut self, within: Duration) -> Option<ViewUpdate> {
        match tokio::time::timeout(within, self.updates.next()).await {
            Ok(Some(Ok(update))) => Some(update),
            Ok(Some(Err(status))) => panic!("stream failed: {status}"),
            Ok(None) => panic!("stream ended"),
            Err(_) => None,
        }
    }

    async fn ack(&self, version: &str) {
        self.acks
            .send(SubscribeRequest {
                kind: Some(subscribe_request::Kind::Ack(Ack {
                    version: version.into(),
                    error: String::new(),
                    ..Default::default()
                })),
            })
            .await
            .expect("ack");
    }
}

const WAIT: Duration = Duration::from_secs(5);
/// How long to watch for an update that must not come.
const QUIET: Duration = Duration::from_millis(600);

#[tokio::test]
async fn each_proxy_gets_its_view_and_only_the_changes_that_affect_it() {
    let mesh = Mesh::new();
    let cp = mesh.start().await;
    let mut orders = Proxy::subscribe(&cp, "orders", "shop", "orders-1")
        .await
        .expect("subscribe");
    let mut web = Proxy::subscribe(&cp, "web", "shop", "web-1")
        .await
        .expect("subscribe");

    let first = orders.next(WAIT).await.expect("initial view");
    let inbound = first.inbound.as_ref().expect("first update has inbound");
    assert_eq!(inbound.pod, "orders-1");
    assert_eq!(
        inbound.ports.iter().map(|p| p.port).collect::<Vec<_>>(),
        vec![8080]
    );
    assert_eq!(inbound.policies.len(), 1);
    assert_eq!(inbound.policies[0].name, "orders-callers");
    assert_eq!(
        inbound.policies[0].rules[0].from[0].principals,
        vec!["spiffe://cluster.local/ns/shop/sa/web"]
    );
    let outbound = first.outbound.as_ref().expect("first update has outbound");
    let service = &outbound.services[0];
    assert_eq!(
        (service.namespace.as_str(), service.name.as_str()),
        ("shop", "orders")
    );
    assert_eq!(service.cluster_ips, vec!["10.96.0.10"]);
    assert!(service
        .hostnames
        .contains(&"orders.shop.svc.cluster.local".to_owned()));
    assert_eq!(service.endpoints[0].address, "10.0.0.5");
    assert_eq!(
        service.endpoints[0].identity,
        "spiffe://cluster.local/ns/shop/sa/orders"
    );
    assert_eq!(service.endpoints[0].ports[0].port, 8080);
    orders.ack(&first.version).await;

    let web_first = web.next(WAIT).await.expect("initial view");
    assert_eq!(
        web_first.inbound.as_ref().expect("inbound").policies.len(),
        0,
        "selects app=orders only"
    );
    web.ack(&web_first.version).await;

    // A policy edit reaches the workload it selects, as an inbound-only update.
    let edited = Instant::now();
    mesh.write_policy(&policy("spiffe://cluster.local/ns/shop/sa/frontend"));
    let update = orders.next(WAIT).await.expect("pushed after the edit");
    let took = edited.elapsed();
    assert!(update.outbound.is_none(), "outbound did not change");
    let principals =
        &update.inbound.as_ref().expect("inbound changed").policies[0].rules[0].from[0].principals;
    assert_eq!(
        principals,
        &vec!["spiffe://cluster.local/ns/shop/sa/frontend"]
    );
    assert_ne!(update.version, first.version);
    assert!(
        took < Duration::from_secs(1),
        "pushed within a second (took {took:?})"
    );
    orders.ack(&update.version).await;
    assert!(
        web.next(QUIET).await.is_none(),
        "web is not selected: nothing sent"
    );

    // The registry knows what each proxy acked.
    let deadline = Instant::now() + WAIT;
    loop {
        let subscribers = cp.subscribers();
        let acked = subscribers
            .iter()
            .find(|s| s.pod == "orders-1")
            .map(|s| s.acked_version.clone());
        if acked.as_deref() == Some(update.version.as_str()) {
            assert_eq!(subscribers.len(), 2);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ack not recorded: {subscribers:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("policy edit to push: {took:?}");
}

#[tokio::test]
async fn a_proxy_may_only_subscribe_for_its_own_pod_and_namespace() {
    let mesh = Mesh::new();
    let cp = mesh.start().await;
    let wrong_pod = Proxy::subscribe(&cp, "web", "shop", "orders-1")
        .await
        .expect_err("refused");
    assert_eq!(wrong_pod.code(), tonic::Code::PermissionDenied);
    assert!(
        wrong_pod
            .message()
            .contains("runs as spiffe://cluster.local/ns/shop/sa/orders"),
        "{wrong_pod:?}"
    );
    let wrong_namespace = Proxy::subscribe(&cp, "web", "billing", "pay-1")
        .await
        .expect_err("refused");
    assert_eq!(wrong_namespace.code(), tonic::Code::PermissionDenied);

    // Without a client certificate: the same port serves Certify, but not Subscribe.
    let mut anonymous = weft_api::proto::discovery::v1::discovery_client::DiscoveryClient::new(
        weft_control_plane::client::channel(
            cp.addr,
            weft_control_plane::client::client_config(
                &cp.trust_bundle(),
                cp.server_identity.clone(),
            )
            .expect("config"),
        )
        .await
        .expect("connect"),
    );
    let Err(status) = anonymous
        .subscribe(tokio_stream::iter(Vec::<SubscribeRequest>::new()))
        .await
    else {
        panic!("an anonymous subscription is refused");
    };
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    // A pod the index does not know yet gets its namespace's catch-all view.
    let mut unknown = Proxy::subscribe(&cp, "web", "shop", "web-2")
        .await
        .expect("subscribe");
    let view = unknown.next(WAIT).await.expect("view");
    assert_eq!(view.inbound.expect("inbound").pod, "web-2");
}

/// A policy without a selector: it applies to every pod of `shop`, known or not.
fn shop_wide(principal: &str) -> String {
    format!(
        "apiVersion: policy.weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata: {{name: shop-wide, namespace: shop}}\n\
         spec: {{rules: [{{from: [{{principals: [\"{principal}\"]}}]}}]}}\n"
    )
}

fn principals(inbound: &weft_api::proto::discovery::v1::Inbound) -> Vec<(&str, &str)> {
    inbound
        .policies
        .iter()
        .flat_map(|p| p.rules.iter().map(move |r| (p.name.as_str(), r)))
        .flat_map(|(name, r)| r.from.iter().map(move |f| (name, f)))
        .flat_map(|(name, f)| f.principals.iter().map(move |p| (name, p.as_str())))
        .collect()
}

#[tokio::test]
async fn an_unknown_pods_proxy_gets_namespace_wide_policy_changes_then_its_own_view() {
    let mesh = Mesh::new();
    let cp = mesh.start().await;
    let (mut orders, first) = Proxy::with_first_view(&cp, "orders", "shop", "orders-1").await;
    orders.ack(&first.version).await;
    // Its Pod is not in the state yet: the namespace's view, with its name.
    let mut early = Proxy::subscribe(&cp, "web", "shop", "web-2")
        .await
        .expect("subscribe");
    let view = early.next(WAIT).await.expect("initial view");
    let inbound = view.inbound.as_ref().expect("inbound");
    assert_eq!(inbound.pod, "web-2");
    assert!(
        inbound.policies.is_empty(),
        "orders-callers selects app=orders"
    );
    early.ack(&view.version).await;

    // A policy that selects every pod, then an edit of it: each pushed, inbound only.
    let wide = mesh.manifests.path().join("shop-wide.yaml");
    for sa in ["frontend", "admin"] {
        let principal = format!("spiffe://cluster.local/ns/shop/sa/{sa}");
        write_atomically(&wide, &shop_wide(&principal));
        let update = early.next(WAIT).await.expect("pushed after the edit");
        assert!(update.outbound.is_none(), "outbound did not change");
        let inbound = update.inbound.as_ref().expect("inbound changed");
        assert_eq!(inbound.pod, "web-2");
        assert_eq!(principals(inbound), [("shop-wide", principal.as_str())]);
        early.ack(&update.version).await;
        let selected = orders.next(WAIT).await.expect("orders-1 is selected too");
        orders.ack(&selected.version).await;
    }

    // An edit that concerns orders-1 alone: orders gets it, web-2's proxy nothing.
    mesh.write_policy(&policy("spiffe://cluster.local/ns/shop/sa/frontend"));
    orders.next(WAIT).await.expect("orders-callers selects it");
    assert!(
        early.next(QUIET).await.is_none(),
        "nothing changed for web-2"
    );

    // web-2's Pod appears: its own view, with its port.
    write_atomically(
        &mesh.manifests.path().join("web-2.yaml"),
        "apiVersion: v1\nkind: Pod\n\
         metadata: {name: web-2, namespace: shop, labels: {app: web}}\n\
         spec: {serviceAccountName: web, containers: [{name: app, image: web, \
         ports: [{containerPort: 9090, name: http}]}]}\n",
    );
    let update = early.next(WAIT).await.expect("its own view");
    let inbound = update.inbound.as_ref().expect("inbound changed");
    assert_eq!(inbound.pod, "web-2");
    assert_eq!(
        inbound.ports.iter().map(|p| p.port).collect::<Vec<_>>(),
        [9090]
    );
    assert_eq!(
        principals(inbound),
        [("shop-wide", "spiffe://cluster.local/ns/shop/sa/admin")]
    );
}

#[tokio::test]
async fn invalid_input_is_reported_and_the_last_good_state_stays() {
    let mesh = Mesh::new();
    let cp = mesh.start().await;
    let (mut orders, first) = Proxy::with_first_view(&cp, "orders", "shop", "orders-1").await;

    mesh.write_policy("apiVersion: policy.weft.dev/v1alpha1\nkind: [broken");
    assert!(
        orders.next(QUIET).await.is_none(),
        "invalid YAML changes nothing"
    );
    let problems = wait_for_problems(&cp).await;
    assert!(problems[0].source.ends_with("policy.yaml"), "{problems:?}");
    assert!(problems[0].message.contains("invalid YAML"));
    assert!(problems[0].kept_last_good);

    // A well-formed object whose principal pattern does not parse: named with its field.
    mesh.write_policy(&policy("spiffe://cluster.local/ns/*/sa/web"));
    assert!(
        orders.next(QUIET).await.is_none(),
        "invalid object changes nothing"
    );
    let problems = wait_for_problems(&cp).await;
    assert_eq!(
        problems[0].object.as_deref(),
        Some("AuthorizationPolicy shop/orders-callers")
    );
    assert_eq!(
        problems[0].field.as_deref(),
        Some("spec.rules[0].from[0].principals[0]"),
        "{problems:?}"
    );
    assert!(problems[0].kept_last_good);

    // The admin endpoint shows the same, and the metric counts it.
    let admin = cp.admin_addr.expect("admin server");
    let body = http_get(admin, "/debug/problems").await;
    assert!(
        body.contains("spec.rules[0].from[0].principals[0]"),
        "{body}"
    );
    let metrics = http_get(admin, "/metrics").await;
    assert!(
        metrics.lines().any(|l| l == "weft_cp_invalid_objects 1"),
        "the gauge, by its exact name:\n{metrics}"
    );

    // Fixed: pushed, and the problem is gone.
    mesh.write_policy(&policy("spiffe://cluster.local/ns/shop/sa/frontend"));
    let update = orders.next(WAIT).await.expect("fixed policy pushed");
    assert_ne!(update.version, first.version);
    assert_eq!(cp.problems(), vec![]);
}

#[tokio::test]
async fn a_restarted_control_plane_serves_the_same_versions() {
    let mesh = Mesh::new();
    let cp = mesh.start().await;
    let mut orders = Proxy::subscribe(&cp, "orders", "shop", "orders-1")
        .await
        .expect("subscribe");
    let before = orders.next(WAIT).await.expect("view").version;
    cp.shutdown().await.expect("shutdown");

    let cp = mesh.start().await;
    let mut orders = Proxy::subscribe(&cp, "orders", "shop", "orders-1")
        .await
        .expect("subscribe");
    let after = orders.next(WAIT).await.expect("view").version;
    assert_eq!(before, after);
}

#[tokio::test]
async fn a_proxy_with_deltas_gets_services_then_only_the_one_that_changed() {
    let mesh = Mesh::new();
    let billing = |ready: bool| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: billing, namespace: shop}}\n\
             spec: {{clusterIP: 10.96.0.11, ports: [{{name: http, port: 80}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: billing-1, namespace: shop, labels: {{kubernetes.io/service-name: billing}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\n\
             endpoints: [{{addresses: [10.0.0.6], conditions: {{ready: {ready}}}}}]\n"
        )
    };
    let billing_file = mesh.manifests.path().join("billing.yaml");
    write_atomically(&billing_file, &billing(true));
    let cp = mesh.start().await;
    let hello = |services_version: &str| Hello {
        namespace: "shop".into(),
        pod: "orders-1".into(),
        outbound_deltas: true,
        services_version: services_version.into(),
        ..Default::default()
    };
    let mut orders = Proxy::subscribe_with(&cp, "orders", hello(""))
        .await
        .expect("subscribe");
    let first = orders.next(WAIT).await.expect("initial view");
    assert!(!first.more, "a small mesh fits one message");
    assert!(first.inbound.is_some());
    assert!(first.outbound.is_none(), "not the whole view");
    let sync = first.services.expect("Services");
    assert_eq!(sync.sync, Sync::Full as i32);
    let names: Vec<&str> = sync.upserted.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["billing", "orders"]);
    orders.ack(&first.version).await;

    // billing's endpoint turns unready: a delta with billing alone.
    write_atomically(&billing_file, &billing(false));
    let update = orders.next(WAIT).await.expect("pushed after the edit");
    assert!(update.inbound.is_none());
    let delta = update.services.expect("Services");
    assert_eq!(
        (delta.sync, delta.base.as_str()),
        (Sync::Delta as i32, sync.version.as_str())
    );
    assert_eq!(delta.upserted.len(), 1);
    assert_eq!(delta.upserted[0].name, "billing");
    assert!(!delta.upserted[0].endpoints[0].ready);
    orders.ack(&update.version).await;

    // Reconnecting with the current Services: no Services at all in the first update.
    drop(orders);
    let mut again = Proxy::subscribe_with(&cp, "orders", hello(&delta.version))
        .await
        .expect("subscribe");
    let first = again.next(WAIT).await.expect("initial view");
    assert!(first.services.is_none() && first.outbound.is_none());
    assert_eq!(
        first.version, update.version,
        "the same state, the same version"
    );
}

async fn wait_for_problems(cp: &Running) -> Vec<weft_control_plane::state::Problem> {
    let deadline = Instant::now() + WAIT;
    loop {
        let problems = cp.problems();
        if !problems.is_empty() {
            return problems;
        }
        assert!(Instant::now() < deadline, "no problem reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect admin");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
    let mut body = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut body))
        .await
        .expect("admin answers")
        .expect("read");
    body
}
