//! What the control plane's gRPC answers mean to the agent.
use clawplane_proto::v1::{CloseConnection, ErrorReason};

/// A failed call's message with every transport cause under it (tonic
/// puts "connection refused" or a TLS alert in the source chain).
pub fn transport_detail(status: &tonic::Status) -> String {
    let mut detail = status.message().to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        detail = format!("{detail}: {err}");
        source = err.source();
    }
    detail
}

/// Whether the control plane closed the stream because this host was
/// removed for good. Control planes older than `CloseConnection.cause` say
/// it only with the `host_revoked` prefix of the text.
pub fn close_is_revocation(close: &CloseConnection) -> bool {
    match close.cause() {
        ErrorReason::HostRevoked => true,
        ErrorReason::Unspecified => close.reason.starts_with(REVOKED_PREFIX),
        _ => false,
    }
}

/// A refusal of the stream itself: the host is revoked, reconnecting will
/// not help. Read from the status' `ErrorInfo` reason (or, from control
/// planes older than it, the message's prefix).
pub fn is_refusal(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::PermissionDenied
        && match clawplane_proto::status_reason(status) {
            Some(reason) => reason == ErrorReason::HostRevoked,
            None => status.message().starts_with(REVOKED_PREFIX),
        }
}

const REVOKED_PREFIX: &str = "host_revoked";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_is_read_from_the_typed_reason_or_an_old_prefix() {
        let close = |cause: ErrorReason, reason: &str| CloseConnection {
            reason: reason.into(),
            cause: cause as i32,
            ..Default::default()
        };
        assert!(close_is_revocation(&close(ErrorReason::HostRevoked, "removed")));
        assert!(close_is_revocation(&close(ErrorReason::Unspecified, "host_revoked: removed")));
        assert!(!close_is_revocation(&close(ErrorReason::ConnectionReplaced, "host_revoked: text is not read")));
        assert!(!close_is_revocation(&close(ErrorReason::ShuttingDown, "shutting down")));

        let denied = |message: &str| tonic::Status::permission_denied(message);
        let typed =
            clawplane_proto::status_with_reason(tonic::Code::PermissionDenied, "gone", ErrorReason::HostRevoked);
        assert!(is_refusal(&typed));
        assert!(is_refusal(&denied("host_revoked: an older control plane")));
        assert!(!is_refusal(&denied("certificate subject does not match its host")));
        assert!(!is_refusal(&tonic::Status::unauthenticated("host_revoked")));
    }
}
