//! One stream's updates as the proxy receives them: split updates put back together before
//! they are applied, and the full-sync handshake for deltas that don't fit.
//!
//! A control plane with deltas (we say so in the Hello) sends the outbound part as
//! per-Service full syncs and deltas, split into several messages when large
//! (`ViewUpdate.more`). Nothing of a split update is applied, or acknowledged, before its
//! last message: the version names the whole state, and a proxy must never enforce half of
//! one. A delta applies only to the set it names as its base; one that doesn't fit (another
//! base, a removal of a Service we don't have, messages out of order) is rejected with
//! `Ack.full_sync`, and the control plane answers with a full sync. See [`State`].

use std::sync::Arc;

use weft_api::proto::discovery::v1 as pb;

use super::store::{ApplyError, View, ViewStore};

/// Where this stream stands between two messages.
///
/// The stream is ordered, so the control plane computes each delta against what it sent
/// before, without waiting for acks. That only holds while the proxy applies everything;
/// once it has rejected an update its set is older than the control plane thinks, and the
/// deltas that follow name a base it doesn't hold. Rather than reject each of them with a
/// new request, it asks once and waits ([`State::AwaitingFullSync`]): the control plane
/// answers the request with a full sync carrying both parts, as a stream's first update does.
#[derive(Debug, Default)]
enum State {
    /// Between updates; deltas apply to the set held.
    #[default]
    Ready,
    /// Between updates, after asking for a full sync: deltas are rejected (without asking
    /// again) until a full sync has been processed. Updates without Services still apply.
    AwaitingFullSync,
    /// Within a split update: its messages so far, merged, and whether a full sync was
    /// being waited for when it began.
    Receiving {
        partial: Box<pb::ViewUpdate>,
        awaiting: bool,
    },
    /// Dropping the rest of split update `version` after rejecting it (which asked for a
    /// full sync); `AwaitingFullSync` after its last message.
    Discarding { version: String },
}

/// Why an update was rejected (the `Ack.error`).
#[derive(Debug, thiserror::Error)]
pub enum RejectError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Split(#[from] SplitError),
    #[error("a delta while waiting for the full sync this proxy asked for")]
    AwaitingFullSync,
}

/// The messages of a split update don't make one update.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("a message of update {got:?} arrived before the last message of update {expected:?}")]
    Interleaved { expected: String, got: String },
    #[error("the messages of update {0:?} disagree on their Services' sync, base or version, or split a whole outbound view")]
    Inconsistent(String),
}

/// What a message led to.
#[derive(Debug)]
pub enum Received {
    /// A message of a split update, kept until the last one: nothing to acknowledge yet.
    Partial,
    /// The rest of an update already rejected: nothing to acknowledge.
    Dropped,
    /// The update is whole and applied: acknowledge it.
    Applied(Arc<View>),
    /// Rejected: acknowledge `version` with the error, asking for a full sync if
    /// `full_sync`. The current view stays.
    Rejected {
        version: String,
        error: RejectError,
        full_sync: bool,
    },
}

/// One stream's state ([`State`]); a new stream starts a new one.
#[derive(Debug, Default)]
pub struct Session {
    state: State,
}

impl Session {
    pub fn new() -> Session {
        Session::default()
    }

    /// Whether the proxy has asked for a full sync and is waiting for it.
    pub fn awaiting_full_sync(&self) -> bool {
        match &self.state {
            State::Ready => false,
            State::AwaitingFullSync | State::Discarding { .. } => true,
            State::Receiving { awaiting, .. } => *awaiting,
        }
    }

