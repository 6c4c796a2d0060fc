//! Operator subcommands: they call a running control plane's API with the
//! admin token (`CLAWPLANE_ADMIN_TOKEN`, or the token file the server
//! generated in its data directory).
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use clawplane_proto::v1::host_service_client::HostServiceClient;
use clawplane_proto::v1::{
    CreateJoinTokenRequest, DrainHostRequest, HostStatus, ListHostsRequest, ListJoinTokensRequest, PingHostRequest,
    RemoveHostRequest, RevokeJoinTokenRequest,
};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// API address of the running control plane.
    #[arg(long, env = "CLAWPLANE_SERVER", default_value = "http://127.0.0.1:7700", global = true)]
    server: String,
    /// Data directory of the control plane (for its generated admin token).
    #[arg(long, env = "CLAWPLANE_DATA_DIR", default_value = "./clawplane-data", global = true)]
    data_dir: PathBuf,
    /// Admin token; defaults to <data-dir>/admin-token.
    #[arg(long, env = "CLAWPLANE_ADMIN_TOKEN", hide_env_values = true, global = true)]
    admin_token: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a join token and print the command that joins a host with it.
    Create {
        /// Lifetime, e.g. 30m or 2h.
        #[arg(long, default_value = "30m")]
        ttl: String,
        /// Label for hosts that join with it (repeatable), k=v.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// How many hosts may join with it.
        #[arg(long, default_value_t = 1)]
        max_uses: i32,
        /// Agent listener URL to put in the join command.
        #[arg(long)]
        control_plane: Option<String>,
    },
    /// List join tokens (never their secrets).
    List {
        #[arg(long)]
        all: bool,
    },
    /// Revoke a join token by id.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum HostsCommand {
    /// Print the hosts as a table.
    List,
    /// Stop placing tenants on a host (--undo to resume).
    Drain {
        host: String,
        #[arg(long)]
        undo: bool,
    },
    /// Remove a host: its certificates are revoked and its streams closed.
    Remove {
        host: String,
        /// Remove it even though tenants are still placed on it.
        #[arg(long)]
        force: bool,
    },
    /// Round-trip a ping through the host's command queue.
    Ping {
        host: String,
        #[arg(long, default_value = "10s")]
        timeout: String,
    },
}

impl Connection {
    fn token(&self) -> anyhow::Result<String> {
        if let Some(token) = &self.admin_token {
            return Ok(token.clone());
        }
        let path = self.data_dir.join("admin-token");
        let token = std::fs::read_to_string(&path).with_context(|| {
            format!("no admin token: set CLAWPLANE_ADMIN_TOKEN or point --data-dir at the server's data directory ({} unreadable)", path.display())
        })?;
        Ok(token.trim().to_string())
    }

    async fn hosts(&self) -> anyhow::Result<(HostServiceClient<Channel>, MetadataValue<tonic::metadata::Ascii>)> {
        let channel = Channel::from_shared(self.server.clone())
            .with_context(|| format!("--server {:?} is not a URL", self.server))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("cannot reach the control plane at {}", self.server))?;
        let auth =
            MetadataValue::try_from(format!("Bearer {}", self.token()?)).context("admin token is not valid ASCII")?;
        Ok((HostServiceClient::new(channel), auth))
    }
}

fn authed<T>(auth: &MetadataValue<tonic::metadata::Ascii>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", auth.clone());
    request
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

fn proto_duration(text: &str, what: &str) -> anyhow::Result<prost_types::Duration> {
    let d = humantime::parse_duration(text).with_context(|| format!("{what}: {text:?} is not a duration like 30m"))?;
    Ok(prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 })
}

fn format_time(ts: &Option<prost_types::Timestamp>) -> String {
    ts.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32))
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

