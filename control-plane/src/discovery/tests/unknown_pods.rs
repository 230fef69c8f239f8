//! Subscriptions for pods the index does not know: sent nothing while nothing changes for
//! them, their namespace's new fallback once when it changes, and their own view once their
//! Pod appears.

use std::time::Duration;

use tokio::sync::mpsc::error::TryRecvError;

use super::*;

const PROXIES: usize = 20;

/// `shop` with a Service and policy `orders-only` (selects app=orders), pod `other/x-<round>`
/// (a change each round that concerns no proxy of `shop`), policy `shop-wide` (no selector)
/// allowing `principal` if given, and pod `shop/new-<known>` (app=orders, port 7070) if given.
fn cluster(round: usize, principal: Option<&str>, known: Option<usize>) -> State {
    let mut objects = vec![
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("x-{round}"), "namespace": "other"},
            "spec": {"containers": [{"name": "app", "image": "x"}]},
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "http", "port": 80}]},
        }),
        json!({
            "apiVersion": "policy.weft.dev/v1alpha1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "orders-only", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": "orders"}}, "rules": [{}]},
        }),
    ];
    if let Some(principal) = principal {
        objects.push(json!({
            "apiVersion": "policy.weft.dev/v1alpha1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "shop-wide", "namespace": "shop"},
            "spec": {"rules": [{"from": [{"principals": [principal]}]}]},
        }));
    }
    if let Some(known) = known {
        objects.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("new-{known}"), "namespace": "shop",
                "labels": {"app": "orders"}},
            "spec": {"serviceAccountName": "orders",
                "containers": [{"name": "app", "image": "x", "ports": [{"containerPort": 7070}]}]},
        }));
    }
    let mut state = State::default();
    for object in objects {
        let (key, object) = decode(object).expect("valid");
        state.insert(&key, object);
    }
    state
}

fn hello_for(pod: usize) -> pb::Hello {
    pb::Hello {
        namespace: "shop".into(),
        pod: format!("new-{pod}"),
        outbound_deltas: true,
        ..Default::default()
    }
}

/// Asserts that no proxy but `except` was sent anything, once every subscription had time
/// to run.
async fn quiet_but(proxies: &mut [Proxy], except: Option<usize>) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, proxy) in proxies.iter_mut().enumerate() {
        if Some(i) != except {
            let next = proxy.pushes.try_recv();
            assert!(
                matches!(next, Err(TryRecvError::Empty)),
                "new-{i} was sent {next:?}"
            );
        }
    }
}

fn policy_names(inbound: &pb::Inbound) -> Vec<&str> {
    inbound.policies.iter().map(|p| p.name.as_str()).collect()
}

#[tokio::test]
async fn unknown_pods_get_only_their_namespaces_changes_then_their_own_view() {
    let (views, _) = watch::channel(None);
    let mut index = Index::new(Default::default());
    publish(&views, &mut index, &cluster(0, None, None));
    let mut proxies: Vec<Proxy> = (0..PROXIES)
        .map(|i| subscribe(&views, hello_for(i)))
        .collect();
    for (i, proxy) in proxies.iter_mut().enumerate() {
        let first = proxy.update().await;
        let inbound = first[0].0.inbound.as_ref().expect("the inbound part");
        assert_eq!(inbound.pod, format!("new-{i}"));
        assert!(
            inbound.policies.is_empty(),
            "orders-only selects app=orders"
        );
        assert!(first[0].0.services.is_some(), "a full sync");
    }

    // Changes elsewhere: nothing for them.
    for round in 1..=5 {
        publish(&views, &mut index, &cluster(round, None, None));
    }
    quiet_but(&mut proxies, None).await;

    // A policy that selects every pod of `shop`: each gets it once, inbound only, its name in.
    let principal = "spiffe://cluster.local/ns/shop/sa/web";
    publish(&views, &mut index, &cluster(6, Some(principal), None));
    for (i, proxy) in proxies.iter_mut().enumerate() {
        let update = proxy.update().await;
        assert_eq!(update.len(), 1);
        let message = &update[0].0;
        assert!(message.services.is_none(), "the Services did not change");
        let inbound = message.inbound.as_ref().expect("the inbound part");
        assert_eq!(inbound.pod, format!("new-{i}"));
        assert_eq!(policy_names(inbound), ["shop-wide"]);
        let from = &inbound.policies[0].rules[0].from[0];
        assert_eq!(from.principals, [principal]);
    }
    publish(&views, &mut index, &cluster(7, Some(principal), None));
    quiet_but(&mut proxies, None).await;

    // new-3's Pod appears: its own view (its port, the policy selecting its labels), to it
    // alone.
    publish(&views, &mut index, &cluster(8, Some(principal), Some(3)));
    let update = proxies[3].update().await;
    let inbound = update[0].0.inbound.as_ref().expect("the inbound part");
    assert_eq!(inbound.pod, "new-3");
    assert_eq!(policy_names(inbound), ["orders-only", "shop-wide"]);
    assert_eq!(
        inbound.ports.iter().map(|p| p.port).collect::<Vec<_>>(),
        [7070]
    );
    quiet_but(&mut proxies, Some(3)).await;
}

#[tokio::test]
async fn an_unknown_pods_view_is_not_rebuilt_between_wake_ups() {
    let (views, _) = watch::channel(None);
    let mut index = Index::new(Default::default());
    let principal = "spiffe://cluster.local/ns/shop/sa/web";
    publish(&views, &mut index, &cluster(0, Some(principal), None));
    let mut proxy = subscribe(&views, hello_for(0));
    let first = proxy.push().await.expect("a push");
    let sent = first.inbound.expect("the inbound part");
    for round in 1..=3 {
        publish(&views, &mut index, &cluster(round, Some(principal), None));
    }
    // A Service added: a delta without the inbound part, which the proxy rejects asking for
    // a full sync. The answer carries the inbound part again: the very one sent first, kept
    // across the wake-ups since rather than built on each.
    let mut with_service = cluster(4, Some(principal), None);
    let (key, object) = decode(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "billing", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.2", "ports": [{"name": "http", "port": 80}]},
    }))
    .expect("valid");
    with_service.insert(&key, object);
    publish(&views, &mut index, &with_service);
    let delta = proxy.push().await.expect("a push");
    assert!(delta.inbound.is_none() && delta.services.is_some());
    proxy.nack(&delta.version, true);
    let again = proxy.push().await.expect("a push");
    let resent = again.inbound.expect("the inbound part again");
    assert!(Arc::ptr_eq(&sent, &resent));
}
