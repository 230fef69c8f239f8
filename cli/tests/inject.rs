//! `weftctl inject` as a user runs it: the binary, YAML in, YAML out.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_yaml::Value;
use weft_injector::{inject_pod_spec, InjectConfig};

const WORKLOADS: &str = r#"# A GitOps checkout: every workload kind, plus objects inject must not touch.
apiVersion: v1
kind: Pod
metadata:
  name: debug
  namespace: shop
spec:
  containers:
  - name: app
    image: busybox
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.27
        ports:
        - containerPort: 8080
          name: http
        resources:
          requests: {cpu: 1, memory: 128Mi}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: shop}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      initContainers: [{name: migrate, image: db-migrate}]
      containers: [{name: db, image: postgres}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: shop}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: agent, image: agent}]
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: legacy, namespace: shop}
spec:
  selector: {matchLabels: {app: legacy}}
  template:
    metadata: {labels: {app: legacy}}
    spec:
      containers: [{name: legacy, image: legacy}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: report, namespace: shop}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: report, image: report}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly, namespace: shop}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: nightly, image: nightly}]
--- # the objects below are not workloads
# config, kept byte for byte: odd spacing, quoting and comments included
apiVersion: v1
kind: ConfigMap
metadata:   {name: settings, namespace: shop}
data:
  greeting: 'hello'   # a comment
  multi: |
    line one
    --- not a separator
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
"#;

fn weftctl(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run weftctl");
    // weftctl may refuse its flags before reading: a closed pipe is not the test's failure.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().expect("weftctl finishes")
}

fn ok(output: &Output) -> (String, String) {
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert!(output.status.success(), "weftctl failed:\n{stderr}");
    (stdout, stderr)
}

