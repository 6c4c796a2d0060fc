//! Finding and ending the processes that belong to a test, by where they
//! point: the agent starts tenant gateways in their own process groups
//! (as tenant OS users, or as this user with --no-tenant-users), and they
//! outlive the agent by design, so neither the agent's pid nor its process
//! group finds them. Their working directory, HOME and state dir all lie
//! under the test's own directory, which no other test shares.

use std::path::Path;
use std::time::{Duration, Instant};

/// How long a process gets to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// A process found pointing into a test's directory.
#[derive(Debug, Clone)]
pub struct LeftProcess {
    pub pid: i32,
    pub ppid: u32,
    pub command: String,
    /// Still running after SIGKILL and a bounded wait.
    pub still_running: bool,
}

/// Ends every live process (other than this one) whose command line,
/// working directory, executable or environment mentions `root`: SIGTERM to
/// it and, if it leads one, its process group; SIGKILL to whatever is left
/// after a grace period. Returns what it found; `still_running` marks any
/// that survived.
pub fn end_processes_under(root: &Path) -> Vec<LeftProcess> {
    let found = processes_under(root);
    if found.is_empty() {
        return found;
    }
    signal_all(&found, libc::SIGTERM);
    if !wait_gone(root, GRACE) {
        signal_all(&processes_under(root), libc::SIGKILL);
        wait_gone(root, GRACE);
    }
    let left: Vec<i32> = processes_under(root).iter().map(|p| p.pid).collect();
    found.into_iter().map(|p| LeftProcess { still_running: left.contains(&p.pid), ..p }).collect()
}

fn signal_all(processes: &[LeftProcess], signal: i32) {
    for process in processes {
        // SAFETY: kill(2) and getpgid(2) touch no memory of ours.
        unsafe {
            if libc::getpgid(process.pid) == process.pid {
                libc::kill(-process.pid, signal);
            }
            libc::kill(process.pid, signal);
        }
    }
}

fn wait_gone(root: &Path, limit: Duration) -> bool {
    let started = Instant::now();
    loop {
        if processes_under(root).is_empty() {
            return true;
        }
        if started.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Live (not zombie) processes other than this one that point into `root`.
fn processes_under(root: &Path) -> Vec<LeftProcess> {
    let me = std::process::id() as i32;
    let needle = root.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let (state, ppid) = state_and_parent(pid)?;
            if state == 'Z' || state == 'X' {
                return None;
            }
            let proc = format!("/proc/{pid}");
            let cmdline = std::fs::read(format!("{proc}/cmdline")).unwrap_or_default();
            let environ = std::fs::read(format!("{proc}/environ")).unwrap_or_default();
            let link = |name: &str| {
                std::fs::read_link(format!("{proc}/{name}"))
                    .map(|p| p.into_os_string().into_encoded_bytes())
                    .unwrap_or_default()
            };
            let points_in =
                [cmdline.as_slice(), &environ, &link("cwd"), &link("exe")].iter().any(|text| mentions(text, needle));
            points_in.then(|| LeftProcess {
                pid,
                ppid,
                command: String::from_utf8_lossy(&cmdline).replace('\0', " ").trim_end().to_string(),
                still_running: true,
            })
        })
        .collect()
}

/// The state letter and parent pid from `/proc/<pid>/stat`.
fn state_and_parent(pid: i32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 2..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// `path` occurs in `text` as a whole path: followed by `/` or by a byte
/// that cannot continue a file name here (NUL, space, `:`, `=`), or at the
/// end; so /tmp/.tmpAB never matches /tmp/.tmpABC.
fn mentions(text: &[u8], path: &[u8]) -> bool {
    if path.is_empty() || text.len() < path.len() {
        return false;
    }
    text.windows(path.len()).enumerate().any(|(at, window)| {
        window == path && matches!(text.get(at + path.len()), None | Some(b'/' | 0 | b' ' | b':' | b'=' | b'"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_matches_whole() {
        assert!(mentions(b"HOME=/tmp/.tmpAB/t/home\0X=1", b"/tmp/.tmpAB"));
        assert!(mentions(b"/tmp/.tmpAB", b"/tmp/.tmpAB"));
        assert!(!mentions(b"HOME=/tmp/.tmpABC/home", b"/tmp/.tmpAB"));
    }

    #[test]
    fn a_process_pointing_into_the_dir_is_ended_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let spawn = |cwd: &Path| {
            std::process::Command::new("sleep").arg("600").current_dir(cwd).process_group(0).spawn().unwrap()
        };
        use std::os::unix::process::CommandExt;
        let (mut inside, mut outside) = (spawn(dir.path()), spawn(other.path()));
        let ended = end_processes_under(dir.path());
        assert_eq!(ended.iter().map(|p| p.pid as u32).collect::<Vec<_>>(), [inside.id()]);
        assert!(!ended[0].still_running);
        assert!(inside.wait().is_ok());
        assert!(outside.try_wait().unwrap().is_none(), "a process of another directory is left alone");
        let _ = outside.kill();
        let _ = outside.wait();
    }
}
