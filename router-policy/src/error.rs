//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument was outside what the operation accepts.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A model, bandit or embedding file did not parse.
    #[error("{path}: {message}")]
    Format {
        /// The file involved.
        path: PathBuf,
        /// What was wrong with it.
        message: String,
    },
    /// A model file the encoder needs is not in the cache.
    #[error("{what} not found at {path}; run `tandem models fetch`")]
    MissingArtifact {
        /// Which artifact (onnx runtime, encoder model, tokenizer).
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// ONNX Runtime failed to load or run.
    #[error("onnx runtime: {0}")]
    Onnx(String),
    /// The tokenizer failed to load or encode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A dataset did not have the expected shape.
    #[error("dataset {path}: {message}")]
    Dataset {
        /// The file involved.
        path: PathBuf,
        /// What was wrong with it.
        message: String,
    },
    /// Feedback named a request id that is unknown or has expired from the recent-request window.
    #[error("unknown request id {0}")]
    UnknownRequest(String),
    /// Feedback for this request id already reached the bandit (one update per answer).
    #[error("feedback for request id {0} was already applied")]
    FeedbackAlreadyApplied(String),
    /// Feedback carried a value outside what is accepted.
    #[error("invalid feedback: {0}")]
    InvalidFeedback(String),
    /// The plot could not be drawn.
    #[error("plot: {0}")]
    Plot(String),
    /// A bandit store failed.
    #[error("bandit store: {0}")]
    Store(String),
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// True for errors caused by the caller's input (the gateway answers them with a 4xx).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Self::InvalidArgument(_)
                | Self::UnknownRequest(_)
                | Self::FeedbackAlreadyApplied(_)
                | Self::InvalidFeedback(_)
        )
    }
}

/// Result with this crate's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
