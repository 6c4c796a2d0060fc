//! `clawplane-agent`: the host agent. `join` enrolls the host with a join
//! token and the CA pin; `run` keeps the mutual-TLS command stream.
/// Proxying allocates and frees small buffers on every request: under the
/// bridge bench, glibc's malloc took about 8% of the bridge's and the
/// agent's CPU, mimalloc about 3% (perf; benches/bridge.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod commands;
mod connection;
mod inventory;
mod join;
mod openclaw;
mod proxy;
mod state;
mod sync;

use std::path::PathBuf;
use std::process::ExitCode;

use openclaw::runtime::RuntimeKind;

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
        /// The `openclaw` executable (scripts/install-openclaw prints it).
        #[arg(long, env = "CLAWPLANE_OPENCLAW_BIN")]
        openclaw_bin: Option<PathBuf>,
        /// Where tenant state trees live (default: <state-dir>/tenant-homes).
        #[arg(long, env = "CLAWPLANE_TENANTS_DIR")]
        tenants_dir: Option<PathBuf>,
        /// First loopback port for tenant gateways (then every 150).
        #[arg(long, env = "CLAWPLANE_GATEWAY_BASE_PORT", default_value_t = 20000)]
        gateway_base_port: u16,
        /// Run tenants under the agent's own user instead of one OS user
        /// each (development without root only: tenants are not isolated).
        #[arg(long, env = "CLAWPLANE_NO_TENANT_USERS")]
        no_tenant_users: bool,
        /// How long archives of deleted tenants are kept, e.g. 7d.
        #[arg(long, env = "CLAWPLANE_ARCHIVE_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
        archive_retention: std::time::Duration,
        /// How tenants run: `process` (own OS user and supervised gateway
        /// each) or `fleet` (OpenClaw's own Docker/Podman cells).
        #[arg(long, env = "CLAWPLANE_RUNTIME", default_value = "process", value_parser = ["process", "fleet"])]
        runtime: String,
        /// Where gateway bridges reach this host's tenant proxy (mutual TLS,
        /// bridge identities only), e.g. 0.0.0.0:7702; unset disables it.
        #[arg(long, env = "CLAWPLANE_PROXY_LISTEN")]
        proxy_listen: Option<String>,
        /// The `host:port` bridges should dial, when it differs from the
        /// listen address (e.g. behind NAT or when listening on 0.0.0.0).
        #[arg(long, env = "CLAWPLANE_PROXY_ADVERTISE")]
        proxy_advertise: Option<String>,
    },
}

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
            Command::Join { control_plane, token, ca_pin, state_dir } => {
                join::run(&control_plane, &token, &ca_pin, &state_dir).await
            }
            Command::Run {
                state_dir,
                config,
                openclaw_bin,
                tenants_dir,
                gateway_base_port,
                no_tenant_users,
                archive_retention,
                runtime,
                proxy_listen,
                proxy_advertise,
            } => {
                let options = connection::RuntimeOptions {
                    openclaw_bin,
                    tenants_dir,
                    base_port: gateway_base_port,
                    tenant_users: !no_tenant_users,
                    archive_retention,
                    runtime: if runtime == "fleet" { RuntimeKind::Fleet } else { RuntimeKind::Process },
                    proxy_listen,
                    proxy_advertise,
                };
                connection::run(&state_dir, config.as_deref(), options).await
            }
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
