//! The host fleet: enrollment, the agent listener (mutual TLS), connected
//! sessions, liveness leases, the durable command queue, placement of
//! tenants and the push of their desired config.
//!
//! `streams` holds the [`Fleet`] itself (sessions, queue, leases, the
//! events between replicas), `logs` the tenant log streams; `listener` accepts agents' TLS connections (`peer`: what a
//! connection proves); `enrollment` and `agent` are the two gRPC services
//! on it; `placement` and `config` decide what hosts run and how,
//! `allowance` what their metering proxies let tenants call; `turns`
//! relays a conversation turn to a tenant's gateway through its host's
//! tenant proxy.
mod agent;
mod allowance;
mod config;
mod enrollment;
mod error;
mod listener;
mod logs;
mod peer;
mod placement;
mod reports;
mod streams;
mod turns;

pub use agent::AgentApi;
pub use allowance::allowance_command;
pub use enrollment::{hash_secret, parse_join_token, EnrollmentApi};
pub use error::{FleetError, FleetResult};
pub use listener::serve_agents;
pub use logs::LogSubscription;
pub use peer::{AgentConnectInfo, PeerCertificate};
pub use placement::{human_bytes, plan_resources, Placement};
pub use streams::{host_status, proxy_endpoint, Fleet, FleetConfig};
pub use turns::{Turn, TurnError, TurnEvent, TurnLimits, TurnRelay, TurnRequest, TurnTokens};