    /// Takes one message from the stream, applying the update to `store` once it is whole.
    pub fn receive(&mut self, store: &ViewStore, message: pb::ViewUpdate) -> Received {
        let (update, awaiting) = match std::mem::take(&mut self.state) {
            State::Discarding { version } if version == message.version => {
                self.state = if message.more {
                    State::Discarding { version }
                } else {
                    State::AwaitingFullSync
                };
                return Received::Dropped;
            }
            State::Ready => (message, false),
            State::AwaitingFullSync | State::Discarding { .. } => (message, true),
            State::Receiving {
                mut partial,
                awaiting,
            } => {
                let more = message.more;
                let got = message.version.clone();
                if let Err(error) = put_together(&mut partial, message) {
                    self.state = if more {
                        State::Discarding { version: got }
                    } else {
                        State::AwaitingFullSync
                    };
                    return Received::Rejected {
                        version: partial.version,
                        error: error.into(),
                        full_sync: true,
                    };
                }
                (*partial, awaiting)
            }
        };
        if update.more {
            self.state = State::Receiving {
                partial: Box::new(update),
                awaiting,
            };
            return Received::Partial;
        }
        let version = update.version.clone();
        let replaces_services = update.outbound.is_some()
            || update
                .services
                .as_ref()
                .is_some_and(|s| s.sync == pb::Sync::Full as i32);
        let is_delta = update.services.is_some() && !replaces_services;
        if awaiting && is_delta {
            self.state = State::AwaitingFullSync;
            return Received::Rejected {
                version,
                error: RejectError::AwaitingFullSync,
                full_sync: false,
            };
        }
        // Still waiting unless this update replaced the Services (applied or rejected: a
        // full sync rejected for its content is not asked for again, see `needs_full_sync`).
        let still_awaiting = awaiting && !replaces_services;
        match store.apply(update) {
            Ok(view) => {
                self.state = if still_awaiting {
                    State::AwaitingFullSync
                } else {
                    State::Ready
                };
                Received::Applied(view)
            }
            Err(error) => {
                let full_sync = error.needs_full_sync();
                self.state = if full_sync || still_awaiting {
                    State::AwaitingFullSync
                } else {
                    State::Ready
                };
                Received::Rejected {
                    version,
                    error: error.into(),
                    full_sync,
                }
            }
        }
    }
}

