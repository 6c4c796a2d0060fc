//! Clawplane control plane: the tenant API for the web backend, operator
//! calls, and (in later layers) the host fleet, ingest and routing.
//!
//! Layout: `config` parses and validates settings once; `auth` turns request
//! metadata into a principal; `api` holds the gRPC services and their one
//! error type; `store` owns every query;
//! `rate` limits request rates per key (API and bridge); `pki` is the CA; `fleet` enrolls hosts and runs their command streams; `ingest`
//! stores what agents sync; `server` wires them to a listener.
pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod fleet;
pub mod ingest;
pub mod model_url;
pub mod net;
pub mod openclaw_config;
pub mod pki;
pub mod rate;
pub mod secrets;
pub mod server;
pub mod store;
pub mod telemetry;

pub use config::Config;
pub use server::Server;
