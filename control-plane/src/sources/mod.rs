//! Where cluster state comes from: the Kubernetes API ([`kubernetes`]) or a directory of
//! manifests ([`manifests`]). Each publishes whole [`crate::state::State`]s on a watch
//! channel; the index recomputes views from the latest.

pub mod kubernetes;
pub mod manifests;
