//! SSO JWT verification: HS256 with a shared secret, or RS256/ES256 with
//! public keys from a PEM file or a JWKS file. Algorithms are pinned by the
//! key source (and optionally narrowed by config), so a token cannot pick its
//! own verification method: `alg: none` and HS/RS confusion fail before any
//! signature check.
use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{JwtConfig, JwtKeySource};
use crate::principal::{check_identity, check_teams, AuthError, Principal};

struct VerificationKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

pub struct JwtVerifier {
    keys: Vec<VerificationKey>,
    allowed: Vec<Algorithm>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: u64,
    email_claim: String,
    teams_claim: String,
    roles_claim: String,
    admin_role: String,
    /// Tokens that verified, by SHA-256 of the token: the edge sees the same
    /// token on every request of a session, and a signature check (RS256
    /// above all) costs far more than the lookup.
    verified: RwLock<HashMap<[u8; 32], Verified>>,
}

struct Verified {
    principal: Principal,
    /// The earlier of the token's expiry (plus leeway) and VERIFIED_TTL
    /// after the check, so a key removed from the JWKS file stops a token
    /// within that time.
    until: Instant,
}

/// Longest token accepted; real SSO tokens are a few KiB.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// How long a verified token is trusted without checking it again.
const VERIFIED_TTL: Duration = Duration::from_secs(60);
/// Bound on remembered tokens; when full, expired ones go, then all.
const VERIFIED_MAX: usize = 10_000;

impl JwtVerifier {
    pub fn from_config(config: &JwtConfig) -> anyhow::Result<Self> {
        let keys = load_keys(&config.key_source)?;
        let mut implied: Vec<Algorithm> = Vec::new();
        for key in &keys {
            if !implied.contains(&key.algorithm) {
                implied.push(key.algorithm);
            }
        }
        let allowed = if config.algorithms.is_empty() {
            implied
        } else {
            let mut pinned = Vec::new();
            for name in &config.algorithms {
                let alg =
                    parse_algorithm(name).with_context(|| format!("jwt.algorithms: {name:?} is not supported"))?;
                if !implied.contains(&alg) {
                    bail!("jwt.algorithms: {name} does not match the configured key type");
                }
                pinned.push(alg);
            }
            pinned
        };
        Ok(JwtVerifier {
            keys,
            allowed,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_secs: config.leeway.as_secs(),
            email_claim: config.email_claim.clone(),
            teams_claim: config.teams_claim.clone(),
            roles_claim: config.roles_claim.clone(),
            admin_role: config.admin_role.clone(),
            verified: RwLock::new(HashMap::new()),
        })
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::new("token is too large"));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.verified.read().unwrap().get(&digest) {
            if hit.until > Instant::now() {
                return Ok(hit.principal.clone());
            }
        }
        let (principal, expires) = self.verify_uncached(token)?;
        let now = Instant::now();
        let left = expires.saturating_sub(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default());
        let until = now + left.min(VERIFIED_TTL);
        let mut verified = self.verified.write().unwrap();
        if verified.len() >= VERIFIED_MAX {
            verified.retain(|_, v| v.until > now);
            if verified.len() >= VERIFIED_MAX {
                verified.clear();
            }
        }
        verified.insert(digest, Verified { principal: principal.clone(), until });
        Ok(principal)
    }

    /// The full check: header, algorithm, key, signature, claims. Returns
    /// the principal and when the token stops being accepted (exp plus
    /// leeway, since the UNIX epoch).
    fn verify_uncached(&self, token: &str) -> Result<(Principal, Duration), AuthError> {
        let (alg_name, kid) = read_header(token)?;
        let algorithm = parse_algorithm(&alg_name).filter(|alg| self.allowed.contains(alg)).ok_or_else(|| {
            AuthError::new(format!(
                "token algorithm {alg_name:?} is not allowed (accepted: {})",
                self.allowed.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ")
            ))
        })?;
        let key = self.select_key(algorithm, kid.as_deref())?;

        let mut validation = Validation::new(algorithm);
        validation.leeway = self.leeway_secs;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &self.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);

        let data = jsonwebtoken::decode::<Value>(token, &key.key, &validation)
            .map_err(|err| AuthError::new(describe(err.kind())))?;
        let expires = data.claims.get("exp").and_then(Value::as_u64).unwrap_or(0).saturating_add(self.leeway_secs);
        Ok((self.principal(&data.claims)?, Duration::from_secs(expires)))
    }

    fn select_key(&self, algorithm: Algorithm, kid: Option<&str>) -> Result<&VerificationKey, AuthError> {
        let mut candidates = self.keys.iter().filter(|k| k.algorithm == algorithm);
        match kid {
            Some(kid) => {
                let with_kid: Vec<&VerificationKey> = self.keys.iter().filter(|k| k.kid.is_some()).collect();
                if with_kid.is_empty() {
                    return candidates.next().ok_or_else(|| AuthError::new("no key for the token's algorithm"));
                }
                candidates
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .ok_or_else(|| AuthError::new("token key id (kid) is not in the configured JWKS"))
            }
            None => {
                let first = candidates.next().ok_or_else(|| AuthError::new("no key for the token's algorithm"))?;
                if candidates.next().is_some() {
                    return Err(AuthError::new("token has no key id (kid) and several keys could verify it"));
                }
                Ok(first)
            }
        }
    }

    fn principal(&self, claims: &Value) -> Result<Principal, AuthError> {
        let user_id = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::new("token subject (sub) must be a string"))?
            .to_string();
        check_identity("token subject (sub)", &user_id)?;
        let email = claims.get(&self.email_claim).and_then(Value::as_str).map(String::from);
        if let Some(email) = &email {
            check_identity("token email claim", email)?;
        }
        let teams = string_list(claims.get(&self.teams_claim));
        check_teams("token teams claim", &teams)?;
        let roles = string_list(claims.get(&self.roles_claim));
        let is_admin = roles.iter().any(|r| r == &self.admin_role);
        Ok(Principal { user_id, email, teams, is_admin, is_user: true })
    }
}

