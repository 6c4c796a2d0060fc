//! Tenants' OS users and file ownership: one system user per tenant
//! (`useradd`/`userdel`, never a shell), and the modes and owners of what
//! the agent writes for them.
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use super::error::{RuntimeError, RuntimeResult};

/// OS user name of a tenant: short, fixed shape, derived from the id.
pub fn tenant_user_name(tenant_id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(tenant_id.as_bytes());
    format!("clawt{}", &hex::encode(digest)[..12])
}

pub fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Gives `path` to the tenant's user, if it has one.
pub fn chown(path: &Path, owner: Option<(u32, u32)>) -> anyhow::Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// Gives `path` the owner of `like` (a cell's files belong to the
/// container's user, whatever uid that is).
pub fn chown_like(path: &Path, like: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(like).with_context(|| format!("stat {}", like.display()))?;
    std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()))
        .with_context(|| format!("chown {}", path.display()))
}

/// SIGKILLs every process of a tenant's OS user (never uid 0).
pub fn kill_user_processes(uid: u32) {
    use std::os::unix::fs::MetadataExt;
    if uid == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if entry.metadata().is_ok_and(|m| m.uid() == uid) {
            // SAFETY: plain syscall on a pid owned by the tenant's user.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let c_name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; we
    // copy the two ids out immediately.
    let entry = unsafe { libc::getpwnam(c_name.as_ptr()) };
    if entry.is_null() {
        return None;
    }
    unsafe { Some(((*entry).pw_uid, (*entry).pw_gid)) }
}

/// Creates the tenant's system user (no login shell, no password) if absent.
pub async fn ensure_user(name: &str, home: &Path) -> RuntimeResult<(u32, u32)> {
    if let Some(ids) = lookup_user(name) {
        return Ok(ids);
    }
    let output = tokio::process::Command::new("useradd")
        .args(["--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", "--home-dir"])
        .arg(home)
        .arg(name)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .await
        .context("cannot run useradd (the agent needs root to create tenant users)")?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr);
        if !text.contains("already exists") {
            return Err(RuntimeError::Other(anyhow!("useradd {name}: {}", text.trim())));
        }
    }
    lookup_user(name).ok_or_else(|| RuntimeError::Other(anyhow!("user {name} missing after useradd")))
}

/// How long a tenant's user may stay busy (its killed processes not yet
/// gone) before its removal is given up.
const USER_BUSY_WAIT: Duration = Duration::from_secs(15);

/// Removes a deleted tenant's OS user. userdel refuses a user that still
/// has processes (exit 8): killed ones can take a moment to go, and a
/// helper may have started since, so those are killed again and userdel
/// tried again, for a while. A user that cannot be removed is logged.
pub async fn remove_user(name: &str, uid: Option<u32>) {
    const IN_USE: i32 = 8;
    const NO_SUCH_USER: i32 = 6;
    let deadline = Instant::now() + USER_BUSY_WAIT;
    loop {
        let output = tokio::process::Command::new("userdel")
            .arg(name)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(std::process::Stdio::null())
            .output()
            .await;
        match output {
            Ok(out) if out.status.success() || out.status.code() == Some(NO_SUCH_USER) => return,
            Ok(out) if out.status.code() == Some(IN_USE) && Instant::now() < deadline => {
                if let Some(uid) = uid {
                    kill_user_processes(uid);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(out) => {
                let error = String::from_utf8_lossy(&out.stderr);
                tracing::warn!(user = name, code = ?out.status.code(), error = %error.trim(), "cannot remove a deleted tenant's user");
                return;
            }
            Err(err) => {
                tracing::warn!(user = name, error = %err, "cannot run userdel for a deleted tenant");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_short_and_stable() {
        let name = tenant_user_name("01a20c6b-19d8-76c4-937e-6d06bfdd3192");
        assert_eq!(name.len(), 17);
        assert_eq!(name, tenant_user_name("01a20c6b-19d8-76c4-937e-6d06bfdd3192"));
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
