//! `clawplane-agent`: the host agent. `join` enrolls the host with a join
//! token and the CA pin; `run` keeps the mutual-TLS command stream.
/// Proxying allocates and frees small buffers on every request: under the
/// bridge bench, glibc's malloc took about 8% of the bridge's and the
/// agent's CPU, mimalloc about 3% (perf; benches/bridge.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod agent;
mod commands;
mod config;
mod endpoints;
mod inventory;
mod join;
mod metered;
mod openclaw;
mod proxy;
mod retry;
mod rpc;
mod runtime;
mod state;
mod sync;

use std::process::ExitCode;

use clap::Parser;

use config::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Join(args) => join::run(&args.control_plane, &args.token, &args.ca_pin, &args.state_dir).await,
            Command::Run(args) => match args.settings() {
                Ok(settings) => agent::run(settings).await,
                Err(err) => Err(err),
            },
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
