//! One call to a meshed Service, in the order the concerns apply:
//!
//! 1. the Service's circuit breaker admits the request or refuses it at once (503);
//! 2. routing: with routes attached, the matching rule picks a weighted backend Service, and
//!    no match is a 404 (GAMMA); without routes the Service itself is the backend;
//! 3. when the policy allows retries, the body is wrapped to be replayable: each try streams
//!    it as it arrives while keeping up to `maxBufferedBodyBytes` of it for the next try
//!    ([`ReplayBody`]); a longer body streams through and is not retried;
//! 4. each attempt: the backend's balancer picks an endpoint, the request goes to it (mTLS
//!    with its identity when it is meshed) bounded by the try timeout, and the outcome feeds
//!    the endpoint's latency estimate and outlier state;
//! 5. a retryable failure is retried after a jittered backoff if attempts and the Service's
//!    retry budget allow;
//! 6. the whole of it is bounded by the request timeout (504 naming which timeout fired).
//!
//! The retry policy and timeouts are the called Service's (its TrafficPolicy, with the
//! route's timeouts winning); endpoints, balancing and outlier ejection are the backend's.
//! Timeouts bound the wait for the response head; a response that has started streams.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::balance::Outcome;
use super::policy::TimeoutKind;
use super::retry::Attempt;
use super::services::{ServiceState, ServiceTable, Target};
use crate::http::body::OnEnd;
use crate::http::error::ProxyError;
use crate::http::forward::Forwarder;
use crate::http::pool::{ConnectSettings, ServiceLimits};
use crate::http::replay::ReplayBody;
use crate::http::Body;
use crate::tls::Upstream;

/// Calls `target`, a Service port from `table`.
pub async fn call(
    fwd: &Forwarder,
    table: &ServiceTable,
    target: &Arc<Target>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let service = &target.service;
    let admitted = service.breaker.try_request().map_err(|limit| {
        fwd.metrics.breaker_overflow(&target.label, limit.as_str());
        ProxyError::Overflow {
            target: target.label.clone(),
            limit,
        }
    })?;
    let mut rng = fastrand::Rng::new();
    let (backend, timeouts) = if target.routes.is_empty() {
        (target.clone(), service.settings.timeouts)
    } else {
        let rule = target
            .routes
            .select(req.method(), req.uri(), req.headers())
            .ok_or_else(|| ProxyError::NoRoute {
                target: target.label.clone(),
            })?;
        let backend = rule
            .backends
            .pick(&mut rng)
            .and_then(|b| table.by_name(&b.namespace, &b.name, b.port))
            .cloned()
            .ok_or_else(|| ProxyError::NoBackend {
                route: rule.route.to_string(),
            })?;
        fwd.metrics.route_request(
            &target.label,
            (&rule.route.namespace, &rule.route.name),
            &backend.label,
        );
        let timeouts = service
            .settings
            .timeouts
            .with_route(rule.request_timeout, rule.backend_request_timeout);
        (backend, timeouts)
    };
    let try_timeout = service.settings.try_timeout(&timeouts);
    let attempts = attempts(fwd, service, &backend, req, try_timeout, &mut rng);
    let rsp = match timeouts.request {
        Some(limit) => {
            tokio::time::timeout(limit, attempts)
                .await
                .unwrap_or(Err(ProxyError::Timeout {
                    kind: TimeoutKind::Request,
                    limit,
                }))
        }
        None => attempts.await,
    }?;
    // The request is in flight until its response body ends (or is dropped): a streaming
    // response keeps its place under `maxRequests`.
    Ok(rsp.map(|body| OnEnd::new(body, move || drop(admitted)).boxed_unsync()))
}

/// The request body: replayable when the policy allows retries (each try gets a clone),
/// else streamed once.
///
/// A replayable body keeps up to `max_buffered_body` bytes of what the tries have read, so a
/// retry replays them and then reads on from where the earlier try stopped. A body whose
/// `Content-Length` exceeds the limit is never captured (its size hint says so up front), one
/// of unknown length stops being captured once it outgrows the limit; either streams
/// through once and its request is not retried. A retry also needs the earlier try to have
/// let go of the rest of the body: hyper drops a request body once it has sent it (or the
/// try failed), but may still be sending it when an early response arrives.
fn payload(
    body: Incoming,
    attempts: u32,
    limit: usize,
) -> (Option<ReplayBody<Incoming>>, Option<Incoming>) {
    if attempts > 0 {
        (Some(ReplayBody::new(body, limit)), None)
    } else {
        (None, Some(body))
    }
}

