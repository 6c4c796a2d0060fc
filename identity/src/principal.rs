//! The authenticated caller, the owner of a tenant, and the one rule that
//! joins them: the control plane's API and the bridge both ask
//! [`Principal::owns`], so who may reach a tenant is decided in one place.

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// SSO subject; "admin" for the admin token.
    pub user_id: String,
    pub email: Option<String>,
    /// Teams the caller belongs to, from the teams claim or header.
    pub teams: Vec<String>,
    /// Operator rights (admin token or admin role claim).
    pub is_admin: bool,
    /// Whether the caller is a real user (false for the bare admin token,
    /// which owns no tenants).
    pub is_user: bool,
}

impl Principal {
    pub fn is_member_of(&self, team_id: &str) -> bool {
        self.teams.iter().any(|t| t == team_id)
    }

    /// Whether the caller owns what `owner` owns: the user themselves (never
    /// the bare admin token), or any member of the team.
    pub fn owns(&self, owner: &Owner) -> bool {
        match owner {
            Owner::User(id) => self.is_user && self.user_id == *id,
            Owner::Team(id) => self.is_member_of(id),
        }
    }
}

/// Who a tenant belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    User(String),
    Team(String),
}

impl Owner {
    pub fn kind(&self) -> &'static str {
        match self {
            Owner::User(_) => "user",
            Owner::Team(_) => "team",
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Owner::User(id) | Owner::Team(id) => id,
        }
    }

    /// The unique key of a live tenant's owner.
    pub fn key(&self) -> String {
        format!("{}:{}", self.kind(), self.id())
    }
}

/// Why a credential was refused. The message goes back to the caller as the
/// UNAUTHENTICATED status text, so it names the problem without echoing the
/// credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

impl AuthError {
    pub fn new(message: impl Into<String>) -> Self {
        AuthError(message.into())
    }
}

/// Longest accepted user id, email or team id from headers or claims.
const MAX_IDENTITY_LEN: usize = 256;
const MAX_TEAMS: usize = 256;

/// Identity strings become database keys and owner ids: bounded, printable.
pub fn check_identity(what: &str, value: &str) -> Result<(), AuthError> {
    if value.is_empty() || value.len() > MAX_IDENTITY_LEN {
        return Err(AuthError::new(format!("{what} must be 1 to {MAX_IDENTITY_LEN} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(AuthError::new(format!("{what} contains control characters")));
    }
    Ok(())
}

pub fn check_teams(what: &str, teams: &[String]) -> Result<(), AuthError> {
    if teams.len() > MAX_TEAMS {
        return Err(AuthError::new(format!("{what} lists more than {MAX_TEAMS} teams")));
    }
    teams.iter().try_for_each(|team| check_identity(what, team))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, teams: &[&str]) -> Principal {
        let teams = teams.iter().map(|t| t.to_string()).collect();
        Principal { user_id: id.into(), email: None, teams, is_admin: false, is_user: true }
    }

    #[test]
    fn the_user_or_a_team_member_owns() {
        let alice = user("alice", &["red"]);
        assert!(alice.owns(&Owner::User("alice".into())));
        assert!(alice.owns(&Owner::Team("red".into())));
        assert!(!alice.owns(&Owner::User("bob".into())));
        assert!(!alice.owns(&Owner::Team("blue".into())));
        assert!(!alice.owns(&Owner::Team("alice".into())), "a user id is not a team");
        let token = Principal { user_id: "admin".into(), is_admin: true, is_user: false, ..user("", &[]) };
        assert!(!token.owns(&Owner::User("admin".into())), "the bare admin token owns no tenant");
    }
}
