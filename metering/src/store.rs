//! Owner-only files of the meter's state: a map of tenant id to a protobuf
//! message (routes, allowances), written whole, aside and renamed, so a
//! crash leaves the old map or the new one.
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

pub(crate) struct MessageFile {
    path: PathBuf,
}

impl MessageFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        MessageFile { path }
    }

    pub(crate) fn load<M: prost::Message + Default>(&self) -> anyhow::Result<HashMap<String, M>> {
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
            Err(err) => anyhow::bail!("{}: {err}", self.path.display()),
        };
        let encoded: HashMap<String, String> = serde_json::from_slice(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a meter state file: {e}", self.path.display()))?;
        encoded
            .into_iter()
            .map(|(tenant, value)| {
                let bytes = B64.decode(value).map_err(|e| anyhow::anyhow!("{}: {tenant}: {e}", self.path.display()))?;
                let message = M::decode(bytes.as_slice())
                    .map_err(|e| anyhow::anyhow!("{}: {tenant}: {e}", self.path.display()))?;
                Ok((tenant, message))
            })
            .collect()
    }

    pub(crate) fn save<M: prost::Message>(&self, messages: &HashMap<String, M>) -> anyhow::Result<()> {
        let encoded: HashMap<&String, String> =
            messages.iter().map(|(tenant, message)| (tenant, B64.encode(message.encode_to_vec()))).collect();
        let aside = self.path.with_extension("new");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&aside)
            .map_err(|e| anyhow::anyhow!("{}: {e}", aside.display()))?;
        file.write_all(&serde_json::to_vec(&encoded)?)?;
        file.sync_all()?;
        std::fs::rename(&aside, &self.path).map_err(|e| anyhow::anyhow!("{}: {e}", self.path.display()))?;
        sync_dir(&self.path)
    }
}

/// Makes a rename or a new file in `path`'s directory durable.
pub(crate) fn sync_dir(path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Tenant ids name journal files: a short, plain charset only.
pub(crate) fn check_tenant_id(tenant_id: &str) -> anyhow::Result<()> {
    let plain = tenant_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if tenant_id.is_empty() || tenant_id.len() > 128 || !plain || tenant_id.starts_with('.') {
        anyhow::bail!("tenant id {tenant_id:.64?}: 1-128 of A-Z a-z 0-9 . _ - expected, not starting with a dot");
    }
    Ok(())
}