/// Reads `alg` and `kid` from the header ourselves, so that an algorithm the
/// library does not even know (like `none`) gets a clear refusal.
fn read_header(token: &str) -> Result<(String, Option<String>), AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(AuthError::new("malformed token: expected three dot-separated parts"));
    };
    let bytes = URL_SAFE_NO_PAD.decode(header).map_err(|_| AuthError::new("malformed token header: not base64url"))?;
    let header: Value =
        serde_json::from_slice(&bytes).map_err(|_| AuthError::new("malformed token header: not JSON"))?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| AuthError::new("malformed token header: no alg"))?
        .to_string();
    let kid = header.get("kid").and_then(Value::as_str).map(String::from);
    Ok((alg, kid))
}

fn parse_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "HS256" => Some(Algorithm::HS256),
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        _ => None,
    }
}

fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token not yet valid (nbf is in the future)".into(),
        ErrorKind::InvalidIssuer => "token has the wrong issuer".into(),
        ErrorKind::InvalidAudience => "token has the wrong audience".into(),
        ErrorKind::InvalidSignature => "token has a bad signature".into(),
        ErrorKind::InvalidAlgorithm => "token algorithm does not match the key".into(),
        ErrorKind::MissingRequiredClaim(claim) => {
            format!("token lacks the required claim {claim:?}")
        }
        ErrorKind::InvalidSubject => "token subject is invalid".into(),
        _ => "malformed token".into(),
    }
}

fn string_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(String::from).collect(),
        Some(Value::String(text)) => text.split([' ', ',']).filter(|s| !s.is_empty()).map(String::from).collect(),
        _ => Vec::new(),
    }
}

fn load_keys(source: &JwtKeySource) -> anyhow::Result<Vec<VerificationKey>> {
    match source {
        JwtKeySource::Hs256Secret(secret) => Ok(vec![VerificationKey {
            kid: None,
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(secret.as_bytes()),
        }]),
        JwtKeySource::PublicKeyPem(path) => {
            let pem =
                std::fs::read(path).with_context(|| format!("jwt.public_key_file {}: cannot read", path.display()))?;
            let (algorithm, key) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                (Algorithm::RS256, key)
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                (Algorithm::ES256, key)
            } else {
                bail!("jwt.public_key_file {}: not a PEM RSA or EC P-256 public key", path.display());
            };
            Ok(vec![VerificationKey { kid: None, algorithm, key }])
        }
        JwtKeySource::Jwks(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("jwks_file {}: cannot read", path.display()))?;
            let set: JwkSet = serde_json::from_str(&text)
                .with_context(|| format!("jwks_file {}: not a JWKS document", path.display()))?;
            let mut keys = Vec::new();
            let mut seen = HashSet::new();
            for jwk in &set.keys {
                let algorithm = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
                    // Symmetric or unsupported keys in a public JWKS are skipped, never trusted.
                    _ => continue,
                };
                let kid = jwk.common.key_id.clone();
                if let Some(kid) = &kid {
                    if !seen.insert(kid.clone()) {
                        bail!("jwks_file {}: duplicate kid {kid:?}", path.display());
                    }
                }
                let key = DecodingKey::from_jwk(jwk)
                    .with_context(|| format!("jwks_file {}: unusable key {kid:?}", path.display()))?;
                keys.push(VerificationKey { kid, algorithm, key });
            }
            if keys.is_empty() {
                bail!("jwks_file {}: holds no RSA or EC P-256 key", path.display());
            }
            Ok(keys)
        }
    }
}
