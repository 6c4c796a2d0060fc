//! Reading OpenClaw's SQLite databases from the agent (root) while the
//! tenant's gateway writes them: read-only, and as the file's owner.
//!
//! Even a read-only open creates the -wal and -shm files when they are
//! missing (after the gateway's clean close). Created by root, SQLite hands
//! them to the database's owner only a syscall later; a gateway opening the
//! database in that gap gets them read-only and fails its next write with
//! "attempt to write a readonly database". With this thread's file-system
//! uid (per thread on Linux) set to the owner, there is no gap.
use std::ops::Deref;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};

/// A read-only connection opened as the database's owner; the thread acts
/// as that owner until it is dropped (keep it on one thread).
pub struct OwnerReader {
    // Dropped first: the connection closes while the thread is still the owner.
    db: Connection,
    _as_owner: AsOwner,
}

impl Deref for OwnerReader {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.db
    }
}

/// Opens `path` read-only as `owner` (the tenant's OS user; the file's
/// owner when None), with a 2 s busy timeout. As the tenant's user, a link
/// the tenant planted cannot lead the read into another tenant's files.
pub fn open_read_only(path: &Path, owner: Option<(u32, u32)>) -> rusqlite::Result<OwnerReader> {
    let as_owner = AsOwner::of(path, owner);
    let db = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    db.busy_timeout(std::time::Duration::from_secs(2))?;
    Ok(OwnerReader { db, _as_owner: as_owner })
}

/// The calling thread acts on files as the owner of a path until dropped.
struct AsOwner {
    switched: bool,
}

impl AsOwner {
    fn of(path: &Path, owner: Option<(u32, u32)>) -> AsOwner {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: plain syscalls on this thread's own credentials.
        let root = unsafe { libc::geteuid() } == 0;
        let owner = owner.or_else(|| std::fs::metadata(path).ok().map(|m| (m.uid(), m.gid())));
        let Some((uid, gid)) = owner.filter(|(uid, _)| root && *uid != 0) else {
            return AsOwner { switched: false };
        };
        unsafe {
            libc::setfsgid(gid);
            libc::setfsuid(uid);
        }
        AsOwner { switched: true }
    }
}

impl Drop for AsOwner {
    fn drop(&mut self) {
        if self.switched {
            // SAFETY: back to root's file-system ids on this thread.
            unsafe {
                libc::setfsuid(0);
                libc::setfsgid(0);
            }
        }
    }
}
