use super::*;

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{name: http, port: 80}]}
---
# an empty document is skipped
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop}}
- {apiVersion: v1, kind: ServiceAccount, metadata: {name: web}}
"#;

const POLICY: &str = r#"
apiVersion: policy.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: shop}
spec: {action: DENY, rules: [{}]}
"#;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write manifest");
}

#[test]
fn reads_documents_lists_and_subdirectories() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "services.yaml", SERVICES);
    std::fs::create_dir(dir.path().join("policies")).expect("mkdir");
    write(&dir.path().join("policies"), "deny.yml", POLICY);
    write(dir.path(), "notes.txt", "not a manifest");
    std::fs::create_dir(dir.path().join("..data")).expect("mkdir");
    write(
        &dir.path().join("..data"),
        "hidden.yaml",
        POLICY.replace("deny-all", "hidden").as_str(),
    );

    let (state, problems) = ManifestDir::new(dir.path()).reload();
    assert_eq!(problems, vec![]);
    assert!(state.services.contains_key(&("shop".into(), "web".into())));
    assert!(state.namespaces.contains_key("shop"));
    // No namespace given: `default`, as kubectl does.
    assert!(state
        .service_accounts
        .contains_key(&("default".into(), "web".into())));
    assert_eq!(
        state.authorization_policies.len(),
        1,
        "hidden directories are skipped"
    );
}

#[test]
fn invalid_yaml_keeps_what_the_file_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "p.yaml", POLICY);
    let mut source = ManifestDir::new(dir.path());
    assert_eq!(source.reload().0.authorization_policies.len(), 1);

    write(dir.path(), "p.yaml", "apiVersion: [unclosed\n");
    let (state, problems) = source.reload();
    assert_eq!(state.authorization_policies.len(), 1, "last good kept");
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].message.starts_with("invalid YAML"),
        "{:?}",
        problems[0]
    );
    assert!(problems[0].source.ends_with("p.yaml"));
    assert!(problems[0].kept_last_good);

    // Fixed again: the problem goes away.
    write(dir.path(), "p.yaml", &POLICY.replace("DENY", "AUDIT"));
    let (state, problems) = source.reload();
    assert_eq!(problems, vec![]);
    let policy = &state.authorization_policies[&("shop".into(), "deny-all".into())];
    assert_eq!(policy.spec.action, weft_api::crd::PolicyAction::Audit);
}

#[test]
fn an_invalid_object_keeps_its_last_good_version_and_names_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "p.yaml", &format!("{POLICY}---\n{SERVICES}"));
    let mut source = ManifestDir::new(dir.path());
    source.reload();

    let broken = POLICY.replace("action: DENY", "action: DENY, selectr: {}");
    let new_policy = POLICY
        .replace("deny-all", "fresh")
        .replace("rules: [{}]", "rules: 3");
    write(
        dir.path(),
        "p.yaml",
        &format!("{broken}---\n{new_policy}---\n{SERVICES}"),
    );
    let (state, problems) = source.reload();
    let policy = &state.authorization_policies[&("shop".into(), "deny-all".into())];
    assert_eq!(
        policy.spec.action,
        weft_api::crd::PolicyAction::Deny,
        "last good version"
    );
    assert!(!state
        .authorization_policies
        .contains_key(&("shop".into(), "fresh".into())));
    assert!(
        state.services.contains_key(&("shop".into(), "web".into())),
        "other documents apply"
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(
        problems[0].object.as_deref(),
        Some("AuthorizationPolicy shop/deny-all")
    );
    assert_eq!(problems[0].field.as_deref(), Some("spec.selectr"));
    assert!(problems[0].kept_last_good);
    assert_eq!(problems[1].field.as_deref(), Some("spec.rules"));
    assert!(
        !problems[1].kept_last_good,
        "nothing to keep for a new object"
    );
}

#[test]
fn removed_files_remove_their_objects_and_duplicates_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "a.yaml", POLICY);
    write(dir.path(), "b.yaml", &POLICY.replace("DENY", "AUDIT"));
    let mut source = ManifestDir::new(dir.path());
    let (state, problems) = source.reload();
    let policy = &state.authorization_policies[&("shop".into(), "deny-all".into())];
    assert_eq!(
        policy.spec.action,
        weft_api::crd::PolicyAction::Deny,
        "first file wins"
    );
    assert_eq!(problems.len(), 1);
    assert!(problems[0].message.contains("a.yaml"), "{:?}", problems[0]);

    std::fs::remove_file(dir.path().join("a.yaml")).expect("rm");
    std::fs::remove_file(dir.path().join("b.yaml")).expect("rm");
    let (state, problems) = source.reload();
    assert!(state.authorization_policies.is_empty());
    assert_eq!(problems, vec![]);
}

#[test]
fn a_missing_directory_is_a_problem_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, problems) = ManifestDir::new(dir.path().join("nope")).reload();
    assert!(state.pods.is_empty());
    assert_eq!(problems.len(), 1);
    assert!(problems[0].message.contains("cannot list"));
}
