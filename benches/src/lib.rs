//! Weft's benchmark harness.
//!
//! Three binaries share this library:
//!
//! * `weft-load` — an HTTP/1.1 load generator ([`load`]) with a closed-loop (max throughput)
//!   and an open-loop (constant rate, coordinated-omission corrected) mode.
//! * `weft-upstream` — a small, fast HTTP/1.1 server ([`upstream`]) standing in for the app.
//! * `weft-bench` — the scenario runner ([`harness`]): starts the upstream, the proxies under
//!   test (weft-proxy, Envoy) pinned to their own core, drives `weft-load` against each chain,
//!   samples the proxies' CPU time and memory from `/proc`, and writes a table and JSON.
//!
//! `weft-balance` ([`balance`]) compares the proxy's load balancers with one slow endpoint,
//! through the real control plane.
//!
//! It is a benchmark, not a test: it reports numbers and never fails on a slow machine.

pub mod balance;
pub mod clock;
pub mod harness;
pub mod load;
pub mod procfs;
#[cfg(feature = "propagation")]
pub mod propagation;
pub mod report;
pub mod timer;
pub mod upstream;
