//! Traffic management on the way out: a call to a meshed Service is routed (HTTPRoute
//! matches and weighted backends), balanced over the Service's endpoints (P2C over peak
//! EWMA latency, or round robin), retried within a budget, bounded by timeouts, and held
//! back by circuit breakers and outlier ejection. Each concern is one module here; the
//! request path that ties them together reads them in that order.
//!
//! Defaults and the `TrafficPolicy` fields that change them: docs/traffic.md.

pub mod balance;
pub mod breaker;
pub mod budget;
pub mod call;
pub mod metrics;
pub mod outlier;
pub mod policy;
pub mod retry;
pub mod route;
pub mod services;
