//! Owner-only files of the meter's state: a map of tenant id to a protobuf
//! message (routes, allowances), written whole, aside and renamed, so a
//! crash leaves the old map or the new one.
use std::collections::HashMap;
use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clawplane_tls::files::write_private;

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
        write_private(&self.path, &serde_json::to_vec(&encoded)?)
    }
}

/// Tenant ids name journal files: a short, plain charset only.
pub(crate) fn check_tenant_id(tenant_id: &str) -> anyhow::Result<()> {
    let plain = tenant_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if tenant_id.is_empty() || tenant_id.len() > 128 || !plain || tenant_id.starts_with('.') {
        anyhow::bail!("tenant id {tenant_id:.64?}: 1-128 of A-Z a-z 0-9 . _ - expected, not starting with a dot");
    }
    Ok(())
}
