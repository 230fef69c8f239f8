//! Types shared by Weft's proxy, control plane and tools.

pub mod identity;

pub use identity::{IdentityError, SpiffeId};
