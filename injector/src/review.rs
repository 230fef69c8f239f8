//! AdmissionReview (`admission.k8s.io/v1`) in and out: one review body becomes one response
//! body, with no I/O, so the server, the tests and the benchmark share it.
//!
//! What each kind of input gets:
//!
//! | input | answer |
//! |---|---|
//! | a Pod CREATE that [`crate::inject_pod_spec`] injects | `allowed: true` with a base64 JSON Patch |
//! | a Pod CREATE it skips, any other kind, operation or subresource | `allowed: true`, no patch |
//! | a Pod with an invalid `weft.dev/*` annotation | `allowed: false`, status 400 naming the annotation |
//! | a Pod the injector cannot read, or an internal failure | `allowed: true`, no patch, a warning saying why (our problem must not stop a pod) |
//! | not JSON, not an `admission.k8s.io/v1` AdmissionReview, no `request` or `uid` | [`BadReview`]: the server answers HTTP 400 with the message, and the API server applies the webhook's `failurePolicy` |

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{InjectConfig, SidecarMode};
use crate::mutate::{inject_pod_spec, Skip};
use crate::patch::patch;

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// The parts of an `AdmissionReview` request the injector reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: Option<String>,
    kind: Option<String>,
    request: Option<Request>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: Option<String>,
    kind: Option<GroupVersionKind>,
    sub_resource: Option<String>,
    operation: Option<String>,
    namespace: Option<String>,
    object: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    kind: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseReview<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: Response<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Status {
    code: u16,
    reason: &'static str,
    message: String,
}

/// A body that is not an AdmissionReview this webhook can answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an {API_VERSION} {KIND}: {0}")]
pub struct BadReview(pub String);

/// What happened to a review (for metrics and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Patched.
    Injected(SidecarMode),
    /// Allowed without a patch; the [`Skip::reason`] or `not_pod_create`.
    Skipped(&'static str),
    /// Refused because of an invalid annotation.
    Denied(String),
    /// Allowed without a patch because of our problem (unreadable pod, internal error).
    Failed { kind: &'static str, message: String },
}

/// An answered review: the response body and what happened.
#[derive(Debug)]
pub struct Answer {
    pub body: Vec<u8>,
    pub outcome: Outcome,
    /// `namespace/name` (or `generateName*`) of the pod, for logs.
    pub pod: String,
}

/// Answers one AdmissionReview body.
pub fn review(body: &[u8], config: &InjectConfig) -> Result<Answer, BadReview> {
    let review: Review = serde_json::from_slice(body).map_err(|e| BadReview(e.to_string()))?;
    if review.api_version.as_deref() != Some(API_VERSION) || review.kind.as_deref() != Some(KIND) {
        return Err(BadReview(format!(
            "apiVersion {:?} and kind {:?}",
            review.api_version.unwrap_or_default(),
            review.kind.unwrap_or_default()
        )));
    }
    let request = review
        .request
        .ok_or_else(|| BadReview("no `request`".into()))?;
    let uid = request
        .uid
        .as_deref()
        .filter(|uid| !uid.is_empty())
        .ok_or_else(|| BadReview("no `request.uid`".into()))?;

    let mut response = Response {
        uid,
        allowed: true,
        patch_type: None,
        patch: None,
        status: None,
        warnings: Vec::new(),
    };
    let (outcome, pod) = answer(&request, config, &mut response);
    let body = serde_json::to_vec(&ResponseReview {
        api_version: API_VERSION,
        kind: KIND,
        response,
    })
    .expect("a response serializes");
    Ok(Answer { body, outcome, pod })
}

fn answer(request: &Request, config: &InjectConfig, response: &mut Response) -> (Outcome, String) {
    let is_pod = request
        .kind
        .as_ref()
        .is_some_and(|k| k.group.is_empty() && k.version == "v1" && k.kind == "Pod");
    let pod_create = is_pod
        && request.operation.as_deref() == Some("CREATE")
        && request.sub_resource.as_deref().unwrap_or("").is_empty();
    let Some(object) = request.object.as_ref().filter(|_| pod_create) else {
        return (Outcome::Skipped("not_pod_create"), String::new());
    };
    let pod_name = describe(object, request.namespace.as_deref());
    let mut failed = |kind: &'static str, message: String| {
        response.warnings.push(format!(
            "weft-injector: {message}; the pod was admitted without the Weft sidecar"
        ));
        Outcome::Failed { kind, message }
    };

    let pod = match Pod::deserialize(object) {
        Ok(pod) => pod,
        Err(e) => {
            let outcome = failed("unreadable_pod", format!("cannot read the pod: {e}"));
            return (outcome, pod_name);
        }
    };
    let Some(spec) = pod.spec.as_ref() else {
        return (
            failed("unreadable_pod", "the pod has no spec".into()),
            pod_name,
        );
    };
    // The webhook's namespaceSelector sends only pods of selected namespaces (see the docs).
    let (meta, spec) = match inject_pod_spec(&pod.metadata, spec, true, config) {
        Ok(mutated) => mutated,
        Err(skip @ Skip::InvalidAnnotation { .. }) => {
            response.allowed = false;
            let message = format!("weft-injector: {skip}");
            response.status = Some(Status {
                code: 400,
                reason: "BadRequest",
                message: message.clone(),
            });
            return (Outcome::Denied(message), pod_name);
        }
        Err(skip) => return (Outcome::Skipped(skip.reason()), pod_name),
    };
    let typed_original = match serde_json::to_value(&pod) {
        Ok(v) => v,
        Err(e) => {
            return (
                failed("internal", format!("serializing the pod: {e}")),
                pod_name,
            )
        }
    };
    let mutated = Pod {
        metadata: meta,
        spec: Some(spec),
        status: pod.status.clone(),
    };
    let mutated = match serde_json::to_value(&mutated) {
        Ok(v) => v,
        Err(e) => {
            return (
                failed("internal", format!("serializing the pod: {e}")),
                pod_name,
            )
        }
    };
    let patch = patch(object, &typed_original, &mutated);
    let patch = serde_json::to_vec(&patch).expect("a patch serializes");
    response.patch_type = Some("JSONPatch");
    response.patch = Some(base64::engine::general_purpose::STANDARD.encode(patch));
    (Outcome::Injected(config.sidecar), pod_name)
}

/// `namespace/name`, or `namespace/generateName*` for a pod that has no name yet.
fn describe(object: &Value, namespace: Option<&str>) -> String {
    let meta = object.get("metadata");
    let field = |key: &str| meta.and_then(|m| m.get(key)).and_then(Value::as_str);
    let namespace = namespace.or_else(|| field("namespace")).unwrap_or("");
    match (field("name"), field("generateName")) {
        (Some(name), _) if !name.is_empty() => format!("{namespace}/{name}"),
        (_, Some(prefix)) => format!("{namespace}/{prefix}*"),
        _ => format!("{namespace}/?"),
    }
}
