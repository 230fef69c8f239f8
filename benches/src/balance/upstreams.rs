//! The benchmark's three endpoints: HTTP/1.1 servers on `127.0.0.1`, `127.0.0.2` and
//! `127.0.0.3` (all loopback on Linux) at the same port, as three pods of one Service would
//! be. Each counts the requests it answered; the slow one waits a fixed delay before it
//! answers. They run on a current-thread runtime of their own thread, which inherits the
//! runner's core.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::upstream::{body_of, DEFAULT_BODY_BYTES};

/// The endpoints' addresses: `127.0.0.{1,2,3}:port`.
pub fn addresses(port: u16) -> [SocketAddr; 3] {
    [1, 2, 3].map(|last| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), port))
}

/// The running endpoints. Dropping it stops them (the runtime's thread ends).
pub struct Endpoints {
    pub addrs: [SocketAddr; 3],
    /// Requests answered, per endpoint.
    counts: [Arc<AtomicU64>; 3],
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Endpoints {
    /// Starts the three endpoints on `port`; endpoint `slow` adds `delay` to every response.
    pub fn start(port: u16, slow: usize, delay: Duration) -> anyhow::Result<Endpoints> {
        let addrs = addresses(port);
        let counts = [0; 3].map(|_| Arc::new(AtomicU64::new(0)));
        // Bound here, so a taken address fails the run at once rather than inside the thread.
        let listeners = addrs
            .iter()
            .map(|addr| {
                let l = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("binding endpoint {addr}"))?;
                l.set_nonblocking(true)?;
                Ok(l)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread_counts = counts.clone();
        let thread = std::thread::Builder::new()
            .name("endpoints".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("endpoint runtime");
                rt.block_on(async move {
                    for (i, listener) in listeners.into_iter().enumerate() {
                        let listener = TcpListener::from_std(listener).expect("tokio listener");
                        let delay = (i == slow).then_some(delay);
                        tokio::spawn(serve(listener, thread_counts[i].clone(), delay));
                    }
                    let _ = stopped.await;
                });
            })?;
        Ok(Endpoints {
            addrs,
            counts,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Requests answered so far, per endpoint.
    pub fn counts(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

impl Drop for Endpoints {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(listener: TcpListener, count: Arc<AtomicU64>, delay: Option<Duration>) {
    let body = body_of(DEFAULT_BODY_BYTES);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (body, count) = (body.clone(), count.clone());
        tokio::spawn(async move {
            let service = service_fn(move |_req| {
                let (body, count) = (body.clone(), count.clone());
                async move {
                    if let Some(delay) = delay {
                        tokio::time::sleep(delay).await;
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, Infallible>(Response::new(Full::new(body)))
                }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
