//! What this host is and can hold, reported in the hello.
use std::path::Path;

use clawplane_proto::v1::{HostCapacity, HostInventory, Runtime};

use crate::config::HostConfig;

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("MemTotal:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

fn disk_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return 0 };
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a valid out pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return 0;
    }
    stat.f_blocks as u64 * stat.f_frsize as u64
}

pub fn collect(config: &HostConfig, state_dir: &Path, openclaw_version: &str, runtime: Runtime) -> HostInventory {
    let cpu_cores = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    HostInventory {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        openclaw_version: openclaw_version.to_string(),
        hostname: hostname(),
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        capacity: Some(HostCapacity {
            cpu_cores,
            memory_bytes: memory_bytes(),
            disk_bytes: disk_bytes(state_dir),
            max_tenants: config.max_tenants.unwrap_or(cpu_cores * 4),
            // The runtime's, filled in by the session (it knows the runtime).
            cgroup_version: String::new(),
            limits_unavailable: String::new(),
        }),
        labels: config.labels.clone(),
        runtimes: vec![runtime as i32],
        proxy_endpoint: String::new(),
    }
}
