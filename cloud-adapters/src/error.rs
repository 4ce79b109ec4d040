//! The crate's one error type, and the ingress decoding error.

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
