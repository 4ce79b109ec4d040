//! The crate's one error type.

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument was outside what the operation accepts.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Reading a model file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A GGUF file is malformed, truncated or lacks something the model needs.
    #[error("gguf: {0}")]
    Gguf(String),
    /// The model's architecture or a tensor type is not supported.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// The tokenizer could not be built or could not encode or decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),
    /// A kernel reported an error.
    #[error("kernel: {0}")]
    Kernel(String),
    /// The engine thread has stopped or could not be started.
    #[error("engine stopped: {0}")]
    EngineStopped(String),
    /// A request exceeded the context window or the KV cache.
    #[error("context overflow: {0}")]
    ContextOverflow(String),
    /// A drafting session id is unknown (closed or never opened).
    #[error("unknown session {0}")]
    UnknownSession(u64),
}

/// Result with this crate's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
