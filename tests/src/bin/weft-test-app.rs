//! The app the pod tests run inside their namespaces: an HTTP/1.1 echo server, and a client
//! that makes one request the way an app in a meshed pod would (a plain connection to the
//! destination's address, which iptables redirects to the sidecar).

use std::net::TcpListener;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use weft_tests::http;

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
    /// Serve HTTP/1.1 on 0.0.0.0:<port>, answering every request with `app=`, `peer=`,
    /// `method=` and `path=` lines.
    Serve {
        #[arg(long)]
        port: u16,
        /// The name the app reports as `app=`.
        #[arg(long)]
        name: String,
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
        Cmd::Serve { port, name } => {
            let listener = match TcpListener::bind(("0.0.0.0", port)) {
                Ok(listener) => listener,
                Err(err) => {
                    eprintln!("weft-test-app: binding 0.0.0.0:{port}: {err}");
                    return ExitCode::FAILURE;
                }
            };
            eprintln!("weft-test-app: {name} listening on 0.0.0.0:{port}");
            match http::serve(listener, &name) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("weft-test-app: accept: {err}");
                    ExitCode::FAILURE
                }
            }
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
