use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use super::{bin, text, ControlPlane};
use crate::{auth, free_port, wait_for_port};

/// A `clawplane-bridge` process in front of a test control plane, with a
/// bridge identity issued by `clawplane ca issue-bridge` and the test SSO
/// (HS256) settings.
pub struct BridgeProcess {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    pub identity: PathBuf,
    pub log: PathBuf,
}

impl BridgeProcess {
    pub fn start(cp: &ControlPlane, dir: &Path) -> BridgeProcess {
        BridgeProcess::start_with(cp, dir, &[])
    }

    pub fn start_with(cp: &ControlPlane, dir: &Path, extra: &[&str]) -> BridgeProcess {
        BridgeProcess::start_on(cp, dir, free_port(), extra)
    }

    /// On a given port (e.g. 443 for a browser), with extra flags.
    pub fn start_on(cp: &ControlPlane, dir: &Path, port: u16, extra: &[&str]) -> BridgeProcess {
        let identity = dir.join("bridge-identity");
        let issued = Command::new(bin("clawplane"))
            .args(["ca", "issue-bridge", "--name", "edge-1", "--out"])
            .arg(&identity)
            .arg("--data-dir")
            .arg(&cp.data_dir)
            .output()
            .unwrap();
        assert!(issued.status.success(), "{}", text(&issued));
        let admin_port = free_port();
        let log = dir.join(format!("bridge-{port}.log"));
        let mut child = Command::new(bin("clawplane-bridge"))
            .args(["--control-plane", &format!("http://127.0.0.1:{}", cp.api_port)])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--base-domain", "claw.test", "--identity-dir"])
            .arg(&identity)
            .args(extra)
            .env("CLAWPLANE_ADMIN_TOKEN", cp.admin_token())
            .env("CLAWPLANE_JWT_HS256_SECRET", auth::HS_SECRET)
            .env("CLAWPLANE_JWT_ISSUER", auth::ISSUER)
            .env("CLAWPLANE_JWT_AUDIENCE", auth::AUDIENCE)
            .env("RUST_LOG", "info,clawplane_bridge=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_for_port(port, &mut child);
        BridgeProcess { child, port, admin_port, identity, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, the way an operator or a service manager stops the bridge.
    pub fn terminate(&self) {
        // SAFETY: kill(2) touches no memory of ours.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    /// How the bridge exited, once it has; None while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
