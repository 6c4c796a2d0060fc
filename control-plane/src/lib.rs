//! Clawplane control plane: the tenant API for the web backend and
//! operators, the host fleet, ingest of what hosts sync, and routes for the
//! bridge.
//!
//! Layers, each importing only those below it:
//! - `server` wires everything to the two listeners and owns the one
//!   shutdown (the edge crate's) that every background task holds;
//! - `api` holds the gRPC services of the API listener (`auth` says who is
//!   calling; tokens are verified by the identity crate);
//! - `fleet` enrolls hosts, runs their command streams, places tenants and
//!   pushes their config; `ingest` stores what agents sync;
//! - `desired` is each tenant's desired OpenClaw config; `quota` is where
//!   a tenant stands against its plan (allowance, billing arithmetic);
//! - `store` owns every query; `pki` is the CA; `model_url` checks model
//!   base URLs;
//! - `service_error` classifies every service's errors once, `wire` holds
//!   the conversions and checks at the edge of the wire, `config` parses
//!   settings once (the SSO part with the identity crate, as the bridge
//!   does).
//!
//! Request rates and connection limits come from the edge crate, sealed
//! secrets from the TLS crate.
pub mod api;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod desired;
pub mod fleet;
pub mod ingest;
pub mod model_url;
pub mod net;
pub mod pki;
pub mod quota;
pub mod server;
pub mod service_error;
pub mod store;
pub mod telemetry;
pub mod wire;

pub use config::Config;
pub use server::Server;
