//! The API layer's error: its own refusals (bad input, wrong caller) and
//! the errors of the services below it, each classified by its
//! [`ServiceError`] impl and turned into a status by
//! [`crate::service_error::grpc_status`], so every RPC fails the same way.
use clawplane_identity::AuthError;

use crate::desired::DesiredError;
use crate::fleet::{FleetError, TurnError};
use crate::service_error::{into_status, ServiceError, ServiceErrorCode};
use crate::store::StoreError;
use crate::wire::InvalidField;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unimplemented(&'static str),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Desired(#[from] DesiredError),
    #[error(transparent)]
    Field(#[from] InvalidField),
    #[error(transparent)]
    Turn(#[from] TurnError),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::InvalidArgument(message.into())
    }
}

impl ServiceError for ApiError {
    fn error_code(&self) -> ServiceErrorCode {
        match self {
            ApiError::Unauthenticated(_) => ServiceErrorCode::Unauthenticated,
            ApiError::PermissionDenied(_) => ServiceErrorCode::PermissionDenied,
            ApiError::InvalidArgument(_) => ServiceErrorCode::InvalidArgument,
            ApiError::NotFound(_) => ServiceErrorCode::NotFound,
            ApiError::FailedPrecondition(_) => ServiceErrorCode::FailedPrecondition,
            ApiError::DeadlineExceeded(_) => ServiceErrorCode::DeadlineExceeded,
            ApiError::ResourceExhausted(_) => ServiceErrorCode::ResourceExhausted,
            ApiError::Unimplemented(_) => ServiceErrorCode::Unimplemented,
            ApiError::Internal(_) => ServiceErrorCode::Internal,
            ApiError::Store(err) => err.error_code(),
            ApiError::Fleet(err) => err.error_code(),
            ApiError::Desired(err) => err.error_code(),
            ApiError::Field(err) => err.error_code(),
            ApiError::Turn(err) => err.error_code(),
        }
    }

    fn reason(&self) -> Option<clawplane_proto::v1::ErrorReason> {
        match self {
            ApiError::Fleet(err) => err.reason(),
            ApiError::Desired(err) => err.reason(),
            _ => None,
        }
    }
}

into_status!(ApiError);

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        ApiError::Unauthenticated(err.0)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
