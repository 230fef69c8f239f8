//! The fallback for pods the state does not know: built once per change of what it depends
//! on (policies that select every pod, the namespace's defaults), the same `Arc` across
//! generations otherwise, and a subscription's [`PodInbound`] rebuilt only then.

use super::*;

/// `CLUSTER` as the next generation sees it, after `edits` (old, new) to its YAML.
fn edited(edits: &[(&str, &str)]) -> State {
    let mut yaml = CLUSTER.to_owned();
    for (old, new) in edits {
        assert!(yaml.contains(old), "{old} is in CLUSTER");
        yaml = yaml.replace(old, new);
    }
    state_from(&yaml)
}

const SELECTED_POLICY: &str = "spec: {selector: {matchLabels: {app: orders}}, rules: [{}]}";
const UNSELECTED_POLICY: &str = "spec: {action: AUDIT, rules: [{}]}";
const SHOP_MTLS: &str = "weft.dev/mtls-mode: strict}}";
const READY: &str = "- {addresses: [10.0.0.5], targetRef";

/// Changes to the state that concern no pod the index does not know.
const UNRELATED: [(&str, &str); 3] = [
    // A selective policy edit.
    (
        SELECTED_POLICY,
        "spec: {selector: {matchLabels: {app: orders}}, action: DENY, rules: [{}]}",
    ),
    // An endpoint turns unready.
    (
        READY,
        "- {addresses: [10.0.0.5], conditions: {ready: false}, targetRef",
    ),
    // A pod's labels.
    ("labels: {app: web}", "labels: {app: web, tier: front}"),
];

#[test]
fn a_namespaces_fallback_is_the_same_arc_until_what_it_depends_on_changes() {
    let mut index = Index::new(settings());
    let (first, _) = index.compute(&state_from(CLUSTER));
    let shop = first.fallback_of("shop").clone();
    for edit in UNRELATED {
        let (next, _) = index.compute(&edited(&[edit]));
        assert!(
            Arc::ptr_eq(&shop, next.fallback_of("shop")),
            "rebuilt after {edit:?}"
        );
    }

    // What it depends on: the policies without a selector, the namespace's annotations.
    let unselected = (UNSELECTED_POLICY, "spec: {action: DENY, rules: [{}]}");
    let (after_policy, _) = index.compute(&edited(&[unselected]));
    let changed = after_policy.fallback_of("shop");
    assert!(!Arc::ptr_eq(&shop, changed));
    assert_ne!(shop.hash, changed.hash);
    let view = changed.view("shop", "new-pod");
    assert_eq!(view.policies[0].action, pb::Action::Deny as i32);
    // Kept from then on.
    let (again, _) = index.compute(&edited(&[unselected, UNRELATED[1]]));
    assert!(Arc::ptr_eq(changed, again.fallback_of("shop")));

    let permissive = (SHOP_MTLS, "weft.dev/mtls-mode: permissive}}");
    let (after_mode, _) = index.compute(&edited(&[unselected, permissive]));
    let changed_again = after_mode.fallback_of("shop");
    assert!(!Arc::ptr_eq(changed, changed_again));
    assert_eq!(
        changed_again.view("shop", "new-pod").mtls_mode,
        pb::MtlsMode::Permissive as i32
    );
}

#[test]
fn namespaces_that_say_nothing_share_one_fallback_and_an_empty_selector_selects_all() {
    let with_empty_selector = format!(
        "{CLUSTER}---\napiVersion: policy.weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata: {{name: everyone, namespace: lab}}\n\
         spec: {{selector: {{matchLabels: {{}}}}, rules: [{{}}]}}\n"
    );
    let (views, _) = Index::new(settings()).compute(&state_from(&with_empty_selector));
    assert!(Arc::ptr_eq(
        views.fallback_of("nowhere"),
        views.fallback_of("elsewhere")
    ));
    assert!(!Arc::ptr_eq(
        views.fallback_of("nowhere"),
        views.fallback_of("shop")
    ));
    // `lab`'s annotation is invalid (the mesh default applies), but its policy selects
    // every pod, an unknown one included.
    assert_eq!(
        policy_names(&inbound(&views, "lab", "new-pod")),
        ["everyone"]
    );
    let nowhere = inbound(&views, "nowhere", "new-pod");
    assert_eq!(nowhere.namespace, "nowhere");
    assert!(nowhere.policies.is_empty());
    assert_eq!(nowhere.default_policy, pb::DefaultPolicy::Allow as i32);
}

#[test]
fn a_subscriptions_view_of_an_unknown_pod_is_built_once_per_change_of_its_fallback() {
    let mut index = Index::new(settings());
    let (first, _) = index.compute(&state_from(CLUSTER));
    let mut pod = PodInbound::new("shop", "new-pod");
    let view = pod.current(&first);
    // The message and hash the index gives any caller for that pod.
    let expected = first.inbound_for("shop", "new-pod");
    assert_eq!(view.message, expected.message);
    assert_eq!(view.hash, expected.hash);
    assert_eq!(view.message.pod, "new-pod");

    // Wake-ups that change nothing for it: the same Arc, nothing built.
    for round in 0..10 {
        let (next, _) = index.compute(&edited(&[UNRELATED[round % UNRELATED.len()]]));
        assert!(Arc::ptr_eq(&view, &pod.current(&next)), "round {round}");
    }

    let unselected = (UNSELECTED_POLICY, "spec: {action: DENY, rules: [{}]}");
    let (changed, _) = index.compute(&edited(&[unselected]));
    let rebuilt = pod.current(&changed);
    assert!(!Arc::ptr_eq(&view, &rebuilt));
    assert_ne!(view.hash, rebuilt.hash);
    assert_eq!(rebuilt.message.policies[0].action, pb::Action::Deny as i32);
    assert_eq!(rebuilt.hash, changed.inbound_for("shop", "new-pod").hash);
    assert!(Arc::ptr_eq(&rebuilt, &pod.current(&changed)));
}

#[test]
fn a_pod_that_appears_gets_its_own_view_and_one_that_goes_the_fallback_again() {
    let mut index = Index::new(settings());
    let (before, _) = index.compute(&state_from(CLUSTER));
    let mut pod = PodInbound::new("shop", "orders-2");
    let fallback = pod.current(&before);
    assert_eq!(policy_names(&fallback.message), ["all-of-shop"]);

    let appeared = format!(
        "{CLUSTER}---\napiVersion: v1\nkind: Pod\n\
         metadata: {{name: orders-2, namespace: shop, labels: {{app: orders}}}}\n\
         spec: {{containers: [{{name: app, image: x, ports: [{{containerPort: 7070}}]}}]}}\n"
    );
    let (known, _) = index.compute(&state_from(&appeared));
    let own = pod.current(&known);
    assert!(Arc::ptr_eq(&own, &known.inbound_for("shop", "orders-2")));
    assert_eq!(policy_names(&own.message), ["all-of-shop", "orders-only"]);
    assert_eq!(own.message.ports[0].port, 7070);

    let (gone, _) = index.compute(&state_from(CLUSTER));
    let again = pod.current(&gone);
    assert_eq!(again.message, fallback.message);
    assert_eq!(again.hash, fallback.hash);
}
