//! The outbound view as the control plane sends it to a proxy that takes deltas: per-Service
//! full syncs and deltas, merged into the Services held and compiled into the next table.
//! A delta costs what it names: the Services it leaves alone stay the previous version's
//! own, as received and as compiled.

use std::sync::Arc;

use weft_api::proto::discovery::v1 as pb;

use super::{ApplyError, SyncError, View};
use crate::traffic::services::{ServiceKey, ServiceTable, TableError};

/// The outbound view as received, [`pb::Outbound`] with each Service shared: a version holds
/// the same `Arc` as the version before it for every Service its update left alone, so
/// merging a delta copies a pointer per Service held instead of the Services themselves.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Outbound {
    /// By namespace, then name, when it came as Services (a delta merges by that order).
    #[serde(serialize_with = "each_service")]
    pub services: Vec<Arc<pb::Service>>,
}

/// As `pb::Outbound` serializes its Services: `/config` reads the same as before they were
/// shared.
fn each_service<S: serde::Serializer>(
    services: &[Arc<pb::Service>],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(services.iter().map(|s| s.as_ref()))
}

/// The order of the outbound view: by namespace, then name.
fn key(service: &pb::Service) -> (&str, &str) {
    (service.namespace.as_str(), service.name.as_str())
}

/// The outbound view `services` makes, its version and its compiled table: a full sync's
/// Services, or a delta merged into `previous`'s. A delta compiles only the Services it
/// upserts and touches only those it names.
pub(super) fn merge(
    previous: Option<&View>,
    services: pb::Services,
) -> Result<(Outbound, String, ServiceTable), ApplyError> {
    if services.version.is_empty() {
        return Err(SyncError::NoServicesVersion.into());
    }
    let mut upserted = services.upserted;
    // Stable: of two with one key, the later wins (as it would applied one by one).
    upserted.sort_by(|a, b| key(a).cmp(&key(b)));
    upserted.reverse();
    upserted.dedup_by(|a, b| key(a) == key(b));
    upserted.reverse();
    match pb::Sync::try_from(services.sync) {
        Ok(pb::Sync::Full) => {
            let (outbound, table) = whole(upserted, previous)?;
            Ok((outbound, services.version, table))
        }
        Ok(pb::Sync::Delta) => {
            let version = previous.map_or("", |p| p.services_version.as_str());
            let previous = match previous {
                Some(previous) if !version.is_empty() && version == services.base => previous,
                _ => {
                    return Err(SyncError::Base {
                        base: services.base,
                        held: version.to_owned(),
                    }
                    .into())
                }
            };
            let held = &previous.outbound.services;
            let removed = removed_keys(held, &services.removed)?;
            let table = previous.services.update(&upserted, &removed)?;
            let outbound = Outbound {
                services: delta(held, upserted, &removed),
            };
            Ok((outbound, services.version, table))
        }
        Ok(pb::Sync::Unspecified) | Err(_) => Err(SyncError::NoSyncKind.into()),
    }
}

/// A whole outbound view, compiled anew but continuing what `previous` learned.
pub(super) fn whole(
    services: Vec<pb::Service>,
    previous: Option<&View>,
) -> Result<(Outbound, ServiceTable), TableError> {
    let services: Vec<_> = services.into_iter().map(Arc::new).collect();
    let empty = ServiceTable::default();
    let learned = previous.map_or(&empty, |p| p.services.as_ref());
    let table = ServiceTable::build_from(services.iter().map(Arc::as_ref), learned)?;
    Ok((Outbound { services }, table))
}

/// The keys of `removed` (`namespace/name`), in order and once each; each must be `held`.
fn removed_keys(
    held: &[Arc<pb::Service>],
    removed: &[String],
) -> Result<Vec<ServiceKey>, SyncError> {
    let mut keys = Vec::with_capacity(removed.len());
    for name in removed {
        let found = name
            .split_once('/')
            .filter(|k| held.binary_search_by(|s| key(s).cmp(k)).is_ok());
        match found {
            Some((namespace, service)) => keys.push((namespace.to_owned(), service.to_owned())),
            None => return Err(SyncError::UnknownService(name.clone())),
        }
    }
    keys.sort_unstable();
    keys.dedup();
    Ok(keys)
}

