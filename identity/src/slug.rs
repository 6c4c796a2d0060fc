//! Tenant slugs: one string is the subdomain label, the OpenClaw agent id and
//! part of paths on the host, so the rules are the strictest of the three.
//! The control plane checks [`validate`] when a slug is chosen; the host
//! agent checks the [`check_form`] again where slugs reach paths and CLI
//! arguments (defence in depth).
use sha2::{Digest, Sha256};

pub const MIN_LEN: usize = 3;
pub const MAX_LEN: usize = 40;

/// Labels that would collide with infrastructure names or OpenClaw's own
/// default agent id.
const RESERVED: &[&str] = &[
    "admin",
    "api",
    "app",
    "assets",
    "auth",
    "bridge",
    "clawplane",
    "control",
    "default",
    "docs",
    "gateway",
    "grpc",
    "help",
    "internal",
    "login",
    "mail",
    "main",
    "openclaw",
    "root",
    "sso",
    "static",
    "status",
    "support",
    "system",
    "www",
];

/// Checks a requested slug; the error names the rule it breaks.
pub fn validate(slug: &str) -> Result<(), String> {
    check_form(slug)?;
    if RESERVED.contains(&slug) {
        return Err(format!("slug {slug:?} is reserved"));
    }
    Ok(())
}

/// The form of a slug, without the reserved names (which matter where a
/// slug is chosen, not where an existing one is used).
pub fn check_form(slug: &str) -> Result<(), String> {
    if slug.len() < MIN_LEN || slug.len() > MAX_LEN {
        return Err(format!("slug must be {MIN_LEN} to {MAX_LEN} characters long"));
    }
    if !slug.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err("slug may only contain lowercase letters a-z, digits and '-'".into());
    }
    if !slug.as_bytes()[0].is_ascii_lowercase() {
        return Err("slug must start with a letter".into());
    }
    if slug.ends_with('-') {
        return Err("slug must not end with '-'".into());
    }
    if slug.contains("--") {
        return Err("slug must not contain '--'".into());
    }
    Ok(())
}

/// Slugs to try for an owner that did not ask for one: a readable base from
/// the owner id, then the base with a stable suffix, then with random ones.
pub fn candidates(owner_key: &str, owner_id: &str) -> Vec<String> {
    let mut base = String::new();
    for c in owner_id.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            base.push(c);
        } else if !base.ends_with('-') && !base.is_empty() {
            base.push('-');
        }
        if base.len() >= 28 {
            break;
        }
    }
    let mut base = base.trim_end_matches('-').to_string();
    if !base.starts_with(|c: char| c.is_ascii_lowercase()) {
        base = format!("t-{base}").trim_end_matches('-').to_string();
    }
    if base.len() < MIN_LEN || RESERVED.contains(&base.as_str()) {
        base = format!("tenant-{base}").trim_end_matches('-').to_string();
    }
    let stable = &hex::encode(Sha256::digest(owner_key.as_bytes()))[..6];
    let mut out = vec![base.clone(), format!("{base}-{stable}")];
    for _ in 0..3 {
        out.push(format!("{base}-{:06x}", rand::random::<u32>() & 0xff_ffff));
    }
    out.retain(|s| validate(s).is_ok());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let cases: &[(&str, Option<&str>)] = &[
            ("alice", None),
            ("team-42", None),
            ("ab", Some("3 to 40")),
            (&"a".repeat(41), Some("3 to 40")),
            ("Alice", Some("lowercase")),
            ("al ice", Some("lowercase")),
            ("../etc", Some("lowercase")),
            ("a;rm", Some("lowercase")),
            ("a\nb", Some("lowercase")),
            ("1abc", Some("start with a letter")),
            ("-abc", Some("start with a letter")),
            ("abc-", Some("end with")),
            ("xn--abc", Some("'--'")),
            ("admin", Some("reserved")),
            ("main", Some("reserved")),
        ];
        for (slug, expected) in cases {
            match (validate(slug), expected) {
                (Ok(()), None) => {}
                (Err(err), Some(text)) => assert!(err.contains(text), "{slug:?}: {err}"),
                (got, want) => panic!("{slug:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn derived_candidates_are_valid_and_stable() {
        for owner in ["alice@example.com", "123", "ADMIN", "ü", "a.b.c", &"x".repeat(300)] {
            let first = candidates(&format!("user:{owner}"), owner);
            assert!(first.len() >= 2, "{owner}: {first:?}");
            for slug in &first {
                assert!(validate(slug).is_ok(), "{owner}: {slug}");
            }
            let again = candidates(&format!("user:{owner}"), owner);
            assert_eq!(first[..2], again[..2]);
        }
        assert_eq!(candidates("user:alice@example.com", "alice@example.com")[0], "alice-example-com");
    }
}
