//! What the control plane's gRPC answers mean to the agent.

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

/// Whether the control plane's text (a status message or a close reason)
/// says this host was removed for good. The one place the agent reads the
/// `host_revoked` prefix.
pub fn says_host_revoked(text: &str) -> bool {
    text.starts_with("host_revoked")
}

/// A refusal of the stream itself: the host is revoked, reconnecting will
/// not help.
pub fn is_refusal(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::PermissionDenied && says_host_revoked(status.message())
}
