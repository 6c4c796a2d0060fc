//! The API's credential check: the admin token, the shared-secret headers
//! (the API's alone), and SSO tokens through the identity crate's verifier.
use std::sync::Arc;

use clawplane_identity::config::AuthConfig;
use clawplane_identity::{check_identity, check_teams, AuthError, JwtVerifier, Principal};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The outcome of authenticating one request, stored in its extensions.
#[derive(Debug, Clone)]
pub struct Authentication(pub Result<Principal, AuthError>);

/// Checks credentials against the configured methods.
pub struct Authenticator {
    admin_token_hash: Option<[u8; 32]>,
    shared_secret_hash: Option<[u8; 32]>,
    jwt: Option<JwtVerifier>,
}

impl Authenticator {
    pub fn from_config(config: &AuthConfig) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Authenticator {
            admin_token_hash: config.admin_token.as_deref().map(sha256),
            shared_secret_hash: config.shared_secret.as_deref().map(sha256),
            jwt: config.jwt.as_ref().map(JwtVerifier::from_config).transpose()?,
        }))
    }

    /// Authenticates one request from its headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        if let Some(value) = headers.get(http::header::AUTHORIZATION) {
            let value = value.to_str().map_err(|_| AuthError::new("authorization header is not valid ASCII"))?;
            let token = bearer_token(value)?;
            if secret_matches(&self.admin_token_hash, token) {
                return Ok(Principal {
                    user_id: "admin".into(),
                    email: None,
                    teams: Vec::new(),
                    is_admin: true,
                    is_user: false,
                });
            }
            return match &self.jwt {
                Some(verifier) => verifier.verify(token),
                None if self.admin_token_hash.is_some() => {
                    Err(AuthError::new("invalid admin token (JWT authentication is not configured)"))
                }
                None => Err(AuthError::new("bearer tokens are not accepted: JWT authentication is not configured")),
            };
        }
        if let Some(value) = headers.get("x-shared-secret") {
            if self.shared_secret_hash.is_none() {
                return Err(AuthError::new("shared-secret authentication is not configured"));
            }
            let secret = value.to_str().unwrap_or("");
            if !secret_matches(&self.shared_secret_hash, secret) {
                return Err(AuthError::new("wrong shared secret"));
            }
            return shared_secret_principal(headers);
        }
        Err(AuthError::new(
            "missing credentials: send `authorization: Bearer <token>` or `x-shared-secret` with `x-user-id`",
        ))
    }
}

fn bearer_token(value: &str) -> Result<&str, AuthError> {
    let (scheme, token) =
        value.split_once(' ').ok_or_else(|| AuthError::new("authorization header must be `Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::new("authorization header must use the Bearer scheme"));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::new("authorization header has an empty bearer token"));
    }
    Ok(token)
}

fn sha256(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

/// Constant-time comparison. Hashing first makes the comparison independent
/// of the secret's length as well as its content.
fn secret_matches(expected_hash: &Option<[u8; 32]>, presented: &str) -> bool {
    match expected_hash {
        Some(expected) => bool::from(expected.ct_eq(&sha256(presented))),
        None => false,
    }
}

fn shared_secret_principal(headers: &HeaderMap) -> Result<Principal, AuthError> {
    let header = |name: &str| -> Result<Option<String>, AuthError> {
        match headers.get(name) {
            None => Ok(None),
            Some(value) => {
                let text = value.to_str().map_err(|_| AuthError::new(format!("{name} is not valid ASCII")))?.trim();
                Ok((!text.is_empty()).then(|| text.to_string()))
            }
        }
    };
    let user_id = header("x-user-id")?.ok_or_else(|| AuthError::new("x-shared-secret requires an x-user-id header"))?;
    check_identity("x-user-id", &user_id)?;
    let email = header("x-user-email")?;
    if let Some(email) = &email {
        check_identity("x-user-email", email)?;
    }
    let teams = match header("x-user-teams")? {
        None => Vec::new(),
        Some(list) => list.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect(),
    };
    check_teams("x-user-teams", &teams)?;
    Ok(Principal { user_id, email, teams, is_admin: false, is_user: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> Arc<Authenticator> {
        Authenticator::from_config(&AuthConfig {
            admin_token: Some("admin-token-0123456789".into()),
            shared_secret: Some("shared-secret-0123456789".into()),
            jwt: None,
        })
        .unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn header_forms() {
        let auth = authenticator();
        let cases: &[(&[(&'static str, &str)], Result<&str, &str>)] = &[
            (&[], Err("missing credentials")),
            (&[("authorization", "Bearer admin-token-0123456789")], Ok("admin")),
            (&[("authorization", "bearer admin-token-0123456789")], Ok("admin")),
            (&[("authorization", "Basic abc")], Err("Bearer scheme")),
            (&[("authorization", "Bearer wrong")], Err("invalid admin token")),
            (&[("authorization", "Bearer ")], Err("empty bearer token")),
            (&[("authorization", "Bearer")], Err("must be `Bearer <token>`")),
            (&[("x-shared-secret", "shared-secret-0123456789"), ("x-user-id", "u1")], Ok("u1")),
            (&[("x-shared-secret", "wrong"), ("x-user-id", "u1")], Err("wrong shared secret")),
            (&[("x-shared-secret", "shared-secret-0123456789")], Err("requires an x-user-id")),
        ];
        for (pairs, expected) in cases {
            let got = auth.authenticate(&headers(pairs));
            match (expected, got) {
                (Ok(user), Ok(principal)) => assert_eq!(principal.user_id, *user),
                (Err(text), Err(err)) => assert!(err.0.contains(text), "{pairs:?}: {err}"),
                (expected, got) => panic!("{pairs:?}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn shared_secret_reads_email_and_teams() {
        let principal = authenticator()
            .authenticate(&headers(&[
                ("x-shared-secret", "shared-secret-0123456789"),
                ("x-user-id", "u1"),
                ("x-user-email", "u1@example.com"),
                ("x-user-teams", "t1, t2,,"),
            ]))
            .unwrap();
        assert_eq!(principal.email.as_deref(), Some("u1@example.com"));
        assert_eq!(principal.teams, vec!["t1", "t2"]);
        assert!(!principal.is_admin);
    }
}
