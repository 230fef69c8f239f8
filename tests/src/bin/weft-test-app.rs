//! The app the pod tests run inside their namespaces: an HTTP/1.1 echo server, a TCP byte-echo
//! server (optionally speaking first), and a client that makes one request the way an app in
//! a meshed pod would (a plain connection to the destination's address, which iptables
//! redirects to the sidecar).

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use weft_tests::{http, tcp};

#[derive(Debug, Parser)]
#[command(
    name = "weft-test-app",
    about = "Echo server and client for Weft's pod tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve HTTP/1.1 on <bind>:<port>, answering every request with `app=`, `peer=`,
    /// `method=` and `path=` lines.
    Serve {
        #[arg(long)]
        port: u16,
        /// The name the app reports as `app=`.
        #[arg(long)]
        name: String,
        /// The address to listen on (`::1`, `::`, `127.0.0.1`…).
        #[arg(long, default_value = "0.0.0.0")]
        bind: IpAddr,
    },
    /// Serve TCP on <bind>:<port>, echoing every byte; with --banner, speak first. See
    /// `weft_tests::tcp` for the exact protocol.
    Echo {
        #[arg(long)]
        port: u16,
        /// Send `<banner> peer=<peer>` as soon as a connection is accepted.
        #[arg(long)]
        banner: Option<String>,
        #[arg(long, default_value = "0.0.0.0")]
        bind: IpAddr,
    },
    /// GET a URL (`http://ip:port/path`) and print the status line and body; exits 1 on any
    /// error, 2 on a non-2xx status.
    Get {
        url: String,
        /// Per-step timeout in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Serve { port, name, bind } => {
            let Some(listener) = listen(SocketAddr::new(bind, port)) else {
                return ExitCode::FAILURE;
            };
            eprintln!(
                "weft-test-app: {name} listening on {}",
                SocketAddr::new(bind, port)
            );
            exit(http::serve(listener, &name))
        }
        Cmd::Echo { port, banner, bind } => {
            let Some(listener) = listen(SocketAddr::new(bind, port)) else {
                return ExitCode::FAILURE;
            };
            eprintln!(
                "weft-test-app: echo{} listening on {}",
                banner
                    .as_deref()
                    .map(|b| format!(" ({b})"))
                    .unwrap_or_default(),
                SocketAddr::new(bind, port)
            );
            exit(tcp::serve_echo(listener, banner.as_deref()))
        }
        Cmd::Get { url, timeout_ms } => {
            let result = http::parse_url(&url)
                .and_then(|(addr, path)| http::get(addr, &path, Duration::from_millis(timeout_ms)));
            match result {
                Ok(response) => {
                    println!("status={}", response.status);
                    print!("{}", response.text());
                    if (200..300).contains(&response.status) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(2)
                    }
                }
                Err(err) => {
                    eprintln!("weft-test-app: GET {url}: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn listen(addr: SocketAddr) -> Option<TcpListener> {
    TcpListener::bind(addr)
        .map_err(|err| eprintln!("weft-test-app: binding {addr}: {err}"))
        .ok()
}

/// A server only returns when accepting fails.
fn exit(served: std::io::Result<()>) -> ExitCode {
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("weft-test-app: accept: {err}");
            ExitCode::FAILURE
        }
    }
}