/// `held` (in order) with `removed` (in order) taken out and `upserted` (in order, one per
/// key) put in; a key in both is upserted. The runs of Services in between are found by
/// binary search and copied as pointers: no Service the delta doesn't name is compared.
fn delta(
    held: &[Arc<pb::Service>],
    upserted: Vec<pb::Service>,
    removed: &[ServiceKey],
) -> Vec<Arc<pb::Service>> {
    let mut changes: Vec<(ServiceKey, Option<pb::Service>)> = removed
        .iter()
        .filter(|(ns, name)| {
            upserted
                .binary_search_by(|s| key(s).cmp(&(ns.as_str(), name.as_str())))
                .is_err()
        })
        .map(|k| (k.clone(), None))
        .collect();
    changes.extend(
        upserted
            .into_iter()
            .map(|s| ((s.namespace.clone(), s.name.clone()), Some(s))),
    );
    changes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut merged = Vec::with_capacity(held.len() + changes.len());
    let mut rest = held;
    for ((namespace, name), service) in changes {
        let at = (namespace.as_str(), name.as_str());
        let before = rest.partition_point(|s| key(s) < at);
        merged.extend_from_slice(&rest[..before]);
        rest = &rest[before..];
        if rest.first().is_some_and(|s| key(s) == at) {
            rest = &rest[1..];
        }
        merged.extend(service.map(Arc::new));
    }
    merged.extend_from_slice(rest);
    merged
}

#[cfg(test)]
mod tests {
    use super::super::ViewStore;
    use super::*;

    fn inbound() -> pb::Inbound {
        pb::Inbound {
            namespace: "shop".into(),
            pod: "orders-1".into(),
            default_policy: pb::DefaultPolicy::Allow as i32,
            ..Default::default()
        }
    }

    /// `shop/<name>` at cluster IP 10.96.<n / 256>.<n % 256>, port 80, one endpoint.
    fn shop_service(name: &str, n: usize) -> pb::Service {
        pb::Service {
            namespace: "shop".into(),
            name: name.into(),
            cluster_ips: vec![format!("10.96.{}.{}", n / 256, n % 256)],
            hostnames: vec![format!("{name}.shop")],
            ports: vec![pb::ServicePort {
                port: 80,
                target_port: 8080,
                ..Default::default()
            }],
            endpoints: vec![pb::Endpoint {
                address: format!("10.0.{}.{}", n / 256, n % 256),
                ready: true,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn sync(
        version: &str,
        kind: pb::Sync,
        base: &str,
        upserted: Vec<pb::Service>,
        removed: &[&str],
    ) -> pb::ViewUpdate {
        pb::ViewUpdate {
            version: version.into(),
            inbound: (kind == pb::Sync::Full).then(inbound),
            services: Some(pb::Services {
                sync: kind as i32,
                base: base.into(),
                version: format!("s-{version}"),
                upserted,
                removed: removed.iter().map(|r| r.to_string()).collect(),
            }),
            ..Default::default()
        }
    }

    fn held<'a>(view: &'a View, name: &str) -> &'a Arc<pb::Service> {
        let services = &view.outbound.services;
        let found = services.binary_search_by(|s| key(s).cmp(&("shop", name)));
        &services[found.expect("the Service is held")]
    }

    fn target<'a>(view: &'a View, name: &str) -> &'a Arc<crate::traffic::services::Target> {
        view.services
            .by_name("shop", name, 80)
            .expect("the Service has port 80")
    }

    #[test]
    fn a_delta_shares_every_service_it_does_not_name() {
        let store = ViewStore::new();
        let names = ["billing", "cart", "orders"];
        let all = names.iter().enumerate().map(|(n, s)| shop_service(s, n));
        let first = store
            .apply(sync("v1", pb::Sync::Full, "", all.collect(), &[]))
            .unwrap();
        let mut billing = shop_service("billing", 0);
        billing.endpoints[0].ready = false;
        let second = store
            .apply(sync(
                "v2",
                pb::Sync::Delta,
                "s-v1",
                vec![billing],
                &["shop/cart"],
            ))
            .unwrap();
        let names: Vec<_> = second.outbound.services.iter().map(|s| &s.name).collect();
        assert_eq!(names, ["billing", "orders"]);
        assert!(Arc::ptr_eq(held(&first, "orders"), held(&second, "orders")));
        assert!(Arc::ptr_eq(
            target(&first, "orders"),
            target(&second, "orders")
        ));
        assert!(!Arc::ptr_eq(
            target(&first, "billing"),
            target(&second, "billing")
        ));
        assert!(Arc::ptr_eq(
            &target(&first, "billing").service.breaker,
            &target(&second, "billing").service.breaker
        ));
        assert!(second.services.by_name("shop", "cart", 80).is_none());
        assert!(second.services.by_host("cart.shop", 80).is_none());
        // An update without Services shares all of them.
        let third = store.apply(pb::ViewUpdate {
            version: "v3".into(),
            inbound: Some(inbound()),
            ..Default::default()
        });
        let third = third.unwrap();
        assert!(Arc::ptr_eq(&second.services, &third.services));
        assert!(Arc::ptr_eq(
            held(&second, "billing"),
            held(&third, "billing")
        ));
    }

