//! Types shared by Weft's proxy, control plane and tools: SPIFFE identities and the
//! control-plane gRPC API.

pub mod authz;
#[cfg(feature = "crds")]
pub mod crd;
pub mod identity;
pub mod metrics;

pub use identity::{IdentityError, SpiffeId};

/// Generated from `proto/`.
pub mod proto {
    pub mod identity {
        pub mod v1 {
            tonic::include_proto!("weft.identity.v1");
        }
    }
    pub mod discovery {
        pub mod v1 {
            tonic::include_proto!("weft.discovery.v1");
        }
    }
}