fn fails(output: &Output) -> String {
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert!(!output.status.success(), "weftctl should fail");
    assert!(
        output.stdout.is_empty(),
        "nothing on stdout after an error, got:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    stderr
}

/// The input as a file.
fn inject_file(text: &str, flags: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.yaml");
    std::fs::write(&path, text).unwrap();
    let mut args = vec!["inject", "-f", path.to_str().unwrap()];
    args.extend(flags);
    weftctl(&args, "")
}

/// `text` cut at its `---` lines, each piece with its marker line.
fn pieces(text: &str) -> Vec<String> {
    let mut pieces = vec![String::new()];
    for line in text.split_inclusive('\n') {
        if line.starts_with("---") && pieces.last().is_some_and(|p| !p.is_empty()) {
            pieces.push(String::new());
        }
        pieces.last_mut().unwrap().push_str(line);
    }
    pieces
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

/// The pod template (metadata, spec) of a workload document.
fn template(doc: &Value) -> (ObjectMeta, PodSpec) {
    let path: &[&str] = match doc["kind"].as_str().unwrap() {
        "Pod" => &[],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => &["spec", "template"],
    };
    let mut at = doc;
    for key in path {
        at = &at[*key];
    }
    let meta = match at.get("metadata") {
        Some(m) => serde_yaml::from_value(m.clone()).unwrap(),
        None => ObjectMeta::default(),
    };
    (meta, serde_yaml::from_value(at["spec"].clone()).unwrap())
}

fn config() -> InjectConfig {
    InjectConfig {
        version: env!("CARGO_PKG_VERSION").into(),
        ..InjectConfig::default()
    }
}

#[test]
fn inject_meshes_every_workload_kind_and_leaves_the_rest_untouched() {
    let (out, report) = ok(&inject_file(WORKLOADS, &[]));
    let before = documents(WORKLOADS);
    let after = documents(&out);
    let kinds = |docs: &[Value]| -> Vec<String> {
        docs.iter()
            .map(|d| d["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(kinds(&after), kinds(&before), "same documents, same order");
    assert_eq!(
        kinds(&before),
        [
            "Pod",
            "Deployment",
            "StatefulSet",
            "DaemonSet",
            "ReplicaSet",
            "Job",
            "CronJob",
            "ConfigMap",
            "Service"
        ]
    );

    for (old, new) in before.iter().zip(&after).take(7) {
        let kind = old["kind"].as_str().unwrap();
        let (meta, spec) = template(old);
        // Exactly what the webhook's function makes of the same template.
        let (want_meta, want_spec) =
            inject_pod_spec(&meta, &spec, true, &config()).expect("injectable");
        let (got_meta, got_spec) = template(new);
        assert_eq!(got_spec, want_spec, "{kind}: the webhook's mutation");
        assert_eq!(got_meta, want_meta, "{kind}: the webhook's annotations");
        let init: Vec<_> = got_spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(&init[..2], ["weft-init", "weft-proxy"], "{kind}");
        // Everything outside the template is as it was.
        let mut old_rest = old.clone();
        let mut new_rest = new.clone();
        for doc in [&mut old_rest, &mut new_rest] {
            match kind {
                "Pod" => {
                    doc["spec"] = Value::Null;
                    doc["metadata"]["annotations"] = Value::Null;
                }
                "CronJob" => doc["spec"]["jobTemplate"]["spec"]["template"] = Value::Null,
                _ => doc["spec"]["template"] = Value::Null,
            }
        }
        assert_eq!(old_rest, new_rest, "{kind}: only the pod template changes");
    }

    // Byte for byte: the leading comment, the ConfigMap and the Service, the separators.
    let (old_pieces, new_pieces) = (pieces(WORKLOADS), pieces(&out));
    assert_eq!(old_pieces.len(), new_pieces.len());
    assert!(out.starts_with("# A GitOps checkout"), "{out}");
    assert!(new_pieces[7].starts_with("--- # the objects below are not workloads\n# config"));
    assert_eq!(new_pieces[7], old_pieces[7], "ConfigMap untouched");
    assert_eq!(new_pieces[8], old_pieces[8], "Service untouched");
    assert!(out.ends_with("targetPort: http}]\n"));
    // Injected documents keep their key order.
    assert!(
        new_pieces[1]
            .starts_with("---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n"),
        "{}",
        new_pieces[1]
    );

    for name in [
        "pod/debug",
        "deployment/web",
        "statefulset/db",
        "daemonset/agent",
        "replicaset/legacy",
        "job/report",
        "cronjob/nightly",
    ] {
        assert!(
            report.contains(&format!("{name} injected")),
            "{name}:\n{report}"
        );
    }
    assert!(!report.contains("configmap"), "{report}");
}

const OPTED_OUT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: legacy, namespace: shop}
spec:
  selector: {matchLabels: {app: legacy}}
  template:
    metadata:
      labels: {app: legacy}
      annotations:
        weft.dev/inject: disabled   # talks to the database directly
    spec:
      containers: [{name: legacy, image: legacy}]
---
apiVersion: v1
kind: Pod
metadata: {name: node-agent}
spec:
  hostNetwork: true
  containers: [{name: agent, image: agent}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: backup}
spec:
  template:
    metadata:
      labels: {weft.dev/inject: disabled}
    spec:
      restartPolicy: Never
      containers: [{name: backup, image: backup}]
";

#[test]
fn opted_out_and_host_network_workloads_stay_byte_for_byte() {
    // Opted out by annotation (the injector's rule) or by label (the webhook's
    // objectSelector), or on the host's network: as in the cluster, no sidecar.
    let (out, report) = ok(&inject_file(OPTED_OUT, &[]));
    assert_eq!(out, OPTED_OUT);
    assert!(
        report.contains("deployment/legacy skipped: the pod opts out"),
        "{report}"
    );
    assert!(
        report.contains("pod/node-agent skipped: the pod uses the host's network"),
        "{report}"
    );
    assert!(
        report.contains("job/backup skipped: the pod opts out (label weft.dev/inject: disabled)"),
        "{report}"
    );
}

#[test]
fn injecting_twice_changes_nothing_more() {
    let (once, _) = ok(&inject_file(WORKLOADS, &[]));
    let (twice, report) = ok(&inject_file(&once, &[]));
    assert_eq!(
        twice, once,
        "already-injected documents are kept byte for byte"
    );
    assert!(
        report.contains("deployment/web skipped: the pod is already injected"),
        "{report}"
    );
}

#[test]
fn reads_stdin_with_dash_or_without_a_file() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: app, image: x}]}\n";
    let (from_dash, _) = ok(&weftctl(&["inject", "-f", "-"], pod));
    let (implicit, report) = ok(&weftctl(&["inject"], pod));
    assert_eq!(from_dash, implicit);
    let doc: Pod = serde_yaml::from_str(&from_dash).unwrap();
    assert!(doc
        .metadata
        .annotations
        .unwrap()
        .contains_key("weft.dev/status"));
    assert!(report.contains("pod/p injected"), "{report}");
    // Nothing in, nothing out.
    let (empty, _) = ok(&weftctl(&["inject"], ""));
    assert_eq!(empty, "");
}

