//! Per-tenant cgroups of the process runtime: each tenant's gateway runs in
//! `<parent>/<tenant_id>` (cgroup v2, or the memory, cpu, cpuacct and pids
//! hierarchies of v1) with its plan's memory maximum, CPU quota and PIDs
//! maximum; its usage and OOM kills are read back from there.
//!
//! Support is detected once, when the runtime starts: `v2`, `v1`, or
//! unavailable with the reason (reported in the inventory). A gateway joins
//! its cgroup at spawn: the `cgroup.procs` files are opened before the fork
//! and the child writes "0" (itself) to each before it execs, so nothing it
//! runs is ever outside.
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cgroups_rs::cpu::CpuController;
use cgroups_rs::memory::MemController;
use cgroups_rs::pid::PidController;
use cgroups_rs::{hierarchies, Cgroup, MaxValue};

use super::records::Resources;
use super::{RuntimeError, RuntimeResult};
pub use crate::config::LimitSettings;

/// The CFS period the CPU quota is a share of.
const CFS_PERIOD_US: u64 = 100_000;
/// The smallest quota the kernel takes.
const MIN_CFS_QUOTA_US: i64 = 1_000;
/// Where cgroup file systems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Whether and how this host enforces tenant limits.
#[derive(Debug, Clone, PartialEq)]
pub enum Support {
    V2,
    /// The hierarchy roots of the memory, cpu, cpuacct and pids
    /// controllers (the same directory when they are mounted together).
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        cpuacct: PathBuf,
        pids: PathBuf,
    },
    Unavailable(String),
}

/// What a tenant's gateway uses, from its cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub memory_bytes: u64,
    pub cpu_micros: u64,
    /// Times the kernel's OOM killer struck in the cgroup (v1 without that
    /// count: times the limit was hit).
    pub oom_kills: u64,
}

/// This host's tenant cgroups.
#[derive(Debug)]
pub struct Limits {
    support: Support,
    /// Relative path of the tenants' parent cgroup, checked.
    parent: String,
    /// How long a gateway may stay above its memory soft limit.
    pub soft_window: Duration,
}

impl Limits {
    /// Detects cgroup support and creates the parent cgroup.
    pub fn detect(settings: &LimitSettings) -> Limits {
        let parent = settings.cgroup_parent.clone().unwrap_or_default();
        let support = match &settings.cgroup_parent {
            None => Support::Unavailable("limits are turned off in the agent's settings".into()),
            Some(parent) if !valid_parent(parent) => {
                Support::Unavailable(format!("cgroup parent {parent:?} is not a relative path of plain names"))
            }
            Some(parent) => detect(parent),
        };
        let limits = Limits { support, parent, soft_window: settings.memory_soft_window };
        limits.log();
        limits
    }