    #[test]
    fn a_delta_with_a_route_that_does_not_compile_is_rejected_and_the_view_stays() {
        let store = ViewStore::new();
        let services = vec![shop_service("billing", 0), shop_service("orders", 1)];
        let first = store
            .apply(sync("v1", pb::Sync::Full, "", services, &[]))
            .unwrap();
        let mut orders = shop_service("orders", 1);
        orders
            .routes
            .push(crate::traffic::services::tests::bad_route());
        let bad = sync(
            "v2",
            pb::Sync::Delta,
            "s-v1",
            vec![orders],
            &["shop/billing"],
        );
        let error = store.apply(bad).unwrap_err();
        assert!(matches!(error, ApplyError::Services(_)), "{error}");
        assert!(
            !error.needs_full_sync(),
            "the same content would fail again"
        );
        assert!(error.to_string().contains("shop/orders"), "{error}");
        let view = store.load_full().expect("kept");
        assert!(Arc::ptr_eq(&view, &first));
        assert!(view
            .services
            .by_addr("10.96.0.0:80".parse().unwrap())
            .is_some());
        // The next delta on the held base applies.
        let next = sync("v3", pb::Sync::Delta, "s-v1", vec![], &["shop/billing"]);
        let view = store.apply(next).unwrap();
        assert!(view.services.by_name("shop", "billing", 80).is_none());
        assert!(Arc::ptr_eq(
            target(&first, "orders"),
            target(&view, "orders")
        ));
    }

    #[test]
    fn the_outbound_view_reads_on_config_as_the_proto_does() {
        let store = ViewStore::new();
        let services = vec![shop_service("billing", 0), shop_service("orders", 1)];
        let view = store
            .apply(sync("v1", pb::Sync::Full, "", services.clone(), &[]))
            .unwrap();
        assert_eq!(
            serde_json::to_value(&view.outbound).unwrap(),
            serde_json::to_value(&pb::Outbound { services }).unwrap()
        );
    }

    #[test]
    fn a_delta_merges_by_key_and_copies_the_rest_as_it_is() {
        let held: Vec<_> = ["b", "d", "f", "h"]
            .iter()
            .enumerate()
            .map(|(n, name)| Arc::new(shop_service(name, n)))
            .collect();
        let upserted = ["a", "d", "e", "i"]
            .iter()
            .map(|name| shop_service(name, 9))
            .collect();
        let removed: Vec<String> = ["shop/h", "shop/b", "shop/d", "shop/b"]
            .iter()
            .map(|k| k.to_string())
            .collect();
        let removed = removed_keys(&held, &removed).unwrap();
        let merged = delta(&held, upserted, &removed);
        let names: Vec<_> = merged.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["a", "d", "e", "f", "i"],
            "d upserted and removed: upserted"
        );
        assert_eq!(merged[1].endpoints[0].address, "10.0.0.9", "the new d");
        assert!(Arc::ptr_eq(&merged[3], &held[2]));
        assert!(matches!(
            removed_keys(&held, &["shop/x".into()]),
            Err(SyncError::UnknownService(k)) if k == "shop/x"
        ));
        assert!(removed_keys(&held, &["b".into()]).is_err(), "not a key");
    }

    /// 10,000 Services, one of them changed: the other 9,999 are the previous version's
    /// `Arc`s, held and compiled, so nothing was rebuilt for them.
    #[test]
    fn a_one_service_delta_on_10000_services_rebuilds_nothing_else() {
        let name = |n: usize| format!("svc-{n:05}");
        let all = (0..10_000).map(|n| shop_service(&name(n), n)).collect();
        let store = ViewStore::new();
        let first = store
            .apply(sync("v1", pb::Sync::Full, "", all, &[]))
            .unwrap();
        let mut changed = shop_service(&name(4321), 4321);
        changed.endpoints[0].ready = false;
        let second = store
            .apply(sync("v2", pb::Sync::Delta, "s-v1", vec![changed], &[]))
            .unwrap();
        let mut shared = 0;
        for n in 0..10_000 {
            let name = name(n);
            let same_target = Arc::ptr_eq(target(&first, &name), target(&second, &name));
            let same_held = Arc::ptr_eq(held(&first, &name), held(&second, &name));
            assert_eq!(same_target, same_held, "{name}");
            shared += usize::from(same_target);
        }
        assert_eq!(shared, 9_999);
        assert!(!target(&second, &name(4321)).endpoints[0].is_ready());
    }
}
