//! How every service of the control plane fails, classified once.
//!
//! Each service (the API, the fleet, the desired config, ingest, the store)
//! has its own error enum that says what went wrong in its own words; each
//! implements [`ServiceError`], which classifies it into a
//! [`ServiceErrorCode`]. The code becomes a gRPC status (and an HTTP status)
//! here and nowhere else, so every RPC fails the same way.
use tonic::Status;

/// What a caller can do about a failure: the classes gRPC and HTTP share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceErrorCode {
    Unauthenticated,
    PermissionDenied,
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    /// A compare-and-set lost (e.g. `expected_generation`): read and retry.
    Aborted,
    DeadlineExceeded,
    ResourceExhausted,
    Unimplemented,
    /// Something the call needs is away for now (a host, a gateway): retry.
    Unavailable,
    /// A fault of ours: details go to the log, never to the caller.
    Internal,
}

impl ServiceErrorCode {
    pub fn grpc(self) -> tonic::Code {
        use tonic::Code;
        match self {
            ServiceErrorCode::Unauthenticated => Code::Unauthenticated,
            ServiceErrorCode::PermissionDenied => Code::PermissionDenied,
            ServiceErrorCode::InvalidArgument => Code::InvalidArgument,
            ServiceErrorCode::NotFound => Code::NotFound,
            ServiceErrorCode::AlreadyExists => Code::AlreadyExists,
            ServiceErrorCode::FailedPrecondition => Code::FailedPrecondition,
            ServiceErrorCode::Aborted => Code::Aborted,
            ServiceErrorCode::DeadlineExceeded => Code::DeadlineExceeded,
            ServiceErrorCode::ResourceExhausted => Code::ResourceExhausted,
            ServiceErrorCode::Unimplemented => Code::Unimplemented,
            ServiceErrorCode::Unavailable => Code::Unavailable,
            ServiceErrorCode::Internal => Code::Internal,
        }
    }

    /// The class of a gRPC code (a status from a service called in
    /// process, or from a peer); codes no service uses count as Internal.
    pub fn from_grpc(code: tonic::Code) -> Self {
        use tonic::Code;
        match code {
            Code::Unauthenticated => ServiceErrorCode::Unauthenticated,
            Code::PermissionDenied => ServiceErrorCode::PermissionDenied,
            Code::InvalidArgument | Code::OutOfRange => ServiceErrorCode::InvalidArgument,
            Code::NotFound => ServiceErrorCode::NotFound,
            Code::AlreadyExists => ServiceErrorCode::AlreadyExists,
            Code::FailedPrecondition => ServiceErrorCode::FailedPrecondition,
            Code::Aborted => ServiceErrorCode::Aborted,
            Code::DeadlineExceeded | Code::Cancelled => ServiceErrorCode::DeadlineExceeded,
            Code::ResourceExhausted => ServiceErrorCode::ResourceExhausted,
            Code::Unimplemented => ServiceErrorCode::Unimplemented,
            Code::Unavailable => ServiceErrorCode::Unavailable,
            Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => ServiceErrorCode::Internal,
        }
    }

    /// The gRPC name of the class ("NOT_FOUND"), as REST errors carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ServiceErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ServiceErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ServiceErrorCode::NotFound => "NOT_FOUND",
            ServiceErrorCode::AlreadyExists => "ALREADY_EXISTS",
            ServiceErrorCode::FailedPrecondition => "FAILED_PRECONDITION",
            ServiceErrorCode::Aborted => "ABORTED",
            ServiceErrorCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            ServiceErrorCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            ServiceErrorCode::Unimplemented => "UNIMPLEMENTED",
            ServiceErrorCode::Unavailable => "UNAVAILABLE",
            ServiceErrorCode::Internal => "INTERNAL",
        }
    }

    /// The HTTP status of the same class (for REST routes and gateways).
    pub fn http(self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            ServiceErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ServiceErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
            ServiceErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
            ServiceErrorCode::NotFound => StatusCode::NOT_FOUND,
            ServiceErrorCode::AlreadyExists | ServiceErrorCode::Aborted => StatusCode::CONFLICT,
            ServiceErrorCode::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
            ServiceErrorCode::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            ServiceErrorCode::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            ServiceErrorCode::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            ServiceErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ServiceErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error a service returns to its callers.
pub trait ServiceError: std::error::Error + Send + Sync + 'static {
    fn error_code(&self) -> ServiceErrorCode;

    /// A machine-readable reason a program branches on (sent as
    /// `google.rpc.ErrorInfo`), where the message alone is for people.
    fn reason(&self) -> Option<clawplane_proto::v1::ErrorReason> {
        None
    }
}

