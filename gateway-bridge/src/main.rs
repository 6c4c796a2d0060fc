//! `clawplane-bridge`: routes `https://<tenant>.<domain>` to the tenant's
//! gateway. This first cut parses the fixed operator interface; routing
//! lands with the gateway-bridge issue.
use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "clawplane-bridge", version, about = "Clawplane gateway bridge")]
struct Cli {
    #[arg(long, env = "CLAWPLANE_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "CLAWPLANE_CONTROL_PLANE", default_value = "http://127.0.0.1:7700")]
    control_plane: String,
    #[arg(long, env = "CLAWPLANE_LISTEN", default_value = "0.0.0.0:8080")]
    listen: String,
    #[arg(long, env = "CLAWPLANE_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    admin_listen: String,
    #[arg(long, env = "CLAWPLANE_BASE_DOMAIN")]
    base_domain: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("not implemented yet: routing arrives with the gateway-bridge issue")
}