async fn attempts(
    fwd: &Forwarder,
    service: &ServiceState,
    backend: &Target,
    req: Request<Incoming>,
    try_timeout: Option<Duration>,
    rng: &mut fastrand::Rng,
) -> Result<Response<Body>, ProxyError> {
    let policy = &service.settings.retry;
    service.budget.deposit(Instant::now());
    let (parts, body) = req.into_parts();
    let (replay, mut once) = payload(body, policy.attempts, policy.max_buffered_body);
    // Connections go to the backend's endpoints: its connect and idle timeouts and its
    // connection limits apply.
    let backend_settings = &backend.service.settings;
    let connect = ConnectSettings {
        connect_timeout: backend_settings
            .timeouts
            .connect
            .unwrap_or(fwd.connect_timeout),
        idle_timeout: backend_settings
            .timeouts
            .idle
            .unwrap_or(crate::http::pool::DEFAULT_IDLE_TIMEOUT),
        limits: Some(ServiceLimits {
            breaker: &backend.service.breaker,
            target: &backend.label,
        }),
    };
    let mut retries = 0;
    // The endpoint whose failure is being retried: an endpoint that fails every other
    // request is never ejected (no failures in a row), so without this a retry would land
    // on it again as often as the balancer's odds say.
    let mut failed: Option<std::net::SocketAddr> = None;
    loop {
        let endpoint =
            choose_other_than(backend, failed, rng).ok_or_else(|| ProxyError::NoEndpoints {
                target: backend.label.clone(),
            })?;
        let upstream = Upstream {
            addr: endpoint.addr,
            identity: endpoint.identity.clone(),
        };
        let in_flight = endpoint.start(Instant::now());
        let body: Body = match (&replay, once.take()) {
            (Some(replay), _) => replay.clone().boxed_unsync(),
            (None, Some(body)) => body.boxed_unsync(),
            // A streamed body is gone after the first try; the loop only repeats when it
            // was replayable.
            (None, None) => return Err(ProxyError::BadRequest("request body already sent".into())),
        };
        let req = Request::from_parts(clone_parts(&parts), body);
        let sent = fwd.forward_via(&upstream, req, &connect);
        let result = match try_timeout {
            Some(limit) => match tokio::time::timeout(limit, sent).await {
                Ok(result) => result,
                Err(_) => Err(ProxyError::Timeout {
                    kind: TimeoutKind::BackendRequest,
                    limit,
                }),
            },
            None => sent.await,
        };
        let (response, attempt) = match result {
            Ok(rsp) => {
                let (head, body) = rsp.into_parts();
                let failed = head.status.is_server_error();
                in_flight.finish(
                    Instant::now(),
                    if failed {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    },
                );
                (Ok((head, body)), None)
            }
            Err(ProxyError::Overflow { target, limit }) => {
                // The Service's own connection limits refused it: the endpoint did nothing
                // wrong (dropping `in_flight` unfinished leaves its estimate and outlier
                // state alone), and a retry would only queue behind the same limit.
                fwd.metrics.breaker_overflow(&target, limit.as_str());
                return Err(ProxyError::Overflow { target, limit });
            }
            Err(error) => {
                in_flight.finish(Instant::now(), Outcome::Failure);
                let attempt = classify(&error);
                (Err(error), Some(attempt))
            }
        };
        let retry_for = match (&response, &attempt) {
            (Ok((head, _)), _) => policy.should_retry(&parts.method, &Attempt::Response(head)),
            (Err(_), Some(attempt)) => policy.should_retry(&parts.method, attempt),
            (Err(_), None) => None,
        };
        let wants_retry = retry_for.is_some()
            && retries < policy.attempts
            && replay.as_ref().is_some_and(ReplayBody::can_replay);
        if wants_retry && service.budget.try_withdraw(Instant::now()) {
            retries += 1;
            failed = Some(upstream.addr);
            let condition = retry_for.map(|c| c.as_str()).unwrap_or("");
            tracing::debug!(target = %backend.label, endpoint = %upstream.addr, retries, condition, "retrying");
            fwd.metrics.retry(&backend.label, condition);
            tokio::time::sleep(policy.backoff(retries, rng)).await;
            continue;
        }
        if wants_retry {
            tracing::info!(target = %backend.label, "retry budget exhausted; returning the failure");
            fwd.metrics.retry_budget_exhausted(&backend.label);
        }
        return response.map(|(head, body)| Response::from_parts(head, body));
    }
}

/// The balancer's choice among the endpoints other than the one that just failed, when there
/// are others it may use; otherwise among all of them. (The filtered list is built only on
/// a retry, which is rare and already pays a backoff.)
fn choose_other_than(
    backend: &Target,
    failed: Option<std::net::SocketAddr>,
    rng: &mut fastrand::Rng,
) -> Option<Arc<super::balance::Endpoint>> {
    let balancer = &backend.service.balancer;
    if let Some(failed) = failed {
        let others: Vec<_> = backend
            .endpoints
            .iter()
            .filter(|e| e.addr != failed)
            .cloned()
            .collect();
        if let Some(other) = balancer.choose(&others, Instant::now(), rng) {
            return Some(other);
        }
    }
    balancer.choose(&backend.endpoints, Instant::now(), rng)
}

/// The head of a request, for one more attempt. Extensions are not copied: nothing the
/// upstream side reads lives there (upgrades, whose hook does, never take this path).
fn clone_parts(parts: &Parts) -> Parts {
    let mut req = Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req.into_parts().0
}

/// What kind of failure an error was, for the retry conditions.
fn classify(error: &ProxyError) -> Attempt<'static> {
    match error {
        ProxyError::Connect(_) => Attempt::ConnectFailed,
        ProxyError::Timeout { .. } => Attempt::Timeout,
        ProxyError::Upstream { source, .. } if refused_stream(source) => Attempt::RefusedStream,
        _ => Attempt::Reset,
    }
}

fn refused_stream(error: &hyper::Error) -> bool {
    let mut cause = error.source();
    while let Some(inner) = cause {
        if let Some(h2) = inner.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        cause = inner.source();
    }
    false
}
