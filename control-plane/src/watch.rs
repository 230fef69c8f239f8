//! File watching lives in the shared `weft-fswatch` crate; re-exported under the name the
//! control plane's modules use.

pub use weft_fswatch::{watch_files, watch_tree, WatchError};
