//! What the control plane writes to the cluster (Kubernetes mode only; everything else it
//! only reads). Today that is one object: the trust anchors ConfigMap every injected proxy
//! mounts ([`trust_anchors`]).

pub mod trust_anchors;
