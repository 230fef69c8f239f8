//! One keep-alive HTTP/1.1 client connection (`hyper::client::conn::http1`), owned by one
//! worker. No pool, no retries: the harness wants to see every failure.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connect: {0}")]
    Connect(#[from] std::io::Error),
    #[error("HTTP/1 handshake: {0}")]
    Handshake(#[from] hyper::Error),
}

pub struct Conn {
    sender: SendRequest<Empty<Bytes>>,
}

impl Conn {
    /// Connects with `TCP_NODELAY` (small request/response pairs must not wait for Nagle)
    /// and spawns the connection's driver task, which ends when the `Conn` is dropped.
    pub async fn connect(target: SocketAddr) -> Result<Self, ConnError> {
        let stream = TcpStream::connect(target).await?;
        stream.set_nodelay(true)?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Errors surface to the worker through `send_request`; nothing to do here.
            let _ = driver.await;
        });
        Ok(Self { sender })
    }

    /// False once the peer closed the connection or it failed.
    pub fn is_usable(&self) -> bool {
        !self.sender.is_closed()
    }

    /// Sends `GET path` and reads the whole response body (so the connection is free for
    /// the next request and the latency includes the body).
    pub async fn get(&mut self, host: &str, path: &str) -> Result<StatusCode, hyper::Error> {
        let req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(header::HOST, host)
            .body(Empty::new())
            .expect("static request parts are valid");
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            frame?;
        }
        Ok(status)
    }
}