/// The one conversion of a service error into a gRPC status. Internal
/// errors are logged with their whole chain; the caller gets a reference to
/// find the log line, never the details.
pub fn grpc_status(err: &dyn ServiceError) -> Status {
    let code = err.error_code();
    if code == ServiceErrorCode::Internal {
        let reference = uuid::Uuid::new_v4();
        tracing::error!(%reference, error = %error_chain(err), "internal error");
        return Status::internal(format!("internal error (reference {reference})"));
    }
    match err.reason() {
        Some(reason) => clawplane_proto::status_with_reason(code.grpc(), err.to_string(), reason),
        None => Status::new(code.grpc(), err.to_string()),
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// `impl From<$error> for tonic::Status` through [`grpc_status`], for each
/// service error that a gRPC handler returns directly.
macro_rules! into_status {
    ($($error:ty),+ $(,)?) => {$(
        impl From<$error> for tonic::Status {
            fn from(err: $error) -> tonic::Status {
                $crate::service_error::grpc_status(&err)
            }
        }
    )+};
}
pub(crate) use into_status;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("database is down")]
    struct Outage(#[source] std::io::Error);

    impl ServiceError for Outage {
        fn error_code(&self) -> ServiceErrorCode {
            ServiceErrorCode::Internal
        }
    }

    #[test]
    fn internal_errors_hide_their_details() {
        let status = grpc_status(&Outage(std::io::Error::other("password=hunter2")));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(status.message().starts_with("internal error (reference "), "{}", status.message());
        assert!(!status.message().contains("hunter2"));
    }

    #[test]
    fn every_code_has_a_grpc_and_an_http_class() {
        let table = [
            (ServiceErrorCode::Unauthenticated, tonic::Code::Unauthenticated, 401),
            (ServiceErrorCode::PermissionDenied, tonic::Code::PermissionDenied, 403),
            (ServiceErrorCode::InvalidArgument, tonic::Code::InvalidArgument, 400),
            (ServiceErrorCode::NotFound, tonic::Code::NotFound, 404),
            (ServiceErrorCode::AlreadyExists, tonic::Code::AlreadyExists, 409),
            (ServiceErrorCode::FailedPrecondition, tonic::Code::FailedPrecondition, 412),
            (ServiceErrorCode::Aborted, tonic::Code::Aborted, 409),
            (ServiceErrorCode::DeadlineExceeded, tonic::Code::DeadlineExceeded, 504),
            (ServiceErrorCode::ResourceExhausted, tonic::Code::ResourceExhausted, 429),
            (ServiceErrorCode::Unimplemented, tonic::Code::Unimplemented, 501),
            (ServiceErrorCode::Unavailable, tonic::Code::Unavailable, 503),
            (ServiceErrorCode::Internal, tonic::Code::Internal, 500),
        ];
        for (code, grpc, http) in table {
            assert_eq!(code.grpc(), grpc, "{code:?}");
            assert_eq!(code.http().as_u16(), http, "{code:?}");
            assert_eq!(ServiceErrorCode::from_grpc(grpc), code, "{code:?} round trip");
            // "NOT_FOUND" from NotFound: the gRPC name of the code.
            let name: String = format!("{grpc:?}")
                .chars()
                .flat_map(|c| if c.is_uppercase() { vec!['_', c] } else { vec![c.to_ascii_uppercase()] })
                .skip(1)
                .collect();
            assert_eq!(code.as_str(), name, "{code:?}");
        }
    }
}