pub async fn token(connection: &Connection, command: TokenCommand) -> anyhow::Result<()> {
    let (mut client, auth) = connection.hosts().await?;
    match command {
        TokenCommand::Create { ttl, labels, max_uses, control_plane } => {
            let mut label_map = std::collections::HashMap::new();
            for label in labels {
                let Some((key, value)) = label.split_once('=') else { bail!("--label {label:?}: expected k=v") };
                label_map.insert(key.to_string(), value.to_string());
            }
            let response = client
                .create_join_token(authed(
                    &auth,
                    CreateJoinTokenRequest {
                        ttl: Some(proto_duration(&ttl, "--ttl")?),
                        labels: label_map,
                        max_uses,
                        control_plane_url: control_plane.unwrap_or_default(),
                    },
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            let token = response.join_token.unwrap_or_default();
            eprintln!(
                "join token {} (uses: {}, expires {} UTC); run on the new host:",
                token.id,
                token.max_uses,
                format_time(&token.expires_at)
            );
            println!("{}", response.join_command);
        }
        TokenCommand::List { all } => {
            let response = client
                .list_join_tokens(authed(
                    &auth,
                    ListJoinTokensRequest { page_size: 500, include_inactive: all, ..Default::default() },
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{:<14} {:<10} {:>5} {:<20}", "ID", "STATUS", "USES", "EXPIRES (UTC)");
            for token in response.join_tokens {
                let status = clawplane_proto::v1::JoinTokenStatus::try_from(token.status)
                    .map(|s| s.as_str_name().trim_start_matches("JOIN_TOKEN_STATUS_").to_lowercase())
                    .unwrap_or_default();
                println!(
                    "{:<14} {:<10} {:>2}/{:<2} {:<20}",
                    token.id,
                    status,
                    token.uses,
                    token.max_uses,
                    format_time(&token.expires_at)
                );
            }
        }
        TokenCommand::Revoke { id } => {
            client
                .revoke_join_token(authed(&auth, RevokeJoinTokenRequest { token_id: id.clone() }))
                .await
                .map_err(status_error)?;
            println!("revoked join token {id}");
        }
    }
    Ok(())
}

pub async fn hosts(connection: &Connection, command: HostsCommand) -> anyhow::Result<()> {
    let (mut client, auth) = connection.hosts().await?;
    match command {
        HostsCommand::List => {
            let response = client
                .list_hosts(authed(&auth, ListHostsRequest { page_size: 1000, ..Default::default() }))
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "{:<38} {:<20} {:<9} {:<9} {:>7} {:<20} {:<20}",
                "ID", "NAME", "STATUS", "CONNECTED", "TENANTS", "LAST HEARTBEAT", "CERT EXPIRES"
            );
            for host in response.hosts {
                let status = HostStatus::try_from(host.status)
                    .map(|s| s.as_str_name().trim_start_matches("HOST_STATUS_").to_lowercase())
                    .unwrap_or_default();
                println!(
                    "{:<38} {:<20} {:<9} {:<9} {:>7} {:<20} {:<20}",
                    host.id,
                    host.name,
                    status,
                    if host.connected { "yes" } else { "no" },
                    host.tenant_count,
                    format_time(&host.last_heartbeat_at),
                    format_time(&host.certificate_expires_at)
                );
            }
        }
        HostsCommand::Drain { host, undo } => {
            client
                .drain_host(authed(&auth, DrainHostRequest { host_id: host.clone(), undrain: undo }))
                .await
                .map_err(status_error)?;
            println!("{} host {host}", if undo { "undrained" } else { "draining" });
        }
        HostsCommand::Remove { host, force } => {
            client
                .remove_host(authed(&auth, RemoveHostRequest { host_id: host.clone(), force }))
                .await
                .map_err(status_error)?;
            println!("removed host {host}; its certificates are revoked");
        }
        HostsCommand::Ping { host, timeout } => {
            let response = client
                .ping_host(authed(
                    &auth,
                    PingHostRequest {
                        host_id: host.clone(),
                        timeout: Some(proto_duration(&timeout, "--timeout")?),
                        no_wait: false,
                    },
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            let rtt = response.round_trip.map(|d| d.seconds as f64 * 1e3 + d.nanos as f64 / 1e6).unwrap_or_default();
            println!(
                "pong from {host} (agent {}): {rtt:.1} ms via command {}",
                response.agent_version, response.command_id
            );
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum SecretsCommand {
    /// Write a new secrets key (32 random bytes, mode 0600) for
    /// `[secrets] key_file`; an existing file is never replaced.
    NewKey {
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn secrets(command: SecretsCommand) -> anyhow::Result<()> {
    match command {
        SecretsCommand::NewKey { out } => {
            clawplane_tls::secrets::create_key_file(&out)?;
            let key = clawplane_tls::secrets::SecretBox::from_files(&out, &[])?;
            println!("wrote a secrets key to {} (key id {})", out.display(), key.key_id());
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Delete the cluster record, so the next replica to start writes its
    /// own: how the CA, admin token, shared secret or JWT settings change
    /// for the whole cluster. Stop every replica first.
    Forget {
        #[arg(long, env = "CLAWPLANE_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        #[arg(long, env = "CLAWPLANE_DATA_DIR", default_value = "./clawplane-data")]
        data_dir: PathBuf,
    },
}

pub async fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Forget { database_url, data_dir } => {
            let url = database_url.unwrap_or_else(|| crate::config::default_sqlite_url(&data_dir));
            let store = crate::store::Store::connect(&url, 1).await.context("database: cannot connect")?;
            store.migrate().await.context("database: migrations failed")?;
            let forgotten = store.forget_cluster().await.context("cluster: cannot delete the record")?;
            store.close().await;
            println!(
                "{}",
                if forgotten {
                    "forgot the cluster record; the next replica to start writes its own"
                } else {
                    "no cluster record to forget"
                }
            );
        }
    }
    Ok(())
}

/// `clawplane ca show`: the pin of the CA in a data directory.
pub fn ca_show(data_dir: &std::path::Path, ca_cert_file: Option<PathBuf>) -> anyhow::Result<()> {
    let path = ca_cert_file.unwrap_or_else(|| data_dir.join("pki").join("ca.pem"));
    let pem = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: no CA yet (start `clawplane serve` once, or pass --ca-cert)", path.display()))?;
    let cert = clawplane_tls::certs_from_pem(&pem)?.remove(0);
    println!("{}", clawplane_tls::cert_info(&cert)?.spki_pin);
    Ok(())
}

/// `clawplane ca issue-bridge`: a bridge identity signed by the CA in a
/// data directory.
pub fn issue_bridge(
    data_dir: &std::path::Path,
    name: &str,
    out: &std::path::Path,
    ttl: std::time::Duration,
    ca_cert_file: Option<PathBuf>,
    ca_key_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    use clawplane_tls::files::{create_private_dir, write_private};
    let dir = data_dir.join("pki");
    if ca_cert_file.is_none() && !dir.join("ca.pem").exists() {
        anyhow::bail!("{}: no CA yet (start `clawplane serve` once, or pass --ca-cert/--ca-key)", dir.display());
    }
    let pki = crate::pki::Pki::load_or_create(&crate::pki::PkiConfig {
        dir,
        ca_cert_file,
        ca_key_file,
        server_names: vec!["localhost".into()],
        host_cert_ttl: ttl,
    })?;
    let (key_pem, cert_pem) = pki.issue_bridge_identity(name, ttl)?;
    create_private_dir(out)?;
    write_private(&out.join("bridge.key"), key_pem.as_bytes())?;
    write_private(&out.join("bridge.pem"), cert_pem.as_bytes())?;
    write_private(&out.join("ca.pem"), pki.ca_pem().as_bytes())?;
    println!("bridge identity bridge:{name} written to {} (bridge.key, bridge.pem, ca.pem)", out.display());
    Ok(())
}
