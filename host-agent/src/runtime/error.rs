//! How a tenant operation fails, for the command result.

/// A command failure that names what went wrong, with OpenClaw's own text.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Bad input: retrying will not help.
    #[error("{0}")]
    Invalid(String),
    /// OpenClaw refused (its message included).
    #[error("{0}")]
    OpenClaw(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<crate::openclaw::cli::CliError> for RuntimeError {
    fn from(err: crate::openclaw::cli::CliError) -> Self {
        RuntimeError::OpenClaw(err.to_string())
    }
}

pub type RuntimeResult<T> = Result<T, RuntimeError>;
