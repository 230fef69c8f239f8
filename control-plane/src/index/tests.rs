//! The index against small clusters written as YAML: selection, defaults and their
//! annotations, endpoints and their identities, route and traffic-policy attachment, last
//! good conversions, which hashes a change moves, and the outbound delta between versions.

use prost::Message;

use super::*;
use crate::state::decode;

mod unknown_pods;

fn state_from(yaml: &str) -> State {
    let mut state = State::default();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value: serde_yaml::Value = serde::Deserialize::deserialize(document).expect("yaml");
        if value.is_null() {
            continue;
        }
        let (key, object) = decode(serde_json::to_value(value).expect("json")).expect("valid");
        state.insert(&key, object);
    }
    state
}

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, annotations: {weft.dev/default-policy: authenticated, weft.dev/mtls-mode: strict}}
---
apiVersion: v1
kind: Namespace
metadata: {name: lab, annotations: {weft.dev/default-policy: sometimes}}
---
apiVersion: v1
kind: Pod
metadata: {name: orders-1, namespace: shop, labels: {app: orders, tier: back}, annotations: {weft.dev/status: injected}}
spec:
  serviceAccountName: orders
  containers:
  - {name: app, image: x, ports: [{containerPort: 9090, name: grpc}, {containerPort: 8080, name: http}]}
  - {name: side, image: y, ports: [{containerPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}, annotations: {weft.dev/mtls-mode: permissive}}
spec: {containers: [{name: app, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: probe, namespace: lab, labels: {app: orders}}
spec: {serviceAccountName: probe, containers: [{name: app, image: x}]}
---
apiVersion: policy.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: orders-only, namespace: shop}
spec: {selector: {matchLabels: {app: orders}}, rules: [{}]}
---
apiVersion: policy.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: all-of-shop, namespace: shop}
spec: {action: AUDIT, rules: [{}]}
---
apiVersion: v1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  clusterIPs: [10.96.0.10, "fd00::10"]
  ports: [{name: http, port: 80, targetPort: 8080}, {name: grpc, port: 90, targetPort: grpc}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: orders-1, namespace: shop, labels: {kubernetes.io/service-name: orders}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.0.0.9], conditions: {ready: false}, targetRef: {kind: Pod, name: web-1}}
- {addresses: [10.0.0.5], targetRef: {kind: Pod, name: orders-1}}
- {addresses: [10.0.0.7]}
"#;

fn settings() -> MeshSettings {
    MeshSettings::default()
}

fn inbound(views: &Views, ns: &str, pod: &str) -> pb::Inbound {
    views.inbound_for(ns, pod).message.clone()
}

fn policy_names(view: &pb::Inbound) -> Vec<&str> {
    view.policies.iter().map(|p| p.name.as_str()).collect()
}

#[test]
fn policies_select_by_labels_within_their_namespace() {
    let (views, _) = Index::new(settings()).compute(&state_from(CLUSTER));
    assert_eq!(
        policy_names(&inbound(&views, "shop", "orders-1")),
        ["all-of-shop", "orders-only"]
    );
    assert_eq!(
        policy_names(&inbound(&views, "shop", "web-1")),
        ["all-of-shop"]
    );
    assert!(
        inbound(&views, "lab", "probe").policies.is_empty(),
        "other namespace"
    );
    // A pod the index does not know: only the namespace-wide policies.
    assert_eq!(
        policy_names(&inbound(&views, "shop", "new-pod")),
        ["all-of-shop"]
    );
}

#[test]
fn defaults_come_from_pod_then_namespace_then_mesh() {
    let (views, problems) = Index::new(settings()).compute(&state_from(CLUSTER));
    let orders = inbound(&views, "shop", "orders-1");
    assert_eq!(
        orders.default_policy,
        pb::DefaultPolicy::Authenticated as i32
    );
    assert_eq!(orders.mtls_mode, pb::MtlsMode::Strict as i32);
    let web = inbound(&views, "shop", "web-1");
    assert_eq!(
        web.mtls_mode,
        pb::MtlsMode::Permissive as i32,
        "pod annotation wins"
    );
    let unknown = inbound(&views, "shop", "new-pod");
    assert_eq!(
        unknown.default_policy,
        pb::DefaultPolicy::Authenticated as i32
    );
    // An invalid annotation: reported, and the mesh default applies.
    let probe = inbound(&views, "lab", "probe");
    assert_eq!(probe.default_policy, pb::DefaultPolicy::Allow as i32);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].object.as_deref(), Some("Namespace lab"));
    assert_eq!(
        problems[0].field.as_deref(),
        Some("metadata.annotations[weft.dev/default-policy]")
    );
    // Ports: every container's, once each, sorted.
    let ports: Vec<_> = orders
        .ports
        .iter()
        .map(|p| (p.port, p.name.as_str()))
        .collect();
    assert_eq!(ports, [(8080, "http"), (9090, "grpc")]);
}

