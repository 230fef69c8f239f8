//! The demo's applications, each on its own port behind its own sidecar: orders (v1 and v2,
//! which say which one answered) and payments (which fails a share of requests with 503).
//! They know nothing of the mesh: plain HTTP/1.1 on 127.0.0.1, kept alive as the sidecar's
//! connection pool likes.

use std::io::{BufReader, BufWriter};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::http;

/// A keep-alive connection idle this long is closed, so threads don't pile up.
const IDLE: Duration = Duration::from_secs(60);

pub struct App {
    /// `orders-v1`, `payments`…: the `x-served-by` header and the start of every body.
    pub name: &'static str,
    /// Share of requests answered `503 Service Unavailable`.
    pub failure_rate: f64,
}

impl App {
    pub fn new(name: &'static str, failure_rate: f64) -> Arc<App> {
        Arc::new(App { name, failure_rate })
    }

    /// Listens on `addr` and serves from background threads for the life of the process.
    pub fn start(self: &Arc<Self>, addr: SocketAddr) -> std::io::Result<()> {
        let listener = TcpListener::bind(addr)?;
        let app = self.clone();
        thread::Builder::new()
            .name(format!("app {}", self.name))
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let app = app.clone();
                    let _ = thread::Builder::new().spawn(move || app.serve(stream));
                }
            })?;
        Ok(())
    }

    fn serve(&self, stream: TcpStream) {
        let _ = stream.set_read_timeout(Some(IDLE));
        let Ok(read_half) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(read_half);
        let mut writer = BufWriter::new(stream);
        while let Ok(Some(request)) = http::read_request(&mut reader) {
            let failing = fastrand::f64() < self.failure_rate;
            let headers = [("x-served-by", self.name)];
            let written = if failing {
                http::respond(
                    &mut writer,
                    "503 Service Unavailable",
                    &headers,
                    &format!("{}: injected failure for {}\n", self.name, request.path),
                )
            } else {
                http::respond(
                    &mut writer,
                    "200 OK",
                    &headers,
                    &format!("{}: ok {}\n", self.name, request.path),
                )
            };
            if written.is_err() || request.close {
                return;
            }
        }
    }
}
