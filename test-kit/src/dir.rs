//! A test's own temporary directory, which also bounds what the test may
//! leave running.

use std::path::Path;

use crate::processes::end_processes_under;

/// A fresh temporary directory. Everything a test or bench starts lives
/// under it (data dirs, agent state, tenant homes), so on drop every
/// process whose command line, working directory or environment still
/// points into it is ended (SIGTERM, then SIGKILL) before the directory is
/// removed: the last line of defence, for the gateways of agents a bench
/// spawned itself and for tests that fail half-way.
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        TestDir { dir: tempfile::tempdir().expect("tempdir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Ends what still runs under the directory and says so on stderr.
    pub(crate) fn end_processes(&self) {
        let ended = end_processes_under(self.dir.path());
        if !ended.is_empty() {
            eprintln!("ended {} processes still running under {}: {ended:#?}", ended.len(), self.dir.path().display());
        }
    }
}

impl Default for TestDir {
    fn default() -> Self {
        TestDir::new()
    }
}

impl std::ops::Deref for TestDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        self.end_processes();
    }
}
