//! The view the proxy enforces: the last update from the control plane that compiled, merged
//! with the parts earlier updates carried.
//!
//! It lives behind `arc-swap` like the config snapshot: the data path loads it per request
//! (so a policy change reaches requests on long-lived connections) without a lock, and a
//! reader never sees half an update. Only the discovery task writes, so merging (load the
//! previous view, build the next, store it) needs no lock either. How per-Service full
//! syncs and deltas merge into the outbound part: [`outbound`].

mod outbound;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwapOption, Guard};
use tokio::sync::Notify;
use weft_api::authz::{AuthzError, WorkloadPolicy};
use weft_api::proto::discovery::v1 as pb;

use crate::config::MtlsMode;
use crate::traffic::services::{ServiceTable, TableError};
use outbound::{merge, whole};

pub use outbound::Outbound;

/// One applied version: the parts as received (shown on `/config`) and the inbound part
/// compiled for the data path. `outbound` is always the whole outbound view, however it
/// arrived (whole, or as per-Service full syncs and deltas merged in).
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct View {
    pub version: String,
    pub inbound: pb::Inbound,
    pub outbound: Outbound,
    /// `Services.version` of `outbound` when it came as per-Service resources: what the next
    /// delta must name as its base, and what the proxy tells the control plane it holds
    /// when it reconnects. Empty when it came whole (a control plane without deltas).
    pub services_version: String,
    /// Shared between versions whose update left the inbound part out.
    #[serde(skip)]
    pub authz: Arc<WorkloadPolicy>,
    /// The outbound part compiled for calls to Services; shared likewise.
    #[serde(skip)]
    pub services: Arc<ServiceTable>,
}

impl View {
    /// The mTLS mode the view sets for `port` (a port's own mode first, then the
    /// workload's); `None` when it leaves the choice to the config file.
    pub fn mtls_mode(&self, port: u16) -> Option<MtlsMode> {
        let port_mode = self
            .inbound
            .ports
            .iter()
            .find(|p| p.port == u32::from(port))
            .and_then(|p| mtls_mode(p.mtls_mode));
        port_mode.or_else(|| mtls_mode(self.inbound.mtls_mode))
    }
}

fn mtls_mode(value: i32) -> Option<MtlsMode> {
    match pb::MtlsMode::try_from(value) {
        Ok(pb::MtlsMode::Strict) => Some(MtlsMode::Strict),
        Ok(pb::MtlsMode::Permissive) => Some(MtlsMode::Permissive),
        Ok(pb::MtlsMode::Unspecified) | Err(_) => None,
    }
}

