//! Weft's control plane: sources (Kubernetes or a manifest directory), the per-proxy index,
//! the push API and the identity CA. Not built yet; until it is, this binary says so and exits
//! non-zero instead of pretending to serve.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "weft-control-plane",
    version,
    about = "Weft's control plane (not yet available)"
)]
struct Cli {}

fn main() -> ExitCode {
    let _ = Cli::parse();
    eprintln!(
        "weft-control-plane: not available yet. Discovery, policy push and the identity CA are \
         being built; until then run weft-proxy with a static --config file."
    );
    ExitCode::from(2)
}
