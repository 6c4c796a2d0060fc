//! The stand-in `openclaw`. It lives with the agent's fixtures because
//! the agent's own unit tests run it too.

use std::path::{Path, PathBuf};

/// The stand-in script (see its header for the modes it knows).
pub const FAKE_OPENCLAW: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../host-agent/tests/fixtures/fake-openclaw");

/// A file of the agent's test fixtures (host-agent/tests/fixtures).
pub fn agent_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../host-agent/tests/fixtures").join(name)
}

/// The stand-in `openclaw` in `<dir>/fake`, answering normally (its mode
/// is the file `fake-mode` beside it); returns its folder.
pub fn fake_openclaw(dir: &Path) -> PathBuf {
    let fake = dir.join("fake");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::copy(FAKE_OPENCLAW, fake.join("openclaw")).unwrap();
    std::fs::write(fake.join("fake-mode"), "ok").unwrap();
    fake
}
