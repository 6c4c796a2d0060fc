//! What Clawplane's tests and benches share, so each exists once: a test's
//! own directory ([`TestDir`]) and database ([`TestDb`], SQLite or
//! PostgreSQL), loopback ports, the stand-in `openclaw`, test credentials,
//! and harnesses for the three binaries run as processes.
//!
//! Cleanup never depends on a test reaching its last line: dropping a
//! [`TestDir`] (and so a [`TestDb`]) ends every process that still points
//! into it, tenant gateways included (they outlive their agent by design),
//! and dropping a [`TestDb`] drops its PostgreSQL database, also while a
//! failed test unwinds.
//!
//! Used only as a dev-dependency; it depends on no Clawplane crate but the
//! proto, so every crate's tests can use it.

pub mod auth;
mod backends;
mod cpu;
mod db;
mod dir;
pub mod harness;
pub mod model_upstream;
mod net;
mod openclaw;
mod processes;

pub use cpu::process_cpu;
pub use db::{pg_admin_url, postgres_db, sqlite_db, TestDb};
pub use dir::TestDir;
pub use harness::{bin, eventually, text, Agent, BridgeProcess, ControlPlane, FAST_HOSTS};
pub use net::{connect_from, free_port, grpc_web_frames, http1, wait_for_port};
pub use openclaw::{agent_fixture, fake_openclaw, FAKE_OPENCLAW};
pub use processes::{end_processes_under, LeftProcess};