/// Why an update was not applied (sent back in the `Ack`).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the update has no version")]
    NoVersion,
    /// The first update of a stream always carries both parts; without a previous view an
    /// absent part cannot mean "unchanged".
    #[error("the update has no {0} part and there is no previous view to keep it from")]
    MissingPart(&'static str),
    #[error(transparent)]
    Policy(#[from] AuthzError),
    #[error(transparent)]
    Services(#[from] TableError),
    #[error(transparent)]
    Sync(#[from] SyncError),
}

/// An outbound part that does not fit the Services the proxy holds, or says nothing usable
/// about them.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("the update carries the outbound view both whole and as Services")]
    TwoOutboundForms,
    #[error("the Services part has no sync kind (full or delta)")]
    NoSyncKind,
    #[error("the Services part has no version")]
    NoServicesVersion,
    /// A delta for another set than the one held: applying it would make a set the control
    /// plane never computed.
    #[error("a delta on Services version {base:?}, but this proxy holds {held:?}")]
    Base { base: String, held: String },
    #[error("the delta removes Service {0}, which this proxy does not have")]
    UnknownService(String),
}

impl ApplyError {
    /// Whether the update did not fit the Services the proxy holds (rather than having
    /// content it can't use): the proxy then asks for a full sync (`Ack.full_sync`). After
    /// a content error it doesn't: the same content would be rejected again.
    pub fn needs_full_sync(&self) -> bool {
        matches!(self, ApplyError::Sync(_))
    }
}

#[derive(Default)]
pub struct ViewStore {
    current: ArcSwapOption<View>,
    applied: Notify,
}

impl ViewStore {
    pub fn new() -> ViewStore {
        ViewStore::default()
    }

    /// The current view, for one request or connection: don't hold it across an await.
    pub fn load(&self) -> Guard<Option<Arc<View>>> {
        self.current.load()
    }

    /// The current view, to keep (`/config`).
    pub fn load_full(&self) -> Option<Arc<View>> {
        self.current.load_full()
    }

    /// Whether a view has been applied (it is never removed afterwards).
    pub fn is_applied(&self) -> bool {
        self.current.load().is_some()
    }

    /// The current view, waiting up to `limit` for the first one.
    pub async fn first(&self, limit: Duration) -> Option<Arc<View>> {
        if let Some(view) = self.current.load_full() {
            return Some(view);
        }
        let waiting = async {
            loop {
                let applied = self.applied.notified();
                tokio::pin!(applied);
                // Registered before the check, so a view stored in between is not missed.
                applied.as_mut().enable();
                if let Some(view) = self.current.load_full() {
                    return view;
                }
                applied.await;
            }
        };
        tokio::time::timeout(limit, waiting).await.ok()
    }

    /// Merges `update` (a whole one: a split update's messages put together, see
    /// [`super::sync`]) into the current view and, if its inbound part compiles and its
    /// outbound part builds, makes the result current. On error the current view stays.
    pub fn apply(&self, update: pb::ViewUpdate) -> Result<Arc<View>, ApplyError> {
        if update.version.is_empty() {
            return Err(ApplyError::NoVersion);
        }
        let previous = self.current.load_full();
        let (inbound, authz) = match (update.inbound, &previous) {
            (Some(inbound), _) => {
                let authz = Arc::new(WorkloadPolicy::from_proto(&inbound)?);
                (inbound, authz)
            }
            (None, Some(previous)) => (previous.inbound.clone(), previous.authz.clone()),
            (None, None) => return Err(ApplyError::MissingPart("inbound")),
        };
        let (outbound, services_version, services) =
            match (update.outbound, update.services, &previous) {
                (Some(_), Some(_), _) => return Err(SyncError::TwoOutboundForms.into()),
                (Some(outbound), None, previous) => {
                    let (outbound, table) = whole(outbound.services, previous.as_deref())?;
                    (outbound, String::new(), Arc::new(table))
                }
                (None, Some(services), previous) => {
                    let (outbound, version, table) = merge(previous.as_deref(), services)?;
                    (outbound, version, Arc::new(table))
                }
                (None, None, Some(previous)) => (
                    previous.outbound.clone(),
                    previous.services_version.clone(),
                    previous.services.clone(),
                ),
                (None, None, None) => return Err(ApplyError::MissingPart("outbound")),
            };
        let view = Arc::new(View {
            version: update.version,
            inbound,
            outbound,
            services_version,
            authz,
            services,
        });
        self.current.store(Some(view.clone()));
        self.applied.notify_waiters();
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound(mode: pb::MtlsMode) -> pb::Inbound {
        pb::Inbound {
            namespace: "shop".into(),
            pod: "orders-1".into(),
            mtls_mode: mode as i32,
            default_policy: pb::DefaultPolicy::Allow as i32,
            ports: vec![pb::WorkloadPort {
                port: 8080,
                name: "http".into(),
                mtls_mode: pb::MtlsMode::Permissive as i32,
            }],
            ..Default::default()
        }
    }

    fn service(name: &str) -> pb::Outbound {
        pb::Outbound {
            services: vec![pb::Service {
                namespace: "shop".into(),
                name: name.into(),
                ..Default::default()
            }],
        }
    }

    fn update(
        version: &str,
        inbound: Option<pb::Inbound>,
        outbound: Option<pb::Outbound>,
    ) -> pb::ViewUpdate {
        pb::ViewUpdate {
            version: version.into(),
            inbound,
            outbound,
            ..Default::default()
        }
    }

    #[test]
    fn absent_parts_keep_the_previous_ones() {
        let store = ViewStore::new();
        assert!(!store.is_applied());
        let first = store
            .apply(update(
                "v1",
                Some(inbound(pb::MtlsMode::Strict)),
                Some(service("a")),
            ))
            .unwrap();
        let second = store.apply(update("v2", None, Some(service("b")))).unwrap();
        assert_eq!(second.version, "v2");
        assert_eq!(second.inbound, first.inbound);
        assert!(
            Arc::ptr_eq(&second.authz, &first.authz),
            "not compiled again"
        );
        assert_eq!(second.outbound.services[0].name, "b");
        let third = store
            .apply(update("v3", Some(inbound(pb::MtlsMode::Permissive)), None))
            .unwrap();
        assert_eq!(third.outbound.services[0].name, "b");
        assert_eq!(store.load().as_ref().unwrap().version, "v3");
    }

    #[test]
    fn a_first_update_needs_both_parts_and_a_version() {
        let store = ViewStore::new();
        assert!(matches!(
            store.apply(update("v1", None, Some(service("a")))),
            Err(ApplyError::MissingPart("inbound"))
        ));
        assert!(matches!(
            store.apply(update("v1", Some(inbound(pb::MtlsMode::Strict)), None)),
            Err(ApplyError::MissingPart("outbound"))
        ));
        assert!(matches!(
            store.apply(update(
                "",
                Some(inbound(pb::MtlsMode::Strict)),
                Some(service("a"))
            )),
            Err(ApplyError::NoVersion)
        ));
        assert!(!store.is_applied());
    }

    #[test]
    fn a_policy_that_does_not_compile_leaves_the_current_view() {
        let store = ViewStore::new();
        store
            .apply(update(
                "v1",
                Some(inbound(pb::MtlsMode::Strict)),
                Some(service("a")),
            ))
            .unwrap();
        let mut bad = inbound(pb::MtlsMode::Strict);
        bad.policies.push(pb::AuthorizationPolicy {
            namespace: "shop".into(),
            name: "broken".into(),
            action: pb::Action::Allow as i32,
            rules: vec![pb::Rule {
                from: vec![pb::Source {
                    principals: vec!["a*b".into()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        });
        let error = store.apply(update("v2", Some(bad), None)).unwrap_err();
        assert!(error.to_string().contains("shop/broken"), "{error}");
        assert_eq!(store.load().as_ref().unwrap().version, "v1");
    }

    #[test]
    fn the_port_mode_overrides_the_workload_mode_and_unspecified_defers() {
        let store = ViewStore::new();
        let view = store
            .apply(update(
                "v1",
                Some(inbound(pb::MtlsMode::Strict)),
                Some(service("a")),
            ))
            .unwrap();
        assert_eq!(view.mtls_mode(8080), Some(MtlsMode::Permissive));
        assert_eq!(view.mtls_mode(9090), Some(MtlsMode::Strict));
        let view = store
            .apply(update("v2", Some(inbound(pb::MtlsMode::Unspecified)), None))
            .unwrap();
        assert_eq!(view.mtls_mode(9090), None);
    }

    #[tokio::test(start_paused = true)]
    async fn first_waits_for_a_view_within_the_limit() {
        let store = Arc::new(ViewStore::new());
        assert!(store.first(Duration::from_secs(1)).await.is_none());
        let applying = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            applying
                .apply(update(
                    "v1",
                    Some(inbound(pb::MtlsMode::Strict)),
                    Some(service("a")),
                ))
                .unwrap();
        });
        let started = tokio::time::Instant::now();
        let view = store.first(Duration::from_secs(1)).await.unwrap();
        assert_eq!(view.version, "v1");
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }
}
