//! Who is calling, on the API listener. The [`AuthLayer`] turns request
//! metadata into an [`Authentication`] once per request; services only ever
//! look at the resulting [`clawplane_identity::Principal`] and never parse
//! headers themselves. What a principal is, SSO tokens and their settings
//! are the identity crate's (shared with the bridge); `authenticator` adds
//! what only the API accepts (the admin token, the shared-secret headers),
//! `layer` runs it once per request.
mod authenticator;
mod layer;

pub use authenticator::{Authentication, Authenticator};
pub use layer::{AuthLayer, AuthService};
