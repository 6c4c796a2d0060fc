//! `clawplane-agent`: the host agent. `join` enrolls the host with a join
//! token and the CA pin; `run` keeps the mutual-TLS command stream.
mod commands;
mod connection;
mod inventory;
mod join;
mod state;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "clawplane-agent", version, about = "Clawplane host agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Enroll this host with a control plane using a join token.
    Join {
        /// Agent listener of the control plane, e.g. https://cp.example.com:7701.
        #[arg(long, env = "CLAWPLANE_CONTROL_PLANE")]
        control_plane: String,
        /// Join token `<id>.<secret>` from `clawplane token create`.
        #[arg(long, env = "CLAWPLANE_TOKEN", hide_env_values = true)]
        token: String,
        /// Pin of the control plane's CA: `sha256:<hex>` from `clawplane ca show`.
        #[arg(long, env = "CLAWPLANE_CA_PIN")]
        ca_pin: String,
        /// Where the agent keeps its key, certificate and state.
        #[arg(long, env = "CLAWPLANE_STATE_DIR", default_value = "/var/lib/clawplane-agent")]
        state_dir: PathBuf,
    },
    /// Connect to the control plane and run tenants.
    Run {
        #[arg(long, env = "CLAWPLANE_STATE_DIR", default_value = "/var/lib/clawplane-agent")]
        state_dir: PathBuf,
        #[arg(long, env = "CLAWPLANE_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Join { control_plane, token, ca_pin, state_dir } => {
                join::run(&control_plane, &token, &ca_pin, &state_dir).await
            }
            Command::Run { state_dir, config } => connection::run(&state_dir, config.as_deref()).await,
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
