//! The certificate refresh loop: one task owns getting and renewing the workload certificate.
//!
//! It is generic over `Certify` — "get me a fresh certificate" — so the schedule can be
//! tested with a fake and paused time, and the control-plane client stays a plain RPC.
//!
//! The schedule:
//! - **Certify at start**, then **renew at ~70% of the lifetime**, leaving 30% (about 7 h of
//!   the default 24 h) to ride out a control-plane outage before the certificate expires.
//! - **Jitter of ±10% of the lifetime** on each renewal: proxies started together (a rollout,
//!   a node reboot) would otherwise renew in lockstep forever and hit the CA in bursts.
//!   Renewals land anywhere from 60% to 80% of the lifetime.
//! - **On failure, exponential backoff** from 1 s doubling to a 1 min cap, each delay
//!   jittered by ±20% so that proxies that lost the control plane together do not all come
//!   back at the same instant. The certificate in use is kept while it is valid: a failed
//!   renewal costs nothing but a log line and a counter.
//! - **Never sleeping past expiry**: a retry due after the certificate expires is brought
//!   forward to the moment of expiry, so the last attempt with the old certificate still
//!   valid is never skipped. Once it has expired the certificate is dropped (handshakes
//!   would fail at the peer anyway; now `/ready` says so) and retries go on at the capped
//!   backoff until the control plane answers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use weft_api::SpiffeId;

use super::credentials::{Credentials, CredentialsError};
use super::metrics::IdentityMetrics;
use super::tls::{Source, State, Tls};

/// Renew when this fraction of the lifetime has passed...
pub(crate) const RENEW_AT: f64 = 0.7;
/// ...give or take this fraction of the lifetime.
pub(crate) const RENEW_JITTER: f64 = 0.1;
/// Never renew sooner than this after a success (a CA handing out nearly expired
/// certificates must not turn the loop into a busy loop).
pub(crate) const MIN_RENEW_DELAY: Duration = Duration::from_secs(1);
pub(crate) const BACKOFF_START: Duration = Duration::from_secs(1);
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Each backoff delay is scaled by a random factor in `1 ± BACKOFF_JITTER`.
pub(crate) const BACKOFF_JITTER: f64 = 0.2;
/// One certify call (connect, handshake, RPC) may take this long before it counts as failed.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate just obtained, with its timing relative to now (so the schedule runs on the
/// monotonic clock, which tests can pause).
pub(crate) struct Issued {
    pub(crate) credentials: Credentials,
    /// `not_after - not_before`.
    pub(crate) lifetime: Duration,
    /// `not_after - now`.
    pub(crate) remaining: Duration,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CertifyError {
    #[error("cannot read the identity token {path}: {source}")]
    Token {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the identity token file {0} is empty")]
    EmptyToken(std::path::PathBuf),
    #[error("cannot build the certificate request: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("the control plane answered {code:?}: {message}")]
    Rpc { code: tonic::Code, message: String },
    #[error("the control plane's certificate is unusable: {0}")]
    Response(#[from] CredentialsError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl From<tonic::Status> for CertifyError {
    fn from(status: tonic::Status) -> Self {
        CertifyError::Rpc {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// Gets a fresh certificate (with a fresh key) for this workload.
pub(crate) trait Certify: Send + 'static {
    fn certify(&mut self) -> impl Future<Output = Result<Issued, CertifyError>> + Send;
}

/// Starts the refresh task for `tls`; it stops when `tls` is dropped.
pub(crate) fn spawn<C: Certify>(
    certifier: C,
    tls: &Tls,
    metrics: IdentityMetrics,
    identity: SpiffeId,
) -> tokio::task::JoinHandle<()> {
    let (stop_tx, stop_rx) = oneshot::channel();
    tls.set_source(Source::Refresh(stop_tx));
    tokio::spawn(run(
        certifier,
        tls.state().clone(),
        metrics,
        identity,
        stop_rx,
        fastrand::Rng::new(),
    ))
}

/// The loop. Two things can happen at any point — the timer for the next attempt fires, or
/// the owner goes away — so both the attempt and the wait are raced against `stop` in a
/// `select!`: a proxy shutting down never waits for a hung control plane, and the task holds
/// nothing that outlives the [`Tls`] it feeds.
pub(crate) async fn run<C: Certify>(
    mut certifier: C,
    state: Arc<State>,
    metrics: IdentityMetrics,
    identity: SpiffeId,
    mut stop: oneshot::Receiver<()>,
    mut rng: fastrand::Rng,
) {
    // When the installed certificate expires, on the monotonic clock.
    let mut expires_at: Option<Instant> = None;
    let mut failures: u32 = 0;
    loop {
        let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, certifier.certify());
        let result = tokio::select! {
            biased;
            _ = &mut stop => return,
            result = attempt => result.unwrap_or(Err(CertifyError::Timeout(ATTEMPT_TIMEOUT))),
        };
        let now = Instant::now();
        let next = match result {
            Ok(issued) => {
                failures = 0;
                expires_at = Some(now + issued.remaining);
                let delay = renewal_delay(issued.lifetime, issued.remaining, &mut rng);
                let not_after = issued.credentials.not_after();
                tracing::info!(
                    identity = %identity,
                    not_after = %humantime::format_rfc3339_seconds(not_after),
                    renew_in = ?delay,
                    "workload certificate issued"
                );
                metrics.renewed(not_after);
                state.install(issued.credentials);
                now + delay
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                metrics.failed();
                let delay = backoff(failures, &mut rng);
                match expires_at {
                    Some(expiry) if now < expiry => {
                        let next = (now + delay).min(expiry);
                        tracing::warn!(
                            identity = %identity,
                            %error,
                            retry_in = ?(next - now),
                            expires_in = ?(expiry - now),
                            "certificate renewal failed; keeping the current certificate"
                        );
                        next
                    }
                    _ => {
                        tracing::warn!(
                            identity = %identity,
                            %error,
                            retry_in = ?delay,
                            "cannot get a workload certificate; mTLS is unavailable until one arrives"
                        );
                        now + delay
                    }
                }
            }
        };
        tokio::select! {
            biased;
            _ = &mut stop => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        if expires_at.is_some_and(|expiry| Instant::now() >= expiry) {
            tracing::error!(
                identity = %identity,
                "workload certificate expired without a renewal; mTLS handshakes fail until one arrives"
            );
            state.clear();
            expires_at = None;
        }
    }
}

/// How long after issue to renew: at `RENEW_AT ± RENEW_JITTER` of the lifetime, counted from
/// `not_before` (a CA may back-date it for clock skew, so part of the lifetime may be gone).
pub(crate) fn renewal_delay(
    lifetime: Duration,
    remaining: Duration,
    rng: &mut fastrand::Rng,
) -> Duration {
    let fraction = RENEW_AT + (rng.f64() * 2.0 - 1.0) * RENEW_JITTER;
    let elapsed = lifetime.saturating_sub(remaining);
    let target = lifetime.mul_f64(fraction).saturating_sub(elapsed);
    target.max(MIN_RENEW_DELAY.min(remaining / 2))
}

/// The wait after the `failures`-th failure in a row (1-based).
pub(crate) fn backoff(failures: u32, rng: &mut fastrand::Rng) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let base = BACKOFF_START
        .saturating_mul(1 << doublings)
        .min(BACKOFF_CAP);
    let factor = 1.0 - BACKOFF_JITTER + rng.f64() * 2.0 * BACKOFF_JITTER;
    base.mul_f64(factor).min(BACKOFF_CAP)
}
