//! The crate's one error type.

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument was outside what the operation accepts.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Result with this crate's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
