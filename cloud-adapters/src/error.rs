//! The crate's one error type, the ingress decoding error, and the upstream error every provider
//! reports (with its kind and retryability).

/// Everything that can go wrong in this crate outside an upstream call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument was outside what the operation accepts.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A provider's configuration is unusable.
    #[error("invalid provider config: {0}")]
    Config(String),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    HttpClient(String),
    /// A TLS file (certificate, key, CA bundle) that cannot be used.
    #[error("{}: {message}", path.display())]
    Tls {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// An I/O failure (binding the mock server, reading fixtures).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Result with this crate's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A client request that cannot be decoded; the gateway answers it with a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct WireError {
    /// What is wrong, in words.
    pub message: String,
    /// The offending parameter (`messages[1].role`), when one is to blame.
    pub param: Option<String>,
    /// A machine-readable code (`invalid_json`, `invalid_type`, `missing_required_parameter`,
    /// `unsupported_value`, `invalid_value`).
    pub code: &'static str,
}

impl WireError {
    /// An error with `code` about `param`.
    pub fn new(code: &'static str, param: Option<&str>, message: impl Into<String>) -> Self {
        WireError {
            message: message.into(),
            param: param.map(str::to_owned),
            code,
        }
    }

    /// A required parameter is absent.
    pub fn missing(param: &str) -> Self {
        Self::new(
            "missing_required_parameter",
            Some(param),
            format!("missing required parameter: '{param}'"),
        )
    }

    /// A parameter has the wrong JSON type.
    pub fn invalid_type(param: &str, expected: &str) -> Self {
        Self::new(
            "invalid_type",
            Some(param),
            format!("invalid type for '{param}': expected {expected}"),
        )
    }

    /// A parameter has a value that is not accepted.
    pub fn invalid_value(param: &str, message: impl Into<String>) -> Self {
        Self::new("invalid_value", Some(param), message)
    }

    /// The OpenAI 400 body: `{"error":{"message","type":"invalid_request_error","param","code"}}`.
    pub fn openai_body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": "invalid_request_error",
                "param": self.param,
                "code": self.code,
            }
        })
    }

    /// The Anthropic 400 body: `{"type":"error","error":{"type":"invalid_request_error","message"}}`.
    pub fn anthropic_body(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "error",
            "error": {"type": "invalid_request_error", "message": self.message},
        })
    }
}

/// What kind of failure an upstream call had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderErrorKind {
    /// The connection could not be made.
    Connect,
    /// The upstream took too long (connect or read).
    Timeout,
    /// The upstream answered with an error status.
    Status,
    /// The upstream's body could not be understood.
    Decode,
    /// A stream ended before its end marker.
    StreamCut,
    /// The request asks for something this provider cannot do.
    Unsupported,
    /// The caller went away.
    Cancelled,
}

impl ProviderErrorKind {
    /// A short, low-cardinality label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderErrorKind::Connect => "connect",
            ProviderErrorKind::Timeout => "timeout",
            ProviderErrorKind::Status => "status",
            ProviderErrorKind::Decode => "decode",
            ProviderErrorKind::StreamCut => "stream_cut",
            ProviderErrorKind::Unsupported => "unsupported",
            ProviderErrorKind::Cancelled => "cancelled",
        }
    }
}

/// An upstream failure: what happened, the status if any, and whether a retry may help.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{provider}: {message}")]
pub struct ProviderError {
    /// What kind of failure.
    pub kind: ProviderErrorKind,
    /// The upstream's HTTP status, when it answered.
    pub status: Option<u16>,
    /// What went wrong, in words (the upstream's own message when it gave one).
    pub message: String,
    /// Whether sending the same request again (here or elsewhere) may succeed.
    pub retryable: bool,
    /// The upstream's error body, when it was JSON.
    pub upstream_body: Option<serde_json::Value>,
    /// How long the upstream asked callers to wait before trying again (its `retry-after`, in
    /// seconds).
    pub retry_after_secs: Option<u64>,
    /// The provider's configured name.
    pub provider: String,
}

impl ProviderError {
    /// An error of `kind`; retryability follows the kind (connect, timeout, cut: yes).
    pub fn new(
        kind: ProviderErrorKind,
        provider: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let retryable = matches!(
            kind,
            ProviderErrorKind::Connect | ProviderErrorKind::Timeout | ProviderErrorKind::StreamCut
        );
        ProviderError {
            kind,
            status: None,
            message: message.into(),
            retryable,
            upstream_body: None,
            retry_after_secs: None,
            provider: provider.into(),
        }
    }

    /// An error status from the upstream; retryability follows [`status_is_retryable`].
    pub fn status(status: u16, provider: impl Into<String>, message: impl Into<String>) -> Self {
        ProviderError {
            kind: ProviderErrorKind::Status,
            status: Some(status),
            message: message.into(),
            retryable: status_is_retryable(status),
            upstream_body: None,
            retry_after_secs: None,
            provider: provider.into(),
        }
    }

    /// A stream that ended before its end marker.
    pub fn stream_cut(provider: impl Into<String>) -> Self {
        Self::new(
            ProviderErrorKind::StreamCut,
            provider,
            "upstream stream ended before completion",
        )
    }

    /// The same error attributed to `provider`.
    pub fn with_provider(mut self, provider: impl Into<String>) -> Self {
        self.provider = provider.into();
        self
    }
}

/// Whether an upstream HTTP status is worth retrying: rate limits, server errors, overload.
pub fn status_is_retryable(status: u16) -> bool {
    matches!(status, 408 | 409 | 429 | 500 | 502 | 503 | 504 | 529) || status > 529
}