#[test]
fn pod_identities_come_from_service_accounts() {
    let (views, _) = Index::new(settings()).compute(&state_from(CLUSTER));
    assert_eq!(
        views.identity_of("shop", "orders-1"),
        Some("spiffe://cluster.local/ns/shop/sa/orders")
    );
    assert_eq!(
        views.identity_of("shop", "web-1"),
        Some("spiffe://cluster.local/ns/shop/sa/default")
    );
    assert_eq!(views.identity_of("shop", "nope"), None);
}

#[test]
fn endpoints_carry_the_identity_only_of_meshed_pods() {
    let (views, _) = Index::new(settings()).compute(&state_from(CLUSTER));
    let services = views.outbound.decode().expect("decodes");
    let service = &services[0];
    assert_eq!(service.cluster_ips, ["10.96.0.10", "fd00::10"]);
    assert_eq!(
        service
            .ports
            .iter()
            .map(|p| (p.port, p.target_port))
            .collect::<Vec<_>>(),
        [(80, 8080), (90, 0)],
        "a named target port is resolved through the slice"
    );
    let endpoints: Vec<_> = service
        .endpoints
        .iter()
        .map(|e| {
            (
                e.address.as_str(),
                e.identity.as_str(),
                e.ready,
                e.workload.as_str(),
            )
        })
        .collect();
    assert_eq!(
        endpoints,
        [
            (
                "10.0.0.5",
                "spiffe://cluster.local/ns/shop/sa/orders",
                true,
                "shop/orders-1"
            ),
            ("10.0.0.7", "", true, ""),
            ("10.0.0.9", "", false, "shop/web-1"),
        ]
    );
}

#[test]
fn endpoints_sharing_an_address_are_kept_apart_by_their_ports() {
    // Local mode: every sidecar listens on 127.0.0.1, one slice per pod. Only the same
    // address with the same ports (one endpoint in two slices) is listed once.
    let slice = |name: &str, port: u16| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}, namespace: shop, labels: {{kubernetes.io/service-name: orders}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n"
        )
    };
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: orders, namespace: shop}}\n\
         spec: {{ports: [{{name: http, port: 80}}]}}\n---\n{}---\n{}---\n{}",
        slice("a", 17206),
        slice("b", 17306),
        slice("a-again", 17206)
    );
    let (views, _) = Index::new(settings()).compute(&state_from(&yaml));
    let ports: Vec<u32> = views.outbound.decode().expect("decodes")[0]
        .endpoints
        .iter()
        .map(|e| e.ports[0].port)
        .collect();
    assert_eq!(ports, [17206, 17306]);
}

