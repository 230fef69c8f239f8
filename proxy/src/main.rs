use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter};

use weft_proxy::bootstrap::{Cli, Command, LogFormat, RunArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Init(args)) => match weft_proxy::init::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("weft-proxy init: {error}");
                ExitCode::FAILURE
            }
        },
        Some(Command::WaitReady(args)) => match weft_proxy::wait_ready::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("weft-proxy wait-ready: {error}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Run) | None => match serve(cli.run) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                // Our errors already name their cause; the alternate form would print it twice.
                eprintln!("weft-proxy: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(args: RunArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log)
        .map_err(|e| anyhow::anyhow!("invalid log filter {:?}: {e}", args.log))?;
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::stderr().is_terminal();
    let registry = tracing_subscriber::registry().with(filter);
    match args.log_format {
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr).with_ansi(ansi))
            .init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .init(),
    }
    let set_log_filter = Box::new(move |text: &str| {
        let filter = EnvFilter::try_new(text).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    });

    let runtime = if args.workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.workers)
            .enable_all()
            .build()
    }?;
    runtime.block_on(async {
        let proxy = weft_proxy::Proxy::start(args, set_log_filter).await?;
        proxy.run_until_shutdown().await
    })?;
    Ok(())
}
