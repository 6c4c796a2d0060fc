//! Who a caller is and what they own, written once for every binary: the
//! control plane's API, the gateway bridge at the edge and (for slugs) the
//! host agent.
//!
//! Layout: `principal` is the authenticated caller, the tenant owner and
//! the one ownership rule; `config` parses the SSO settings (flags,
//! variables, the `[jwt]` table) the same way in every binary; `jwt`
//! verifies SSO tokens into principals; `slug` is what a tenant's label may
//! be; `host` reads tenant slugs out of Host headers.
pub mod config;
pub mod host;
pub mod jwt;
mod principal;
pub mod slug;

pub use jwt::JwtVerifier;
pub use principal::{check_identity, check_teams, AuthError, Owner, Principal};
