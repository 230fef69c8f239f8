//! Weft's sidecar injector: the pure pod-spec mutation ([`inject_pod_spec`]) shared by the
//! mutating admission webhook (`weft-injector`) and `weftctl inject`, and the webhook itself.
//!
//! The mutation is one pure function over k8s-openapi types: it takes a pod's metadata and
//! spec (a Pod's, or a workload's pod template's), whether the pod's namespace is selected for
//! injection, and an [`InjectConfig`], and returns either the meshed metadata and spec or the
//! reason it leaves the pod alone ([`Skip`]). It reads no clock, no environment and no
//! network, so the same inputs always give the same output — the webhook and the CLI agree.
//!
//! The webhook, read in this order: [`server`] (HTTPS, routes, limits) hands each body to
//! [`review`] (AdmissionReview in and out, what each kind of input gets), which calls
//! [`inject_pod_spec`] ([`mutate`]) and turns the result into a JSON Patch ([`patch`]);
//! [`tls`] reloads the serving certificate, [`metrics`] counts, and [`version`] picks the
//! sidecar mode from the API server's version. See `docs/injector.md`.
//!
//! ```
//! use k8s_openapi::api::core::v1::{Container, PodSpec};
//! use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
//! use weft_injector::{inject_pod_spec, InjectConfig, Skip};
//!
//! let meta = ObjectMeta { generate_name: Some("web-".into()), ..Default::default() };
//! let spec = PodSpec {
//!     containers: vec![Container { name: "app".into(), image: Some("web".into()), ..Default::default() }],
//!     ..Default::default()
//! };
//! let config = InjectConfig::default();
//! let (meta, spec) = inject_pod_spec(&meta, &spec, true, &config).unwrap();
//! assert!(meta.annotations.unwrap().contains_key(weft_injector::annotations::STATUS));
//! // Injecting again is a no-op.
//! # let meta2 = ObjectMeta { annotations: Some([(weft_injector::annotations::STATUS.to_string(), "{}".to_string())].into()), ..Default::default() };
//! assert!(matches!(inject_pod_spec(&meta2, &spec, true, &config), Err(Skip::AlreadyInjected)));
//! ```

pub mod annotations;
pub mod config;
pub mod metrics;
pub mod mutate;
pub mod patch;
pub mod review;
pub mod server;
pub mod tls;
pub mod version;

pub use config::{InjectConfig, SidecarMode, TrustAnchors};
pub use mutate::{inject_pod_spec, InjectionStatus, Skip};
