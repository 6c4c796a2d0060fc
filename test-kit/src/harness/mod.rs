//! The three binaries as processes on 127.0.0.1, driven the way an
//! operator would. Each harness ends its process when dropped, also while
//! a failed test unwinds; the agent's also ends the gateways it started.

mod agent;
mod bridge;
mod control_plane;

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

pub use agent::Agent;
pub use bridge::BridgeProcess;
pub use control_plane::{ControlPlane, FAST_HOSTS};

/// A workspace binary (`clawplane`, `clawplane-agent`, `clawplane-bridge`)
/// of the build this test or bench belongs to: test and bench executables
/// live in `<target>/<profile>/deps`, the binaries one level up. Cargo
/// builds only a package's own binaries for its tests, hence the hint.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("<target>/<profile>/deps/<test>");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/test (or `cargo build --workspace --bins` first)",
        path.display()
    );
    path
}

/// Polls `check` every 100 ms for up to `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A finished command's stdout and stderr, for assertion messages.
pub fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}