    /// "v2", "v1", or "" when limits cannot be enforced.
    pub fn version(&self) -> &'static str {
        match self.support {
            Support::V2 => "v2",
            Support::V1 { .. } => "v1",
            Support::Unavailable(_) => "",
        }
    }

    /// Why limits cannot be enforced; `None` when they can.
    pub fn unavailable(&self) -> Option<&str> {
        match &self.support {
            Support::Unavailable(reason) => Some(reason),
            _ => None,
        }
    }

    pub fn available(&self) -> bool {
        self.unavailable().is_none()
    }

    /// Logs what was detected.
    fn log(&self) {
        match self.unavailable() {
            None => {
                tracing::info!(cgroups = self.version(), parent = %self.parent, "tenant limits enforced with cgroups")
            }
            Some(reason) => tracing::warn!(%reason, "tenant limits cannot be enforced on this host"),
        }
    }

    /// Refuses resources this host cannot enforce, naming why.
    pub fn check(&self, resources: &Resources) -> RuntimeResult<()> {
        let Some(reason) = self.unavailable() else { return Ok(()) };
        let what = if resources.memory_bytes > 0 || resources.memory_soft_bytes > 0 {
            "memory"
        } else if resources.cpus > 0.0 {
            "CPU"
        } else if resources.pids > 0 {
            "process"
        } else {
            return Ok(());
        };
        Err(RuntimeError::Invalid(format!("this host cannot enforce {what} limits: {reason}")))
    }

    /// The tenant's cgroup, relative to the hierarchy roots.
    fn relative(&self, tenant_id: &str) -> RuntimeResult<String> {
        if !crate::openclaw::valid_tenant_id(tenant_id) {
            return Err(RuntimeError::Invalid(format!("invalid tenant id {tenant_id:?}")));
        }
        Ok(format!("{}/{tenant_id}", self.parent))
    }

    /// The tenant's cgroup directories: one in v2, one per hierarchy in v1
    /// (deduplicated), memory's first.
    pub fn dirs(&self, tenant_id: &str) -> RuntimeResult<Vec<PathBuf>> {
        let relative = self.relative(tenant_id)?;
        let mut dirs: Vec<PathBuf> = match &self.support {
            Support::V2 => vec![Path::new(CGROUP_ROOT).to_path_buf()],
            Support::V1 { memory, cpu, cpuacct, pids } => {
                vec![memory.clone(), cpu.clone(), cpuacct.clone(), pids.clone()]
            }
            Support::Unavailable(reason) => return Err(RuntimeError::Invalid(reason.clone())),
        };
        dirs.dedup();
        Ok(dirs.into_iter().map(|root| root.join(&relative)).collect())
    }

    fn cgroup(&self, tenant_id: &str) -> RuntimeResult<Cgroup> {
        let relative = self.relative(tenant_id)?;
        Ok(Cgroup::load_with_specified_controllers(hierarchies::auto(), relative, self.controllers()))
    }

    fn controllers(&self) -> Vec<String> {
        let names: &[&str] = match self.support {
            Support::V1 { .. } => &["memory", "cpu", "cpuacct", "pids"],
            _ => &["memory", "cpu", "pids"],
        };
        names.iter().map(|name| name.to_string()).collect()
    }

    /// Creates the tenant's cgroup if needed and sets its limits (zero:
    /// none). Running processes in it are held to the new limits at once.
    pub fn apply(&self, tenant_id: &str, resources: &Resources) -> RuntimeResult<()> {
        let dirs = self.dirs(tenant_id)?;
        let relative = self.relative(tenant_id)?;
        let cgroup = Cgroup::new_with_specified_controllers(hierarchies::auto(), &relative, Some(self.controllers()))
            .map_err(|err| other(format!("cannot create cgroup {relative}: {err}")))?;
        // v1 creation only logs its failures.
        if let Some(missing) = dirs.iter().find(|dir| !dir.is_dir()) {
            return Err(other(format!("cannot create cgroup {}", missing.display())));
        }
        let v2 = self.support == Support::V2;
        let memory: &MemController = cgroup.controller_of().ok_or_else(|| other("no memory controller".into()))?;
        let limit = if resources.memory_bytes > 0 { resources.memory_bytes.min(i64::MAX as u64) as i64 } else { -1 };
        if v2 {
            memory.set_limit(limit).map_err(|err| other(format!("cannot set the memory limit: {err}")))?;
            // No swapping around the limit: the gateway is killed at it.
            let swap = if limit > 0 { "0" } else { "max" };
            let _ = std::fs::write(memory_dir(&dirs).join("memory.swap.max"), swap);
        } else {
            // memsw must stay at or above the memory limit: lifted first,
            // then set to it (when the kernel accounts swap at all).
            let memsw = memory_dir(&dirs).join("memory.memsw.limit_in_bytes");
            let has_memsw = memsw.exists();
            if has_memsw {
                let _ = std::fs::write(&memsw, "-1");
            }
            memory.set_limit(limit).map_err(|err| other(format!("cannot set the memory limit: {err}")))?;
            if has_memsw && limit > 0 {
                let _ = std::fs::write(&memsw, limit.to_string());
            }
        }
        let cpu: &CpuController = cgroup.controller_of().ok_or_else(|| other("no cpu controller".into()))?;
        let quota = if resources.cpus > 0.0 {
            ((resources.cpus * CFS_PERIOD_US as f64).round() as i64).max(MIN_CFS_QUOTA_US)
        } else {
            -1
        };
        cpu.set_cfs_quota_and_period(None, Some(CFS_PERIOD_US))
            .and_then(|()| cpu.set_cfs_quota_and_period(Some(quota), None))
            .map_err(|err| other(format!("cannot set the CPU quota: {err}")))?;
        let pids: &PidController = cgroup.controller_of().ok_or_else(|| other("no pids controller".into()))?;
        let max = if resources.pids > 0 { MaxValue::Value(resources.pids as i64) } else { MaxValue::Max };
        pids.set_pid_max(max).map_err(|err| other(format!("cannot set the PIDs limit: {err}")))?;
        Ok(())
    }

    /// The tenant cgroup's `cgroup.procs` files, open for writing: what
    /// [`join_at_spawn`] needs.
    pub fn procs_files(&self, tenant_id: &str) -> RuntimeResult<Vec<File>> {
        self.dirs(tenant_id)?
            .iter()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|err| other(format!("cannot open {}: {err}", path.display())))
            })
            .collect()
    }

    /// The tenant's usage now: a few small reads. `None` without a cgroup.
    pub fn usage(&self, tenant_id: &str) -> Option<Usage> {
        let dirs = self.dirs(tenant_id).ok()?;
        let memory_dir = memory_dir(&dirs);
        match &self.support {
            Support::V2 => Some(Usage {
                memory_bytes: read_u64(&memory_dir.join("memory.current"))?,
                cpu_micros: read_key(&memory_dir.join("cpu.stat"), "usage_usec").unwrap_or(0),
                oom_kills: read_key(&memory_dir.join("memory.events"), "oom_kill").unwrap_or(0),
            }),
            Support::V1 { cpuacct, .. } => {
                let cpuacct = cpuacct.join(self.relative(tenant_id).ok()?);
                Some(Usage {
                    memory_bytes: read_u64(&memory_dir.join("memory.usage_in_bytes"))?,
                    cpu_micros: read_u64(&cpuacct.join("cpuacct.usage")).unwrap_or(0) / 1000,
                    oom_kills: read_key(&memory_dir.join("memory.oom_control"), "oom_kill")
                        .or_else(|| read_u64(&memory_dir.join("memory.failcnt")))
                        .unwrap_or(0),
                })
            }
            Support::Unavailable(_) => None,
        }
    }

    /// Removes the tenant's cgroup, killing what is left in it.
    pub async fn remove(&self, tenant_id: &str) -> RuntimeResult<()> {
        if !self.available() {
            return Ok(());
        }
        let dirs = self.dirs(tenant_id)?;
        for attempt in 0..50 {
            for dir in &dirs {
                for pid in read_pids(&dir.join("cgroup.procs")) {
                    // SAFETY: plain syscall on a pid read from the cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            // The crate's delete removes the directory in each hierarchy.
            let _ = self.cgroup(tenant_id)?.delete();
            if dirs.iter().all(|dir| !dir.exists()) {
                return Ok(());
            }
            if attempt < 49 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let left: Vec<String> = dirs.iter().filter(|d| d.exists()).map(|d| d.display().to_string()).collect();
        Err(other(format!("cannot remove cgroup {}", left.join(", "))))
    }
}

/// Makes the child join the tenant's cgroup between fork and exec, then
/// become the tenant's `user`: it writes "0" (itself) to each
/// `cgroup.procs` file, opened beforehand, while it is still root (cgroup v2
/// kernels without the open-time credential check refuse the write from
/// the tenant's uid), then drops its groups and switches gid and uid. The
/// command must not switch users itself, and the files must stay open
/// until the spawn returns.
pub fn join_at_spawn(command: &mut std::process::Command, procs: &[File], user: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    let fds: Vec<i32> = procs.iter().map(|file| file.as_raw_fd()).collect();
    // SAFETY: the closure runs in the forked child and only calls write(2),
    // setgroups(2), setgid(2) and setuid(2), which are async-signal-safe, on
    // descriptors that are open in the parent for as long as the spawn
    // runs; it allocates nothing (the error is a raw OS error code).
    unsafe {
        command.pre_exec(move || {
            for &fd in &fds {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some((uid, gid)) = user {
                if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Memory and CPU time of a process group from /proc, for hosts without
/// cgroups: (RSS bytes, CPU microseconds).
pub fn process_group_usage(pgid: u32) -> (u64, u64) {
    // SAFETY: plain sysconf queries.
    let (page, ticks) = unsafe { (libc::sysconf(libc::_SC_PAGESIZE), libc::sysconf(libc::_SC_CLK_TCK)) };
    let (page, ticks) = (page.max(1) as u64, ticks.max(1) as u64);
    let Ok(entries) = std::fs::read_dir("/proc") else { return (0, 0) };
    let (mut rss, mut cpu) = (0u64, 0u64);
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // After the command name's closing parenthesis: state, ppid, pgrp, ...
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        if field(5) != pgid as u64 {
            continue;
        }
        cpu += field(14) + field(15);
        rss += field(24) * page;
    }
    (rss, cpu * 1_000_000 / ticks)
}

/// `1.5 GiB`, `64 MiB`: one decimal where needed.
pub fn human_bytes(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let (value, unit) = match bytes as f64 {
        b if b >= KIB * KIB * KIB => (b / (KIB * KIB * KIB), "GiB"),
        b if b >= KIB * KIB => (b / (KIB * KIB), "MiB"),
        b if b >= KIB => (b / KIB, "KiB"),
        b => (b, "B"),
    };
    let text = format!("{value:.1}");
    format!("{} {unit}", text.strip_suffix(".0").unwrap_or(&text))
}

/// `60 s`, `1.5 s`, `200 ms`.
pub fn human_duration(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        return format!("{} ms", duration.as_millis());
    }
    let text = format!("{:.1}", duration.as_secs_f64());
    format!("{} s", text.strip_suffix(".0").unwrap_or(&text))
}

/// The host's cgroup version without creating anything, for runtimes
/// whose limits another program enforces: (version, why not).
pub fn host_support() -> (String, String) {
    if hierarchies::is_cgroup2_unified_mode() {
        return ("v2".into(), String::new());
    }
    match hierarchies::V1::new().get_mount_point(cgroups_rs::Controllers::Mem) {
        Some(_) => ("v1".into(), String::new()),
        None => (String::new(), format!("no cgroup memory controller is mounted under {CGROUP_ROOT}")),
    }
}

fn detect(parent: &str) -> Support {
    let root = Path::new(CGROUP_ROOT);
    if hierarchies::is_cgroup2_unified_mode() {
        let available = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let missing: Vec<&str> =
            ["memory", "cpu", "pids"].into_iter().filter(|c| !available.split_whitespace().any(|a| a == *c)).collect();
        if !missing.is_empty() {
            return Support::Unavailable(format!(
                "the cgroup v2 controllers {} are not available in {CGROUP_ROOT}",
                missing.join(", ")
            ));
        }
        return match create_parent(root, parent) {
            Ok(()) => Support::V2,
            Err(reason) => Support::Unavailable(reason),
        };
    }
    let v1 = hierarchies::V1::new();
    let mount = |controller: cgroups_rs::Controllers| v1.get_mount_point(controller);
    use cgroups_rs::Controllers::{Cpu, CpuAcct, Mem, Pids};
    let (Some(memory), Some(cpu), Some(cpuacct), Some(pids)) = (mount(Mem), mount(Cpu), mount(CpuAcct), mount(Pids))
    else {
        let missing: Vec<String> = [Mem, Cpu, CpuAcct, Pids]
            .into_iter()
            .filter(|c| v1.get_mount_point(c.clone()).is_none())
            .map(|c| c.to_string())
            .collect();
        if !root.exists() || missing.len() == 4 {
            return Support::Unavailable(format!("no cgroup controllers are mounted under {CGROUP_ROOT}"));
        }
        return Support::Unavailable(format!("the cgroup v1 controllers {} are not mounted", missing.join(", ")));
    };
    for hierarchy in [&memory, &cpu, &cpuacct, &pids] {
        if let Err(reason) = create_parent(hierarchy, parent) {
            return Support::Unavailable(reason);
        }
    }
    Support::V1 { memory, cpu, cpuacct, pids }
}

/// Creates the parent cgroup (in v2, with the controllers enabled for its
/// children); the check that this agent may manage cgroups at all.
fn create_parent(root: &Path, parent: &str) -> Result<(), String> {
    let dir = root.join(parent);
    std::fs::create_dir_all(&dir).map_err(|err| format!("cannot create cgroup {}: {err}", dir.display()))?;
    if hierarchies::is_cgroup2_unified_mode() {
        // Each level down to the parent hands the controllers on.
        let mut level = root.to_path_buf();
        for part in std::iter::once("").chain(parent.split('/')) {
            if !part.is_empty() {
                level.push(part);
            }
            let control = level.join("cgroup.subtree_control");
            std::fs::write(&control, "+memory +cpu +pids").map_err(|err| {
                format!("cannot enable the memory, cpu and pids controllers in {}: {err}", control.display())
            })?;
        }
    }
    Ok(())
}

fn valid_parent(parent: &str) -> bool {
    !parent.is_empty()
        && parent.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
        })
}

fn memory_dir(dirs: &[PathBuf]) -> &Path {
    &dirs[0]
}

fn other(message: String) -> RuntimeError {
    RuntimeError::Other(anyhow::anyhow!(message))
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file (`key value` lines).
fn read_key(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

fn read_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|line| line.trim().parse().ok()).collect()
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
