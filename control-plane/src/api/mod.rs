//! gRPC services of the API listener. Each service turns requests into store
//! calls and store records into messages; identity comes from the request
//! extensions filled by [`crate::auth::AuthLayer`], errors go through
//! [`ApiError`]; deadlines come from [`DeadlineLayer`]. `rest` answers the
//! seed's REST endpoints by calling these services.
mod config;
mod deadline;
mod error;
mod hosts;
mod rate_limit;
mod request;
mod rest;
mod routes;
mod sessions;
mod tenants;
mod usage;

pub use config::ConfigApi;
pub use deadline::{wait_within, Deadline, DeadlineLayer};
pub use error::{ApiError, ApiResult};
pub use hosts::HostApi;
pub use rate_limit::RateLimitLayer;
pub use rest::{GrpcWebBesideRestLayer, RestApi};
pub use routes::RouteApi;
pub use sessions::SessionApi;
pub use tenants::TenantApi;
pub use usage::UsageApi;
