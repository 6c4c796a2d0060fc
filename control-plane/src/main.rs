//! `clawplane`: the control plane server and its operator commands.
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use clawplane::config::{default_sqlite_url, Config, ServeArgs};
use clawplane::{cli, store::Store, telemetry, Server};

/// Every API call allocates and frees many small buffers (HTTP/2 frames,
/// messages, metadata): glibc's malloc took about 12% of the tenant API
/// bench's CPU (perf), as it did the bridge's before it moved to mimalloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "clawplane", version, about = "Clawplane control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum CaCommand {
    /// Print the CA pin (sha256 of its SubjectPublicKeyInfo) for join commands.
    Show {
        #[arg(long, env = "CLAWPLANE_DATA_DIR", default_value = "./clawplane-data")]
        data_dir: std::path::PathBuf,
        /// An operator-supplied CA certificate instead of the generated one.
        #[arg(long)]
        ca_cert: Option<std::path::PathBuf>,
    },
    /// Issue a gateway bridge identity (key, certificate, CA) into a folder;
    /// host agents accept tenant traffic only from such identities.
    IssueBridge {
        #[arg(long, env = "CLAWPLANE_DATA_DIR", default_value = "./clawplane-data")]
        data_dir: std::path::PathBuf,
        /// Name of the bridge, e.g. edge-1 (its certificate says bridge:<name>).
        #[arg(long)]
        name: String,
        /// Folder to write bridge.key, bridge.pem and ca.pem into (created 0700).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Certificate lifetime, e.g. 90d.
        #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Operator-supplied CA certificate and key instead of the generated ones.
        #[arg(long, requires = "ca_key")]
        ca_cert: Option<std::path::PathBuf>,
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the control plane (embedded SQLite unless --database-url is given).
    Serve(Box<ServeArgs>),
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long, env = "CLAWPLANE_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        #[arg(long, env = "CLAWPLANE_DATA_DIR", default_value = "./clawplane-data")]
        data_dir: std::path::PathBuf,
    },
    /// Join tokens for adding hosts.
    Token {
        #[command(flatten)]
        connection: cli::Connection,
        #[command(subcommand)]
        command: cli::TokenCommand,
    },
    /// The control plane's certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// The key tenant secrets are sealed with.
    Secrets {
        #[command(subcommand)]
        command: cli::SecretsCommand,
    },
    /// The record of what every replica on one database shares.
    Cluster {
        #[command(subcommand)]
        command: cli::ClusterCommand,
    },
    /// Worker hosts.
    Hosts {
        #[command(flatten)]
        connection: cli::Connection,
        #[command(subcommand)]
        command: cli::HostsCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = Config::load(&args)?;
            telemetry::init(config.log_format);
            let server = Server::bind(config.clone()).await?;
            tracing::info!(
                api = %server.local_addr(),
                database = if config.is_sqlite() { "sqlite" } else { "postgres" },
                data_dir = %config.data_dir.display(),
                "clawplane serving"
            );
            server.run(shutdown_signal()).await
        }
        Command::Migrate { database_url, data_dir } => {
            telemetry::init(clawplane::config::LogFormat::Text);
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("data_dir {}: cannot create", data_dir.display()))?;
            let url = database_url.unwrap_or_else(|| default_sqlite_url(&data_dir));
            let store = Store::connect(&url, 1).await.context("database: cannot connect")?;
            store.migrate().await.context("database: migrations failed")?;
            println!("migrations applied");
            Ok(())
        }
        Command::Token { connection, command } => cli::token(&connection, command).await,
        Command::Secrets { command } => cli::secrets(command),
        Command::Cluster { command } => cli::cluster(command).await,
        Command::Hosts { connection, command } => cli::hosts(&connection, command).await,
        Command::Ca { command: CaCommand::Show { data_dir, ca_cert } } => cli::ca_show(&data_dir, ca_cert),
        Command::Ca { command: CaCommand::IssueBridge { data_dir, name, out, ttl, ca_cert, ca_key } } => {
            cli::issue_bridge(&data_dir, &name, &out, ttl, ca_cert, ca_key)
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let signal = clawplane_edge::shutdown::signalled().await;
    tracing::info!(signal, "stop requested");
}