#[test]
fn invalid_yaml_names_the_document_and_line() {
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: b\n labels: x\nspec: {}\n";
    let err = fails(&weftctl(&["inject"], text));
    assert!(
        err.contains("stdin: document 2 (line 4): invalid YAML: did not find expected key at line 9 column 2"),
        "lines of the whole input: {err}"
    );

    // A leading comment is not a document; the marker line is where a document starts.
    let text = "# comment\n---\nkind: [\n";
    let err = fails(&inject_file(text, &[]));
    assert!(err.contains("document 1 (line 2): invalid YAML"), "{err}");
}

#[test]
fn a_template_the_types_cannot_hold_is_an_error_not_a_loss() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: app, image: x, imagePullPolcy: Always}]\n";
    let err = fails(&weftctl(&["inject"], text));
    assert!(
        err.contains("document 1 (line 1): pod/p: spec.containers[0].imagePullPolcy not known"),
        "{err}"
    );

    let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {weft.dev/skip-inbound-ports: \"http\"}\nspec: {containers: [{name: app, image: x}]}\n";
    let err = fails(&weftctl(&["inject"], text));
    assert!(
        err.contains("document 1 (line 1): pod/p: annotation weft.dev/skip-inbound-ports"),
        "{err}"
    );
}

#[test]
fn flags_reach_the_injected_containers() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: app, image: x}]}\n";
    let (out, _) = ok(&weftctl(
        &[
            "inject",
            "--proxy-image",
            "registry.local/weft-proxy:dev",
            "--sidecar",
            "classic",
            "--image-pull-policy",
            "Always",
            "--trust-domain",
            "prod.example",
            "--proxy-cpu-limit",
            "1",
        ],
        pod,
    ));
    let pod: Pod = serde_yaml::from_str(&out).unwrap();
    let spec = pod.spec.unwrap();
    let proxy = &spec.containers[0];
    assert_eq!(proxy.name, "weft-proxy", "classic: the first container");
    assert_eq!(
        proxy.image.as_deref(),
        Some("registry.local/weft-proxy:dev")
    );
    assert_eq!(proxy.image_pull_policy.as_deref(), Some("Always"));
    let env = proxy.env.as_ref().unwrap();
    assert!(env
        .iter()
        .any(|e| e.name == "WEFT_TRUST_DOMAIN" && e.value.as_deref() == Some("prod.example")));
    let limits = proxy.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!(limits["cpu"].0, "1");

    let err = fails(&weftctl(
        &["inject", "--proxy-memory-limit", "lots"],
        pod_text(),
    ));
    assert!(
        err.contains("--proxy-memory-limit: invalid resource quantity \"lots\""),
        "{err}"
    );
}

fn pod_text() -> &'static str {
    "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: app, image: x}]}\n"
}

#[test]
fn a_list_has_its_items_injected() {
    let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p}\n  spec: {containers: [{name: app, image: x}]}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s}\n  spec: {ports: [{port: 80}]}\n";
    let (out, report) = ok(&weftctl(&["inject"], list));
    let value: Value = serde_yaml::from_str(&out).unwrap();
    let pod: Pod = serde_yaml::from_value(value["items"][0].clone()).unwrap();
    assert!(pod
        .metadata
        .annotations
        .unwrap()
        .contains_key("weft.dev/status"));
    assert_eq!(value["items"][1]["kind"], "Service");
    assert!(report.contains("pod/p injected"), "{report}");
}

#[test]
fn help_explains_the_command() {
    let (help, _) = ok(&weftctl(&["inject", "--help"], ""));
    for want in [
        "Deployment",
        "byte for byte",
        "weft.dev/inject: disabled",
        "--filename",
        "--proxy-image",
        "--sidecar",
        "kubectl apply -f -",
    ] {
        assert!(help.contains(want), "--help lacks {want:?}:\n{help}");
    }
}

#[test]
fn anchors_merges_and_a_missing_final_newline_are_handled() {
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: base}\ndata: &shared {a: '1'}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: &labels {app: p}\nspec:\n  containers:\n  - &app {name: app, image: x}\n  - <<: *app\n    name: helper";
    let (out, _) = ok(&weftctl(&["inject"], text));
    assert!(
        out.starts_with("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: base}\ndata: &shared {a: '1'}\n---\n"),
        "untouched, anchors and all:\n{out}"
    );
    assert!(!out.ends_with('\n'), "no final newline, like the input");
    let pod: Pod = serde_yaml::from_str(out.split("---\n").nth(1).unwrap()).unwrap();
    let spec = pod.spec.unwrap();
    let names: Vec<_> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["app", "helper"]);
    assert_eq!(spec.containers[1].image.as_deref(), Some("x"), "merged");
}
