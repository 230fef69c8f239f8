use serde::Deserialize;
fn t<R>(name: &str, n: u32, mut f: impl FnMut() -> R) { for _ in 0..100 { std::hint::black_box(f()); } let s = std::time::Instant::now(); for _ in 0..n { std::hint::black_box(f()); } println!("{name}: {:?}", s.elapsed() / n); }
fn main() {
    if std::env::args().nth(1).is_some() { let body = std::fs::read("injector/tests/fixtures/deployment_pod.json").unwrap(); let config = weft_injector::InjectConfig::default(); for _ in 0..20000 { std::hint::black_box(weft_injector::review::review(&body, &config).unwrap()); } return; }
    let body = std::fs::read("injector/tests/fixtures/deployment_pod.json").unwrap();
    let config = weft_injector::InjectConfig::default();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let obj = v["request"]["object"].clone();
    t("review", 3000, || weft_injector::review::review(&body, &config).unwrap());
    t("parse body", 3000, || serde_json::from_slice::<serde_json::Value>(&body).unwrap());
    t("pod from value", 3000, || k8s_openapi::api::core::v1::Pod::deserialize(&obj).unwrap());
    let pod = k8s_openapi::api::core::v1::Pod::deserialize(&obj).unwrap();
    t("pod to value", 3000, || serde_json::to_value(&pod).unwrap());
    t("inject", 3000, || weft_injector::inject_pod_spec(&pod.metadata, pod.spec.as_ref().unwrap(), true, &config).unwrap());
    let typed = serde_json::to_value(&pod).unwrap();
    let (m, s) = weft_injector::inject_pod_spec(&pod.metadata, pod.spec.as_ref().unwrap(), true, &config).unwrap();
    let mutated = serde_json::to_value(&k8s_openapi::api::core::v1::Pod { metadata: m, spec: Some(s), status: None }).unwrap();
    t("patch", 3000, || weft_injector::patch::patch(&obj, &typed, &mutated));
    t("carry", 3000, || weft_injector::patch::carry(&obj, &typed, &mutated));
    let p = weft_injector::patch::patch(&obj, &typed, &mutated);
    t("patch to_vec", 3000, || serde_json::to_vec(&p).unwrap());
    let skip = std::fs::read("injector/tests/fixtures/opt_out.json").unwrap();
    t("review opt-out", 3000, || weft_injector::review::review(&skip, &config).unwrap());
}
#[allow(dead_code)]
fn more() {}
