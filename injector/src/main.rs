//! Weft's sidecar injector (a mutating admission webhook). Not built yet; until it is, this
//! binary says so and exits non-zero instead of pretending to serve.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "weft-injector",
    version,
    about = "Weft's sidecar injector (not yet available)"
)]
struct Cli {}

fn main() -> ExitCode {
    let _ = Cli::parse();
    eprintln!(
        "weft-injector: not available yet. Until it is, add the proxy to a pod by hand: an init \
         container running `weft-proxy init` and a `weft-proxy` container running as UID 2102."
    );
    ExitCode::from(2)
}