const ROUTES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b-split, namespace: shop, creationTimestamp: "2026-01-02T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: orders, port: 80}]
  rules: [{backendRefs: [{name: orders, port: 80, weight: 90}, {name: orders-v2, port: 80, weight: 10}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a-newer, namespace: shop, creationTimestamp: "2026-03-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: orders}]
  rules: [{matches: [{path: {type: Exact, value: /health}}], backendRefs: [{name: orders, port: 80}]}]
---
apiVersion: policy.weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: old, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}
spec: {targetRef: {kind: Service, name: orders}, retries: {attempts: 2}}
---
apiVersion: policy.weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: new, namespace: shop, creationTimestamp: "2026-02-01T00:00:00Z"}
spec: {targetRef: {kind: Service, name: orders}, retries: {attempts: 5}}
"#;

#[test]
fn routes_attach_oldest_first_and_the_oldest_traffic_policy_wins() {
    let state = state_from(&format!("{CLUSTER}---\n{ROUTES}"));
    let (views, problems) = Index::new(settings()).compute(&state);
    let services = views.outbound.decode().expect("decodes");
    let service = &services[0];
    let routes: Vec<_> = service
        .routes
        .iter()
        .map(|r| (r.name.as_str(), r.ports.clone()))
        .collect();
    assert_eq!(routes, [("b-split", vec![80]), ("a-newer", vec![])]);
    assert_eq!(service.routes[0].rules[0].backends[1].weight, 10);
    let policy = service.traffic_policy.as_ref().expect("attached");
    assert_eq!(policy.name, "old");
    assert_eq!(policy.retries.as_ref().and_then(|r| r.attempts), Some(2));
    let conflict = problems
        .iter()
        .find(|p| p.object.as_deref() == Some("TrafficPolicy shop/new"))
        .expect("the loser is reported");
    assert_eq!(conflict.field.as_deref(), Some("spec.targetRef"));
}

#[test]
fn an_invalid_conversion_keeps_the_last_good_one_while_the_object_exists() {
    let mut index = Index::new(settings());
    let good = state_from(CLUSTER);
    index.compute(&good);

    let broken = CLUSTER.replace(
        "spec: {selector: {matchLabels: {app: orders}}, rules: [{}]}",
        "spec: {selector: {matchLabels: {app: orders}}, rules: [{from: [{principals: [\"a*b\"]}]}]}",
    );
    let (views, problems) = index.compute(&state_from(&broken));
    assert_eq!(
        policy_names(&inbound(&views, "shop", "orders-1")),
        ["all-of-shop", "orders-only"]
    );
    let problem = problems
        .iter()
        .find(|p| p.object.as_deref() == Some("AuthorizationPolicy shop/orders-only"))
        .expect("reported");
    assert!(problem.kept_last_good);
    assert_eq!(
        problem.field.as_deref(),
        Some("spec.rules[0].from[0].principals[0]")
    );

    // Deleted, then re-created broken: nothing to keep any more.
    let mut deleted = state_from(CLUSTER);
    deleted
        .authorization_policies
        .remove(&("shop".to_owned(), "orders-only".to_owned()));
    index.compute(&deleted);
    let (views, problems) = index.compute(&state_from(&broken));
    assert_eq!(
        policy_names(&inbound(&views, "shop", "orders-1")),
        ["all-of-shop"]
    );
    assert!(problems.iter().any(|p| !p.kept_last_good));
}

#[test]
fn a_policy_change_moves_only_the_hashes_it_affects() {
    let mut index = Index::new(settings());
    let (before, _) = index.compute(&state_from(CLUSTER));
    let (same, _) = Index::new(settings()).compute(&state_from(CLUSTER));
    assert_eq!(
        before.inbound_for("shop", "orders-1").hash,
        same.inbound_for("shop", "orders-1").hash
    );
    assert_eq!(
        before.outbound.hash, same.outbound.hash,
        "stable across index instances"
    );

    let edited = CLUSTER.replace(
        "spec: {selector: {matchLabels: {app: orders}}, rules: [{}]}",
        "spec: {selector: {matchLabels: {app: orders}}, action: DENY, rules: [{}]}",
    );
    let (after, _) = index.compute(&state_from(&edited));
    assert_ne!(
        before.inbound_for("shop", "orders-1").hash,
        after.inbound_for("shop", "orders-1").hash
    );
    assert_eq!(
        before.inbound_for("shop", "web-1").hash,
        after.inbound_for("shop", "web-1").hash
    );
    assert_eq!(before.outbound.hash, after.outbound.hash);
    assert_eq!(
        version(
            before.inbound_for("shop", "web-1").hash,
            before.outbound.hash
        ),
        version(after.inbound_for("shop", "web-1").hash, after.outbound.hash)
    );
}

/// A Service `name` in `shop` with one endpoint, ready or not.
fn service_yaml(name: &str, ready: bool) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec: {{clusterIP: 10.96.1.1, ports: [{{name: http, port: 80}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-1, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\n\
         endpoints: [{{addresses: [10.0.1.1], conditions: {{ready: {ready}}}}}]\n"
    )
}

fn names(parts: &[Arc<ServicePart>]) -> Vec<String> {
    parts.iter().map(|p| p.key()).collect()
}

#[test]
fn the_outbound_delta_has_what_was_added_changed_or_removed_and_nothing_else() {
    let mut index = Index::new(settings());
    let base = format!(
        "{CLUSTER}{}{}",
        service_yaml("billing", true),
        service_yaml("cart", true)
    );
    let (first, _) = index.compute(&state_from(&base));
    assert!(first.outbound.delta.is_none(), "nothing before the first");
    assert_eq!(
        names(&first.outbound.services),
        ["shop/billing", "shop/cart", "shop/orders"]
    );

    // Added.
    let added = format!("{base}{}", service_yaml("audit", true));
    let (second, _) = index.compute(&state_from(&added));
    let delta = second.outbound.delta.as_ref().expect("a delta");
    assert_eq!(delta.base, first.outbound.hash);
    assert_eq!(names(&delta.upserted), ["shop/audit"]);
    assert!(delta.removed.is_empty());
    // Unchanged Services are the previous version's, not copies.
    for (old, new) in first
        .outbound
        .services
        .iter()
        .zip(&second.outbound.services[1..])
    {
        assert!(Arc::ptr_eq(old, new), "{} was copied", new.key());
    }

    // Changed: an endpoint turns unready.
    let changed = added.replace(&service_yaml("cart", true), &service_yaml("cart", false));
    let (third, _) = index.compute(&state_from(&changed));
    let delta = third.outbound.delta.as_ref().expect("a delta");
    assert_eq!(delta.base, second.outbound.hash);
    assert_eq!(names(&delta.upserted), ["shop/cart"]);
    assert!(delta.removed.is_empty());
    let cart = delta.upserted[0].decode().expect("decodes");
    assert!(!cart.endpoints[0].ready);

    // Removed.
    let removed = changed.replace(&service_yaml("billing", true), "");
    let (fourth, _) = index.compute(&state_from(&removed));
    let delta = fourth.outbound.delta.as_ref().expect("a delta");
    assert!(delta.upserted.is_empty());
    assert_eq!(delta.removed, ["shop/billing"]);

    // The delta's messages say so on the wire.
    let message = pb::Services::decode(delta.chunks[0].clone()).expect("decodes");
    assert_eq!(delta.chunks.len(), 1);
    assert_eq!(message.sync, pb::Sync::Delta as i32);
    assert_eq!(message.base, third.outbound.version());
    assert_eq!(message.version, fourth.outbound.version());
    assert_eq!(message.removed, ["shop/billing"]);

    // A policy edit leaves the outbound view as it was: the same one, its delta included
    // (a proxy still one version behind gets that).
    let policy_edit = removed.replace(
        "spec: {selector: {matchLabels: {app: orders}}, rules: [{}]}",
        "spec: {selector: {matchLabels: {app: orders}}, action: DENY, rules: [{}]}",
    );
    let (fifth, _) = index.compute(&state_from(&policy_edit));
    assert!(Arc::ptr_eq(&fourth.outbound, &fifth.outbound));
}

#[test]
fn outbound_versions_are_stable_and_name_the_set() {
    let yaml = format!("{CLUSTER}{}", service_yaml("cart", true));
    let (one, _) = Index::new(settings()).compute(&state_from(&yaml));
    let (other, _) = Index::new(settings()).compute(&state_from(&yaml));
    assert_eq!(
        one.outbound.hash, other.outbound.hash,
        "across index instances"
    );
    for (a, b) in one.outbound.services.iter().zip(&other.outbound.services) {
        assert_eq!((a.hash, &a.encoded), (b.hash, &b.encoded));
    }
    assert_eq!(one.outbound.version(), hex(one.outbound.hash));
    assert_eq!(parse_hex(&one.outbound.version()), Some(one.outbound.hash));
    // The version is the per-Service hashes in key order: reached by another path (a
    // Service added, then removed again) the same set has the same version.
    let mut index = Index::new(settings());
    index.compute(&state_from(CLUSTER));
    let (back, _) = index.compute(&state_from(&yaml));
    assert_eq!(back.outbound.hash, one.outbound.hash);
    let (without, _) = index.compute(&state_from(CLUSTER));
    assert_ne!(without.outbound.hash, one.outbound.hash);
    // Changing any Service changes it.
    let unready = format!("{CLUSTER}{}", service_yaml("cart", false));
    let (changed, _) = Index::new(settings()).compute(&state_from(&unready));
    assert_ne!(changed.outbound.hash, one.outbound.hash);
}