/// Merges the next message of a split update into the messages so far.
fn put_together(partial: &mut pb::ViewUpdate, next: pb::ViewUpdate) -> Result<(), SplitError> {
    if next.version != partial.version {
        return Err(SplitError::Interleaved {
            expected: partial.version.clone(),
            got: next.version,
        });
    }
    if next.outbound.is_some() || partial.outbound.is_some() {
        return Err(SplitError::Inconsistent(next.version));
    }
    if next.inbound.is_some() {
        partial.inbound = next.inbound;
    }
    match (&mut partial.services, next.services) {
        (Some(so_far), Some(more)) => {
            if (so_far.sync, &so_far.base, &so_far.version)
                != (more.sync, &more.base, &more.version)
            {
                return Err(SplitError::Inconsistent(next.version));
            }
            so_far.upserted.extend(more.upserted);
            so_far.removed.extend(more.removed);
        }
        (so_far @ None, Some(more)) => *so_far = Some(more),
        (_, None) => {}
    }
    partial.more = next.more;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::store::SyncError;

    fn service(name: &str, ready: bool) -> pb::Service {
        pb::Service {
            namespace: "shop".into(),
            name: name.into(),
            cluster_ips: vec!["10.96.0.1".into()],
            ports: vec![pb::ServicePort {
                port: 80,
                target_port: 8080,
                ..Default::default()
            }],
            endpoints: vec![pb::Endpoint {
                address: "10.0.0.1".into(),
                ready,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn inbound() -> pb::Inbound {
        pb::Inbound {
            namespace: "shop".into(),
            pod: "orders-1".into(),
            default_policy: pb::DefaultPolicy::Allow as i32,
            ..Default::default()
        }
    }

    fn services(
        sync: pb::Sync,
        base: &str,
        version: &str,
        upserted: Vec<pb::Service>,
        removed: &[&str],
    ) -> pb::Services {
        pb::Services {
            sync: sync as i32,
            base: base.into(),
            version: version.into(),
            upserted,
            removed: removed.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn message(version: &str, services: pb::Services, more: bool) -> pb::ViewUpdate {
        pb::ViewUpdate {
            version: version.into(),
            services: Some(services),
            more,
            ..Default::default()
        }
    }

    /// A full sync of `names` in one message per Service, the inbound part in the first.
    fn split_full_sync(
        version: &str,
        services_version: &str,
        names: &[&str],
    ) -> Vec<pb::ViewUpdate> {
        let mut messages: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let part = services(
                    pb::Sync::Full,
                    "",
                    services_version,
                    vec![service(name, true)],
                    &[],
                );
                message(version, part, i + 1 < names.len())
            })
            .collect();
        messages[0].inbound = Some(inbound());
        messages
    }

    fn names(view: &View) -> Vec<&str> {
        view.outbound
            .services
            .iter()
            .map(|s| s.name.as_str())
            .collect()
    }

    fn applied(received: Received) -> Arc<View> {
        match received {
            Received::Applied(view) => view,
            other => panic!("expected the update applied, got {other:?}"),
        }
    }

    fn rejected(received: Received) -> (String, RejectError, bool) {
        match received {
            Received::Rejected {
                version,
                error,
                full_sync,
            } => (version, error, full_sync),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    fn synced() -> (ViewStore, Session) {
        let store = ViewStore::new();
        let mut session = Session::new();
        let mut last = None;
        for m in split_full_sync("v1", "s1", &["orders", "billing", "cart"]) {
            last = Some(session.receive(&store, m));
        }
        applied(last.expect("messages"));
        (store, session)
    }

    #[test]
    fn a_split_full_sync_applies_once_whole_and_deltas_merge_into_it() {
        let store = ViewStore::new();
        let mut session = Session::new();
        let mut messages = split_full_sync("v1", "s1", &["orders", "billing", "cart"]).into_iter();
        for m in messages.by_ref().take(2) {
            assert!(matches!(session.receive(&store, m), Received::Partial));
            assert!(!store.is_applied(), "nothing before the last message");
        }
        let view = applied(session.receive(&store, messages.next().expect("third")));
        assert_eq!(view.version, "v1");
        assert_eq!(view.services_version, "s1");
        assert_eq!(
            names(&view),
            ["billing", "cart", "orders"],
            "kept in key order"
        );
        assert!(view.services.by_name("shop", "cart", 80).is_some());

        // A delta: billing changes, audit is added, cart goes; orders is left alone.
        let delta = services(
            pb::Sync::Delta,
            "s1",
            "s2",
            vec![service("billing", false), service("audit", true)],
            &["shop/cart"],
        );
        let view = applied(session.receive(&store, message("v2", delta, false)));
        assert_eq!(names(&view), ["audit", "billing", "orders"]);
        assert_eq!(view.services_version, "s2");
        assert!(!view.outbound.services[1].endpoints[0].ready);
        assert_eq!(view.inbound, inbound(), "the inbound part kept");
        assert!(view.services.by_name("shop", "cart", 80).is_none());
    }

    #[test]
    fn a_delta_that_does_not_fit_is_rejected_asking_for_a_full_sync_once() {
        let (store, mut session) = synced();
        // Removes a Service the proxy doesn't have.
        let bad = services(pb::Sync::Delta, "s1", "s2", vec![], &["shop/nope"]);
        let (version, error, full_sync) =
            rejected(session.receive(&store, message("v2", bad, false)));
        assert_eq!(version, "v2");
        assert!(full_sync);
        assert!(
            matches!(error, RejectError::Apply(ApplyError::Sync(SyncError::UnknownService(ref s))) if s == "shop/nope")
        );
        let view = store.load_full().expect("kept");
        assert_eq!(
            (view.version.as_str(), names(&view)),
            ("v1", vec!["billing", "cart", "orders"])
        );
        assert!(session.awaiting_full_sync());

        // Further deltas, even ones that would fit, are rejected without asking again.
        let next = services(pb::Sync::Delta, "s1", "s3", vec![service("x", true)], &[]);
        let (_, error, full_sync) = rejected(session.receive(&store, message("v3", next, false)));
        assert!(matches!(error, RejectError::AwaitingFullSync));
        assert!(!full_sync);
        // An update without Services still applies (the full sync will carry both parts).
        let inbound_only = pb::ViewUpdate {
            version: "v4".into(),
            inbound: Some(inbound()),
            ..Default::default()
        };
        applied(session.receive(&store, inbound_only));
        assert!(session.awaiting_full_sync());

        // The full sync: applied, and deltas fit again.
        let mut last = None;
        for m in split_full_sync("v5", "s5", &["orders"]) {
            last = Some(session.receive(&store, m));
        }
        assert_eq!(names(&applied(last.expect("one"))), ["orders"]);
        assert!(!session.awaiting_full_sync());
        let delta = services(pb::Sync::Delta, "s5", "s6", vec![], &["shop/orders"]);
        assert!(
            applied(session.receive(&store, message("v6", delta, false)))
                .outbound
                .services
                .is_empty()
        );
    }

    #[test]
    fn a_delta_on_another_base_or_without_one_is_rejected() {
        let (store, mut session) = synced();
        let other = services(pb::Sync::Delta, "s0", "s2", vec![service("x", true)], &[]);
        let (_, error, full_sync) = rejected(session.receive(&store, message("v2", other, false)));
        assert!(full_sync);
        assert!(error.to_string().contains("\"s0\""), "{error}");

        // A proxy whose Services came whole (a control plane without deltas) has no base.
        let store = ViewStore::new();
        let mut session = Session::new();
        let whole = pb::ViewUpdate {
            version: "v1".into(),
            inbound: Some(inbound()),
            outbound: Some(pb::Outbound {
                services: vec![service("orders", true)],
            }),
            ..Default::default()
        };
        assert_eq!(applied(session.receive(&store, whole)).services_version, "");
        let delta = services(pb::Sync::Delta, "", "s2", vec![service("x", true)], &[]);
        let (_, error, full_sync) = rejected(session.receive(&store, message("v2", delta, false)));
        assert!(full_sync);
        assert!(matches!(
            error,
            RejectError::Apply(ApplyError::Sync(SyncError::Base { .. }))
        ));
        // With no view at all, likewise.
        let empty = ViewStore::new();
        let delta = services(pb::Sync::Delta, "s1", "s2", vec![], &[]);
        let mut update = message("v1", delta, false);
        update.inbound = Some(inbound());
        let (_, _, full_sync) = rejected(Session::new().receive(&empty, update));
        assert!(full_sync);
        assert!(!empty.is_applied());
    }

    #[test]
    fn messages_of_a_split_update_out_of_order_are_rejected_and_the_rest_dropped() {
        let (store, mut session) = synced();
        let mut a = split_full_sync("v2", "s2", &["a", "b"]);
        let b = split_full_sync("v3", "s3", &["c", "d", "e"]);
        assert!(matches!(
            session.receive(&store, a.remove(0)),
            Received::Partial
        ));
        // v3 begins before v2 ended.
        let (version, error, full_sync) = rejected(session.receive(&store, b[0].clone()));
        assert_eq!(version, "v2");
        assert!(full_sync);
        assert!(matches!(
            error,
            RejectError::Split(SplitError::Interleaved { .. })
        ));
        // The rest of v3 is dropped unacknowledged; the view is still v1.
        for m in &b[1..] {
            assert!(matches!(
                session.receive(&store, m.clone()),
                Received::Dropped
            ));
        }
        assert_eq!(store.load_full().expect("kept").version, "v1");
        // Messages of one update that disagree on their Services are rejected too.
        let mut c = split_full_sync("v4", "s4", &["a", "b"]);
        c[1].services.as_mut().expect("Services").version = "other".into();
        assert!(matches!(
            session.receive(&store, c[0].clone()),
            Received::Partial
        ));
        let (_, error, _) = rejected(session.receive(&store, c[1].clone()));
        assert!(matches!(
            error,
            RejectError::Split(SplitError::Inconsistent(_))
        ));
    }
}
