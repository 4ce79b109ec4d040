//! The crate's one error type.

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument was outside what the operation accepts.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Buffer lengths or matrix dimensions do not fit together.
    #[error("invalid shape: {0}")]
    InvalidShape(String),
    /// The operation does not support this format.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A worker thread of the kernel pool could not be started or failed.
    #[error("kernel pool: {0}")]
    Pool(String),
}

/// Result with this crate's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
