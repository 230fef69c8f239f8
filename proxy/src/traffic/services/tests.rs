use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use weft_api::proto::discovery::v1 as pb;

use super::*;

// ---- builders ----

/// `shop/<name>` at cluster IP 10.96.0.<n> and two host names, port 80 (`http`) to 8080 on
/// two meshed endpoints.
fn service(name: &str, n: u8) -> pb::Service {
    pb::Service {
        namespace: "shop".into(),
        name: name.into(),
        cluster_ips: vec![format!("10.96.0.{n}")],
        hostnames: vec![
            format!("{name}.shop.svc.cluster.local"),
            format!("{name}.shop"),
        ],
        ports: vec![port("http", 80)],
        endpoints: vec![endpoint(n, 1), endpoint(n, 2)],
        ..Default::default()
    }
}

fn port(name: &str, number: u32) -> pb::ServicePort {
    pb::ServicePort {
        name: name.into(),
        port: number,
        target_port: 8080,
        ..Default::default()
    }
}

fn endpoint(n: u8, host: u8) -> pb::Endpoint {
    pb::Endpoint {
        address: format!("10.0.{n}.{host}"),
        identity: "spiffe://cluster.local/ns/shop/sa/app".into(),
        ready: true,
        ..Default::default()
    }
}

fn breaker_policy(max_requests: u32) -> pb::TrafficPolicy {
    pb::TrafficPolicy {
        circuit_breaker: Some(pb::CircuitBreaker {
            max_requests: Some(max_requests),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A route whose path regex does not compile (also used by the discovery store's tests).
pub(crate) fn bad_route() -> pb::HttpRoute {
    pb::HttpRoute {
        namespace: "shop".into(),
        name: "broken".into(),
        rules: vec![pb::RouteRule {
            matches: vec![pb::RouteMatch {
                path: Some(pb::PathMatch {
                    kind: pb::PathMatchKind::Regex as i32,
                    value: "[".into(),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn build(services: &[pb::Service]) -> ServiceTable {
    ServiceTable::build_from(services, &ServiceTable::default()).expect("builds")
}

fn key(name: &str) -> ServiceKey {
    ("shop".into(), name.into())
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().expect("an IP"), port)
}

/// Which Service answers each lookup of `shop/<name>`'s usual keys (None: nothing).
fn answers(table: &ServiceTable, ip: &str, host: &str) -> [Option<String>; 2] {
    let label = |t: Option<&Arc<Target>>| t.map(|t| t.label.clone());
    [
        label(table.by_addr(addr(ip, 80))),
        label(table.by_host(host, 80)),
    ]
}

// ---- deltas ----

#[test]
fn a_delta_takes_every_other_service_over_as_it_is() {
    let services: Vec<_> = (1..=50).map(|n| service(&format!("s{n}"), n)).collect();
    let before = build(&services);
    let mut changed = service("s7", 7);
    changed.endpoints[0].ready = false;
    let after = before.update([&changed], &[]).expect("applies");
    for n in 1..=50u8 {
        let name = format!("s{n}");
        let old = before.by_name("shop", &name, 80).expect("before");
        let new = after.by_name("shop", &name, 80).expect("after");
        let by_addr = after
            .by_addr(addr(&format!("10.96.0.{n}"), 80))
            .expect("by IP");
        let by_host = after.by_host(&format!("{name}.shop"), 80).expect("by host");
        assert!(Arc::ptr_eq(new, by_addr) && Arc::ptr_eq(new, by_host));
        assert_eq!(Arc::ptr_eq(old, new), n != 7, "{name}");
    }
    assert!(!after.by_name("shop", "s7", 80).expect("s7").endpoints[0].is_ready());
}

#[test]
fn an_upserted_service_keeps_its_unchanged_endpoints_its_breaker_and_its_budget() {
    let mut orders = service("orders", 1);
    orders.traffic_policy = Some(breaker_policy(10));
    let before = build(&[orders.clone()]);
    let old = before
        .by_name("shop", "orders", 80)
        .expect("orders")
        .clone();

    // One endpoint replaced, the other now not ready; a new breaker limit.
    orders.endpoints[0] = endpoint(1, 9);
    orders.endpoints[1].ready = false;
    orders.traffic_policy = Some(breaker_policy(20));
    let after = before.update([&orders], &[]).expect("applies");
    let new = after.by_name("shop", "orders", 80).expect("orders");
    assert_eq!(new.endpoints[0].addr, addr("10.0.1.9", 8080));
    assert!(!old
        .endpoints
        .iter()
        .any(|e| Arc::ptr_eq(e, &new.endpoints[0])));
    assert!(Arc::ptr_eq(&old.endpoints[1], &new.endpoints[1]), "kept");
    assert!(!new.endpoints[1].is_ready());
    assert!(Arc::ptr_eq(&old.service.breaker, &new.service.breaker));
    assert_eq!(new.service.breaker.limits().max_requests, 20, "in place");
    assert!(Arc::ptr_eq(&old.service.budget, &new.service.budget));

    // Another retry budget: a new budget, the same breaker.
    let mut policy = breaker_policy(20);
    policy.retries = Some(pb::Retries {
        budget_ratio: Some(0.5),
        ..Default::default()
    });
    orders.traffic_policy = Some(policy);
    let again = after.update([&orders], &[]).expect("applies");
    let newer = again.by_name("shop", "orders", 80).expect("orders");
    assert!(!Arc::ptr_eq(&new.service.budget, &newer.service.budget));
    assert!(Arc::ptr_eq(&new.service.breaker, &newer.service.breaker));
}

#[test]
fn a_removed_service_leaves_all_three_lookups() {
    let before = build(&[service("orders", 1), service("billing", 2)]);
    let after = before.update([], &[key("orders")]).expect("applies");
    assert_eq!(
        answers(&after, "10.96.0.1", "orders.shop"),
        [None, None],
        "by IP and by host"
    );
    assert!(after.by_name("shop", "orders", 80).is_none());
    assert!(after.by_host("orders.shop.svc.cluster.local", 80).is_none());
    assert_eq!(after.targets().count(), 1);
    // The previous table, which in-flight requests may hold, is untouched.
    assert!(before.by_addr(addr("10.96.0.1", 80)).is_some());
    // Removing and upserting one key in one delta upserts it.
    let back = after
        .update([&service("billing", 3)], &[key("billing")])
        .expect("applies");
    assert!(back.by_addr(addr("10.96.0.3", 80)).is_some());
    assert!(back.by_addr(addr("10.96.0.2", 80)).is_none());
}

#[test]
fn an_upserted_service_that_lost_an_ip_a_host_or_a_port_no_longer_answers_on_it() {
    let mut orders = service("orders", 1);
    orders.cluster_ips.push("fd00::1".into());
    orders.ports.push(port("admin", 9090));
    let before = build(&[orders.clone()]);
    assert!(before.by_addr(addr("fd00::1", 9090)).is_some());
    assert!(before
        .by_host("orders.shop.svc.cluster.local", 9090)
        .is_some());

    orders.cluster_ips.retain(|ip| ip != "fd00::1");
    orders.hostnames.retain(|h| h != "orders.shop");
    orders.ports.retain(|p| p.port != 9090);
    let after = before.update([&orders], &[]).expect("applies");
    assert!(after.by_addr(addr("fd00::1", 80)).is_none(), "the IP");
    assert!(after.by_host("orders.shop", 80).is_none(), "the host");
    assert!(after.by_addr(addr("10.96.0.1", 9090)).is_none(), "the port");
    assert!(after
        .by_host("orders.shop.svc.cluster.local", 9090)
        .is_none());
    assert!(after.by_name("shop", "orders", 9090).is_none());
    // What it kept answers, with the new target.
    let new = after.by_name("shop", "orders", 80).expect("port 80");
    assert!(Arc::ptr_eq(
        new,
        after.by_addr(addr("10.96.0.1", 80)).expect("IP")
    ));
    let host = after
        .by_host("Orders.Shop.svc.cluster.local.", 80)
        .expect("host");
    assert!(Arc::ptr_eq(new, host));
    assert_eq!(after.by_addr.waiting() + after.by_host.waiting(), 0);
}

#[test]
fn a_bad_route_in_a_delta_fails_and_changes_nothing() {
    let mut orders = service("orders", 1);
    orders.traffic_policy = Some(breaker_policy(10));
    let before = build(&[orders.clone(), service("billing", 2)]);
    orders.traffic_policy = Some(breaker_policy(20));
    orders.routes.push(bad_route());
    let error = before
        .update([&service("audit", 3), &orders], &[key("billing")])
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with("Service shop/orders: HTTPRoute shop/broken rule 0"),
        "{message}"
    );
    let old = before.by_name("shop", "orders", 80).expect("still there");
    assert_eq!(old.service.breaker.limits().max_requests, 10, "not updated");
    assert!(before.by_addr(addr("10.96.0.2", 80)).is_some());
    assert!(before.by_name("shop", "audit", 80).is_none());
    // The previous table still takes deltas.
    let after = before.update([&service("audit", 3)], &[]).expect("applies");
    assert!(after.by_addr(addr("10.96.0.3", 80)).is_some());
}

// ---- full syncs ----

#[test]
fn a_full_build_continues_each_service_from_the_previous_table() {
    let before = build(&[service("orders", 1), service("billing", 2)]);
    let mut orders = service("orders", 1);
    orders.endpoints.push(endpoint(1, 3));
    let outbound = pb::Outbound {
        services: vec![orders.clone(), service("audit", 3)],
    };
    let after = ServiceTable::build(&outbound, &before).expect("builds");
    let (old, new) = (
        before.by_name("shop", "orders", 80).expect("old"),
        after.by_name("shop", "orders", 80).expect("new"),
    );
    assert!(Arc::ptr_eq(&old.service.breaker, &new.service.breaker));
    assert!(Arc::ptr_eq(&old.endpoints[0], &new.endpoints[0]));
    assert!(Arc::ptr_eq(&old.endpoints[1], &new.endpoints[1]));
    assert_eq!(new.endpoints.len(), 3);
    assert!(after.by_name("shop", "billing", 80).is_none());
    assert!(after.by_addr(addr("10.96.0.2", 80)).is_none());
    assert!(after.by_host("audit.shop", 80).is_some());
    let mut bad = service("billing", 2);
    bad.routes.push(bad_route());
    let error = ServiceTable::build_from([&orders, &bad], &before).unwrap_err();
    assert!(
        error.to_string().starts_with("Service shop/billing: "),
        "{error}"
    );
}

// ---- two Services, one key ----

#[test]
fn of_two_services_claiming_one_key_the_last_in_order_answers_whatever_the_updates() {
    // a and b both claim 10.96.0.9 and shared.example; b is last in (namespace, name) order.
    let claiming = |name: &str, n: u8| {
        let mut s = service(name, n);
        s.cluster_ips.push("10.96.0.9".into());
        s.hostnames.push("shared.example".into());
        s
    };
    let (a, b) = (claiming("a", 1), claiming("b", 2));
    let shared = |t: &ServiceTable| answers(t, "10.96.0.9", "shared.example");
    let [a_label, b_label] = [Some("shop/a:80".to_owned()), Some("shop/b:80".to_owned())];

    // In the view's order or not, b answers.
    let table = build(&[a.clone(), b.clone()]);
    assert_eq!(shared(&table), [b_label.clone(), b_label.clone()]);
    assert_eq!(shared(&build(&[b.clone(), a.clone()])), shared(&table));
    // a changes: b still answers.
    let table = table.update([&a], &[]).expect("applies");
    assert_eq!(shared(&table), [b_label.clone(), b_label.clone()]);
    // b goes: a takes the keys over, as a rebuild of [a] would give them.
    let table = table.update([], &[key("b")]).expect("applies");
    assert_eq!(shared(&table), [a_label.clone(), a_label.clone()]);
    assert_eq!(shared(&table), shared(&build(std::slice::from_ref(&a))));
    // b comes back, then lets go of the IP (not the host).
    let table = table.update([&b], &[]).expect("applies");
    assert_eq!(shared(&table), [b_label.clone(), b_label.clone()]);
    let mut b_without_ip = b.clone();
    b_without_ip.cluster_ips.retain(|ip| ip != "10.96.0.9");
    let table = table.update([&b_without_ip], &[]).expect("applies");
    assert_eq!(shared(&table), [a_label.clone(), b_label.clone()]);
    assert_eq!(
        shared(&table),
        shared(&build(&[a.clone(), b_without_ip.clone()]))
    );
    // a goes: b keeps the host, nobody has the IP, nothing is left waiting.
    let table = table.update([], &[key("a")]).expect("applies");
    assert_eq!(shared(&table), [None, b_label]);
    assert_eq!(table.by_addr.waiting() + table.by_host.waiting(), 0);
}
