//! The SSO and credential settings, parsed the same way by every binary
//! that reads them (the control plane and the bridge): the flags and
//! `CLAWPLANE_*` variables of [`AuthArgs`], and the `admin_token`,
//! `shared_secret` and `[jwt]` keys of the control plane's TOML file
//! ([`AuthFile`]). Flags and variables win over the file.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use serde::Deserialize;

/// Credentials settings. Secrets are accepted from the environment (or the
/// file) so they stay out of `ps`; the flags exist for completeness.
#[derive(Args, Debug, Default, Clone)]
pub struct AuthArgs {
    /// Token that grants the admin identity (operators, `clawplane` CLI).
    #[arg(long, env = "CLAWPLANE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Shared secret for the `x-shared-secret` + `x-user-id` header form.
    #[arg(long, env = "CLAWPLANE_SHARED_SECRET", hide_env_values = true)]
    pub shared_secret: Option<String>,
    /// HS256 secret of the SSO's JWTs.
    #[arg(long, env = "CLAWPLANE_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
    /// PEM public key (RSA or EC P-256) of the SSO's JWTs.
    #[arg(long, env = "CLAWPLANE_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// JWKS file with the SSO's public keys.
    #[arg(long, env = "CLAWPLANE_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Required `iss` of JWTs.
    #[arg(long, env = "CLAWPLANE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of JWTs.
    #[arg(long, env = "CLAWPLANE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

/// The credential keys of the TOML file. The control plane names them in
/// its own (strict) file type; the bridge reads only these and
/// `base_domain`.
#[derive(Deserialize, Debug, Default)]
pub struct AuthFile {
    pub admin_token: Option<String>,
    pub shared_secret: Option<String>,
    #[serde(default)]
    pub jwt: JwtFileConfig,
}

/// The `[jwt]` table. Unknown keys are errors: a typo must not silently
/// fall back to a default.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct JwtFileConfig {
    hs256_secret: Option<String>,
    public_key_file: Option<PathBuf>,
    jwks_file: Option<PathBuf>,
    issuer: Option<String>,
    audience: Option<String>,
    algorithms: Option<Vec<String>>,
    leeway_secs: Option<u64>,
    email_claim: Option<String>,
    teams_claim: Option<String>,
    roles_claim: Option<String>,
    admin_role: Option<String>,
}

/// Where JWT verification keys come from.
#[derive(Debug, Clone)]
pub enum JwtKeySource {
    Hs256Secret(String),
    PublicKeyPem(PathBuf),
    Jwks(PathBuf),
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub key_source: JwtKeySource,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Pinned algorithms; empty means "the one the key type implies".
    pub algorithms: Vec<String>,
    pub leeway: Duration,
    pub email_claim: String,
    pub teams_claim: String,
    pub roles_claim: String,
    pub admin_role: String,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub admin_token: Option<String>,
    pub shared_secret: Option<String>,
    pub jwt: Option<JwtConfig>,
}

const MIN_SECRET_LEN: usize = 16;

impl AuthConfig {
    /// The settings from flags and variables over the file's, validated;
    /// errors name the setting.
    pub fn load(args: &AuthArgs, file: AuthFile) -> anyhow::Result<AuthConfig> {
        let jwt = jwt_config(args, file.jwt)?;
        let auth = AuthConfig {
            admin_token: args.admin_token.clone().or(file.admin_token),
            shared_secret: args.shared_secret.clone().or(file.shared_secret),
            jwt,
        };
        for (name, secret) in [("admin_token", &auth.admin_token), ("shared_secret", &auth.shared_secret)] {
            if let Some(secret) = secret {
                if secret.len() < MIN_SECRET_LEN {
                    bail!("{name}: must be at least {MIN_SECRET_LEN} characters");
                }
            }
        }
        Ok(auth)
    }
}

fn jwt_config(args: &AuthArgs, file: JwtFileConfig) -> anyhow::Result<Option<JwtConfig>> {
    let hs = args.jwt_hs256_secret.clone().or(file.hs256_secret);
    let pem = args.jwt_public_key_file.clone().or(file.public_key_file);
    let jwks = args.jwks_file.clone().or(file.jwks_file);
    let key_source = match (hs, pem, jwks) {
        (None, None, None) => return Ok(None),
        (Some(secret), None, None) => {
            if secret.len() < 32 {
                bail!("jwt.hs256_secret: must be at least 32 bytes (RFC 7518 section 3.2)");
            }
            JwtKeySource::Hs256Secret(secret)
        }
        (None, Some(path), None) => JwtKeySource::PublicKeyPem(path),
        (None, None, Some(path)) => JwtKeySource::Jwks(path),
        _ => bail!(
            "jwt: set exactly one of hs256_secret, public_key_file or jwks_file \
             (each algorithm family needs its own key; mixing them invites algorithm confusion)"
        ),
    };
    let algorithms = file.algorithms.unwrap_or_default();
    for alg in &algorithms {
        if !["HS256", "RS256", "ES256"].contains(&alg.as_str()) {
            bail!("jwt.algorithms: {alg:?} is not supported (HS256, RS256, ES256)");
        }
    }
    Ok(Some(JwtConfig {
        key_source,
        issuer: args.jwt_issuer.clone().or(file.issuer),
        audience: args.jwt_audience.clone().or(file.audience),
        algorithms,
        leeway: Duration::from_secs(file.leeway_secs.unwrap_or(30)),
        email_claim: file.email_claim.unwrap_or_else(|| "email".into()),
        teams_claim: file.teams_claim.unwrap_or_else(|| "teams".into()),
        roles_claim: file.roles_claim.unwrap_or_else(|| "roles".into()),
        admin_role: file.admin_role.unwrap_or_else(|| "admin".into()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: AuthArgs, toml_text: &str) -> anyhow::Result<AuthConfig> {
        AuthConfig::load(&args, toml::from_str(toml_text)?)
    }

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let file = "admin_token = \"file-admin-token-0123\"\n[jwt]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\nissuer = \"file\"";
        let args = AuthArgs { jwt_issuer: Some("flag".into()), ..Default::default() };
        let auth = load(args, file).unwrap();
        assert_eq!(auth.admin_token.as_deref(), Some("file-admin-token-0123"));
        let jwt = auth.jwt.unwrap();
        assert_eq!(jwt.issuer.as_deref(), Some("flag"));
        assert_eq!((jwt.leeway, jwt.teams_claim.as_str()), (Duration::from_secs(30), "teams"));
        assert!(load(AuthArgs::default(), "").unwrap().jwt.is_none());
    }

    #[test]
    fn bad_settings_name_the_setting() {
        for (text, expected) in [
            ("shared_secret = \"short\"", "shared_secret"),
            ("[jwt]\nhs256_secret = \"short\"", "jwt.hs256_secret"),
            ("[jwt]\npublic_key_file = \"/x\"\njwks_file = \"/x\"", "exactly one"),
            ("[jwt]\njwks_file = \"/x\"\nalgorithms = [\"none\"]", "jwt.algorithms"),
            ("[jwt]\nleeway = 5", "leeway"),
        ] {
            let err = load(AuthArgs::default(), text).unwrap_err();
            assert!(format!("{err:#}").contains(expected), "{text}: {err:#}");
        }
    }
}
