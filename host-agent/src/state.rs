//! The agent's state directory: identity, key material and the journal of
//! executed commands.
//!
//!     identity.json   host id and control plane URLs
//!     key.pem         private key (0600; generated here, never sent)
//!     cert.pem        current client certificate
//!     ca.pem          the control plane's CA
//!     commands/<id>   encoded result of each executed command (dedup)
//!     executed.log    one command id per execution, in order
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clawplane_tls::files::{create_private_dir, write_private};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub host_id: String,
    /// The control plane the host joined through (the one URL agents
    /// before replicas read).
    pub control_plane: String,
    /// Every control plane given at join, in order; absent from
    /// identities written before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_planes: Vec<String>,
}

impl Identity {
    /// The control planes to connect to when no setting names them.
    pub fn stored_control_planes(&self) -> Vec<&str> {
        match self.control_planes.is_empty() {
            true => vec![self.control_plane.as_str()],
            false => self.control_planes.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: &Path) -> Self {
        StateDir { root: root.to_path_buf() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn identity(&self) -> anyhow::Result<Option<Identity>> {
        match std::fs::read_to_string(self.path("identity.json")) {
            Ok(text) => Ok(Some(serde_json::from_str(&text).context("identity.json is corrupt")?)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).context("cannot read identity.json"),
        }
    }

    /// Saves a fresh enrollment. The key is written first and the identity
    /// last, so a crash midway leaves a state dir that is simply not joined.
    pub fn save_enrollment(
        &self,
        identity: &Identity,
        key_pem: &str,
        cert_pem: &str,
        ca_pem: &str,
    ) -> anyhow::Result<()> {
        create_private_dir(&self.root)?;
        write_private(&self.path("key.pem"), key_pem.as_bytes())?;
        write_private(&self.path("cert.pem"), cert_pem.as_bytes())?;
        write_private(&self.path("ca.pem"), ca_pem.as_bytes())?;
        write_private(&self.path("identity.json"), serde_json::to_string_pretty(identity)?.as_bytes())?;
        Ok(())
    }

    /// Replaces key and certificate after a renewal.
    pub fn save_renewal(&self, key_pem: &str, cert_pem: &str) -> anyhow::Result<()> {
        // The certificate is written last: until then the old pair stays
        // consistent for anyone reading both.
        write_private(&self.path("key.pem.next"), key_pem.as_bytes())?;
        write_private(&self.path("cert.pem.next"), cert_pem.as_bytes())?;
        std::fs::rename(self.path("key.pem.next"), self.path("key.pem"))?;
        std::fs::rename(self.path("cert.pem.next"), self.path("cert.pem"))?;
        Ok(())
    }

    pub fn read(&self, name: &str) -> anyhow::Result<String> {
        std::fs::read_to_string(self.path(name)).with_context(|| format!("cannot read {}", self.path(name).display()))
    }

    /// The stored result of a command executed before, if any.
    pub fn command_result(&self, command_id: &str) -> Option<Vec<u8>> {
        std::fs::read(self.path("commands").join(command_id)).ok()
    }

    /// Records that a command ran and what it answered.
    pub fn record_command(&self, command_id: &str, result: &[u8]) -> anyhow::Result<()> {
        let dir = self.path("commands");
        create_private_dir(&dir)?;
        write_private(&dir.join(command_id), result)?;
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(self.path("executed.log"))?;
        // One write per line: O_APPEND keeps whole writes from interleaving.
        log.write_all(format!("{command_id}\n").as_bytes())?;
        log.sync_data()?;
        Ok(())
    }
}

/// Command ids come from the control plane but become file names here.
pub fn valid_command_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}
