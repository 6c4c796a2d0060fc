//! OpenClaw on this host: `cli` owns every call of its CLI; this module
//! holds the rules for identifiers that reach its paths and arguments
//! (tenant slugs by the shared rule of `clawplane_identity::slug`).
pub mod cli;
pub mod database;

/// Tenant slugs and agent ids reach paths and CLI arguments: the control
/// plane's slug form, checked again here (defence in depth).
pub fn valid_slug(slug: &str) -> bool {
    clawplane_identity::slug::check_form(slug).is_ok()
}

/// Tenant ids (UUIDs) name record files and archives.
pub fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// `https://host[:port]` (or http) with a plain DNS host name.
pub fn valid_origin(origin: &str) -> bool {
    let Some(rest) = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://")) else { return false };
    let (host, port) = rest.split_once(':').unwrap_or((rest, "443"));
    !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && port.parse::<u16>().is_ok()
}

/// OpenClaw config paths: dot-separated segments of letters, digits, `_`
/// and `-` (no `..`, no spaces, nothing a shell or JSON would treat
/// specially).
pub fn valid_config_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 256
        && path.split('.').all(|segment| {
            !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// OpenClaw agent ids as they appear as directories under `agents/`.
pub fn valid_agent_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Secret names are JSON pointers into the tenant's secrets file.
pub fn valid_secret_pointer(name: &str) -> bool {
    name.starts_with('/')
        && name.len() <= 256
        && name[1..].split('/').all(|segment| {
            !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_full_of_metacharacters_are_refused() {
        for bad in
            ["", "ab", "../etc", "a/b", "a b", "a;rm", "a\nb", "a\0b", "$(id)", "`id`", "Alice", "-rf", "a--b", "abc-"]
        {
            assert!(!valid_slug(bad), "{bad:?}");
        }
        for good in ["alice", "team-42", "a1b"] {
            assert!(valid_slug(good), "{good:?}");
        }
        for bad in ["", "a..b", ".a", "a.", "a b", "a;b", "a/b", "a\nb", "a\0b", "$(x)", "a.${b}"] {
            assert!(!valid_config_path(bad), "{bad:?}");
        }
        assert!(valid_config_path("models.providers.local"));
        for bad in ["", "a", "/", "/a//b", "/a/../b", "/a b", "/a\0"] {
            assert!(!valid_secret_pointer(bad), "{bad:?}");
        }
        assert!(valid_secret_pointer("/models/local/apiKey"));
    }
}
