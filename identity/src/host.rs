//! Tenant host names: `https://<slug>.<base domain>`. What the control
//! plane's route lookups and the bridge read from a Host header, and what a
//! base domain may be.
use anyhow::bail;

use crate::slug;

/// A Host header's longest form (a DNS name's 253, ':', a port).
pub const MAX_HOST_HEADER: usize = 260;

/// Why a Host header is not a host name at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadHost {
    Missing,
    TooLong,
    NotAHostname,
}

/// The host name of a Host header: without a port or a trailing dot, in
/// lower case.
pub fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The slug a Host header names under `base_domain`, if any. `Err` for a
/// malformed header; `Ok(None)` for a well-formed name outside the domain.
pub fn slug_of(host: &str, base_domain: &str) -> Result<Option<String>, BadHost> {
    let host = host.trim();
    if host.is_empty() {
        return Err(BadHost::Missing);
    }
    if host.len() > MAX_HOST_HEADER {
        return Err(BadHost::TooLong);
    }
    if host.chars().any(|c| c.is_control() || c.is_whitespace() || c == '/' || c == '@') {
        return Err(BadHost::NotAHostname);
    }
    let name = host_name(host);
    let Some(label) = name.strip_suffix(&format!(".{base_domain}")) else { return Ok(None) };
    Ok(slug::validate(label).is_ok().then(|| label.to_string()))
}

/// The configured base domain (`base_domain`): a DNS name like
/// example.com.
pub fn validate_base_domain(domain: &str) -> anyhow::Result<()> {
    let ok = !domain.is_empty()
        && domain.len() <= 200
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        bail!("base_domain: {domain:?} is not a DNS name like example.com")
    }
}

/// The base domain from a flag or variable over the file's, `localhost`
/// when neither sets one, validated.
pub fn base_domain(flag: Option<String>, file: Option<String>) -> anyhow::Result<String> {
    let domain = flag.or(file).unwrap_or_else(|| "localhost".into());
    validate_base_domain(&domain)?;
    Ok(domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_header_names_a_slug_under_the_domain() {
        assert_eq!(slug_of("Alice.Claw.Test.:8443", "claw.test"), Ok(Some("alice".into())));
        assert_eq!(slug_of("alice.evil.test", "claw.test"), Ok(None));
        assert_eq!(slug_of("admin.claw.test", "claw.test"), Ok(None), "a reserved label is no tenant");
        assert_eq!(slug_of(" ", "claw.test"), Err(BadHost::Missing));
        assert_eq!(slug_of(&"a".repeat(261), "claw.test"), Err(BadHost::TooLong));
        assert_eq!(slug_of("a@b.claw.test", "claw.test"), Err(BadHost::NotAHostname));
        assert_eq!(host_name("[::1]:80"), "[::1]");
    }
}
