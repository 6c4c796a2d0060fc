//! `clawplane-agent`: the host agent. This first cut parses the fixed
//! operator interface; joining and running land with the hosts issue.
use std::path::PathBuf;

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
        #[arg(
            long,
            env = "CLAWPLANE_STATE_DIR",
            default_value = "/var/lib/clawplane-agent"
        )]
        state_dir: PathBuf,
    },
    /// Connect to the control plane and run tenants.
    Run {
        #[arg(
            long,
            env = "CLAWPLANE_STATE_DIR",
            default_value = "/var/lib/clawplane-agent"
        )]
        state_dir: PathBuf,
        #[arg(long, env = "CLAWPLANE_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Join { .. } | Command::Run { .. } => {
            anyhow::bail!("not implemented yet: host enrollment arrives with the hosts issue")
        }
    }
}
