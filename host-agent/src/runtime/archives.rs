//! Archives of deleted tenants: made on delete, kept for their retention.
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context};

use super::error::{RuntimeError, RuntimeResult};
use super::records::TenantRecord;
use super::users::set_mode;

/// Packs `<tenants_dir>/<slug>` into a 0600 `.tar.gz` in `archive_dir`;
/// returns its path and size.
pub async fn archive_tree(
    tenants_dir: &Path,
    archive_dir: &Path,
    record: &TenantRecord,
) -> RuntimeResult<(PathBuf, u64)> {
    let stamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    let path = archive_dir.join(format!(
        "{}-{}-{stamp}.tar.gz",
        record.slug,
        &record.tenant_id[..8.min(record.tenant_id.len())]
    ));
    let status = tokio::process::Command::new("tar")
        .arg("-C")
        .arg(tenants_dir)
        .arg("-czf")
        .arg(&path)
        .arg("--")
        .arg(&record.slug)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("cannot run tar")?;
    if !status.status.success() {
        return Err(RuntimeError::Other(anyhow!(
            "archiving {} failed: {}",
            tenants_dir.join(&record.slug).display(),
            String::from_utf8_lossy(&status.stderr)
        )));
    }
    set_mode(&path, 0o600)?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    Ok((path, size))
}

/// Deletes archives in `archive_dir` older than `retention`.
pub fn prune(archive_dir: &Path, retention: Duration) {
    let Ok(entries) = std::fs::read_dir(archive_dir) else { return };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > retention);
        if old && entry.path().extension().is_some_and(|x| x == "gz") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(archive = %entry.path().display(), "archive past its retention removed"),
                Err(err) => {
                    tracing::warn!(archive = %entry.path().display(), error = %err, "cannot remove an old archive")
                }
            }
        }
    }
}
