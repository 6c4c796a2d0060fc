//! Test credentials: the secrets the test servers are configured with,
//! JWTs signed with them, and how a call carries them.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tonic::metadata::MetadataValue;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const SHARED_SECRET: &str = "test-shared-secret-0123456789";
pub const HS_SECRET: &str = "test-hs256-secret-0123456789abcdef0123456789";
pub const ISSUER: &str = "https://sso.test";
pub const AUDIENCE: &str = "clawplane";

/// How a test call authenticates.
#[derive(Clone, Debug)]
pub enum Cred {
    None,
    Bearer(String),
    Shared { secret: String, user: String, teams: String },
}

impl Cred {
    pub fn admin() -> Cred {
        Cred::Bearer(ADMIN_TOKEN.into())
    }

    /// A valid SSO token for `user` in `teams`.
    pub fn user(user: &str, teams: &[&str]) -> Cred {
        Cred::Bearer(hs256(claims(user, teams)))
    }

    pub fn shared(user: &str) -> Cred {
        Cred::Shared { secret: SHARED_SECRET.into(), user: user.into(), teams: String::new() }
    }

    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        match self {
            Cred::None => {}
            Cred::Bearer(token) => {
                metadata.insert("authorization", MetadataValue::try_from(format!("Bearer {token}")).unwrap());
            }
            Cred::Shared { secret, user, teams } => {
                metadata.insert("x-shared-secret", MetadataValue::try_from(secret.as_str()).unwrap());
                metadata.insert("x-user-id", MetadataValue::try_from(user.as_str()).unwrap());
                metadata.insert("x-user-email", MetadataValue::try_from(format!("{user}@example.com")).unwrap());
                if !teams.is_empty() {
                    metadata.insert("x-user-teams", MetadataValue::try_from(teams.as_str()).unwrap());
                }
            }
        }
        request
    }
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Valid claims for `user`, expiring in an hour.
pub fn claims(user: &str, teams: &[&str]) -> Value {
    json!({
        "sub": user,
        "email": format!("{user}@example.com"),
        "teams": teams,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now(),
        "exp": now() + 3600,
    })
}

pub fn hs256(claims: Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(HS_SECRET.as_bytes()), None, &claims)
}

pub fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}
